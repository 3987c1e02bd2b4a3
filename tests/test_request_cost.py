"""What a request costs, asserted by its structure: statements, locks, transactions, thread hops.

No timings: the benchmark (`bench/`) measures speed. These tests pin the shape that makes it fast:
one trip into the thread pool, one statement for a task and two for a list, no lock and no write
on a read, the same statements at any table size, tokens and worker rows not checked again, and a
connection the server closed replaced without the client noticing.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import httpx
import pytest
from conftest import AuthHeaders, JWKSServer, TokenFactory, insert, terminate_backends
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import Engine, event, text
from support import ON_POSTGRESQL, app_engine, app_of

import database
from auth import JWKSVerifier
from dependencies import TaskFlowRoute
from models import Project, ProjectMember, ProjectRole, Task, TaskPriority, TaskRead, Worker, WorkerType

# SQLite's read transaction is a BEGIN the engine sends itself; PostgreSQL reads need none.
READ_OVERHEAD = 0 if ON_POSTGRESQL else 1
LOCKING = re.compile(r"\bFOR (NO KEY )?(UPDATE|SHARE)\b|^\s*(INSERT|UPDATE|DELETE)\b|advisory", re.IGNORECASE)


@contextmanager
def captured(client: TestClient) -> Iterator[list[tuple[str, bool]]]:
    """Every statement the app sends while the block runs, and whether its connection was in autocommit."""
    engine = app_engine(client)
    statements: list[tuple[str, bool]] = []

    def record(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        dbapi = connection.connection.dbapi_connection
        statements.append((statement, bool(getattr(dbapi, "autocommit", False))))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def board(db: Engine) -> None:
    """alice owns project "demo", bob is a member, carol is in no project."""
    insert(db, *(Worker(id=name, type=WorkerType.human, name=name.title()) for name in ("alice", "bob", "carol")))
    insert(db, Project(slug="demo", name="Demo", created_by="alice"))
    insert(
        db,
        ProjectMember(project_slug="demo", worker_id="alice", role=ProjectRole.owner),
        ProjectMember(project_slug="demo", worker_id="bob"),
    )


def add_tasks(db: Engine, count: int, **fields: Any) -> list[int]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    tasks = [
        Task(
            title=f"Task {n}",
            project_slug="demo",
            created_by="alice",
            priority=list(TaskPriority)[n % 4],
            created_at=start + timedelta(seconds=n),
            updated_at=start + timedelta(seconds=n),
            **fields,
        )
        for n in range(count)
    ]
    insert(db, *tasks)
    return [task.id for task in tasks if task.id is not None]


def only_statements(statements: list[tuple[str, bool]]) -> list[str]:
    return [statement for statement, _ in statements if statement.strip().upper() != "BEGIN"]


# ---------------------------------------------------------------- reads: one or two statements, no lock


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(
    ("path", "statements"),
    [
        ("/api/tasks/{task_id}", 1),
        ("/api/tasks?limit=50", 2),
        ("/api/tasks?project=demo&sort=-priority&status=pending", 2),
        ("/api/tasks?ready=true", 2),
        ("/api/projects", 2),
        ("/api/audit", 2),
    ],
)
def test_a_read_sends_its_queries_and_nothing_else_and_takes_no_lock(
    client: TestClient, auth: AuthHeaders, db: Engine, path: str, statements: int
) -> None:
    (task_id, *_) = add_tasks(db, 60)
    headers = auth("bob")
    url = path.format(task_id=task_id)
    assert client.get(url, headers=headers).status_code == 200  # the token and the caller are known now

    with captured(client) as sent:
        response = client.get(url, headers=headers)

    assert response.status_code == 200, response.text
    assert len(sent) == statements + READ_OVERHEAD, sent
    assert not [statement for statement, _ in sent if LOCKING.search(statement)], sent
    # No worker row is read to know who is asking.
    assert not [statement for statement, _ in sent if re.search(r"\bFROM worker\b", statement)], sent
    if ON_POSTGRESQL:
        # Outside any transaction: no BEGIN, no COMMIT, no snapshot held.
        assert all(autocommit for _, autocommit in sent), sent


@pytest.mark.skipif(not ON_POSTGRESQL, reason="row locks that block are PostgreSQL's")
@pytest.mark.usefixtures("board")
def test_reads_answer_while_another_transaction_holds_the_row_locked(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    (task_id, *_) = add_tasks(db, 3)
    headers = auth("bob")
    with db.connect() as locker:
        locker.execute(text("SET lock_timeout = '100ms'"))
        locker.execute(text("SELECT id FROM task FOR UPDATE"))
        one = client.get(f"/api/tasks/{task_id}", headers=headers)
        page = client.get("/api/tasks", headers=headers)
        locker.rollback()

    assert (one.status_code, page.status_code) == (200, 200), (one.text, page.text)
    assert len(page.json()) == 3


@pytest.mark.usefixtures("board")
def test_task_rows_are_sent_exactly_as_the_response_model_would_send_them(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    add_tasks(db, 4, description='Ünïcode \u2028 "quoted"', due_date=datetime(2027, 3, 1, 12, 30, tzinfo=UTC))
    add_tasks(db, 4, status="in_progress", assigned_to="bob", lease_seconds=60, lease_expires_at=datetime.now(UTC))
    headers = auth("bob")

    page = client.get("/api/tasks", headers=headers)
    one = client.get(f"/api/tasks/{page.json()[0]['id']}", headers=headers)

    expected = TypeAdapter(list[TaskRead])
    assert page.content == expected.dump_json(expected.validate_json(page.content))
    assert one.content == TypeAdapter(TaskRead).dump_json(TaskRead.model_validate_json(one.content))
    assert [task["status"] for task in page.json()][-4:] == ["pending"] * 4


# ---------------------------------------------------------------- the same statements at any size


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tasks/{task_id}"),
        ("GET", "/api/tasks?limit=50"),
        ("GET", "/api/tasks?limit=50&sort=due_date"),
        ("GET", "/api/tasks/{task_id}/audit"),
        ("POST", "/api/tasks"),
        ("POST", "/api/tasks/claim"),
        ("POST", "/api/tasks/{held_id}/progress?percent=10"),
    ],
)
def test_statements_per_request_do_not_grow_with_the_table(
    client: TestClient, auth: AuthHeaders, db: Engine, method: str, path: str
) -> None:
    headers = auth("bob")
    (held_id,) = add_tasks(db, 1, status="in_progress", assigned_to="bob")
    counts = []
    for size in (5, 400):
        (task_id, *_) = add_tasks(db, size)
        url = path.format(task_id=task_id, held_id=held_id)
        body = {"title": "New", "project_slug": "demo"} if path == "/api/tasks" else None
        client.request(method, url, json=body, headers=headers)  # warm up
        with captured(client) as sent:
            response = client.request(method, url, json=body, headers=headers)
        assert response.status_code in {200, 201}, response.text
        counts.append(len(sent))

    assert counts[0] == counts[1], counts


# ---------------------------------------------------------------- one trip into the thread pool


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions sent to the thread pool (the real pool still runs them)."""
    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        target = function.func if isinstance(function, functools.partial) else function
        hops.append(getattr(target, "__name__", repr(target)))
        return await run_sync(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return hops


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", "/api/tasks/{task_id}", {}),
        ("GET", "/api/tasks", {}),
        ("POST", "/api/tasks", {}),
        ("POST", "/api/tasks", {"Idempotency-Key": "one-hop"}),
        ("POST", "/api/tasks/{task_id}/start", {}),
        ("PATCH", "/api/tasks/{task_id}", {}),
    ],
)
def test_a_request_crosses_into_the_thread_pool_once(
    client: TestClient, auth: AuthHeaders, db: Engine, thread_hops: list[str], method: str, path: str, extra: Any
) -> None:
    (task_id,) = add_tasks(db, 1)
    headers = auth("bob")
    assert client.get("/api/tasks", headers=headers).status_code == 200
    thread_hops.clear()
    body = {"title": "New", "project_slug": "demo"} if path == "/api/tasks" else {"title": "Renamed"}

    response = client.request(
        method, path.format(task_id=task_id), json=None if method == "GET" else body, headers={**headers, **extra}
    )

    assert response.status_code in {200, 201}, response.text
    assert thread_hops == ["_run"], thread_hops


