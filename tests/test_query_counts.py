"""What a request costs: the number of SQL statements does not grow with the page, and keys are fetched once.

Rows are arranged straight into the database (one transaction each) and statements are
counted with a listener on the app's own engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import AuthHeaders, JWKSServer, insert
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from support import app_engine

from models import (
    AuditLog,
    Project,
    ProjectMember,
    ProjectRole,
    Task,
    TaskPriority,
    TaskStatus,
    Worker,
    WorkerType,
)

# A fixed handful whatever the page holds: reading the caller's worker row, the count and
# the page, housekeeping, and on SQLite the BEGIN the engine issues itself. Not one per row.
MAX_STATEMENTS_PER_LIST = 6
MAX_STATEMENTS_PER_CREATE = 10
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


@contextmanager
def counting_statements(client: TestClient) -> Iterator[list[str]]:
    """Every SQL statement the app sends while the block runs."""
    engine = app_engine(client)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def board(db: Engine) -> None:
    """alice and bob (humans) and project "demo" with both as members."""
    insert(
        db,
        Worker(id="alice", type=WorkerType.human, name="Alice"),
        Worker(id="bob", type=WorkerType.human, name="Bob"),
    )
    insert(db, Project(slug="demo", name="Demo", created_by="alice"))
    insert(
        db,
        ProjectMember(project_slug="demo", worker_id="alice", role=ProjectRole.owner),
        ProjectMember(project_slug="demo", worker_id="bob", role=ProjectRole.member),
    )


def tasks(start: int, stop: int) -> list[Task]:
    """Tasks alice can see: most in "demo", every fifth one without a project but assigned to her."""
    priorities = list(TaskPriority)
    statuses = list(TaskStatus)
    return [
        Task(
            title=f"Task {n}",
            priority=priorities[n % len(priorities)],
            status=statuses[n % len(statuses)],
            project_slug=None if n % 5 == 4 else "demo",
            assigned_to="alice" if n % 5 == 4 else "bob",
            created_by="bob",
            due_date=BASE_TIME + timedelta(days=n) if n % 2 else None,
            created_at=BASE_TIME + timedelta(minutes=n),
            updated_at=BASE_TIME + timedelta(minutes=n),
        )
        for n in range(start, stop)
    ]


def audit_rows(start: int, stop: int) -> list[AuditLog]:
    return [
        AuditLog(
            task_id=None if n % 3 else n + 1000,
            project_slug="demo",
            actor_id="bob",
            actor_type=WorkerType.human,
            action="task.updated",
            context={"title": [f"old {n}", f"new {n}"]},
            request_id=f"req-{n}",
            timestamp=BASE_TIME + timedelta(minutes=n),
        )
        for n in range(start, stop)
    ]


def projects(start: int, stop: int) -> list[Project]:
    return [Project(slug=f"p{n:03d}", name=f"P {n}", created_by="alice") for n in range(start, stop)]


def memberships(start: int, stop: int) -> list[ProjectMember]:
    return [
        ProjectMember(project_slug=f"p{n:03d}", worker_id="alice", role=ProjectRole.owner) for n in range(start, stop)
    ]


def statements_for(client: TestClient, url: str, headers: dict[str, str], params: dict[str, Any]) -> tuple[int, int]:
    """(statements, rows on the page) for one GET."""
    with counting_statements(client) as statements:
        response = client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return len(statements), len(response.json())


# ---------------------------------------------------------------- lists: the cost does not grow with the page


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(
    "params",
    [
        {"limit": 100},
        {"limit": 100, "sort": "-priority"},
        {"limit": 100, "sort": "due_date", "q": "task"},
        {"limit": 100, "project": "demo", "sort": "-updated_at"},
    ],
)
def test_listing_tasks_costs_the_same_for_one_task_and_a_hundred(
    client: TestClient, auth: AuthHeaders, db: Engine, params: dict[str, Any]
) -> None:
    headers = auth("alice")
    insert(db, *tasks(0, 1))
    client.get("/api/tasks", headers=headers)  # warm up: keys fetched, connection made

    one, one_rows = statements_for(client, "/api/tasks", headers, params)
    insert(db, *tasks(1, 125))
    hundred, hundred_rows = statements_for(client, "/api/tasks", headers, params)

    assert (one_rows, hundred_rows) == (1, 100)
    assert hundred == one <= MAX_STATEMENTS_PER_LIST


@pytest.mark.usefixtures("board")
def test_an_admin_listing_tasks_costs_the_same_for_one_task_and_a_hundred(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    insert(db, Worker(id="root", type=WorkerType.human, name="Root"))
    headers = auth("root", role="admin")
    insert(db, *tasks(0, 1))
    client.get("/api/tasks", headers=headers)

    one, one_rows = statements_for(client, "/api/tasks", headers, {"limit": 100})
    insert(db, *tasks(1, 100))
    hundred, hundred_rows = statements_for(client, "/api/tasks", headers, {"limit": 100})

    assert (one_rows, hundred_rows) == (1, 100)
    assert hundred == one <= MAX_STATEMENTS_PER_LIST


@pytest.mark.usefixtures("board")
def test_listing_audit_rows_costs_the_same_for_one_row_and_a_hundred(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = auth("alice")
    insert(db, *audit_rows(0, 1))
    client.get("/api/audit", headers=headers)

    one, one_rows = statements_for(client, "/api/audit", headers, {"limit": 100})
    insert(db, *audit_rows(1, 100))
    hundred, hundred_rows = statements_for(client, "/api/audit", headers, {"limit": 100})

    assert (one_rows, hundred_rows) == (1, 100)
    assert hundred == one <= MAX_STATEMENTS_PER_LIST


@pytest.mark.usefixtures("board")
def test_a_tasks_history_costs_the_same_for_one_row_and_a_hundred(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = auth("alice")
    task = Task(title="Busy", project_slug="demo", created_by="alice")
    insert(db, task)
    assert task.id is not None

    def history(start: int, stop: int) -> list[AuditLog]:
        rows = audit_rows(start, stop)
        for row in rows:
            row.task_id = task.id
        return rows

    insert(db, *history(0, 1))
    client.get(f"/api/tasks/{task.id}/audit", headers=headers)

    one, one_rows = statements_for(client, f"/api/tasks/{task.id}/audit", headers, {"limit": 100})
    insert(db, *history(1, 100))
    hundred, hundred_rows = statements_for(client, f"/api/tasks/{task.id}/audit", headers, {"limit": 100})

    assert (one_rows, hundred_rows) == (1, 100)
    assert hundred == one <= MAX_STATEMENTS_PER_LIST + 1  # + reading the task itself


@pytest.mark.usefixtures("board")
def test_listing_projects_costs_the_same_for_one_project_and_a_hundred(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = auth("alice")
    client.get("/api/projects", headers=headers)

    one, one_rows = statements_for(client, "/api/projects", headers, {"limit": 100})
    insert(db, *projects(0, 99))
    insert(db, *memberships(0, 99))
    hundred, hundred_rows = statements_for(client, "/api/projects", headers, {"limit": 100})

    assert (one_rows, hundred_rows) == (1, 100)
    assert hundred == one <= MAX_STATEMENTS_PER_LIST


# ---------------------------------------------------------------- one mutation: a fixed, small cost


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize("fields", [{}, {"project_slug": "demo", "assigned_to": "bob"}])
def test_creating_a_task_issues_a_fixed_few_statements_with_one_audit_insert(
    client: TestClient, auth: AuthHeaders, fields: dict[str, Any]
) -> None:
    headers = auth("alice")
    client.get("/api/tasks", headers=headers)

    counts = []
    for n in range(3):
        with counting_statements(client) as statements:
            response = client.post("/api/tasks", json={"title": f"New {n}", **fields}, headers=headers)
        assert response.status_code == 201, response.text
        # On PostgreSQL the two INSERTs are one statement (the task's as a CTE); each happens once.
        sql = " ".join(statements).upper()
        assert sql.count("INSERT INTO AUDIT_LOG") == 1, statements
        assert sql.count("INSERT INTO TASK ") == 1, statements
        counts.append(len(statements))

    assert counts[0] == counts[1] == counts[2] <= MAX_STATEMENTS_PER_CREATE


# ---------------------------------------------------------------- the signing keys: fetched once


def test_many_requests_fetch_the_signing_keys_once(client: TestClient, auth: AuthHeaders, jwks: JWKSServer) -> None:
    assert jwks.requests == 0

    for n in range(30):
        key = ("EdDSA", "ES256", "RS256")[n % 3]
        user = ("alice", "bob", "carol")[n % 3]
        response = client.get("/api/tasks", headers=auth(user, key=key))
        assert response.status_code == 200, response.text
    created = client.post("/api/tasks", json={"title": "One more"}, headers=auth("alice", key="RS256"))
    assert created.status_code == 201, created.text

    assert jwks.requests == 1
