"""Graceful shutdown: on SIGTERM a real uvicorn process stops accepting, finishes what it started, and exits.

The server is `python -m uvicorn main:app --timeout-graceful-shutdown 10`, a child process, as in
production; the test's own engine checks what it committed. What a client may see of a shutdown:
its request completed (with its audit row), or refused before any response — never cut halfway.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import AuthHeaders, JWKSServer
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, text
from support import ON_POSTGRESQL, free_port

from config import Settings
from database import mark_read_only
from main import create_app, drain_on_signals

REPO = Path(__file__).resolve().parent.parent
GRACEFUL_SECONDS = 10
# Bounded waits: long enough for a loaded 2-core CI machine, short enough that a hang fails the test.
WAIT = 20.0


# ---------------------------------------------------------------- the server process


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """The exit status, once the process has exited by itself; fails the test if it has not within WAIT."""
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not exit within {WAIT} s of SIGTERM:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_exited_gracefully(self) -> None:
        status = self.wait()
        output = self.output()
        # uvicorn (0.29 and later) re-raises the signal it caught once it has shut down gracefully,
        # so the process ends "killed by SIGTERM" (143 in a shell), as a supervisor expects; 0 is
        # what a server that handled the signal itself would return. Either way it exited by
        # itself: the test sends one SIGTERM and never kills it before this check.
        assert status in {0, -signal.SIGTERM}, f"exit status {status}:\n{output}"
        assert "Application shutdown complete" in output, output
        assert "timeout graceful shutdown exceeded" not in output, output


@pytest.fixture
def start_server(database_url: str, jwks: JWKSServer, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`start_server(DB_LOCK_TIMEOUT="30")`: uvicorn serving main:app on the test database, ready."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in {"PROMETHEUS_MULTIPROC_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT"}
        }
        environment.update(
            {
                "DATABASE_URL": database_url,
                "AUTH_SERVER_URL": jwks.base_url,
                "AUTO_MIGRATE": "false",
                "LEASE_SWEEP_SECONDS": "0",
                "LOG_LEVEL": "INFO",
                **env,
            }
        )
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout-graceful-shutdown",
            str(GRACEFUL_SECONDS),
        ]
        with log.open("wb") as output:
            process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT)
        server = ServerProcess(process, "127.0.0.1", port, log)
        started.append(server)
        deadline = time.monotonic() + WAIT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /health within {WAIT} s:\n{server.output()}")
            time.sleep(0.05)

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(timeout=WAIT)


def task_rows(db: Engine) -> tuple[set[int], Counter[int]]:
    """The ids of all tasks, and how many `task.created` audit rows each task id has."""
    with db.connect() as connection:
        mark_read_only(connection)
        tasks = set(connection.execute(text("SELECT id FROM task")).scalars())
        created = Counter(
            connection.execute(text("SELECT task_id FROM audit_log WHERE action = 'task.created'")).scalars()
        )
    return tasks, created


# ---------------------------------------------------------------- 5. SIGTERM during a write load


@dataclass
class Outcome:
    kind: str  # "created", "unavailable", "refused", "reset", or "broken"
    detail: str = ""
    task_id: int | None = None


def create_task_once(server: ServerProcess, headers: dict[str, str], title: str) -> Outcome:
    """One POST on a fresh connection, classified by how far it got."""
    body = json.dumps({"title": title, "project_slug": "load"})
    connection = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        try:
            connection.request(
                "POST", "/api/tasks", body, {**headers, "Content-Type": "application/json", "Connection": "close"}
            )
            response = connection.getresponse()
        except ConnectionRefusedError:
            return Outcome("refused")
        except (ConnectionResetError, BrokenPipeError) as error:
            # Includes http.client.RemoteDisconnected: closed before a status line was sent.
            return Outcome("reset", repr(error))
        try:
            data = response.read()
        except (http.client.HTTPException, OSError) as error:
            return Outcome("broken", f"{response.status}, then {error!r}")
    except Exception as error:  # a timeout (a hang) or anything unforeseen
        return Outcome("broken", repr(error))
    finally:
        connection.close()
    try:
        payload = json.loads(data)
    except ValueError:
        return Outcome("broken", f"{response.status} {data[:200]!r}")
    if response.status == 201:
        return Outcome("created", task_id=payload["id"])
    if response.status == 503 and payload.get("code") == "service_unavailable" and response.getheader("Retry-After"):
        return Outcome("unavailable")
    return Outcome("broken", f"{response.status} {data[:200]!r}")


def test_sigterm_during_a_write_load_completes_or_refuses_every_request(
    start_server: Callable[..., ServerProcess], auth: AuthHeaders, db: Engine
) -> None:
    server = start_server()
    headers = auth("alice")
    project = httpx.post(f"{server.url}/api/projects", json={"slug": "load", "name": "Load"}, headers=headers)
    assert project.status_code == 201, project.text

    outcomes: list[Outcome] = []
    lock = threading.Lock()
    created = threading.Semaphore(0)

    def write(writer: int) -> None:
        for number in range(10_000):
            outcome = create_task_once(server, headers, f"Writer {writer} task {number}")
            with lock:
                outcomes.append(outcome)
            if outcome.kind == "created":
                created.release()
            # Refused: the server has stopped listening, and nothing later can get in.
            if outcome.kind == "refused" or server.process.poll() is not None:
                return

    writers = [threading.Thread(target=write, args=(number,)) for number in range(8)]
    for thread in writers:
        thread.start()
    try:
        for _ in range(16):  # some writes done, more in flight
            assert created.acquire(timeout=WAIT), "the writers made no progress"
        server.terminate()
        server.assert_exited_gracefully()
    finally:
        for thread in writers:
            thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in writers), "a writer is stuck: a request hangs"

    kinds = Counter(outcome.kind for outcome in outcomes)
    broken = [outcome.detail for outcome in outcomes if outcome.kind == "broken"]
    assert not broken, f"requests cut in the middle or answered with an error: {broken[:5]}"
    assert kinds["refused"] >= 1, kinds  # the writers ran until the server stopped listening
    acknowledged = [outcome.task_id for outcome in outcomes if outcome.kind == "created"]
    assert len(acknowledged) == len(set(acknowledged)) >= 16
    tasks, audit_rows = task_rows(db)
    # Every acknowledged write is there with its one audit row, and nothing was saved unacknowledged.
    assert tasks == set(acknowledged), (len(tasks), kinds)
    assert audit_rows == Counter(acknowledged)


# ---------------------------------------------------------------- 6. readiness while draining


def test_a_signal_marks_the_app_draining_and_readiness_answers_503(settings: Settings, auth: AuthHeaders) -> None:
    # The hand-over itself, in-process: the lifespan runs in TestClient's thread, where no signal
    # handler can be set, so drain_on_signals is called here, in the main thread, as uvicorn's does.
    app = create_app(settings)
    handed_over: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: handed_over.append(signum))
    try:
        with TestClient(app) as client:
            assert client.get("/api/health/db").status_code == 200
            restore = drain_on_signals(app)
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:
                restore()
            assert handed_over == [signal.SIGTERM], "the server's own handler must still run (it stops the server)"
            assert signal.getsignal(signal.SIGTERM) is not None
            readiness = client.get("/api/health/db")
            assert readiness.status_code == 503, readiness.text
            assert readiness.json() == {"error": "Shutting down", "status_code": 503, "code": "service_unavailable"}
            assert int(readiness.headers["Retry-After"]) >= 1
            assert client.get("/health").status_code == 200  # alive, just not ready
            assert client.get("/api/tasks", headers=auth("alice")).status_code == 200  # in-flight work goes on
    finally:
        signal.signal(signal.SIGTERM, previous)


def hold_write_lock(db: Engine, task_id: int) -> Connection:
    """A transaction of the test's own that a write to the task must wait for: its row lock on
    PostgreSQL, the database's write lock on SQLite."""
    holder = db.connect()
    holder.begin()  # on SQLite: BEGIN IMMEDIATE
    if ON_POSTGRESQL:
        holder.execute(text("SELECT id FROM task WHERE id = :id FOR UPDATE"), {"id": task_id})
    return holder


