"""Plain helpers the test modules share: types, reads of the database, checks of responses.

Fixtures live in conftest.py; what is here is ordinary functions and types, imported by name
(`from support import audit_rows`), which pytest makes possible by putting tests/ on sys.path.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import httpx
import httpx2
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, func, text
from sqlmodel import Session, col, select

from models import AuditLog, Task, Worker

T = TypeVar("T")

# What the create_project and create_task fixtures of conftest.py are: they return the created body.
CreateProject = Callable[..., dict[str, Any]]
CreateTask = Callable[..., dict[str, Any]]

# A response from the TestClient (httpx2 in this repo's Starlette) or from an httpx client over real HTTP.
AnyResponse = httpx.Response | httpx2.Response

# The rule conftest.py follows: TEST_DATABASE_URL set means the tests run on PostgreSQL.
ON_POSTGRESQL = os.environ.get("TEST_DATABASE_URL") is not None


# ---------------------------------------------------------------- requests and responses


def bearer(token: str) -> dict[str, str]:
    """The Authorization header that presents `token`."""
    return {"Authorization": f"Bearer {token}"}


def assert_refused(response: AnyResponse, status_code: int, code: str) -> dict[str, Any]:
    """Assert the response is an error envelope of this status and code; its body."""
    assert response.status_code == status_code, response.text
    body: dict[str, Any] = response.json()
    assert (body["status_code"], body["code"]) == (status_code, code), body
    return body


def assert_error(response: AnyResponse, status_code: int, code: str) -> dict[str, Any]:
    """Assert the response is an error envelope of this status and code with a message; its body."""
    body = assert_refused(response, status_code, code)
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


def parse_time(value: str) -> datetime:
    """A timestamp of the API (ISO 8601) as a datetime."""
    return datetime.fromisoformat(value)


# ---------------------------------------------------------------- the app under test


def app_of(client: TestClient) -> FastAPI:
    """The FastAPI app a TestClient drives (TestClient's annotation says only "an ASGI app")."""
    app = client.app
    assert isinstance(app, FastAPI), app
    return app


def app_engine(client: TestClient) -> Engine:
    """The engine the app a TestClient drives keeps in its state."""
    engine: Engine = app_of(client).state.engine
    return engine


# ---------------------------------------------------------------- the database


def count(db: Engine, model: Any, *where: Any) -> int:
    """How many rows of `model` (a table or model class) match every condition in `where`."""
    with Session(db) as session:
        total: int = session.exec(select(func.count()).select_from(model).where(*where)).one()
        return total


def audit_rows(db: Engine, **where: Any) -> list[AuditLog]:
    """The audit log's rows whose fields equal `where` (e.g. `task_id=3, action="task.claimed"`), oldest first."""
    with Session(db) as session:
        query = select(AuditLog).order_by(col(AuditLog.id))
        for field, value in where.items():
            query = query.where(getattr(AuditLog, field) == value)
        return list(session.exec(query).all())


def audit_count(db: Engine, **where: Any) -> int:
    """How many audit log rows have fields equal to `where`."""
    return count(db, AuditLog, *(getattr(AuditLog, field) == value for field, value in where.items()))


def stored_task(db: Engine, task_id: int) -> Task | None:
    """The task's row as the database holds it, or None if there is none."""
    with Session(db) as session:
        return session.get(Task, task_id)


def task_row(db: Engine, task_id: int) -> Task:
    """The task's row as the database holds it, asserting it exists."""
    task = stored_task(db, task_id)
    assert task is not None
    return task


def stored_worker(db: Engine, worker_id: str) -> Worker | None:
    """The worker's row as the database holds it, or None if there is none."""
    with Session(db) as session:
        return session.get(Worker, worker_id)


# ---------------------------------------------------------------- running things


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on at the moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_together(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads, released at the same moment; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [future.result() for future in [pool.submit(run, call) for call in calls]]


def later(seconds: float, call: Callable[[], object]) -> threading.Thread:
    """Run `call` in a thread after `seconds`: something that happens while the caller waits. Join it."""

    def run() -> None:
        time.sleep(seconds)
        call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextmanager
def case(failures: list[str], name: str) -> Iterator[None]:
    """Run one case of many; a failed assertion is recorded under `name` instead of ending the test."""
    try:
        yield
    except AssertionError as exc:
        failures.append(f"{name}: {str(exc)[:600]}")


@contextmanager
def holding_first(engine: Engine, matches: Callable[[str], bool]) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the first statement `engine` sends that `matches`, just before it runs, until `release` is set.

    Yields `(held, release)`: `held` is set once a request waits there. Every later match runs on.
    """
    held, release = threading.Event(), threading.Event()
    lock = threading.Lock()

    def hold_the_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not matches(statement):
            return
        with lock:
            if held.is_set():
                return
            held.set()
        release.wait(timeout=10)

    event.listen(engine, "before_cursor_execute", hold_the_first)
    try:
        yield held, release
    finally:
        release.set()
        event.remove(engine, "before_cursor_execute", hold_the_first)


def feed_settled(db: Engine, seconds: float = 30) -> None:
    """Wait until the event feed may serve every row committed so far.

    On PostgreSQL a row is served once every older transaction on the server has ended, other
    test processes' included; on SQLite at once.
    """
    if not ON_POSTGRESQL:
        return
    deadline = time.monotonic() + seconds
    while True:
        with db.connect() as connection:
            horizon = connection.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")).scalar()
            newest = connection.execute(text("SELECT max(feed_tx) FROM audit_log")).scalar()
        if newest is None or newest < horizon:
            return
        assert time.monotonic() < deadline, "a transaction has held the event feed back for too long"
        time.sleep(0.01)
