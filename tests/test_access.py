"""No one sees what is not theirs: invisible is 404 (never 403), and absent from every list and count."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from support import CreateProject, CreateTask, audit_count, stored_task

from models import AuditLog, Task


def ids(response: httpx2.Response) -> list[int]:
    return sorted(task["id"] for task in response.json())


def total(response: httpx2.Response) -> int:
    return int(response.headers["X-Total-Count"])


def stored_fields(db: Engine, task_id: int) -> dict[str, Any] | None:
    """The task's row as a dict of its fields, or None if there is none."""
    task = stored_task(db, task_id)
    return None if task is None else task.model_dump()


@pytest.fixture
def alices_tasks(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> dict[str, Any]:
    """Alice's project `secret` (carol is no member) with a task in each status, and a project-less task."""
    create_project("secret", owner="alice")
    pending = create_task("Secret pending", project_slug="secret")
    in_progress = create_task("Secret in progress", project_slug="secret")
    assert client.post(f"/api/tasks/{in_progress['id']}/start", headers=auth("alice")).status_code == 200
    review = create_task("Secret review", project_slug="secret")
    assert client.post(f"/api/tasks/{review['id']}/start", headers=auth("alice")).status_code == 200
    assert client.post(f"/api/tasks/{review['id']}/review", headers=auth("alice")).status_code == 200
    blocked = create_task("Secret blocked", project_slug="secret")
    assert client.post(f"/api/tasks/{blocked['id']}/block?reason=waiting", headers=auth("alice")).status_code == 200
    loose = create_task("Alice's own errand")
    client.get("/api/tasks", headers=auth("carol"))  # carol exists as a worker
    return {"pending": pending, "in_progress": in_progress, "review": review, "blocked": blocked, "loose": loose}


# Each action against a task in a status where the action would be allowed for its assignee,
# so a 400 for the wrong status cannot stand in for (and leak past) the 404.
ACTIONS = [
    ("GET", "", "pending", None),
    ("PATCH", "", "pending", {"title": "Mine now"}),
    ("DELETE", "", "pending", None),
    ("GET", "/audit", "pending", None),
    ("POST", "/start", "pending", None),
    ("POST", "/progress?percent=50&note=peek", "in_progress", None),
    ("POST", "/review", "in_progress", None),
    ("POST", "/complete", "review", None),
    ("POST", "/block?reason=nosy", "in_progress", None),
    ("POST", "/unblock", "blocked", None),
    ("PATCH", "", "review", {"status": "in_progress"}),
    ("POST", "/heartbeat", "in_progress", None),
    ("POST", "/release", "in_progress", None),
    ("GET", "/dependencies", "pending", None),
    ("POST", "/dependencies", "pending", "in_progress"),
    ("DELETE", "/dependencies/{in_progress}", "pending", None),
    ("GET", "", "loose", None),
    ("PATCH", "", "loose", {"assigned_to": "carol"}),
    ("DELETE", "", "loose", None),
    ("POST", "/start", "loose", None),
    ("GET", "/audit", "loose", None),
]


@pytest.mark.parametrize(("method", "suffix", "which", "body"), ACTIONS)
def test_a_non_member_gets_404_on_every_route_of_another_users_task(
    client: TestClient,
    auth: AuthHeaders,
    db: Engine,
    alices_tasks: dict[str, Any],
    method: str,
    suffix: str,
    which: str,
    body: dict[str, Any] | str | None,
) -> None:
    task_id = alices_tasks[which]["id"]
    suffix = suffix.format(in_progress=alices_tasks["in_progress"]["id"])
    if isinstance(body, str):  # a dependency on another of alice's tasks
        body = {"depends_on": alices_tasks[body]["id"]}
    before = stored_fields(db, task_id)
    rows_before = audit_count(db)

    response = client.request(method, f"/api/tasks/{task_id}{suffix}", json=body, headers=auth("carol"))

    assert response.status_code == 404, response.text
    assert response.json() == {"error": f"Task {task_id} not found", "status_code": 404, "code": "not_found"}
    assert stored_fields(db, task_id) == before
    assert audit_count(db) == rows_before


def test_my_task_cannot_be_made_to_depend_on_another_users_task(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, alices_tasks: dict[str, Any]
) -> None:
    mine = create_task("Carol's", as_user="carol")
    hidden = alices_tasks["loose"]["id"]

    added = client.post(f"/api/tasks/{mine['id']}/dependencies", json={"depends_on": hidden}, headers=auth("carol"))
    removed = client.delete(f"/api/tasks/{mine['id']}/dependencies/{hidden}", headers=auth("carol"))

    assert added.status_code == 404, added.text
    assert added.json()["error"] == f"Task {hidden} not found"
    assert removed.status_code == 404, removed.text
    assert removed.json()["error"] == f"Task {hidden} not found"


def test_claiming_work_never_hands_out_another_users_task(
    client: TestClient, auth: AuthHeaders, alices_tasks: dict[str, Any]
) -> None:
    anything = client.post("/api/tasks/claim", headers=auth("carol"))
    theirs = client.post("/api/tasks/claim", json={"project": "secret"}, headers=auth("carol"))

    assert anything.status_code == 204, anything.text
    assert theirs.status_code == 404, theirs.text
    assert (
        client.get(f"/api/tasks/{alices_tasks['pending']['id']}", headers=auth("alice")).json()["status"] == "pending"
    )


def test_an_invisible_task_answers_exactly_like_a_missing_one(
    client: TestClient, auth: AuthHeaders, alices_tasks: dict[str, Any]
) -> None:
    hidden = alices_tasks["pending"]["id"]
    missing = 999_999

    seen = client.get(f"/api/tasks/{hidden}", headers=auth("carol")).json()
    absent = client.get(f"/api/tasks/{missing}", headers=auth("carol")).json()

    assert seen == {**absent, "error": absent["error"].replace(str(missing), str(hidden))}


def test_another_users_tasks_never_appear_in_lists_or_counts(
    client: TestClient,
    auth: AuthHeaders,
    create_project: CreateProject,
    create_task: CreateTask,
    alices_tasks: dict[str, Any],
) -> None:
    create_project("carols", owner="carol")
    mine = [create_task(f"Carol {n}", as_user="carol", project_slug="carols")["id"] for n in range(2)]
    mine.append(create_task("Carol loose", as_user="carol")["id"])

    everything = client.get("/api/tasks", headers=auth("carol"))
    assert everything.status_code == 200, everything.text
    assert ids(everything) == sorted(mine)
    assert total(everything) == 3

    queries = {
        "project=secret": [],
        "assigned_to=alice": [],
        "q=secret": [],
        "status=in_progress": [],
        "status=blocked": [],
        "status=review": [],
        "status=pending": sorted(mine),
        f"parent_id={alices_tasks['pending']['id']}": [],
        "sort=-priority&limit=100": sorted(mine),
        "ready=true": sorted(mine),
        "ready=false": [],
    }
    for query, expected in queries.items():
        response = client.get(f"/api/tasks?{query}", headers=auth("carol"))
        assert response.status_code == 200, f"{query}: {response.text}"
        assert ids(response) == expected, query
        assert total(response) == len(expected), query

    page = client.get("/api/tasks?limit=1&offset=2", headers=auth("carol"))
    assert len(page.json()) == 1
    assert total(page) == 3


def test_filtering_by_assignee_counts_only_the_tasks_i_can_see(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("shared", owner="alice", members=["bob"])
    create_project("private", owner="alice")
    visible = create_task("Shared, alice's", project_slug="shared", assigned_to="alice")
    create_task("Private, alice's", project_slug="private", assigned_to="alice")
    create_task("Loose, alice's", assigned_to="alice")
    create_task("Shared, unassigned", project_slug="shared")

    response = client.get("/api/tasks?assigned_to=alice", headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert ids(response) == [visible["id"]]
    assert total(response) == 1
    assert total(client.get("/api/tasks?assigned_to=alice", headers=auth("alice"))) == 3


def test_a_project_less_task_is_visible_to_its_creator_and_its_assignee_only(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    for user in ("bob", "carol"):
        client.get("/api/tasks", headers=auth(user))
    task = create_task("Errand for bob", assigned_to="bob")

    for user in ("alice", "bob"):
        assert client.get(f"/api/tasks/{task['id']}", headers=auth(user)).status_code == 200, user
        listed = client.get("/api/tasks", headers=auth(user))
        assert ids(listed) == [task["id"]], user
        assert total(listed) == 1, user
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("carol")).status_code == 404
    carols = client.get("/api/tasks", headers=auth("carol"))
    assert carols.json() == []
    assert total(carols) == 0


def test_reassigning_a_project_less_task_hides_it_from_the_old_assignee(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    for user in ("bob", "carol"):
        client.get("/api/tasks", headers=auth(user))
    task = create_task("Errand", assigned_to="bob")

    moved = client.patch(f"/api/tasks/{task['id']}", json={"assigned_to": "carol"}, headers=auth("alice"))

    assert moved.status_code == 200, moved.text
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("bob")).status_code == 404
    assert total(client.get("/api/tasks", headers=auth("bob"))) == 0
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("carol")).status_code == 200


def test_a_removed_member_loses_sight_of_the_projects_tasks_at_once(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    his = create_task("Bob wrote this", as_user="bob", project_slug="demo")
    hers = create_task("Alice wrote this", project_slug="demo")
    assert total(client.get("/api/tasks", headers=auth("bob"))) == 2
    assert total(client.get("/api/audit?project=demo", headers=auth("bob"))) > 0

    removed = client.delete("/api/projects/demo/members/bob", headers=auth("alice"))
    assert removed.status_code == 204, removed.text

    for task in (his, hers):
        assert client.get(f"/api/tasks/{task['id']}", headers=auth("bob")).status_code == 404
        assert client.patch(f"/api/tasks/{task['id']}", json={"title": "x"}, headers=auth("bob")).status_code == 404
        assert client.get(f"/api/tasks/{task['id']}/audit", headers=auth("bob")).status_code == 404
    listed = client.get("/api/tasks", headers=auth("bob"))
    assert listed.json() == []
    assert total(listed) == 0
    assert total(client.get("/api/tasks?project=demo", headers=auth("bob"))) == 0
    audit = client.get("/api/audit?project=demo", headers=auth("bob"))
    assert audit.json() == []
    assert total(audit) == 0
    assert client.get("/api/projects/demo", headers=auth("bob")).status_code == 404
    assert total(client.get("/api/projects", headers=auth("bob"))) == 0


def test_a_member_who_leaves_loses_sight_of_the_projects_tasks(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Alice's", project_slug="demo")

    left = client.delete("/api/projects/demo/members/bob", headers=auth("bob"))

    assert left.status_code == 204, left.text
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("bob")).status_code == 404
    assert total(client.get("/api/tasks", headers=auth("bob"))) == 0


def test_a_non_member_cannot_create_a_task_in_the_project(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("secret", owner="alice")

    response = client.post("/api/tasks", json={"title": "Sneak in", "project_slug": "secret"}, headers=auth("carol"))

    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"
    missing = client.post("/api/tasks", json={"title": "x", "project_slug": "nowhere"}, headers=auth("carol"))
    assert missing.status_code == 404
    assert missing.json()["error"] == response.json()["error"].replace("secret", "nowhere")
    with Session(db) as session:
        assert session.exec(select(func.count()).select_from(Task)).one() == 0


def test_a_non_member_cannot_move_a_task_into_the_project(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("secret", owner="alice")
    task = create_task("Carol's", as_user="carol")

    response = client.patch(f"/api/tasks/{task['id']}", json={"project_slug": "secret"}, headers=auth("carol"))

    assert response.status_code == 404, response.text
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("carol")).json()["project_slug"] is None
    assert total(client.get("/api/tasks?project=secret", headers=auth("alice"))) == 0


def test_a_task_of_another_user_cannot_be_used_as_a_parent(
    client: TestClient, auth: AuthHeaders, alices_tasks: dict[str, Any]
) -> None:
    parent = alices_tasks["loose"]["id"]

    response = client.post("/api/tasks", json={"title": "Child", "parent_id": parent}, headers=auth("carol"))

    assert response.status_code == 404, response.text
    assert response.json()["error"] == f"Task {parent} not found"


def test_an_assignee_must_be_a_member_of_the_tasks_project(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    client.get("/api/tasks", headers=auth("carol"))

    created = client.post(
        "/api/tasks", json={"title": "For carol", "project_slug": "demo", "assigned_to": "carol"}, headers=auth("alice")
    )
    assert created.status_code == 400, created.text
    assert created.json()["code"] == "bad_request"

    task = create_task("For bob", project_slug="demo", assigned_to="bob")
    patched = client.patch(f"/api/tasks/{task['id']}", json={"assigned_to": "carol"}, headers=auth("alice"))
    assert patched.status_code == 400, patched.text
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("carol")).status_code == 404
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()["assigned_to"] == "bob"


def test_a_project_less_task_with_an_outside_assignee_cannot_move_into_a_project(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice")
    client.get("/api/tasks", headers=auth("carol"))
    task = create_task("Errand", assigned_to="carol")

    response = client.patch(f"/api/tasks/{task['id']}", json={"project_slug": "demo"}, headers=auth("alice"))

    assert response.status_code == 400, response.text
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("carol")).json()["project_slug"] is None


def test_an_admin_sees_every_task_and_counts_include_them_all(
    client: TestClient, auth: AuthHeaders, db: Engine, alices_tasks: dict[str, Any]
) -> None:
    admin = auth("root", role="admin")

    listed = client.get("/api/tasks?limit=100", headers=admin)

    assert listed.status_code == 200, listed.text
    assert ids(listed) == sorted(task["id"] for task in alices_tasks.values())
    assert total(listed) == 5
    assert total(client.get("/api/tasks?project=secret", headers=admin)) == 4
    assert total(client.get("/api/tasks?assigned_to=alice", headers=admin)) == 2  # in progress, review
    for task in alices_tasks.values():
        assert client.get(f"/api/tasks/{task['id']}", headers=admin).status_code == 200
    assert client.get(f"/api/tasks/{alices_tasks['loose']['id']}/audit", headers=admin).status_code == 200
    renamed = client.patch(f"/api/tasks/{alices_tasks['loose']['id']}", json={"title": "Seen"}, headers=admin)
    assert renamed.status_code == 200, renamed.text
    assert client.get("/api/projects/secret", headers=admin).status_code == 200
    assert total(client.get("/api/projects", headers=admin)) == 1

    audit = client.get("/api/audit?limit=100", headers=admin)
    assert total(audit) == audit_count(db)
    assert len(audit.json()) == audit_count(db)


def test_the_same_user_with_the_admin_role_sees_what_the_plain_role_does_not(
    client: TestClient, auth: AuthHeaders, alices_tasks: dict[str, Any]
) -> None:
    task = alices_tasks["pending"]["id"]

    assert client.get(f"/api/tasks/{task}", headers=auth("carol")).status_code == 404
    assert client.get(f"/api/tasks/{task}", headers=auth("carol", role="admin")).status_code == 200
    assert client.get(f"/api/tasks/{task}", headers=auth("carol", role="superuser")).status_code == 404


def test_the_audit_log_shows_a_stranger_none_of_another_users_rows(
    client: TestClient, auth: AuthHeaders, db: Engine, alices_tasks: dict[str, Any]
) -> None:
    task = alices_tasks["pending"]["id"]
    loose = alices_tasks["loose"]["id"]

    response = client.get("/api/audit?limit=100", headers=auth("carol"))

    assert response.status_code == 200, response.text
    rows = response.json()
    assert {row["actor_id"] for row in rows} == {"carol"}
    assert [row["action"] for row in rows] == ["worker.registered"]
    assert total(response) == len(rows)
    for query in (
        f"task_id={task}",
        f"task_id={loose}",
        "project=secret",
        "actor_id=alice",
        "action=task.created",
        "action=project.created",
        "action=worker.registered&actor_id=alice",
    ):
        filtered = client.get(f"/api/audit?{query}", headers=auth("carol"))
        assert filtered.status_code == 200, f"{query}: {filtered.text}"
        assert filtered.json() == [], query
        assert total(filtered) == 0, query
    with Session(db) as session:
        alices = session.exec(select(func.count()).where(AuditLog.actor_id == "alice")).one()
    assert alices > 5


def test_the_audit_log_shows_a_member_the_projects_rows_but_not_the_owners_private_ones(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    create_project("secret", owner="alice")
    shared = create_task("Shared", project_slug="demo")
    hidden = create_task("Hidden", project_slug="secret")
    loose = create_task("Loose")

    response = client.get("/api/audit?limit=100", headers=auth("bob"))

    assert response.status_code == 200, response.text
    rows = response.json()
    assert total(response) == len(rows)
    assert {row["project_slug"] for row in rows} == {"demo", None}
    assert [row for row in rows if row["project_slug"] is None] == [
        row for row in rows if row["action"] == "worker.registered" and row["actor_id"] == "bob"
    ]
    task_ids = {row["task_id"] for row in rows} - {None}
    assert task_ids == {shared["id"]}
    assert hidden["id"] not in task_ids
    assert loose["id"] not in task_ids
    assert total(client.get(f"/api/audit?task_id={shared['id']}", headers=auth("bob"))) == 1
    assert total(client.get(f"/api/audit?task_id={loose['id']}", headers=auth("bob"))) == 0
    assert total(client.get("/api/audit?project=secret", headers=auth("bob"))) == 0


def test_the_audit_log_shows_the_assignee_of_a_project_less_task_its_rows(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    client.get("/api/tasks", headers=auth("bob"))
    task = create_task("Errand", assigned_to="bob")

    bobs = client.get(f"/api/audit?task_id={task['id']}", headers=auth("bob"))
    carols = client.get(f"/api/audit?task_id={task['id']}", headers=auth("carol"))

    assert [row["action"] for row in bobs.json()] == ["task.created"]
    assert total(bobs) == 1
    assert carols.json() == []
    assert total(carols) == 0


def test_a_recreated_project_does_not_reveal_the_deleted_projects_audit_rows(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice")
    task = create_task("Alice's confidential plan", project_slug="demo")
    assert client.delete(f"/api/tasks/{task['id']}", headers=auth("alice")).status_code == 204
    assert client.delete("/api/projects/demo", headers=auth("alice")).status_code == 204

    recreated = client.post("/api/projects", json={"slug": "demo", "name": "Carol's"}, headers=auth("carol"))
    # Refusing the old slug (409) or starting the new project with a clean history are both safe.
    assert recreated.status_code in {201, 409}, recreated.text
    response = client.get("/api/audit?limit=100", headers=auth("carol"))

    assert response.status_code == 200, response.text
    assert {row["actor_id"] for row in response.json()} == {"carol"}
    assert "Alice's confidential plan" not in response.text
    assert total(response) == len(response.json())


def test_the_projects_list_shows_only_my_projects(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("alpha", owner="alice", members=["bob"])
    create_project("beta", owner="alice")
    create_project("gamma", owner="carol")

    bobs = client.get("/api/projects", headers=auth("bob"))
    carols = client.get("/api/projects", headers=auth("carol"))

    assert [project["slug"] for project in bobs.json()] == ["alpha"]
    assert total(bobs) == 1
    assert [project["slug"] for project in carols.json()] == ["gamma"]
    assert total(carols) == 1
    for path in ("/api/projects/beta", "/api/projects/beta/members"):
        response = client.get(path, headers=auth("bob"))
        assert response.status_code == 404, path
        assert response.json()["error"] == "Project 'beta' not found"


def test_a_non_member_gets_404_on_every_project_route(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("secret", owner="alice", members=["bob"])
    client.get("/api/tasks", headers=auth("carol"))
    rows_before = audit_count(db)
    calls = [
        ("GET", "/api/projects/secret", None),
        ("PATCH", "/api/projects/secret", {"name": "Mine"}),
        ("DELETE", "/api/projects/secret", None),
        ("GET", "/api/projects/secret/members", None),
        ("POST", "/api/projects/secret/members", {"worker_id": "carol"}),
        ("PATCH", "/api/projects/secret/members/bob", {"role": "owner"}),
        ("DELETE", "/api/projects/secret/members/bob", None),
        ("DELETE", "/api/projects/secret/members/carol", None),
    ]

    for method, path, body in calls:
        response = client.request(method, path, json=body, headers=auth("carol"))
        assert response.status_code == 404, f"{method} {path}: {response.text}"
        assert response.json()["error"] == "Project 'secret' not found", f"{method} {path}"

    assert audit_count(db) == rows_before


def test_reopening_a_task_whose_assignee_has_left_the_project_is_refused(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Done by bob", project_slug="demo", assigned_to="bob")
    assert client.post(f"/api/tasks/{task['id']}/start", headers=auth("bob")).status_code == 200
    assert client.post(f"/api/tasks/{task['id']}/complete", headers=auth("bob")).status_code == 200
    assert client.delete("/api/projects/demo/members/bob", headers=auth("alice")).status_code == 204

    reopened = client.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"}, headers=auth("alice"))

    # An open task assigned to someone who cannot even see it breaks "an assignee must be a member".
    assert reopened.status_code == 400, reopened.text
    stored = stored_fields(db, task["id"])
    assert stored is not None
    assert stored["status"] == "completed"


@pytest.mark.parametrize("project", [None, "secret"])
def test_a_deleted_tasks_history_never_passes_to_a_new_task_that_gets_its_id(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask, project: str | None
) -> None:
    if project:
        create_project(project, owner="alice")
    gone = create_task("Alice's confidential plan", project_slug=project)
    assert client.delete(f"/api/tasks/{gone['id']}", headers=auth("alice")).status_code == 204

    mine = create_task("Carol's", as_user="carol")
    history = client.get(f"/api/tasks/{mine['id']}/audit", headers=auth("carol"))
    audit = client.get("/api/audit?limit=100", headers=auth("carol"))

    assert history.status_code == 200, history.text
    assert [row["actor_id"] for row in history.json()] == ["carol"]
    assert {row["actor_id"] for row in audit.json()} == {"carol"}
    assert "confidential" not in history.text + audit.text
