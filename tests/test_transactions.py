"""One transaction per request: a change and its audit row are saved together or not at all.

Faults are injected with SQLAlchemy event listeners on the app's own engine, so the real
session, flush and commit path runs; the `db` fixture's separate engine checks what was saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, event
from sqlmodel import Session, col, select
from support import CreateProject, CreateTask, app_engine, count, task_row

from models import AuditLog, Project, ProjectMember, Task, TaskStatus


class InjectedFault(Exception):
    """Raised by a test's event listener; its message must never reach the client."""


FAULT_MESSAGE = "injected fault: INSERT INTO audit_log refused by test"


# The app as a caller meets it: an unhandled error comes back as a 500 response instead of raising here.
pytestmark = pytest.mark.errors_as_responses


@contextmanager
def failing_statements(engine: Engine, fragment: str) -> Iterator[list[str]]:
    """Make every SQL statement that contains `fragment` fail; yields the statements that were refused.

    Contains, not starts with: on PostgreSQL a change and its audit row are one statement.
    """
    refused: list[str] = []

    def fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if fragment.upper() in statement.upper():
            refused.append(statement)
            raise InjectedFault(FAULT_MESSAGE)

    event.listen(engine, "before_cursor_execute", fail)
    try:
        yield refused
    finally:
        event.remove(engine, "before_cursor_execute", fail)


@contextmanager
def failing_commits(engine: Engine) -> Iterator[list[int]]:
    """Make every COMMIT on `engine` fail as a refused COMMIT does; yields a list that counts them."""
    refused: list[int] = []

    def fail(connection: Connection) -> None:
        refused.append(1)
        # The "commit" event runs just before the driver's commit. A COMMIT the server refuses
        # ends the transaction there, so end it here too: raising alone would leave it open
        # (and, on SQLite, the write lock held) in the pooled connection.
        driver_connection = connection.connection.dbapi_connection
        assert driver_connection is not None  # a connection being committed is checked out of the pool
        driver_connection.rollback()
        raise InjectedFault("injected fault: COMMIT refused by test")

    event.listen(engine, "commit", fail)
    try:
        yield refused
    finally:
        event.remove(engine, "commit", fail)


def assert_internal_error(response: httpx2.Response) -> None:
    assert response.status_code == 500, response.text
    body = response.json()
    assert body == {
        "error": "Internal server error",
        "status_code": 500,
        "code": "internal_error",
        "request_id": response.headers["X-Request-ID"],
    }
    for leak in ("INSERT", "audit_log", "injected", "Traceback", "sqlalchemy", ".py"):
        assert leak not in response.text


@pytest.fixture
def users(client: TestClient, auth: AuthHeaders) -> None:
    """alice and bob have worker rows, so no registration happens during the faulty request."""
    for user in ("alice", "bob"):
        assert client.get("/api/workers", headers=auth(user)).status_code == 200


# ---------------------------------------------------------------- the audit insert fails: nothing is saved


