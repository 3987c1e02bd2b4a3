"""The pieces the end-to-end tests run against: a Better Auth server, HTTP servers, request recorders.

Fixtures that start and stop these live in conftest.py; tests import the types from here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

import httpx
import jwt
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from support import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

E2E_DIRECTORY = Path(__file__).parent
BETTER_AUTH_DIRECTORY = E2E_DIRECTORY / "better_auth"
FRONTEND_DIRECTORY = E2E_DIRECTORY / "frontend"
OUTPUT_DIRECTORY = E2E_DIRECTORY.parents[1] / "test-output"  # git-ignored
LOOPBACK = "127.0.0.1"
ADMIN_EMAIL = "admin@example.com"
PASSWORD = "correct-horse-battery-staple"


def unavailable(reason: str) -> NoReturn:
    """Skip for a missing tool, except in CI, where the end-to-end tests must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the end-to-end tests may not be skipped)", pytrace=False)
    pytest.skip(reason)


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's header and claims, unverified: for assertions about what Better Auth issued."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return jwt.get_unverified_header(token), claims


def screenshot_path(name: str) -> Path:
    OUTPUT_DIRECTORY.mkdir(exist_ok=True)
    return OUTPUT_DIRECTORY / name


# ---------------------------------------------------------------- Better Auth


@dataclass
class BetterAuthUser:
    id: str
    email: str
    name: str
    token: str  # from GET /api/auth/token
    session_jwt: str  # from the set-auth-jwt header of GET /api/auth/get-session

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class BetterAuthServer:
    """`node server.mjs` from better_auth/, started and stopped by its process id.

    Requests carry no Origin header: Better Auth refuses a foreign one (403 INVALID_ORIGIN). A
    POST that a session cookie authenticates needs one, the server's own (e2e/oauth.py's consent).
    With `mcp_resource` (MCP_RESOURCE) the server is also the OAuth 2.1 authorization server
    issuing access tokens for that resource; e2e/oauth.py scripts its flows.
    """

    node: Path
    algorithm: str
    log_path: Path
    mcp_resource: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    _admin_exists: bool = False

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        env = {**os.environ, "PORT": str(self.port), "JWT_ALG": self.algorithm, "ADMIN_EMAIL": ADMIN_EMAIL}
        env.pop("MCP_RESOURCE", None)
        if self.mcp_resource is not None:
            env["MCP_RESOURCE"] = self.mcp_resource
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(self.node), "server.mjs"],
            cwd=BETTER_AUTH_DIRECTORY,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._admin_exists = False  # the store is in memory: a new process knows no users
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=2) as client:
            while True:
                if self.process.poll() is not None:
                    self.stop()
                    log = self.log_path.read_text(errors="replace")
                    pytest.fail(f"the Better Auth server exited at start:\n{log}", pytrace=False)
                try:
                    if client.get(f"{self.base_url}/api/auth/jwks").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"the Better Auth server did not serve /api/auth/jwks in 30 s; see {self.log_path}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop, then start on the same port: the same issuer, but no users and a new key."""
        self.stop()
        self.start()

    def jwks(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/api/auth/jwks", timeout=5)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def sign_up(self, name: str, *, email: str | None = None, **extra: Any) -> BetterAuthUser:
        """Sign up by email; the session it opens gives the JWTs."""
        email = email or f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            response = client.post(
                "/api/auth/sign-up/email", json={"email": email, "password": PASSWORD, "name": name, **extra}
            )
            assert response.status_code == 200, response.text
            return self._jwts(client, response.json()["user"], email)

    def sign_in(self, email: str) -> BetterAuthUser:
        """Sign in by email and password; the session it opens gives the JWTs."""
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            response = client.post("/api/auth/sign-in/email", json={"email": email, "password": PASSWORD})
            assert response.status_code == 200, response.text
            return self._jwts(client, response.json()["user"], email)

    def admin(self) -> BetterAuthUser:
        """The user whose email this server makes an admin: signed up on first use."""
        if self._admin_exists:
            return self.sign_in(ADMIN_EMAIL)
        self._admin_exists = True
        return self.sign_up("Admin", email=ADMIN_EMAIL)

    @staticmethod
    def _jwts(client: httpx.Client, user: dict[str, Any], email: str) -> BetterAuthUser:
        assert "better-auth.session_token" in client.cookies, "no session cookie"
        token = client.get("/api/auth/token")
        assert token.status_code == 200, token.text
        session = client.get("/api/auth/get-session")
        assert session.status_code == 200, session.text
        return BetterAuthUser(
            id=user["id"],
            email=email,
            name=user["name"],
            token=token.json()["token"],
            session_jwt=session.headers["set-auth-jwt"],
        )


BetterAuthFactory = Callable[[str], BetterAuthServer]


# ---------------------------------------------------------------- HTTP servers


@contextmanager
def serve(app: ASGIApp, port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a loopback port (0: a free one); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A given port may have been served a moment ago, its closed connections still in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class SeenRequest:
    method: str
    path: str
    origin: str | None
    preflight_for: str | None  # Access-Control-Request-Method, on an OPTIONS preflight


class RecordRequests:
    """ASGI wrapper noting every HTTP request that reaches the app, as the server saw it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[SeenRequest] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
            self.seen.append(
                SeenRequest(
                    scope["method"], scope["path"], headers.get("origin"), headers.get("access-control-request-method")
                )
            )
        await self.app(scope, receive, send)


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """Serve a directory's files on a free loopback port; yields the site's origin."""
    server = ThreadingHTTPServer((LOOPBACK, 0), partial(QuietFiles, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------- the browser


@dataclass
class OfflinePage:
    """A page in a fresh browser context whose requests may go to 127.0.0.1 only."""

    page: Page
    left_host: list[str]  # every request that tried to leave 127.0.0.1; each was aborted