def test_a_new_token_is_checked_in_the_pool_once_and_then_never_again(
    client: TestClient, auth: AuthHeaders, thread_hops: list[str]
) -> None:
    headers = auth("alice")
    assert client.get("/health").status_code == 200
    thread_hops.clear()

    first = client.get("/api/tasks", headers=headers)
    hops_first = list(thread_hops)
    thread_hops.clear()
    second = client.get("/api/tasks", headers=headers)

    assert (first.status_code, second.status_code) == (200, 200)
    assert hops_first == ["_verify", "_run"]
    assert thread_hops == ["_run"]


def test_every_dependency_of_every_route_is_async(client: TestClient) -> None:
    def calls(dependant: Any) -> Iterator[Any]:
        for sub in dependant.dependencies:
            yield sub.call
            yield from calls(sub)

    blocking = []
    routes = [context.original_route for context in iter_route_contexts(app_of(client).routes)]
    assert len(routes) > 30  # included routers are walked too
    for route in routes:
        if not isinstance(route, TaskFlowRoute):
            continue  # the docs, and /metrics: a plain route whose one hop into the pool reads metric files
        assert inspect.iscoroutinefunction(route.dependant.call), route.path
        for call in calls(route.dependant):
            target = call if inspect.isfunction(call) else type(call).__call__
            if not inspect.iscoroutinefunction(target):
                blocking.append(f"{route.path}: {call}")

    assert not blocking, blocking


