"""Shared fixtures: a real database, real keys, a real JWKS over HTTP, real tokens, a real app.

`uv run pytest` spreads the tests over one pytest-xdist worker per CPU; `-n0` runs them in this
process. Each test process has a migrated database of its own: a SQLite file, or, when
TEST_DATABASE_URL is set, a PostgreSQL database created for it and dropped after it. Every test
starts from its tables emptied and its sequences reset. Tests that share something outside
their process (the Redis server, the Better Auth install) hold a lock file while they run, so
that no worker, and no other run on the machine, runs one of them at the same time.

The `client` fixture keeps an app running from one test to the next when the test's settings
are ones a reset can make as good as new (`AppPool`): building an app and running its lifespan
costs more than most tests. Each test still gets a fresh token verifier, known-workers cache,
outage log, logging configuration and connection pool; an app a test left changed is not reused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from anyio.to_thread import current_default_thread_limiter
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

import main
import telemetry
from auth import JWKSVerifier
from config import Settings
from database import create_db_engine, migrate, normalize_database_url
from dependencies import KnownWorkers
from main import create_app

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
E2E_DIRECTORY = Path(__file__).parent / "e2e"


# ---------------------------------------------------------------- workers, and other runs on the machine


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.has_plugin("xdist"):
        # With xdist turned off (-p no:xdist) the -n and --dist in addopts must still parse.
        parser.addoption("--numprocesses", dest="numprocesses", help="ignored: pytest-xdist is off")
        parser.addoption("--dist", dest="dist", help="ignored: pytest-xdist is off")


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so that --strict-markers accepts it when xdist is off (-p no:xdist).
    config.addinivalue_line("markers", "xdist_group(name): tests that run in one worker, one after another")
    config.addinivalue_line(
        "markers", "errors_as_responses: the `client` fixture answers an unhandled error as a 500 instead of raising it"
    )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E_DIRECTORY):
            # One set of Better Auth servers and one Chromium, not one per worker.
            item.add_marker(pytest.mark.xdist_group("e2e"))


def machine_wide_lock(item: pytest.Item) -> str | None:
    """The name of what `item` shares with every test process on the machine, if anything."""
    if "redis_url" in getattr(item, "fixturenames", ()):
        # The Redis tests delete every caller key they make when each ends, which would reset the
        # budget of one running at that moment in another worker, or in another run (.ci/run).
        return "redis"
    if item.path.is_relative_to(E2E_DIRECTORY):
        return "e2e"  # the first to run installs Better Auth (npm ci) into the one node_modules
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    name = machine_wide_lock(item)
    if name is None:
        return (yield)
    with (Path(tempfile.gettempdir()) / f"taskflow-tests-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        return (yield)


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
    """The URL of this test process's migrated database: a SQLite file, or a PostgreSQL database of its own."""
    if TEST_DATABASE_URL is None:
        url = f"sqlite:///{tmp_path_factory.mktemp('database') / 'taskflow.db'}"
        engine = create_db_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
        return
    admin_url = make_url(normalize_database_url(TEST_DATABASE_URL))
    # A name per run and worker: runs and xdist workers on one server never share a database.
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


