"""Dependencies between tasks: adding, listing and removing them, the rules they obey, and what they block.

Project "demo" is owned by alice with bob as a member; project "other" is alice's too; project
"secret" belongs to dave alone. Bob manages the dependencies unless a test says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session, select
from support import ON_POSTGRESQL, CreateProject, CreateTask, assert_refused, audit_rows, holding_first

from models import Task, TaskDependency


@pytest.fixture
def projects(create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob"])
    create_project("other", owner="alice", members=["bob"])
    create_project("secret", owner="dave")


@pytest.fixture
def new_task(create_task: CreateTask, projects: None) -> Callable[..., int]:  # noqa: ARG001
    def create(title: str = "A task", *, as_user: str = "alice", **fields: Any) -> int:
        fields.setdefault("project_slug", "demo")
        task_id: int = create_task(title, as_user=as_user, **fields)["id"]
        return task_id

    return create


def add(client: TestClient, auth: AuthHeaders, task_id: int, depends_on: Any, user: str = "bob") -> httpx2.Response:
    return client.post(f"/api/tasks/{task_id}/dependencies", json={"depends_on": depends_on}, headers=auth(user))


def remove(client: TestClient, auth: AuthHeaders, task_id: int, other_id: int, user: str = "bob") -> httpx2.Response:
    return client.delete(f"/api/tasks/{task_id}/dependencies/{other_id}", headers=auth(user))


def edges(db: Engine) -> set[tuple[int, int]]:
    with Session(db) as session:
        return {(edge.task_id, edge.depends_on_id) for edge in session.exec(select(TaskDependency)).all()}


def drive(client: TestClient, auth: AuthHeaders, task_id: int, *actions: str) -> None:
    for action in actions:
        response = client.post(f"/api/tasks/{task_id}/{action}", headers=auth("alice"))
        assert response.status_code == 200, response.text


# ---------------------------------------------------------------- add, list, remove


def test_adding_a_dependency_returns_201_with_the_task_depended_on(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id = new_task("Deploy")
    first = new_task("Build")

    response = add(client, auth, task_id, first)

    assert response.status_code == 201, response.text
    assert response.json() == client.get(f"/api/tasks/{first}", headers=auth("bob")).json()
    assert edges(db) == {(task_id, first)}


def test_adding_a_dependency_writes_a_dependency_added_audit_row(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")

    assert add(client, auth, task_id, first).status_code == 201

    (row,) = audit_rows(db, action="dependency.added")
    assert (row.task_id, row.project_slug, row.actor_id, row.actor_type) == (task_id, "demo", "bob", "human")
    assert row.context == {"depends_on": [None, first]}


def test_listing_dependencies_returns_the_tasks_depended_on_in_id_order(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int]
) -> None:
    task_id = new_task("Deploy")
    others = [new_task(f"Step {n}") for n in range(3)]
    unrelated = new_task("Unrelated")
    for other in reversed(others):
        assert add(client, auth, task_id, other).status_code == 201
    assert add(client, auth, unrelated, others[0]).status_code == 201

    response = client.get(f"/api/tasks/{task_id}/dependencies", headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert [task["id"] for task in response.json()] == others
    assert response.json()[0] == client.get(f"/api/tasks/{others[0]}", headers=auth("bob")).json()
    assert client.get(f"/api/tasks/{others[0]}/dependencies", headers=auth("bob")).json() == []


def test_removing_a_dependency_returns_204_and_writes_a_dependency_removed_audit_row(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id, first, second = new_task("Deploy"), new_task("Build"), new_task("Test")
    assert add(client, auth, task_id, first).status_code == 201
    assert add(client, auth, task_id, second).status_code == 201

    response = remove(client, auth, task_id, first, user="alice")

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert edges(db) == {(task_id, second)}
    (row,) = audit_rows(db, action="dependency.removed")
    assert (row.task_id, row.project_slug, row.actor_id) == (task_id, "demo", "alice")
    assert row.context == {"depends_on": [first, None]}


def test_removing_a_dependency_that_does_not_exist_returns_404(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")

    response = remove(client, auth, task_id, first)

    assert_refused(response, 404, "not_found")
    assert audit_rows(db, action="dependency.removed") == []


def test_a_removed_dependency_can_be_added_again(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201
    assert remove(client, auth, task_id, first).status_code == 204

    response = add(client, auth, task_id, first)

    assert response.status_code == 201, response.text
    assert edges(db) == {(task_id, first)}


# ---------------------------------------------------------------- what may not be added


@pytest.mark.parametrize("side", ["task", "depends_on"])
@pytest.mark.parametrize("which", ["missing", "invisible"])
def test_adding_a_dependency_with_a_task_the_caller_cannot_see_returns_404(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int], side: str, which: str
) -> None:
    mine = new_task("Mine")
    hidden = 999_999 if which == "missing" else new_task("Dave's", as_user="dave", project_slug="secret")
    task_id, depends_on = (hidden, mine) if side == "task" else (mine, hidden)

    response = add(client, auth, task_id, depends_on)

    body = assert_refused(response, 404, "not_found")
    assert body["error"] == f"Task {hidden} not found"
    assert edges(db) == set()
    assert audit_rows(db, action="dependency.added") == []


@pytest.mark.parametrize("which", ["missing", "invisible"])
def test_listing_or_removing_dependencies_of_a_task_the_caller_cannot_see_returns_404(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int], which: str
) -> None:
    hidden = 999_999
    if which == "invisible":
        hidden = new_task("Dave's", as_user="dave", project_slug="secret")
        first = new_task("Dave's first", as_user="dave", project_slug="secret")
        assert add(client, auth, hidden, first, user="dave").status_code == 201
    else:
        first = new_task("Mine")

    listed = client.get(f"/api/tasks/{hidden}/dependencies", headers=auth("bob"))
    removed = remove(client, auth, hidden, first)

    assert_refused(listed, 404, "not_found")
    assert_refused(removed, 404, "not_found")
    if which == "invisible":
        assert edges(db) == {(hidden, first)}


def test_removing_a_dependency_on_a_task_the_caller_cannot_see_returns_404(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int]
) -> None:
    mine = new_task("Mine")
    hidden = new_task("Dave's", as_user="dave", project_slug="secret")

    response = remove(client, auth, mine, hidden)

    body = assert_refused(response, 404, "not_found")
    assert body["error"] == f"Task {hidden} not found"


def test_a_dependency_on_a_task_in_another_project_returns_400(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    here = new_task("Here")
    elsewhere = new_task("Elsewhere", project_slug="other")
    loose = new_task("Project-less", project_slug=None)

    responses = [add(client, auth, here, elsewhere, user="alice"), add(client, auth, here, loose, user="alice")]
    responses.append(add(client, auth, loose, here, user="alice"))

    for response in responses:
        assert_refused(response, 400, "bad_request")
    assert edges(db) == set()


def test_project_less_tasks_of_the_same_creator_may_depend_on_each_other(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    first = new_task("First", project_slug=None, as_user="bob")
    second = new_task("Second", project_slug=None, as_user="bob")

    response = add(client, auth, second, first)

    assert response.status_code == 201, response.text
    assert edges(db) == {(second, first)}


def test_a_task_depending_on_itself_returns_400(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id = new_task("Ouroboros")

    response = add(client, auth, task_id, task_id)

    assert_refused(response, 400, "bad_request")
    assert edges(db) == set()


def test_adding_the_same_dependency_twice_returns_409(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201

    response = add(client, auth, task_id, first)

    assert_refused(response, 409, "conflict")
    assert edges(db) == {(task_id, first)}
    assert len(audit_rows(db, action="dependency.added")) == 1


def test_a_dependency_that_would_close_a_two_task_cycle_returns_400(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    a, b = new_task("A"), new_task("B")
    assert add(client, auth, a, b).status_code == 201

    response = add(client, auth, b, a)

    assert_refused(response, 400, "bad_request")
    assert edges(db) == {(a, b)}


def test_a_dependency_that_would_close_a_longer_cycle_returns_400(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    a, b, c, d = (new_task(name) for name in "ABCD")
    for task_id, depends_on in ((a, b), (b, c), (c, d)):
        assert add(client, auth, task_id, depends_on).status_code == 201

    closing_three = add(client, auth, c, a)
    closing_four = add(client, auth, d, a)

    assert_refused(closing_three, 400, "bad_request")
    assert_refused(closing_four, 400, "bad_request")
    assert edges(db) == {(a, b), (b, c), (c, d)}
    assert len(audit_rows(db, action="dependency.added")) == 3


def test_a_diamond_is_not_a_cycle(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    top, left, right, bottom = (new_task(name) for name in ("Top", "Left", "Right", "Bottom"))

    for task_id, depends_on in ((top, left), (top, right), (left, bottom), (right, bottom)):
        response = add(client, auth, task_id, depends_on)
        assert response.status_code == 201, response.text

    assert len(edges(db)) == 4


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing"),
        pytest.param({"depends_on": 0}, id="zero"),
        pytest.param({"depends_on": -1}, id="negative"),
        pytest.param({"depends_on": 2_147_483_648}, id="too-big"),
        pytest.param({"depends_on": "one"}, id="not-a-number"),
        pytest.param({"depends_on": None}, id="null"),
        pytest.param({"depends_on": 1, "kind": "blocks"}, id="unknown-field"),
    ],
)
def test_adding_a_dependency_with_a_malformed_body_returns_422(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int], body: dict[str, Any]
) -> None:
    task_id = new_task("Deploy")

    response = client.post(f"/api/tasks/{task_id}/dependencies", json=body, headers=auth("bob"))

    assert_refused(response, 422, "validation_error")
    assert edges(db) == set()


# ---------------------------------------------------------------- what a dependency blocks


def test_starting_a_task_with_unfinished_dependencies_returns_400_naming_them(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id = new_task("Deploy")
    first, second, done = new_task("Build"), new_task("Test"), new_task("Lint")
    for other in (second, first, done):
        assert add(client, auth, task_id, other).status_code == 201
    drive(client, auth, done, "start", "complete")
    drive(client, auth, second, "start")

    response = client.post(f"/api/tasks/{task_id}/start", headers=auth("bob"))

    body = assert_refused(response, 400, "unfinished_dependencies")
    assert body["error"] == f"Task {task_id} depends on unfinished task(s) {first}, {second}"
    with Session(db) as session:
        task = session.get(Task, task_id)
        assert task is not None
        assert (task.status, task.assigned_to) == ("pending", None)


def test_starting_names_only_the_dependencies_still_unfinished(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int]
) -> None:
    task_id, first, second = new_task("Deploy"), new_task("Build"), new_task("Test")
    assert add(client, auth, task_id, first).status_code == 201
    assert add(client, auth, task_id, second).status_code == 201
    drive(client, auth, first, "start", "complete")

    response = client.post(f"/api/tasks/{task_id}/start", headers=auth("bob"))

    body = assert_refused(response, 400, "unfinished_dependencies")
    assert body["error"] == f"Task {task_id} depends on unfinished task(s) {second}"


@pytest.mark.parametrize("blocker_status", ["pending", "in_progress", "review", "blocked"])
def test_any_status_but_completed_is_unfinished(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int], blocker_status: str
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201
    steps = {"pending": [], "in_progress": ["start"], "review": ["start", "review"], "blocked": ["start"]}
    drive(client, auth, first, *steps[blocker_status])
    if blocker_status == "blocked":
        blocked = client.post(f"/api/tasks/{first}/block?reason=waiting", headers=auth("alice"))
        assert blocked.status_code == 200, blocked.text

    response = client.post(f"/api/tasks/{task_id}/start", headers=auth("bob"))

    assert_refused(response, 400, "unfinished_dependencies")


def test_a_task_starts_once_all_its_dependencies_are_completed(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int]
) -> None:
    task_id, first, second = new_task("Deploy"), new_task("Build"), new_task("Test")
    assert add(client, auth, task_id, first).status_code == 201
    assert add(client, auth, task_id, second).status_code == 201
    drive(client, auth, first, "start", "complete")
    drive(client, auth, second, "start", "review", "complete")

    response = client.post(f"/api/tasks/{task_id}/start", headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["assigned_to"]) == ("in_progress", "bob")


def test_moving_a_task_to_in_progress_through_patch_is_refused_like_start(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy", assigned_to="bob"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201

    response = client.patch(f"/api/tasks/{task_id}", json={"status": "in_progress"}, headers=auth("bob"))

    assert_refused(response, 400, "unfinished_dependencies")


def test_removing_the_unfinished_dependency_lets_the_task_start(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201
    assert remove(client, auth, task_id, first).status_code == 204

    response = client.post(f"/api/tasks/{task_id}/start", headers=auth("bob"))

    assert response.status_code == 200, response.text


def test_reopening_a_completed_dependency_makes_the_task_wait_again(
    client: TestClient, auth: AuthHeaders, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201
    drive(client, auth, first, "start", "complete")
    assert client.get("/api/tasks?ready=true", headers=auth("bob")).json()[0]["id"] == task_id

    reopened = client.patch(f"/api/tasks/{first}", json={"status": "in_progress"}, headers=auth("alice"))

    assert reopened.status_code == 200, reopened.text
    assert client.get("/api/tasks?ready=true", headers=auth("bob")).json() == []
    assert_refused(client.post(f"/api/tasks/{task_id}/start", headers=auth("bob")), 400, "unfinished_dependencies")


# ---------------------------------------------------------------- deleting and moving tasks with dependencies


def test_deleting_a_task_others_depend_on_returns_400(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201

    response = client.delete(f"/api/tasks/{first}", headers=auth("alice"))

    body = assert_refused(response, 400, "bad_request")
    assert str(task_id) in body["error"]
    with Session(db) as session:
        assert session.get(Task, first) is not None
    assert edges(db) == {(task_id, first)}


def test_deleting_a_task_that_depends_on_others_removes_its_dependencies(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201

    response = client.delete(f"/api/tasks/{task_id}", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert edges(db) == set()
    assert client.delete(f"/api/tasks/{first}", headers=auth("alice")).status_code == 204


@pytest.mark.parametrize("which", ["dependent", "depended_on"])
def test_moving_a_task_with_dependencies_to_another_project_returns_400(
    client: TestClient, auth: AuthHeaders, db: Engine, new_task: Callable[..., int], which: str
) -> None:
    task_id, first = new_task("Deploy"), new_task("Build")
    assert add(client, auth, task_id, first).status_code == 201
    moved = task_id if which == "dependent" else first

    response = client.patch(f"/api/tasks/{moved}", json={"project_slug": "other"}, headers=auth("alice"))

    assert_refused(response, 400, "bad_request")
    with Session(db) as session:
        task = session.get(Task, moved)
        assert task is not None
        assert task.project_slug == "demo"


# ---------------------------------------------------------------- concurrency


def waiting_on_a_lock(db: Engine) -> bool:
    """Whether any other session of this database is waiting for a lock (PostgreSQL)."""
    with db.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def has_cycle(graph: set[tuple[int, int]]) -> bool:
    def reaches(start: int, goal: int, seen: set[int]) -> bool:
        for task_id, depends_on in graph:
            if task_id == start and depends_on not in seen:
                if depends_on == goal or reaches(depends_on, goal, seen | {depends_on}):
                    return True
        return False

    return any(reaches(task_id, task_id, set()) for task_id, _ in graph)


def add_two_at_once(
    live_server: Any, auth: AuthHeaders, db: Engine, first_edge: tuple[int, int], second_edge: tuple[int, int]
) -> list[httpx.Response]:
    """Add `first_edge`, holding it just before its insert, while `second_edge` is added; then let it go on."""

    def post(edge: tuple[int, int]) -> httpx.Response:
        with httpx.Client(base_url=live_server.url, headers={**auth("bob"), "Connection": "close"}) as http:
            return http.post(f"/api/tasks/{edge[0]}/dependencies", json={"depends_on": edge[1]}, timeout=30)

    inserting_an_edge = holding_first(
        live_server.app.state.engine, lambda statement: statement.startswith("INSERT INTO task_dependency")
    )
    with inserting_an_edge as (held, release), ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(post, first_edge)
        assert held.wait(timeout=10), "the first request never reached its insert"
        second = pool.submit(post, second_edge)
        deadline = time.monotonic() + 10
        # Let the second request run until it either answers or waits for a lock the first one holds.
        while not second.done() and not waiting_on_a_lock(db) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        return [first.result(timeout=30), second.result(timeout=30)]


postgresql_only = pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="SQLite serializes writers, so two requests cannot interleave; the guarantee is proven on PostgreSQL in CI",
)


@postgresql_only
def test_two_concurrent_opposite_dependencies_never_make_a_cycle(
    live_server: Any, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    a, b = new_task("A"), new_task("B")

    responses = add_two_at_once(live_server, auth, db, (a, b), (b, a))

    assert sorted(response.status_code for response in responses) == [201, 400], [r.text for r in responses]
    assert not has_cycle(edges(db))
    assert len(edges(db)) == 1


@postgresql_only
def test_two_concurrent_dependencies_closing_a_longer_cycle_together_never_make_one(
    client: TestClient, live_server: Any, auth: AuthHeaders, db: Engine, new_task: Callable[..., int]
) -> None:
    a, b, c, d = (new_task(name) for name in "ABCD")
    assert add(client, auth, a, b).status_code == 201
    assert add(client, auth, c, d).status_code == 201

    # Neither edge makes a cycle alone; both together make a -> b -> c -> d -> a.
    responses = add_two_at_once(live_server, auth, db, (b, c), (d, a))

    assert sorted(response.status_code for response in responses) == [201, 400], [r.text for r in responses]
    assert not has_cycle(edges(db))
