"""The audit log: one row per mutation, the filters that read it, and that nothing rewrites it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select
from support import CreateProject, CreateTask, audit_count, audit_rows

from models import AuditLog, Task, WorkerType

Audited = Callable[..., tuple[httpx2.Response, AuditLog]]


# ---------------------------------------------------------------- helpers


def newest_audit_row(db: Engine) -> AuditLog:
    with Session(db) as session:
        row = session.exec(select(AuditLog).order_by(col(AuditLog.id).desc()).limit(1)).first()
    assert row is not None
    return row


@pytest.fixture
def register(client: TestClient, auth: AuthHeaders) -> Callable[..., None]:
    """`register("alice", "bob")`: make sure these humans have worker rows (their first request does it)."""

    def run(*users: str) -> None:
        for user in users:
            response = client.get("/api/workers", headers=auth(user))
            assert response.status_code == 200, response.text

    return run


@pytest.fixture
def audited(client: TestClient, auth: AuthHeaders, db: Engine) -> Audited:
    """Send one mutation with a known X-Request-ID; assert it succeeded and wrote exactly one audit row."""

    def call(method: str, url: str, *, as_user: str = "alice", role: str | None = None, **kwargs: Any) -> Any:
        request_id = f"audit-{uuid.uuid4().hex[:16]}"
        before = audit_count(db)
        headers = {**auth(as_user, role=role), "X-Request-ID": request_id}
        response = client.request(method, url, headers=headers, **kwargs)
        assert 200 <= response.status_code < 300, response.text
        assert audit_count(db) == before + 1, f"{method} {url} should write exactly one audit row"
        row = newest_audit_row(db)
        assert row.request_id == request_id
        return response, row

    return call


@pytest.fixture
def admin(auth: AuthHeaders) -> dict[str, str]:
    return auth("root", role="admin")


@pytest.fixture
def insert_audit_rows(db: Engine) -> Callable[..., list[int]]:
    """Write audit rows straight into the table (timestamps under the test's control); returns their ids."""

    def insert(*rows: dict[str, Any]) -> list[int]:
        with Session(db) as session:
            objects = [
                AuditLog(actor_id="alice", actor_type=WorkerType.human, action="task.updated", **row) for row in rows
            ]
            session.add_all(objects)
            session.commit()
            return [row.id for row in objects if row.id is not None]

    return insert


def at(hour: int) -> datetime:
    return datetime(2026, 1, 1, hour, 0, tzinfo=UTC)


# ---------------------------------------------------------------- one row per mutation


def test_first_request_of_a_human_writes_one_worker_registered_row(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    response = client.get("/api/tasks", headers={**auth("alice"), "X-Request-ID": "first-visit"})
    assert response.status_code == 200, response.text

    rows = audit_rows(db)
    assert len(rows) == 1
    row = rows[0]
    assert (row.actor_id, row.actor_type, row.action) == ("alice", WorkerType.human, "worker.registered")
    assert (row.task_id, row.project_slug) == (None, None)
    assert row.context == {"type": [None, "human"], "name": [None, "Alice"]}
    assert row.request_id == "first-visit"


def test_creating_a_task_writes_one_row_with_actor_task_and_fields(
    audited: Audited, register: Callable[..., None]
) -> None:
    register("alice")
    response, row = audited("POST", "/api/tasks", json={"title": "Write docs", "priority": "high"})
    assert response.status_code == 201, response.text

    assert row.actor_id == "alice"
    assert row.actor_type == WorkerType.human
    assert row.action == "task.created"
    assert row.task_id == response.json()["id"]
    assert row.project_slug is None
    assert row.context == {"title": [None, "Write docs"], "priority": [None, "high"]}


def test_creating_a_task_in_a_project_records_its_project_slug(audited: Audited, create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob"])
    response, row = audited(
        "POST", "/api/tasks", as_user="bob", json={"title": "In demo", "project_slug": "demo", "assigned_to": "alice"}
    )

    assert (row.actor_id, row.action, row.task_id) == ("bob", "task.created", response.json()["id"])
    assert row.project_slug == "demo"
    assert row.context == {
        "title": [None, "In demo"],
        "priority": [None, "medium"],
        "assigned_to": [None, "alice"],
        "project_slug": [None, "demo"],
    }


def test_patching_a_task_records_only_the_changed_fields_as_old_and_new(
    audited: Audited, create_task: CreateTask
) -> None:
    task = create_task("Old title", priority="low")
    _, row = audited(
        "PATCH", f"/api/tasks/{task['id']}", json={"title": "New title", "priority": "low", "description": "why"}
    )

    assert (row.actor_id, row.action, row.task_id, row.project_slug) == ("alice", "task.updated", task["id"], None)
    assert row.context == {"title": ["Old title", "New title"], "description": [None, "why"]}


def test_clearing_a_field_records_the_old_value_and_null(audited: Audited, create_task: CreateTask) -> None:
    task = create_task("Has a description", description="text")
    _, row = audited("PATCH", f"/api/tasks/{task['id']}", json={"description": None})

    assert row.context == {"description": ["text", None]}


def test_a_patch_that_changes_nothing_writes_no_audit_row(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Same", priority="high")
    before = audit_count(db)

    response = client.patch(
        f"/api/tasks/{task['id']}", json={"title": "Same", "priority": "high"}, headers=auth("alice")
    )

    assert response.status_code == 200, response.text
    assert audit_count(db) == before


def test_every_workflow_action_writes_one_row_with_its_status_change(audited: Audited, create_task: CreateTask) -> None:
    task = create_task("Walk the workflow")
    url = f"/api/tasks/{task['id']}"

    _, row = audited("POST", f"{url}/start")
    assert row.action == "task.started"
    assert row.context == {"status": ["pending", "in_progress"], "assigned_to": [None, "alice"]}

    _, row = audited("POST", f"{url}/progress", params={"percent": 40, "note": "halfway there"})
    assert row.action == "task.progress"
    assert row.context == {"progress_percent": [0, 40], "note": "halfway there"}

    _, row = audited("POST", f"{url}/block", params={"reason": "waiting for review access"})
    assert row.action == "task.blocked"
    assert row.context == {"status": ["in_progress", "blocked"], "reason": "waiting for review access"}

    _, row = audited("POST", f"{url}/unblock")
    assert row.action == "task.unblocked"
    assert row.context == {"status": ["blocked", "in_progress"]}

    _, row = audited("POST", f"{url}/review")
    assert row.action == "task.review"
    assert row.context == {"status": ["in_progress", "review"]}

    _, row = audited("PATCH", url, json={"status": "in_progress"})
    assert row.action == "task.updated"
    assert row.context == {"status": ["review", "in_progress"]}

    _, row = audited("POST", f"{url}/complete")
    assert row.action == "task.completed"
    assert row.context == {"status": ["in_progress", "completed"], "progress_percent": [40, 100]}

    _, row = audited("PATCH", url, json={"status": "in_progress"})
    assert row.action == "task.updated"
    assert row.context == {"status": ["completed", "in_progress"]}


def test_workflow_rows_carry_the_task_and_its_project(
    audited: Audited, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Project work", as_user="alice", project_slug="demo")

    _, row = audited("POST", f"/api/tasks/{task['id']}/start", as_user="bob")

    assert (row.actor_id, row.action, row.task_id, row.project_slug) == ("bob", "task.started", task["id"], "demo")


def test_deleting_a_task_writes_one_row_with_what_was_removed(audited: Audited, create_task: CreateTask) -> None:
    task = create_task("Short-lived")
    response, row = audited("DELETE", f"/api/tasks/{task['id']}")

    assert response.status_code == 204
    assert (row.actor_id, row.action, row.task_id, row.project_slug) == ("alice", "task.deleted", task["id"], None)
    assert row.context == {"title": ["Short-lived", None], "status": ["pending", None]}


def test_project_create_update_and_delete_each_write_one_row(audited: Audited, register: Callable[..., None]) -> None:
    register("alice")

    response, row = audited("POST", "/api/projects", json={"slug": "apollo", "name": "Apollo"})
    assert response.status_code == 201, response.text
    assert (row.actor_id, row.action, row.task_id, row.project_slug) == ("alice", "project.created", None, "apollo")
    assert row.context == {"slug": [None, "apollo"], "name": [None, "Apollo"]}

    _, row = audited("PATCH", "/api/projects/apollo", json={"name": "Apollo 11", "description": "to the moon"})
    assert (row.action, row.project_slug) == ("project.updated", "apollo")
    assert row.context == {"name": ["Apollo", "Apollo 11"], "description": [None, "to the moon"]}

    response, row = audited("DELETE", "/api/projects/apollo")
    assert response.status_code == 204
    assert (row.action, row.task_id, row.project_slug) == ("project.deleted", None, "apollo")
    assert row.context == {"name": ["Apollo 11", None]}


def test_member_add_update_and_remove_each_write_one_row(
    audited: Audited, create_project: CreateProject, register: Callable[..., None]
) -> None:
    create_project("demo", owner="alice")
    register("bob")

    response, row = audited("POST", "/api/projects/demo/members", json={"worker_id": "bob"})
    assert response.status_code == 201, response.text
    assert (row.actor_id, row.action, row.task_id, row.project_slug) == ("alice", "member.added", None, "demo")
    assert row.context == {"worker_id": [None, "bob"], "role": [None, "member"]}

    _, row = audited("PATCH", "/api/projects/demo/members/bob", json={"role": "owner"})
    assert (row.action, row.project_slug) == ("member.updated", "demo")
    assert row.context == {"worker_id": "bob", "role": ["member", "owner"]}

    response, row = audited("DELETE", "/api/projects/demo/members/bob")
    assert response.status_code == 204
    assert (row.action, row.project_slug) == ("member.removed", "demo")
    assert row.context == {"worker_id": ["bob", None], "role": ["owner", None]}


def test_leaving_a_project_is_audited_as_the_member_who_left(audited: Audited, create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob"])

    _, row = audited("DELETE", "/api/projects/demo/members/bob", as_user="bob")

    assert (row.actor_id, row.action, row.project_slug) == ("bob", "member.removed", "demo")


def test_worker_register_and_update_each_write_one_row(
    audited: Audited, register: Callable[..., None], client: TestClient, admin: dict[str, str]
) -> None:
    register("alice")
    client.get("/api/workers", headers=admin)

    response, row = audited(
        "POST",
        "/api/workers",
        as_user="root",
        role="admin",
        json={"id": "@claude-code", "type": "agent", "name": "Claude Code"},
    )
    assert response.status_code == 201, response.text
    assert (row.actor_id, row.actor_type, row.action) == ("root", WorkerType.human, "worker.registered")
    assert (row.task_id, row.project_slug) == (None, None)
    assert row.context == {"id": [None, "@claude-code"], "type": [None, "agent"], "name": [None, "Claude Code"]}

    _, row = audited("PATCH", "/api/workers/alice", json={"name": "Alice Liddell"})
    assert (row.actor_id, row.action) == ("alice", "worker.updated")
    assert row.context == {"worker_id": "alice", "name": ["Alice", "Alice Liddell"]}


def test_an_admin_registered_agent_is_audited_as_an_agent(
    client: TestClient, auth: AuthHeaders, admin: dict[str, str], audited: Audited, db: Engine
) -> None:
    registered = client.post(
        "/api/workers", json={"id": "@claude-code", "type": "agent", "name": "Claude"}, headers=admin
    )
    assert registered.status_code == 201, registered.text

    response, row = audited("POST", "/api/tasks", as_user="@claude-code", json={"title": "Agent work"})

    assert (row.actor_id, row.actor_type, row.action) == ("@claude-code", WorkerType.agent, "task.created")
    assert row.task_id == response.json()["id"]
    # The agent's own first request found its row: no worker.registered row in its name.
    assert audit_rows(db, actor_id="@claude-code", action="worker.registered") == []
    listed = client.get("/api/audit", params={"task_id": row.task_id}, headers=auth("@claude-code"))
    assert listed.status_code == 200, listed.text
    assert [(r["actor_id"], r["actor_type"]) for r in listed.json()] == [("@claude-code", "agent")]


def test_the_actor_type_follows_the_worker_registry(
    client: TestClient, admin: dict[str, str], audited: Audited, register: Callable[..., None]
) -> None:
    register("carol")
    _, row = audited("POST", "/api/tasks", as_user="carol", json={"title": "As a human"})
    assert row.actor_type == WorkerType.human

    retyped = client.patch("/api/workers/carol", json={"type": "agent"}, headers=admin)
    assert retyped.status_code == 200, retyped.text
    _, row = audited("POST", "/api/tasks", as_user="carol", json={"title": "As an agent"})

    assert (row.actor_id, row.actor_type) == ("carol", WorkerType.agent)


def test_without_an_incoming_request_id_the_row_has_the_generated_one(
    client: TestClient, auth: AuthHeaders, db: Engine, register: Callable[..., None]
) -> None:
    register("alice")
    response = client.post("/api/tasks", json={"title": "Traced"}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    generated = response.headers["X-Request-ID"]
    assert len(generated) == 32
    assert newest_audit_row(db).request_id == generated


def test_refused_and_failed_requests_write_no_audit_row(
    client: TestClient,
    auth: AuthHeaders,
    db: Engine,
    create_project: CreateProject,
    create_task: CreateTask,
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Guarded", as_user="alice", project_slug="demo")
    client.get("/api/tasks", headers=auth("mallory"))
    before = audit_count(db)

    refused = [
        client.post(f"/api/tasks/{task['id']}/review", headers=auth("alice")),  # 400 invalid transition
        client.delete(f"/api/tasks/{task['id']}", headers=auth("bob")),  # 403 not the creator
        client.patch(f"/api/tasks/{task['id']}", json={"title": "x"}, headers=auth("mallory")),  # 404 invisible
        client.post("/api/tasks", json={"title": ""}, headers=auth("alice")),  # 422
        client.post("/api/projects", json={"slug": "demo", "name": "Again"}, headers=auth("bob")),  # 409
        client.post("/api/tasks", json={"title": "No token"}),  # 401
    ]

    assert [r.status_code for r in refused] == [400, 403, 404, 422, 409, 401]
    assert audit_count(db) == before


def test_reading_writes_no_audit_rows(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Read me")
    before = audit_count(db)

    for url in ["/api/tasks", f"/api/tasks/{task['id']}", f"/api/tasks/{task['id']}/audit", "/api/audit"]:
        assert client.get(url, headers=auth("alice")).status_code == 200
    assert client.get("/api/projects", headers=auth("alice")).status_code == 200
    assert client.get("/api/workers/alice", headers=auth("alice")).status_code == 200

    assert audit_count(db) == before


# ---------------------------------------------------------------- reading: GET /api/audit


def test_audit_rows_come_back_newest_first_with_the_total_count(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("History")
    client.post(f"/api/tasks/{task['id']}/start", headers=auth("alice"))
    client.post(f"/api/tasks/{task['id']}/progress", params={"percent": 10}, headers=auth("alice"))

    response = client.get("/api/audit", headers=auth("alice"))

    assert response.status_code == 200, response.text
    actions = [row["action"] for row in response.json()]
    assert actions == ["task.progress", "task.started", "task.created", "worker.registered"]
    ids = [row["id"] for row in response.json()]
    assert ids == sorted(ids, reverse=True)
    assert response.headers["X-Total-Count"] == "4"


def test_an_audit_row_reads_back_with_every_field(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    created = client.post(
        "/api/tasks",
        json={"title": "Shape", "project_slug": "demo"},
        headers={**auth("alice"), "X-Request-ID": "shape-1"},
    )
    assert created.status_code == 201, created.text

    response = client.get("/api/audit", params={"action": "task.created"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    [row] = response.json()
    assert isinstance(row["id"], int)
    expected = {
        "task_id": created.json()["id"],
        "project_slug": "demo",
        "actor_id": "alice",
        "actor_type": "human",
        "action": "task.created",
        "context": {"title": [None, "Shape"], "priority": [None, "medium"], "project_slug": [None, "demo"]},
        "request_id": "shape-1",
    }
    assert {field: row.get(field) for field in expected} == expected
    timestamp = row["timestamp"]
    assert datetime.fromisoformat(timestamp).utcoffset() is not None


def test_audit_filters_by_task_project_actor_and_action(
    client: TestClient,
    auth: AuthHeaders,
    admin: dict[str, str],
    create_project: CreateProject,
    create_task: CreateTask,
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    create_project("other", owner="bob")
    first = create_task("First", as_user="alice", project_slug="demo")
    second = create_task("Second", as_user="bob", project_slug="demo")
    elsewhere = create_task("Elsewhere", as_user="bob", project_slug="other")
    client.post(f"/api/tasks/{first['id']}/start", headers=auth("bob"))

    def query(**params: Any) -> list[tuple[str, str, int | None, str | None]]:
        response = client.get("/api/audit", params=params, headers=admin)
        assert response.status_code == 200, response.text
        assert response.headers["X-Total-Count"] == str(len(response.json()))
        return [(r["action"], r["actor_id"], r["task_id"], r["project_slug"]) for r in response.json()]

    assert query(task_id=first["id"]) == [
        ("task.started", "bob", first["id"], "demo"),
        ("task.created", "alice", first["id"], "demo"),
    ]
    assert {row[3] for row in query(project="demo")} == {"demo"}
    assert len(query(project="demo")) == 5  # project.created, member.added, 2 × task.created, task.started
    assert query(project="other", action="task.created") == [("task.created", "bob", elsewhere["id"], "other")]
    assert query(actor_id="bob", project="demo") == [
        ("task.started", "bob", first["id"], "demo"),
        ("task.created", "bob", second["id"], "demo"),
    ]
    assert [row[0] for row in query(action="project.created")] == ["project.created", "project.created"]
    assert query(action="task.deleted") == []
    assert query(task_id=999) == []


def test_since_is_inclusive_and_until_is_exclusive(
    client: TestClient, admin: dict[str, str], insert_audit_rows: Callable[..., list[int]]
) -> None:
    ten, eleven, noon = insert_audit_rows(
        {"project_slug": "timeline", "timestamp": at(10)},
        {"project_slug": "timeline", "timestamp": at(11)},
        {"project_slug": "timeline", "timestamp": at(12)},
    )

    def ids(**params: str) -> list[int]:
        response = client.get("/api/audit", params={"project": "timeline", **params}, headers=admin)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()]

    assert ids(since="2026-01-01T11:00:00Z") == [noon, eleven]
    assert ids(until="2026-01-01T12:00:00Z") == [eleven, ten]
    assert ids(since="2026-01-01T11:00:00Z", until="2026-01-01T12:00:00Z") == [eleven]
    assert ids(since="2026-01-01T11:00:00.000001Z") == [noon]
    assert ids(since="2026-01-01T12:00:00Z", until="2026-01-01T12:00:00Z") == []


def test_naive_since_and_until_are_taken_as_utc(
    client: TestClient, admin: dict[str, str], insert_audit_rows: Callable[..., list[int]]
) -> None:
    ten, eleven, noon = insert_audit_rows(
        {"project_slug": "timeline", "timestamp": at(10)},
        {"project_slug": "timeline", "timestamp": at(11)},
        {"project_slug": "timeline", "timestamp": at(12)},
    )

    def ids(**params: str) -> list[int]:
        response = client.get("/api/audit", params={"project": "timeline", **params}, headers=admin)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()]

    assert ids(since="2026-01-01T11:00:00") == [noon, eleven]
    assert ids(until="2026-01-01T11:00:00") == [ten]
    # 12:00 at +01:00 is 11:00 UTC; 06:00 at -05:00 is 11:00 UTC.
    assert ids(since="2026-01-01T12:00:00+01:00") == [noon, eleven]
    assert ids(until="2026-01-01T06:00:00-05:00") == [ten]


def test_audit_limit_and_offset_page_through_newest_first(
    client: TestClient, admin: dict[str, str], insert_audit_rows: Callable[..., list[int]]
) -> None:
    ids = insert_audit_rows(*({"project_slug": "paged", "timestamp": at(hour)} for hour in range(1, 8)))
    newest_first = list(reversed(ids))

    pages = []
    for offset in (0, 3, 6):
        response = client.get("/api/audit", params={"project": "paged", "limit": 3, "offset": offset}, headers=admin)
        assert response.status_code == 200, response.text
        assert response.headers["X-Total-Count"] == "7"
        pages.append([row["id"] for row in response.json()])

    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    beyond = client.get("/api/audit", params={"project": "paged", "offset": 50}, headers=admin)
    assert beyond.json() == []
    assert beyond.headers["X-Total-Count"] == "7"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"offset": -1},
        {"task_id": 0},
        {"task_id": "abc"},
        {"since": "yesterday"},
        {"until": "2026-13-01T00:00:00"},
        {"action": "Task Created"},
        {"project": "Not A Slug"},
    ],
)
def test_an_invalid_audit_filter_is_a_422(client: TestClient, admin: dict[str, str], params: dict[str, Any]) -> None:
    response = client.get("/api/audit", params=params, headers=admin)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


def test_audit_shows_only_rows_about_what_the_caller_can_see(
    client: TestClient,
    auth: AuthHeaders,
    create_project: CreateProject,
    create_task: CreateTask,
) -> None:
    create_project("secret", owner="alice")
    hidden = create_task("Hidden", as_user="alice", project_slug="secret")
    loose = create_task("Alice's own", as_user="alice")
    client.get("/api/tasks", headers=auth("mallory"))

    for params in (
        {},
        {"task_id": hidden["id"]},
        {"task_id": loose["id"]},
        {"project": "secret"},
        {"actor_id": "alice"},
    ):
        response = client.get("/api/audit", params=params, headers=auth("mallory"))
        assert response.status_code == 200, response.text
        assert all(row["actor_id"] == "mallory" for row in response.json()), params
        assert response.headers["X-Total-Count"] == str(len(response.json()))
    assert client.get(f"/api/tasks/{hidden['id']}/audit", headers=auth("mallory")).status_code == 404


# ---------------------------------------------------------------- a task's history


def test_task_history_is_oldest_first_with_the_total_count(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Story")
    other = create_task("Unrelated")
    url = f"/api/tasks/{task['id']}"
    client.post(f"{url}/start", headers=auth("alice"))
    client.patch(f"/api/tasks/{other['id']}", json={"title": "Still unrelated"}, headers=auth("alice"))
    client.post(f"{url}/review", headers=auth("alice"))

    response = client.get(f"{url}/audit", headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert [row["action"] for row in response.json()] == ["task.created", "task.started", "task.review"]
    assert {row["task_id"] for row in response.json()} == {task["id"]}
    assert response.headers["X-Total-Count"] == "3"
    page = client.get(f"{url}/audit", params={"limit": 1, "offset": 1}, headers=auth("alice"))
    assert [row["action"] for row in page.json()] == ["task.started"]
    assert page.headers["X-Total-Count"] == "3"


def test_a_deleted_tasks_history_survives_and_an_admin_can_read_it(
    client: TestClient,
    auth: AuthHeaders,
    admin: dict[str, str],
    db: Engine,
    create_task: CreateTask,
) -> None:
    task = create_task("Doomed")
    client.post(f"/api/tasks/{task['id']}/start", headers=auth("alice"))
    deleted = client.delete(f"/api/tasks/{task['id']}", headers=auth("alice"))
    assert deleted.status_code == 204, deleted.text

    assert [row.action for row in audit_rows(db, task_id=task["id"])] == [
        "task.created",
        "task.started",
        "task.deleted",
    ]
    with Session(db) as session:
        assert session.get(Task, task["id"]) is None
    assert client.get(f"/api/tasks/{task['id']}/audit", headers=auth("alice")).status_code == 404

    response = client.get("/api/audit", params={"task_id": task["id"]}, headers=admin)
    assert response.status_code == 200, response.text
    assert [row["action"] for row in response.json()] == ["task.deleted", "task.started", "task.created"]
    assert response.headers["X-Total-Count"] == "3"


def test_a_deleted_projects_history_survives(
    client: TestClient, auth: AuthHeaders, admin: dict[str, str], db: Engine
) -> None:
    client.post("/api/projects", json={"slug": "gone", "name": "Gone"}, headers=auth("alice"))
    assert client.delete("/api/projects/gone", headers=auth("alice")).status_code == 204

    assert [row.action for row in audit_rows(db, project_slug="gone")] == ["project.created", "project.deleted"]
    response = client.get("/api/audit", params={"project": "gone"}, headers=admin)
    assert [row["action"] for row in response.json()] == ["project.deleted", "project.created"]


# ---------------------------------------------------------------- append-only


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "POST"])
def test_no_endpoint_changes_or_deletes_audit_rows(
    client: TestClient, admin: dict[str, str], db: Engine, method: str, create_task: CreateTask
) -> None:
    task = create_task("Witness")
    client.get("/api/workers", headers=admin)
    before = [row.model_dump() for row in audit_rows(db)]

    responses = [
        client.request(method, "/api/audit", headers=admin, json={"action": "forged"}),
        client.request(method, f"/api/tasks/{task['id']}/audit", headers=admin, json={"action": "forged"}),
    ]

    for response in responses:
        assert response.status_code == 405, response.text
        assert response.json()["code"] == "method_not_allowed"
    assert [row.model_dump() for row in audit_rows(db)] == before


@pytest.fixture
def postgresql_only(db: Engine) -> None:
    if db.dialect.name != "postgresql":
        pytest.skip("the append-only trigger exists on PostgreSQL only; SQLite has no such trigger")


@pytest.mark.usefixtures("postgresql_only")
def test_postgresql_refuses_a_raw_update_of_audit_rows(db: Engine, create_task: CreateTask) -> None:
    create_task("Evidence")
    before = [row.model_dump() for row in audit_rows(db)]

    with pytest.raises(DBAPIError, match="append-only"), db.begin() as connection:
        connection.execute(text("UPDATE audit_log SET actor_id = 'someone-else'"))

    assert [row.model_dump() for row in audit_rows(db)] == before


@pytest.mark.usefixtures("postgresql_only")
def test_postgresql_refuses_a_raw_delete_of_audit_rows(db: Engine, create_task: CreateTask) -> None:
    create_task("Evidence")
    before = audit_count(db)

    with pytest.raises(DBAPIError, match="append-only"), db.begin() as connection:
        connection.execute(text("DELETE FROM audit_log"))

    assert audit_count(db) == before > 0