# ---------------------------------------------------------------- remembered tokens


def test_a_remembered_token_is_not_trusted_past_its_exp(jwks: JWKSServer, make_token: TokenFactory) -> None:
    verifier = JWKSVerifier(jwks.jwks_url, issuer=jwks.base_url, audience=jwks.base_url)
    now = datetime.now(UTC).timestamp()
    token = make_token("alice", exp=int(now) + 60)
    try:
        assert verifier.verify(token).id == "alice"
        assert verifier.cached(token) is not None
        verifier._wall_clock = lambda: now + 61
        assert verifier.cached(token) is None
    finally:
        verifier.close()


def test_a_new_key_set_forgets_every_remembered_token(
    jwks: JWKSServer, make_token: TokenFactory, keys: dict[str, Any]
) -> None:
    clock = [0.0]
    verifier = JWKSVerifier(
        jwks.jwks_url, issuer=jwks.base_url, audience=jwks.base_url, cache_ttl=60, clock=lambda: clock[0]
    )
    token = make_token("alice", key="ES256")
    try:
        verifier.verify(token)
        assert verifier.cached(token) is not None
        # The signer withdraws the key; once the cached key set is stale, the token is checked again.
        jwks.keys = [keys["EdDSA"].public_jwk()]
        clock[0] = 61
        assert verifier.cached(token) is None
        with pytest.raises(Exception, match="unknown key"):
            verifier.verify(token)
    finally:
        verifier.close()


def test_a_refused_token_is_never_remembered(jwks: JWKSServer, make_token: TokenFactory) -> None:
    verifier = JWKSVerifier(jwks.jwks_url, issuer=jwks.base_url, audience="someone-else")
    token = make_token("alice")
    try:
        for _ in range(2):
            with pytest.raises(Exception, match="audience"):
                verifier.verify(token)
        assert verifier.cached(token) is None
    finally:
        verifier.close()


# ---------------------------------------------------------------- who acted: read by the audit row itself


@pytest.mark.usefixtures("board")
def test_an_agents_new_type_shows_in_audit_rows_written_by_an_app_that_never_saw_the_change(
    client: TestClient, settings: Any, auth: AuthHeaders, db: Engine
) -> None:
    from main import create_app

    insert(db, Worker(id="bot", type=WorkerType.human, name="Bot"))
    insert(db, ProjectMember(project_slug="demo", worker_id="bot"))
    with TestClient(create_app(settings)) as other_process:
        first = other_process.post("/api/tasks", json={"title": "As a human"}, headers=auth("bot"))
        changed = client.patch(
            "/api/workers/bot", json={"type": "agent", "owner_id": "alice"}, headers=auth("root", role="admin")
        )
        second = other_process.post("/api/tasks", json={"title": "As an agent"}, headers=auth("bot"))

    assert (first.status_code, changed.status_code, second.status_code) == (201, 200, 201), changed.text
    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT task_id, actor_type, owner_id FROM audit_log WHERE action = 'task.created' ORDER BY id")
        ).all()
    assert [(row[1], row[2]) for row in rows] == [("human", None), ("agent", "alice")]


# ---------------------------------------------------------------- connections the server closed


@pytest.mark.skipif(not ON_POSTGRESQL, reason="closing a server connection is a PostgreSQL matter")
@pytest.mark.usefixtures("board")
@pytest.mark.parametrize("ping_after_idle", [False, True])
def test_requests_after_the_server_closed_every_connection_succeed_and_write_once(
    live_server: Any, auth: AuthHeaders, db: Engine, monkeypatch: pytest.MonkeyPatch, ping_after_idle: bool
) -> None:
    if ping_after_idle:
        monkeypatch.setattr(database, "PING_AFTER_IDLE_SECONDS", 0.0)
    headers = auth("bob")
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as http:
        for _ in range(3):  # fill the pool with connections
            assert http.get("/api/tasks").status_code == 200
            assert http.post("/api/tasks", json={"title": "Before", "project_slug": "demo"}).status_code == 201
        assert terminate_backends(db) >= 1

        read = http.get("/api/tasks")
        created = http.post("/api/tasks", json={"title": "After", "project_slug": "demo"})
        terminate_backends(db)
        one = http.get(f"/api/tasks/{created.json()['id']}")

    assert (read.status_code, created.status_code, one.status_code) == (200, 201, 200), created.text
    with db.connect() as connection:
        after = connection.execute(text("SELECT count(*) FROM task WHERE title = 'After'")).one()
        audited = connection.execute(
            text("SELECT count(*) FROM audit_log WHERE task_id = :id").bindparams(id=created.json()["id"])
        ).one()
    assert (after[0], audited[0]) == (1, 1)