class DatabaseEmptier:
    """Empties the worker's database between tests: every table but alembic's, and the sequences."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Pre-ping: a test may have killed this connection along with the app's (terminate_backends).
        self.engine = create_db_engine(url) if TEST_DATABASE_URL is None else create_engine(url, pool_pre_ping=True)
        names = inspect(self.engine).get_table_names()
        self.tables = [name for name in names if name not in {"alembic_version", "sqlite_sequence"}]

    def empty(self) -> None:
        with self.engine.begin() as connection:
            if TEST_DATABASE_URL is None:
                # Checked at commit, when no row is left to point anywhere, so the order does not matter.
                connection.execute(text("PRAGMA defer_foreign_keys = ON"))
                for table in self.tables:
                    connection.execute(text(f'DELETE FROM "{table}"'))
                connection.execute(text("DELETE FROM sqlite_sequence"))  # AUTOINCREMENT ids start at 1 again
                return
            # TRUNCATE, not DELETE: the audit log's trigger refuses deletes. It costs a few
            # milliseconds a table, empty or not, so only the tables the test wrote to.
            written = connection.execute(
                text(" UNION ALL ".join(f"SELECT '{t}' WHERE EXISTS (SELECT FROM \"{t}\")" for t in self.tables))
            ).scalars()
            quoted = ", ".join(f'"{table}"' for table in written)
            if quoted:
                connection.execute(text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))
            # A sequence also moves for an insert that was rolled back, leaving its table empty.
            connection.execute(
                text(
                    "SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, start_value, false)"
                    " FROM pg_sequences WHERE schemaname = current_schema() AND last_value IS NOT NULL"
                )
            )

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture(scope="session")
def database_emptier(database_template: str) -> Iterator[DatabaseEmptier]:
    emptier = DatabaseEmptier(database_template)
    yield emptier
    emptier.close()


@pytest.fixture
def database_url(database_emptier: DatabaseEmptier) -> str:
    """An empty, migrated database for this test (emptied before it, so a failed test leaves its rows to look at)."""
    database_emptier.empty()
    return database_emptier.url


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
        _env_file=None,
        database_url=database_url,
        auth_server_url=jwks.base_url,
        auto_migrate=False,
        # Tests sweep when they mean to (tests/test_leases.py), so that none races the background thread.
        lease_sweep_seconds=0,
        allowed_origins=["http://localhost:3000"],
        dev_key_file=str(tmp_path / "dev-key.pem"),
    )


SYSTEM_CERTIFICATES = "/etc/ssl/certs"


@contextmanager
def certificates_read_when_checked() -> Iterator[None]:
    """While the block runs, httpx clients take the system's CA certificates as their hashed
    directory, read only when a certificate is checked, instead of parsing the bundle built from
    it (some 20 ms a client; the verifier made for each test has one, and speaks no TLS)."""
    bundle, directory = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if (
        not os.path.isdir(SYSTEM_CERTIFICATES)
        or bundle not in {None, f"{SYSTEM_CERTIFICATES}/ca-certificates.crt"}
        or directory not in {None, SYSTEM_CERTIFICATES}
    ):
        yield
        return
    # Only here, not for the whole run: some tests' timing has come to lean on the slower clients.
    os.environ.pop("SSL_CERT_FILE", None)
    os.environ["SSL_CERT_DIR"] = SYSTEM_CERTIFICATES
    try:
        yield
    finally:
        if bundle is not None:
            os.environ["SSL_CERT_FILE"] = bundle
        if directory is None:
            del os.environ["SSL_CERT_DIR"]


# What the lifespan puts on app.state, besides what create_app itself does; an app with anything
# else there is never shared, since no reset here would know to renew it.
APP_STATE = {
    "settings",
    "draining",
    "outage_log",
    "rate_limiter",
    "engine",
    "verifier",
    "known_workers",
    "wakeups",
    "mcp",  # stateless: it keeps nothing from one request to the next
}


@dataclass
class RunningApp:
    client: TestClient
    app: FastAPI
    engine: Engine  # the lifespan's own
    verifier: JWKSVerifier  # the lifespan's own, which it closes at shutdown
    headers: dict[str, str]  # the client's own, before any test set one
    tests: int = 0


class AppPool:
    """Apps kept running between tests, one per kind of settings, each reset to as good as new for the next test.

    An app is shared only when nothing it holds outlives a test unreset: no rate-limit counts,
    no sweeper thread, no tracing. Before each test it gets what the lifespan and create_app
    would have made afresh: a token verifier (the JWKS server's keys change from test to test,
    and a development key is the test's own file), a known-workers cache (the rows are gone), an
    outage log, the logging configuration, and the test's own settings object. After the test
    its connections are closed, so the next test starts with an empty pool as a new app would;
    an app whose state a test replaced, or with a request still running, is shut down instead.
    """

    SIZE = 4  # apps kept running at once: the shared settings', and a module's own, each raising errors or not

    def __init__(self) -> None:
        self._running: OrderedDict[str, RunningApp] = OrderedDict()

    @staticmethod
    def shareable(settings: Settings) -> bool:
        return not (
            settings.rate_limit_read
            or settings.rate_limit_write
            or settings.lease_sweep_seconds
            or settings.otel_exporter_otlp_endpoint
            or settings.auto_migrate
        )

    @contextmanager
    def client(self, settings: Settings, *, raise_server_exceptions: bool = True) -> Iterator[TestClient]:
        """A client of an app of `settings`, like `with TestClient(create_app(settings), ...)`."""
        key = f"{raise_server_exceptions} {settings.model_dump_json(exclude={'dev_key_file'})}"
        running = None
        if self.shareable(settings):
            running = self._running.pop(key, None) or self._start(settings, raise_server_exceptions)
        if running is None:
            with TestClient(create_app(settings), raise_server_exceptions=raise_server_exceptions) as test_client:
                yield test_client
            return
        try:
            self._renew(running, settings)
            yield running.client
        finally:
            if self._reusable(running):
                if running.app.state.verifier is not running.verifier:
                    running.app.state.verifier.close()
                running.engine.dispose()
                self._running[key] = running
                while len(self._running) > self.SIZE:
                    self._stop(self._running.popitem(last=False)[1])
            else:
                self._stop(running)

    def close(self) -> None:
        while self._running:
            self._stop(self._running.popitem()[1])

    def _start(self, settings: Settings, raise_server_exceptions: bool) -> RunningApp | None:
        # A copy: a test that changes its settings object afterwards must not change the app's.
        app = create_app(settings.model_copy(deep=True))
        test_client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        test_client.__enter__()
        running = RunningApp(test_client, app, app.state.engine, app.state.verifier, dict(test_client.headers))
        if set(app.state._state) != APP_STATE:
            self._stop(running)
            return None
        return running

    def _renew(self, running: RunningApp, settings: Settings) -> None:
        state = running.app.state
        if running.tests:
            telemetry.configure_logging(settings.log_level, settings.log_format)  # as create_app does first
            with certificates_read_when_checked():
                state.verifier = main.build_verifier(settings)
            state.known_workers = KnownWorkers()
            state.outage_log = telemetry.Throttle(main.OUTAGE_LOG_SECONDS, main.logger)
            running.client.cookies.clear()
            running.client.headers = running.headers
        state.settings = settings
        running.tests += 1

    def _reusable(self, running: RunningApp) -> bool:
        state = running.app.state
        unchanged = (
            set(state._state) == APP_STATE
            and state.engine is running.engine
            and state.rate_limiter is None
            and not state.draining
            and not state.wakeups.draining
            and not running.app.dependency_overrides
        )
        portal = running.client.portal
        # A request thread still busy (a test that stopped waiting for it) would take one of the next test's.
        return unchanged and portal is not None and portal.call(_no_request_running)

    def _stop(self, running: RunningApp) -> None:
        state = running.app.state
        if state.verifier is not running.verifier:
            state.verifier.close()
            state.verifier = running.verifier
        running.client.__exit__(None, None, None)


async def _no_request_running() -> bool:
    return current_default_thread_limiter().borrowed_tokens == 0


@pytest.fixture(scope="session")
def app_pool(database_template: str, jwks_server: JWKSServer) -> Iterator[AppPool]:  # noqa: ARG001
    """The running apps. Asking for the database and the JWKS server they use makes the apps stop first."""
    pool = AppPool()
    yield pool
    pool.close()


@pytest.fixture
def client(settings: Settings, app_pool: AppPool, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """The app of the test's `settings`, as good as new; `client.app` may have served earlier tests.

    A module marked `errors_as_responses` meets an unhandled error as a caller does, as a 500.
    """
    raising = request.node.get_closest_marker("errors_as_responses") is None
    with app_pool.client(settings, raise_server_exceptions=raising) as test_client:
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
        # FastAPI builds an app's routes on its first request, mutating dependency metadata that
        # apps share: two apps of one process building at once can trip over each other. Build now.
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).close()
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
