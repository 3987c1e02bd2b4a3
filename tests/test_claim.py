"""Claiming work: POST /api/tasks/claim picks the best ready task and starts it, and the `ready` list filter.

Project "demo" is owned by alice; bob and carol are plain members. Project "secret" belongs to dave
alone. Unless a test says otherwise, bob claims.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, col
from support import ON_POSTGRESQL, CreateProject, CreateTask, audit_rows, parse_time, task_row

from config import Settings
from main import create_app
from models import Task, TaskPriority

postgresql_only = pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="SQLite serializes writers, so it cannot race claims; the guarantee is proven on PostgreSQL in CI",
)
NOW = datetime.now(UTC)
# A kept-alive connection to uvicorn waits out TCP's delayed ACK (~40 ms) on every request.
FRESH_CONNECTION = {"Connection": "close"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A pool big enough for the concurrency tests' callers, each holding a connection at once."""
    return settings.model_copy(update={"db_pool_size": 20, "db_max_overflow": 10})


@pytest.fixture
def demo(create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob", "carol"])


def claim(client: TestClient, headers: dict[str, str], body: dict[str, Any] | None = None) -> httpx2.Response:
    return client.post("/api/tasks/claim", json=body, headers=headers)


def new_task(create_task: CreateTask, title: str, *, as_user: str = "alice", **fields: Any) -> int:
    fields.setdefault("project_slug", "demo")
    task_id: int = create_task(title, as_user=as_user, **fields)["id"]
    return task_id


def set_created_at(db: Engine, task_id: int, created_at: datetime) -> None:
    with Session(db) as session:
        session.exec(update(Task).where(col(Task.id) == task_id).values(created_at=created_at))
        session.commit()


def expire_lease(db: Engine, task_id: int) -> None:
    with Session(db) as session:
        session.exec(
            update(Task)
            .where(col(Task.id) == task_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        session.commit()


def claim_all(client: TestClient, headers: dict[str, str], body: dict[str, Any] | None = None) -> list[int]:
    """Claim until nothing is ready; the ids in the order they were handed out."""
    claimed: list[int] = []
    for _ in range(100):
        response = claim(client, headers, body)
        if response.status_code == 204:
            return claimed
        assert response.status_code == 200, response.text
        claimed.append(response.json()["id"])
    raise AssertionError("claim never answered 204")


# ---------------------------------------------------------------- the order


@pytest.mark.usefixtures("demo")
def test_claim_takes_the_most_urgent_task_first(client: TestClient, auth: AuthHeaders, create_task: CreateTask) -> None:
    ids = {priority: new_task(create_task, priority.value, priority=priority.value) for priority in TaskPriority}

    assert claim_all(client, auth("bob")) == [
        ids[TaskPriority.critical],
        ids[TaskPriority.high],
        ids[TaskPriority.medium],
        ids[TaskPriority.low],
    ]


@pytest.mark.usefixtures("demo")
def test_claim_among_equally_urgent_tasks_takes_the_soonest_due_date_and_undated_ones_last(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    undated = new_task(create_task, "Undated")
    later = new_task(create_task, "Later", due_date=(NOW + timedelta(days=5)).isoformat())
    overdue = new_task(create_task, "Overdue", due_date=(NOW - timedelta(days=1)).isoformat())
    soon = new_task(create_task, "Soon", due_date=(NOW + timedelta(days=1)).isoformat())

    assert claim_all(client, auth("bob")) == [overdue, soon, later, undated]


@pytest.mark.usefixtures("demo")
def test_claim_among_equally_urgent_and_due_tasks_takes_the_oldest_first(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    newest = new_task(create_task, "Created first, but dated newest")
    oldest = new_task(create_task, "Created second, but dated oldest")
    middle = new_task(create_task, "Created third, dated in between")
    set_created_at(db, newest, NOW - timedelta(minutes=1))
    set_created_at(db, oldest, NOW - timedelta(hours=3))
    set_created_at(db, middle, NOW - timedelta(hours=2))

    assert claim_all(client, auth("bob")) == [oldest, middle, newest]


@pytest.mark.usefixtures("demo")
def test_claim_among_tasks_alike_in_everything_takes_the_lowest_id(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    tasks = [new_task(create_task, f"Twin {n}") for n in range(3)]
    for task_id in tasks:
        set_created_at(db, task_id, NOW - timedelta(hours=1))

    assert claim_all(client, auth("bob")) == tasks


@pytest.mark.usefixtures("demo")
def test_claim_orders_by_priority_then_due_date_then_age_then_id(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    day = timedelta(days=1)
    # (title, priority, due in days or None, created minutes ago), created in an order unlike the expected one.
    spec = [
        ("low, old", "low", None, 500),
        ("medium, twin b", "medium", 3, 30),
        ("medium, twin a", "medium", 3, 30),
        ("high, undated, new", "high", None, 1),
        ("critical, undated", "critical", None, 10),
        ("medium, due soon", "medium", 1, 0),
        ("high, undated, old", "high", None, 50),
        ("critical, due later", "critical", 2, 5),
        ("critical, due soon", "critical", 1, 1),
    ]
    ids = {}
    for title, priority, due_in, minutes_ago in spec:
        due = None if due_in is None else (NOW + due_in * day).isoformat()
        ids[title] = new_task(create_task, title, priority=priority, due_date=due)
        set_created_at(db, ids[title], NOW - timedelta(minutes=minutes_ago))
    twins = sorted([ids["medium, twin a"], ids["medium, twin b"]])

    claimed = claim_all(client, auth("bob"))

    assert claimed == [
        ids["critical, due soon"],
        ids["critical, due later"],
        ids["critical, undated"],
        ids["high, undated, old"],
        ids["high, undated, new"],
        ids["medium, due soon"],
        *twins,
        ids["low, old"],
    ]


# ---------------------------------------------------------------- what the claim does


@pytest.mark.usefixtures("demo")
def test_claim_starts_the_task_for_the_caller_and_answers_it_with_its_etag(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = new_task(create_task, "Ship it")

    response = claim(client, auth("bob"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"], body["assigned_to"]) == (task_id, "in_progress", "bob")
    assert body["lease_expires_at"] is None
    assert body["version"] == 2
    assert response.headers["ETag"] == '"2"'
    task = task_row(db, task_id)
    assert (task.status, task.assigned_to, task.lease_expires_at, task.version) == ("in_progress", "bob", None, 2)
    assert client.get(f"/api/tasks/{task_id}", headers=auth("bob")).json() == body


@pytest.mark.usefixtures("demo")
def test_claim_writes_one_task_claimed_audit_row(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = new_task(create_task, "Ship it")
    rows_before = len(audit_rows(db, task_id=task_id))

    response = claim(client, auth("bob"))

    assert response.status_code == 200, response.text
    rows = audit_rows(db, task_id=task_id)[rows_before:]
    assert [row.action for row in rows] == ["task.claimed"]
    row = rows[0]
    assert (row.actor_id, row.actor_type, row.project_slug) == ("bob", "human", "demo")
    assert row.context["status"] == ["pending", "in_progress"]
    assert row.context["assigned_to"] == [None, "bob"]


@pytest.mark.usefixtures("demo")
def test_claim_with_nothing_ready_returns_204_with_an_empty_body_and_changes_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    rows_before = len(audit_rows(db))

    response = claim(client, auth("bob"))

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert "ETag" not in response.headers
    assert len(audit_rows(db)) == rows_before


@pytest.mark.usefixtures("demo")
def test_claim_with_lease_seconds_sets_when_the_lease_runs_out(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = new_task(create_task, "Ship it")
    before = datetime.now(UTC)

    response = claim(client, auth("bob"), {"lease_seconds": 300})

    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    lease_end = parse_time(response.json()["lease_expires_at"])
    assert before + timedelta(seconds=300) <= lease_end <= after + timedelta(seconds=300)
    assert task_row(db, task_id).lease_expires_at == lease_end


def test_claim_without_lease_seconds_takes_the_lease_seconds_setting(
    settings: Settings, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    first = new_task(create_task, "First", priority="high")
    second = new_task(create_task, "Second")

    with TestClient(create_app(settings.model_copy(update={"lease_seconds": 60}))) as leased:
        before = datetime.now(UTC)
        by_default = claim(leased, auth("bob"))
        by_body = claim(leased, auth("bob"), {"lease_seconds": 600})
        after = datetime.now(UTC)

    assert by_default.status_code == 200, by_default.text
    assert by_default.json()["id"] == first
    default_end = parse_time(by_default.json()["lease_expires_at"])
    assert before + timedelta(seconds=60) <= default_end <= after + timedelta(seconds=60)
    assert by_body.status_code == 200, by_body.text
    assert by_body.json()["id"] == second
    body_end = parse_time(by_body.json()["lease_expires_at"])
    assert before + timedelta(seconds=600) <= body_end <= after + timedelta(seconds=600)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"lease_seconds": 0}, id="lease-zero"),
        pytest.param({"lease_seconds": -5}, id="lease-negative"),
        pytest.param({"lease_seconds": 7 * 24 * 3600 + 1}, id="lease-over-a-week"),
        pytest.param({"lease_seconds": "soon"}, id="lease-not-a-number"),
        pytest.param({"min_priority": "urgent"}, id="unknown-priority"),
        pytest.param({"project": "Not A Slug"}, id="bad-slug"),
        pytest.param({"status": "pending"}, id="unknown-field"),
        pytest.param({"priority": "high"}, id="priority-is-not-a-claim-field"),
    ],
)
@pytest.mark.usefixtures("demo")
def test_claim_with_a_malformed_body_returns_422_and_claims_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask, body: dict[str, Any]
) -> None:
    task_id = new_task(create_task, "Ship it")

    response = claim(client, auth("bob"), body)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert task_row(db, task_id).status == "pending"


@pytest.mark.usefixtures("demo")
def test_claim_accepts_no_body_an_empty_body_and_a_body_of_nulls(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    tasks = [new_task(create_task, f"Task {n}") for n in range(3)]

    without = client.post("/api/tasks/claim", headers=auth("bob"))
    empty = claim(client, auth("bob"), {})
    nulls = claim(client, auth("bob"), {"project": None, "min_priority": None, "lease_seconds": None})

    assert [r.status_code for r in (without, empty, nulls)] == [200, 200, 200]
    assert [r.json()["id"] for r in (without, empty, nulls)] == tasks


def test_claim_without_a_token_returns_401(client: TestClient) -> None:
    response = client.post("/api/tasks/claim")

    assert response.status_code == 401, response.text


# ---------------------------------------------------------------- filters


@pytest.mark.usefixtures("demo")
def test_claim_with_a_project_takes_only_that_projects_tasks(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("other", owner="alice", members=["bob"])
    urgent_elsewhere = new_task(create_task, "Urgent elsewhere", project_slug="other", priority="critical")
    here = new_task(create_task, "Here", priority="low")

    response = claim(client, auth("bob"), {"project": "demo"})
    nothing_left = claim(client, auth("bob"), {"project": "demo"})

    assert response.status_code == 200, response.text
    assert response.json()["id"] == here
    assert nothing_left.status_code == 204, nothing_left.text
    assert claim(client, auth("bob")).json()["id"] == urgent_elsewhere


@pytest.mark.parametrize("project", ["secret", "no-such-project"])
@pytest.mark.usefixtures("demo")
def test_claim_with_a_project_the_caller_cannot_see_returns_404(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask, project: str
) -> None:
    create_project("secret", owner="dave")
    hidden = new_task(create_task, "Dave's", as_user="dave", project_slug="secret")

    response = claim(client, auth("bob"), {"project": project})

    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"
    assert client.get(f"/api/tasks/{hidden}", headers=auth("dave")).json()["status"] == "pending"


@pytest.mark.usefixtures("demo")
def test_claim_with_min_priority_skips_less_urgent_tasks(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    ids = {priority: new_task(create_task, priority.value, priority=priority.value) for priority in TaskPriority}

    claimed = claim_all(client, auth("bob"), {"min_priority": "high"})

    assert claimed == [ids[TaskPriority.critical], ids[TaskPriority.high]]
    assert claim_all(client, auth("bob"), {"min_priority": "low"}) == [ids[TaskPriority.medium], ids[TaskPriority.low]]


# ---------------------------------------------------------------- what is never claimed


@pytest.mark.usefixtures("demo")
def test_claim_never_takes_a_task_of_a_project_the_caller_is_not_a_member_of(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("secret", owner="dave")
    hidden = new_task(create_task, "Dave's", as_user="dave", project_slug="secret", priority="critical")

    response = claim(client, auth("bob"))

    assert response.status_code == 204, response.text
    assert task_row(db, hidden).status == "pending"


@pytest.mark.usefixtures("demo")
def test_claim_never_takes_another_users_projectless_task_but_takes_ones_own(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    alices = create_task("Alice's own", as_user="alice", priority="critical")["id"]
    bobs = create_task("Bob's own", as_user="bob", priority="low")["id"]

    assert claim_all(client, auth("bob")) == [bobs]
    assert task_row(db, alices).status == "pending"


@pytest.mark.usefixtures("demo")
def test_claim_never_takes_a_task_assigned_to_someone_else(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    carols = new_task(create_task, "Carol's", assigned_to="carol", priority="critical")

    response = claim(client, auth("bob"))

    assert response.status_code == 204, response.text
    task = task_row(db, carols)
    assert (task.status, task.assigned_to) == ("pending", "carol")


@pytest.mark.usefixtures("demo")
def test_claim_takes_a_pending_task_already_assigned_to_the_caller(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    bobs = new_task(create_task, "Bob's", assigned_to="bob")

    response = claim(client, auth("bob"))

    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["assigned_to"]) == (bobs, "bob")


@pytest.mark.usefixtures("demo")
def test_claim_never_takes_a_task_that_is_not_pending(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    started = new_task(create_task, "Started")
    in_review = new_task(create_task, "In review")
    done = new_task(create_task, "Done")
    blocked = new_task(create_task, "Blocked")
    for task_id in (started, in_review, done):
        assert client.post(f"/api/tasks/{task_id}/start", headers=auth("carol")).status_code == 200
    assert client.post(f"/api/tasks/{in_review}/review", headers=auth("carol")).status_code == 200
    assert client.post(f"/api/tasks/{done}/complete", headers=auth("carol")).status_code == 200
    assert client.post(f"/api/tasks/{blocked}/block?reason=waiting", headers=auth("carol")).status_code == 200

    response = claim(client, auth("bob"))

    assert response.status_code == 204, response.text
    statuses = [task_row(db, task_id).status for task_id in (started, in_review, done, blocked)]
    assert statuses == ["in_progress", "review", "completed", "blocked"]


@pytest.mark.usefixtures("demo")
def test_claim_never_takes_a_task_with_an_unfinished_dependency_until_it_completes(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    first = new_task(create_task, "First", assigned_to="carol")
    waiting = new_task(create_task, "Waits for the first", priority="critical")
    added = client.post(f"/api/tasks/{waiting}/dependencies", json={"depends_on": first}, headers=auth("alice"))
    assert added.status_code == 201, added.text

    before = claim(client, auth("bob"))
    assert client.post(f"/api/tasks/{first}/start", headers=auth("carol")).status_code == 200
    while_in_progress = claim(client, auth("bob"))
    assert client.post(f"/api/tasks/{first}/complete", headers=auth("carol")).status_code == 200
    after = claim(client, auth("bob"))

    assert before.status_code == 204, before.text
    assert while_in_progress.status_code == 204, while_in_progress.text
    assert after.status_code == 200, after.text
    assert after.json()["id"] == waiting


@pytest.mark.usefixtures("demo")
def test_claim_takes_a_task_whose_lease_ran_out(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = new_task(create_task, "Abandoned")
    assert claim(client, auth("carol"), {"lease_seconds": 60}).status_code == 200
    expire_lease(db, task_id)

    response = claim(client, auth("bob"))

    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["assigned_to"]) == (task_id, "bob")
    assert [row.action for row in audit_rows(db, task_id=task_id)][-2:] == ["lease_expired", "task.claimed"]


# ---------------------------------------------------------------- the ready filter


def list_ids(client: TestClient, headers: dict[str, str], query: str) -> tuple[list[int], int]:
    response = client.get(f"/api/tasks?{query}&limit=100", headers=headers)
    assert response.status_code == 200, response.text
    return [task["id"] for task in response.json()], int(response.headers["X-Total-Count"])


@pytest.mark.usefixtures("demo")
def test_ready_true_lists_exactly_what_the_caller_could_claim_and_ready_false_the_rest(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("secret", owner="dave")
    ready = {
        new_task(create_task, "Unassigned"),
        new_task(create_task, "Assigned to bob", assigned_to="bob"),
        create_task("Bob's project-less", as_user="bob")["id"],
    }
    carols = new_task(create_task, "Assigned to carol", assigned_to="carol")
    started = new_task(create_task, "Started by carol")
    blocked = new_task(create_task, "Blocked")
    completed = new_task(create_task, "Completed")
    not_ready = {carols, started, blocked, completed}
    assert client.post(f"/api/tasks/{started}/start", headers=auth("carol")).status_code == 200
    assert client.post(f"/api/tasks/{blocked}/block?reason=waiting", headers=auth("carol")).status_code == 200
    assert client.post(f"/api/tasks/{completed}/start", headers=auth("carol")).status_code == 200
    assert client.post(f"/api/tasks/{completed}/complete", headers=auth("carol")).status_code == 200
    waiting = new_task(create_task, "Waits for an unfinished task")
    after_done = new_task(create_task, "Waits for a completed task")
    for task_id, depends_on in ((waiting, started), (after_done, completed)):
        added = client.post(f"/api/tasks/{task_id}/dependencies", json={"depends_on": depends_on}, headers=auth("bob"))
        assert added.status_code == 201, added.text
    not_ready.add(waiting)
    ready.add(after_done)
    expired = new_task(create_task, "Carol's lease ran out")
    assert client.post(f"/api/tasks/{expired}/start?lease_seconds=60", headers=auth("carol")).status_code == 200
    expire_lease(db, expired)
    ready.add(expired)
    new_task(create_task, "Dave's", as_user="dave", project_slug="secret")
    create_task("Alice's project-less", as_user="alice")

    ready_ids, ready_total = list_ids(client, auth("bob"), "ready=true")
    rest_ids, rest_total = list_ids(client, auth("bob"), "ready=false")

    assert set(ready_ids) == ready
    assert ready_total == len(ready)
    assert set(rest_ids) == not_ready
    assert rest_total == len(not_ready)
    assert set(claim_all(client, auth("bob"))) == ready


@pytest.mark.usefixtures("demo")
def test_ready_is_for_the_caller_a_task_assigned_to_bob_is_ready_for_bob_only(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    bobs = new_task(create_task, "Assigned to bob", assigned_to="bob")

    assert list_ids(client, auth("bob"), "ready=true") == ([bobs], 1)
    assert list_ids(client, auth("carol"), "ready=true") == ([], 0)
    assert list_ids(client, auth("carol"), "ready=false") == ([bobs], 1)


def test_ready_with_a_malformed_value_returns_422(client: TestClient, auth: AuthHeaders) -> None:
    response = client.get("/api/tasks?ready=perhaps", headers=auth("bob"))

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


# ---------------------------------------------------------------- concurrency


def members(create_project: CreateProject, count: int) -> list[str]:
    users = [f"worker{n:02d}" for n in range(count)]
    create_project("demo", owner="alice", members=users)
    return users


def insert_tasks(db: Engine, count: int) -> set[int]:
    priorities = list(TaskPriority)
    with Session(db) as session:
        tasks = [
            Task(title=f"Task {n}", project_slug="demo", created_by="alice", priority=priorities[n % len(priorities)])
            for n in range(count)
        ]
        session.add_all(tasks)
        session.commit()
        return {task.id for task in tasks if task.id is not None}


def race_claims(url: str, headers: list[dict[str, str]]) -> list[tuple[int, dict[str, Any]]]:
    """Every caller claims until nothing is ready, all at once; (caller index, task) per claim."""
    barrier = threading.Barrier(len(headers))

    def claimer(index: int) -> list[tuple[int, dict[str, Any]]]:
        claimed: list[tuple[int, dict[str, Any]]] = []
        with httpx.Client(base_url=url, headers={**headers[index], **FRESH_CONNECTION}, timeout=60) as http:
            barrier.wait(timeout=30)
            while True:
                response = http.post("/api/tasks/claim")
                if response.status_code == 204:
                    return claimed
                assert response.status_code == 200, response.text
                claimed.append((index, response.json()))

    with ThreadPoolExecutor(max_workers=len(headers)) as pool:
        futures = [pool.submit(claimer, index) for index in range(len(headers))]
        return [claimed for future in futures for claimed in future.result()]


def assert_each_task_claimed_exactly_once(
    db: Engine, claims: list[tuple[int, dict[str, Any]]], users: list[str], task_ids: set[int]
) -> None:
    handed_out = [task["id"] for _, task in claims]
    assert len(handed_out) == len(set(handed_out)), "a task was handed to two callers"
    assert set(handed_out) == task_ids
    for index, task in claims:
        assert (task["status"], task["assigned_to"]) == ("in_progress", users[index])
    with Session(db) as session:
        for index, task in claims:
            row = session.get(Task, task["id"])
            assert row is not None
            assert (row.status, row.assigned_to, row.version) == ("in_progress", users[index], 2)
    rows = audit_rows(db, action="task.claimed")
    assert len(rows) == len(task_ids)
    assert {row.task_id for row in rows} == task_ids
    assert {(row.task_id, row.actor_id) for row in rows} == {(task["id"], users[index]) for index, task in claims}


@postgresql_only
def test_sixteen_concurrent_claimers_never_share_a_task_and_hand_out_every_task_once(
    live_server: Any, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    users = members(create_project, 16)
    task_ids = insert_tasks(db, 200)

    claims = race_claims(live_server.url, [auth(user) for user in users])

    assert_each_task_claimed_exactly_once(db, claims, users, task_ids)
    assert len({index for index, _ in claims}) > 1, "only one caller ever got a task: nothing raced"


def test_a_few_concurrent_claimers_never_share_a_task_on_either_database(
    live_server: Any, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    users = members(create_project, 4)
    task_ids = insert_tasks(db, 20)

    claims = race_claims(live_server.url, [auth(user) for user in users])

    assert_each_task_claimed_exactly_once(db, claims, users, task_ids)


def test_start_raced_by_eight_callers_succeeds_for_exactly_one(
    live_server: Any, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    users = members(create_project, 8)
    (task_id,) = insert_tasks(db, 1)
    headers = [auth(user) for user in users]
    barrier = threading.Barrier(len(users))

    def start(index: int) -> httpx.Response:
        with httpx.Client(base_url=live_server.url, headers={**headers[index], **FRESH_CONNECTION}, timeout=60) as http:
            barrier.wait(timeout=30)
            return http.post(f"/api/tasks/{task_id}/start")

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        responses = list(pool.map(start, range(len(users))))

    winners = [index for index, response in enumerate(responses) if response.status_code == 200]
    assert len(winners) == 1, [response.text for response in responses]
    losers = [response for response in responses if response.status_code != 200]
    for response in losers:
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_transition"
    task = task_row(db, task_id)
    assert (task.status, task.assigned_to, task.version) == ("in_progress", users[winners[0]], 2)
    rows = audit_rows(db, action="task.started", task_id=task_id)
    assert [row.actor_id for row in rows] == [users[winners[0]]]


def test_concurrent_claimers_hand_each_expired_task_back_once_and_claim_it_once(
    live_server: Any, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    users = members(create_project, 8)
    task_ids = insert_tasks(db, 40)
    with Session(db) as session:
        session.exec(
            update(Task).values(
                status="in_progress", assigned_to="alice", lease_seconds=60, lease_expires_at=NOW - timedelta(minutes=1)
            )
        )
        session.commit()

    claims = race_claims(live_server.url, [auth(user) for user in users])

    handed_out = [task["id"] for _, task in claims]
    assert sorted(handed_out) == sorted(task_ids)
    expired = audit_rows(db, action="lease_expired")
    assert Counter(row.task_id for row in expired) == Counter(task_ids)
    assert {(row.actor_id, row.actor_type) for row in expired} == {("system", "system")}
    assert len(audit_rows(db, action="task.claimed")) == len(task_ids)