@pytest.mark.usefixtures("users")
def test_create_task_whose_audit_insert_fails_saves_no_task(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log") as refused:
        response = client.post("/api/tasks", json={"title": "Never saved"}, headers=auth("alice"))

    assert refused, "the audit insert was never attempted"
    assert_internal_error(response)
    assert count(db, Task) == 0
    assert count(db, AuditLog) == audit_before


def test_create_task_in_a_project_whose_audit_insert_fails_saves_no_task(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        response = client.post(
            "/api/tasks",
            json={"title": "Never saved", "project_slug": "demo", "assigned_to": "bob"},
            headers=auth("alice"),
        )

    assert_internal_error(response)
    assert count(db, Task) == 0
    assert count(db, AuditLog) == audit_before


def test_patch_task_whose_audit_insert_fails_changes_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Original", description="as it was", priority="low")
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        response = client.patch(
            f"/api/tasks/{task['id']}",
            json={"title": "Changed", "description": None, "priority": "critical"},
            headers=auth("alice"),
        )

    assert_internal_error(response)
    saved = task_row(db, task["id"])
    assert (saved.title, saved.description, saved.priority) == ("Original", "as it was", "low")
    assert saved.updated_at.isoformat() == task["updated_at"].replace("Z", "+00:00")
    assert count(db, AuditLog) == audit_before


@pytest.mark.parametrize(
    ("action", "params"),
    [("start", {}), ("block", {"reason": "waiting"})],
)
def test_workflow_action_whose_audit_insert_fails_leaves_the_task_as_it_was(
    client: TestClient,
    auth: AuthHeaders,
    db: Engine,
    create_task: CreateTask,
    action: str,
    params: dict[str, str],
) -> None:
    task = create_task("Still pending")
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        response = client.post(f"/api/tasks/{task['id']}/{action}", params=params, headers=auth("alice"))

    assert_internal_error(response)
    saved = task_row(db, task["id"])
    assert (saved.status, saved.assigned_to) == (TaskStatus.pending, None)
    assert count(db, AuditLog) == audit_before


def test_complete_whose_audit_insert_fails_keeps_status_and_progress(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Almost done")
    client.post(f"/api/tasks/{task['id']}/start", headers=auth("alice"))
    client.post(f"/api/tasks/{task['id']}/progress", params={"percent": 60}, headers=auth("alice"))
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        response = client.post(f"/api/tasks/{task['id']}/complete", headers=auth("alice"))

    assert_internal_error(response)
    saved = task_row(db, task["id"])
    assert (saved.status, saved.progress_percent) == (TaskStatus.in_progress, 60)
    assert count(db, AuditLog) == audit_before


@pytest.mark.usefixtures("users")
def test_create_project_whose_audit_insert_fails_saves_no_project_or_membership(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        response = client.post("/api/projects", json={"slug": "ghost", "name": "Ghost"}, headers=auth("alice"))

    assert_internal_error(response)
    assert count(db, Project) == 0
    assert count(db, ProjectMember) == 0
    assert count(db, AuditLog) == audit_before


@pytest.mark.usefixtures("users")
def test_add_member_whose_audit_insert_fails_adds_no_member(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        response = client.post("/api/projects/demo/members", json={"worker_id": "bob"}, headers=auth("alice"))

    assert_internal_error(response)
    assert count(db, ProjectMember, ProjectMember.worker_id == "bob") == 0
    assert count(db, AuditLog) == audit_before


def test_delete_task_whose_audit_insert_fails_keeps_the_task(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Survivor")
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        response = client.delete(f"/api/tasks/{task['id']}", headers=auth("alice"))

    assert_internal_error(response)
    assert task_row(db, task["id"]).title == "Survivor"
    assert count(db, AuditLog) == audit_before


# ---------------------------------------------------------------- the change fails: no audit row either


def test_patch_task_whose_update_fails_writes_no_audit_row(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Original")
    audit_before = count(db, AuditLog)

    with failing_statements(app_engine(client), "UPDATE task") as refused:
        response = client.patch(f"/api/tasks/{task['id']}", json={"title": "Changed"}, headers=auth("alice"))

    assert refused, "the task update was never attempted"
    assert_internal_error(response)
    assert task_row(db, task["id"]).title == "Original"
    assert count(db, AuditLog) == audit_before


# ---------------------------------------------------------------- the commit fails: an error, not a 2xx


@pytest.mark.usefixtures("users")
def test_create_task_whose_commit_fails_answers_an_error_and_saves_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    audit_before = count(db, AuditLog)

    with failing_commits(app_engine(client)) as refused:
        response = client.post("/api/tasks", json={"title": "Lost in commit"}, headers=auth("alice"))

    assert refused, "no commit was attempted"
    assert response.status_code >= 500, response.text
    assert response.json()["code"] == "internal_error"
    assert "Lost in commit" not in response.text
    assert count(db, Task) == 0
    assert count(db, AuditLog) == audit_before


def test_workflow_action_whose_commit_fails_answers_an_error_and_changes_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Not started")
    audit_before = count(db, AuditLog)

    with failing_commits(app_engine(client)):
        response = client.post(f"/api/tasks/{task['id']}/start", headers=auth("alice"))

    assert not response.is_success, response.text
    assert response.json()["code"] == "internal_error"
    saved = task_row(db, task["id"])
    assert (saved.status, saved.assigned_to) == (TaskStatus.pending, None)
    assert count(db, AuditLog) == audit_before


@pytest.mark.usefixtures("users")
def test_the_app_recovers_once_the_fault_is_gone(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    with failing_commits(app_engine(client)):
        assert client.post("/api/tasks", json={"title": "First try"}, headers=auth("alice")).status_code == 500
    with failing_statements(app_engine(client), "INSERT INTO audit_log"):
        assert client.post("/api/tasks", json={"title": "Second try"}, headers=auth("alice")).status_code == 500

    response = client.post("/api/tasks", json={"title": "Third try"}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    with Session(db) as session:
        assert [task.title for task in session.exec(select(Task)).all()] == ["Third try"]


# ---------------------------------------------------------------- success: both are saved


@pytest.mark.usefixtures("users")
def test_a_created_task_and_its_audit_row_are_both_saved(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post("/api/tasks", json={"title": "Saved"}, headers={**auth("alice"), "X-Request-ID": "ok-1"})

    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    assert task_row(db, task_id).title == "Saved"
    with Session(db) as session:
        rows = session.exec(select(AuditLog).where(AuditLog.task_id == task_id)).all()
    assert [(row.action, row.actor_id, row.request_id) for row in rows] == [("task.created", "alice", "ok-1")]


def test_a_patched_task_and_its_audit_row_are_both_saved(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task = create_task("Before")

    response = client.patch(f"/api/tasks/{task['id']}", json={"title": "After"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert task_row(db, task["id"]).title == "After"
    with Session(db) as session:
        rows = session.exec(select(AuditLog).where(AuditLog.task_id == task["id"]).order_by(col(AuditLog.id))).all()
    assert [(row.action, row.context) for row in rows] == [
        ("task.created", {"title": [None, "Before"], "priority": [None, "medium"]}),
        ("task.updated", {"title": ["Before", "After"]}),
    ]


def test_a_new_project_its_owner_membership_and_audit_row_are_all_saved(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    response = client.post("/api/projects", json={"slug": "real", "name": "Real"}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    assert count(db, Project, Project.slug == "real") == 1
    assert count(db, ProjectMember, ProjectMember.project_slug == "real", ProjectMember.worker_id == "alice") == 1
    assert count(db, AuditLog, AuditLog.action == "project.created", AuditLog.project_slug == "real") == 1
