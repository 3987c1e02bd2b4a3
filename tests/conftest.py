"""Shared fixtures: a real database per test, real keys, a real JWKS over HTTP, real tokens.

The database is a fresh SQLite file per test, or PostgreSQL when TEST_DATABASE_URL is
set: then one database is created for the run (and dropped after it) and every test
starts from empty tables.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from config import Settings
from database import create_db_engine, migrate, normalize_database_url
from main import create_app

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TABLES = [
    "audit_log",
    "idempotency_key",
    "lost_lease",
    "task_dependency",
    "project_member",
    "task",
    "project",
    "worker",
]


# ---------------------------------------------------------------- keys and the JWKS server


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.algorithm}


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    """One key per algorithm family Better Auth can sign with; EdDSA is its default."""
    return {
        "EdDSA": SigningKey("ed25519-key-1", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
        "ES256": SigningKey("es256-key-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        "RS256": SigningKey("rs256-key-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }


@dataclass
class JWKSServer:
    """Serves `{"keys": [...]}` at /api/auth/jwks, like Better Auth; tests change what it serves."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    failing: bool = False
    base_url: str = ""

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/api/auth/jwks"


@contextmanager
def serving_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server of `handler` on a free loopback port, for as long as the block runs; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[JWKSServer]:
    state = JWKSServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            if self.path != "/api/auth/jwks" or state.failing:
                self.send_response(503 if state.failing else 404)
                self.end_headers()
                return
            body = json.dumps({"keys": state.keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving_http(Handler) as url:
        state.base_url = url
        yield state


@pytest.fixture
def jwks(jwks_server: JWKSServer, keys: dict[str, SigningKey]) -> JWKSServer:
    """The JWKS server, reset to publish all three test keys."""
    jwks_server.keys = [key.public_jwk() for key in keys.values()]
    jwks_server.requests = 0
    jwks_server.failing = False
    return jwks_server


TokenFactory = Callable[..., str]


@pytest.fixture
def make_token(jwks: JWKSServer, keys: dict[str, SigningKey]) -> TokenFactory:
    """`make_token(sub, role=..., key="ES256", headers={...}, omit=[...], **claims)`: a token shaped like Better Auth's."""

    def factory(
        sub: str = "alice",
        *,
        role: str | None = None,
        key: str | SigningKey = "EdDSA",
        headers: dict[str, Any] | None = None,
        omit: tuple[str, ...] | list[str] = (),
        **claims: Any,
    ) -> str:
        signing_key = keys[key] if isinstance(key, str) else key
        now = int(time.time())
        payload: dict[str, Any] = {
            "iat": now,
            "name": sub.title(),
            "email": f"{sub}@example.com",
            "emailVerified": True,
            "createdAt": "2026-11-01T10:00:00.000Z",
            "updatedAt": "2026-11-01T10:00:00.000Z",
            "id": sub,
            "sub": sub,
            "exp": now + 900,
            "iss": jwks.base_url,
            "aud": jwks.base_url,
        }
        if role is not None:
            payload["role"] = role
        payload.update(claims)
        for claim in omit:
            payload.pop(claim, None)
        # Better Auth's header is only {"alg", "kid"}: PyJWT adds "typ", which it does not send.
        header = {"kid": signing_key.kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        header.setdefault("typ", None)  # None makes PyJWT leave "typ" out
        return jwt.encode(payload, signing_key.private, algorithm=signing_key.algorithm, headers=header)

    return factory


AuthHeaders = Callable[..., dict[str, str]]


@pytest.fixture
def auth(make_token: TokenFactory) -> AuthHeaders:
    """`auth("bob")` → the Authorization header for a fresh token of user bob."""

    def headers(sub: str = "alice", **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(sub, **kwargs)}"}

    return headers


# ---------------------------------------------------------------- the database


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the whole run: a SQLite file to copy, or a fresh PostgreSQL database."""
    if TEST_DATABASE_URL is None:
        path = tmp_path_factory.mktemp("template") / "taskflow.db"
        engine = create_db_engine(f"sqlite:///{path}")
        migrate(engine)
        engine.dispose()
        yield str(path)
        return
    admin_url = make_url(normalize_database_url(TEST_DATABASE_URL))
    name = f"taskflow_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(url)
    migrate(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> str:
    """An empty, migrated database for this test."""
    if TEST_DATABASE_URL is None:
        path = tmp_path / "taskflow.db"
        shutil.copyfile(database_template, path)
        return f"sqlite:///{path}"
    engine = create_db_engine(database_template)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return database_template


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """An engine of the test's own, to arrange and check data apart from the app's session."""
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


def terminate_backends(db: Engine) -> int:
    """Kill every other connection to the test's PostgreSQL database, as a restart or a pooler would; how many."""
    with db.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
        connection.commit()
    return int(killed)


# ---------------------------------------------------------------- the app


@pytest.fixture
def settings(database_url: str, jwks: JWKSServer, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        auth_server_url=jwks.base_url,
        auto_migrate=False,
        # Tests sweep when they mean to (tests/test_leases.py), so that none races the background thread.
        lease_sweep_seconds=0,
        allowed_origins=["http://localhost:3000"],
        dev_key_file=str(tmp_path / "dev-key.pem"),
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# ---------------------------------------------------------------- small helpers for arranging data


def insert(db: Engine, *rows: Any) -> None:
    """Write rows straight into the database, in one transaction of the test's own."""
    with Session(db, expire_on_commit=False) as session:
        session.add_all(rows)
        session.commit()


@pytest.fixture
def create_project(client: TestClient, auth: AuthHeaders) -> Callable[..., dict[str, Any]]:
    """`create_project("demo", owner="alice", members=["bob"])` through the API."""

    def create(
        slug: str = "demo", *, owner: str = "alice", members: tuple[str, ...] | list[str] = ()
    ) -> dict[str, Any]:
        response = client.post("/api/projects", json={"slug": slug, "name": slug.title()}, headers=auth(owner))
        assert response.status_code == 201, response.text
        for member in members:
            client.get("/api/tasks", headers=auth(member))  # a human's worker row appears on first request
            added = client.post(f"/api/projects/{slug}/members", json={"worker_id": member}, headers=auth(owner))
            assert added.status_code == 201, added.text
        body: dict[str, Any] = response.json()
        return body

    return create


@pytest.fixture
def create_task(client: TestClient, auth: AuthHeaders) -> Callable[..., dict[str, Any]]:
    """`create_task("Title", as_user="alice", project_slug="demo", ...)` through the API."""

    def create(title: str = "A task", *, as_user: str = "alice", **fields: Any) -> dict[str, Any]:
        response = client.post("/api/tasks", json={"title": title, **fields}, headers=auth(as_user))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    return create


# ---------------------------------------------------------------- a real server over real HTTP


@dataclass
class LiveServer:
    url: str
    app: Any


@contextmanager
def serving(app: Any) -> Iterator[LiveServer]:
    """`app` served by uvicorn in a thread on a free loopback port, for clients that speak real HTTP."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.01)
        yield LiveServer(url=f"http://127.0.0.1:{port}", app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """The app of the test's `settings`, served over real HTTP."""
    with serving(create_app(settings)) as server:
        yield server


@contextmanager
def captured_warnings(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Every record at WARNING or above that reaches `logger_name` (or a logger below it), whatever
    the loggers' levels and handlers (caplog's handler sits on the root, which these may not reach)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