def wait_for_lock_waiter(db: Engine) -> None:
    """On PostgreSQL, until a backend waits for a lock: the request is in the database, not before it."""
    if not ON_POSTGRESQL:
        return
    deadline = time.monotonic() + WAIT
    while True:
        with db.connect() as connection:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        assert time.monotonic() < deadline, "the PATCH never waited for the lock"
        time.sleep(0.05)


def probe_readiness(connection: http.client.HTTPConnection) -> str:
    """'503' (the draining answer, checked), 'closed' or 'refused'; a 200 after SIGTERM fails the test."""
    try:
        connection.request("GET", "/api/health/db")
        response = connection.getresponse()
        data = response.read()
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):  # includes RemoteDisconnected
        return "closed"
    assert response.status == 503, (response.status, data)
    assert json.loads(data)["code"] == "service_unavailable"
    assert response.getheader("Retry-After")
    return "503"


def probe_readiness_anew(server: ServerProcess) -> str:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        return probe_readiness(connection)
    finally:
        connection.close()


def test_readiness_while_draining_and_the_request_in_flight_completes(
    start_server: Callable[..., ServerProcess], auth: AuthHeaders, db: Engine
) -> None:
    server = start_server(DB_LOCK_TIMEOUT="30")
    headers = auth("alice")
    task = httpx.post(f"{server.url}/api/tasks", json={"title": "Before"}, headers=headers).json()

    with contextlib.ExitStack() as stack:
        # A load balancer's keep-alive connection, idle between probes.
        keep_alive = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
        stack.callback(keep_alive.close)
        keep_alive.request("GET", "/api/health/db")
        ready = keep_alive.getresponse()
        assert (ready.status, json.loads(ready.read())) == (200, {"database": "connected"})

        holder = hold_write_lock(db, task["id"])
        stack.callback(holder.close)
        slow = stack.enter_context(socket.create_connection((server.host, server.port), timeout=WAIT))
        # A PATCH that waits on the lock. `Expect: 100-continue` makes uvicorn say when the app
        # has started on the request (it asks for the body), so SIGTERM comes while it is in flight.
        body = json.dumps({"title": "After"}).encode()
        head = (
            f"PATCH /api/tasks/{task['id']} HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Authorization: {headers['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        slow.sendall(head.encode())
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        received = b""
        while len(received) < len(interim):
            chunk = slow.recv(len(interim) - len(received))
            assert chunk, "the server closed the connection instead of asking for the body"
            received += chunk
        assert received == interim
        slow.sendall(body)
        wait_for_lock_waiter(db)

        server.terminate()
        # uvicorn closes a connection idle between requests at once, and stops listening within a
        # tick (0.1 s): a probe sent in that tick gets the draining 503 (drain_on_signals marks the
        # app before uvicorn even starts to stop); after it, the probe's connection is gone. Never a 200.
        assert probe_readiness(keep_alive) in {"503", "closed"}
        deadline = time.monotonic() + WAIT
        while (fresh := probe_readiness_anew(server)) != "refused":
            assert fresh in {"503", "closed"}
            assert time.monotonic() < deadline, "the server still accepts connections while draining"
            time.sleep(0.02)
        assert server.process.poll() is None, "the server exited with a request in flight"

        holder.rollback()
        response = http.client.HTTPResponse(slow, method="PATCH")
        response.begin()
        data = response.read()
    assert response.status == 200, data
    assert json.loads(data)["title"] == "After"
    server.assert_exited_gracefully()
    with db.connect() as connection:
        mark_read_only(connection)
        title, version = connection.execute(
            text("SELECT title, version FROM task WHERE id = :id"), {"id": task["id"]}
        ).one()
        actions = connection.execute(
            text("SELECT action FROM audit_log WHERE task_id = :id ORDER BY id"), {"id": task["id"]}
        ).scalars()
        assert (title, version, list(actions)) == ("After", 2, ["task.created", "task.updated"])
