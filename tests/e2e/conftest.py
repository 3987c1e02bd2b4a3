"""End-to-end fixtures: a real Better Auth server (Node), TaskFlow pointed at it, headless Chromium.

What these tests need from outside Python: `node` and `npm` (the Better Auth server, installed
with `npm ci` from the lock file in better_auth/), and Debian's `chromium` at /usr/bin/chromium,
driven by Playwright, which downloads no browser of its own. Locally a missing tool skips the
tests that need it, saying which; when the `CI` environment variable is set it fails them, so
CI cannot pass by skipping them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from support import free_port

from config import Settings
from e2e.harness import (
    BETTER_AUTH_DIRECTORY,
    LOOPBACK,
    BetterAuthFactory,
    BetterAuthServer,
    OfflinePage,
    serve,
    unavailable,
)
from main import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Request, Route

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# For a closed network: without the background-networking flags Chromium keeps calling home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LOCAL_SCHEMES = {"data", "blob", "about"}


# ---------------------------------------------------------------- Better Auth


@pytest.fixture(scope="session")
def better_auth_installed() -> Path:
    """`npm ci`, skipped while node_modules matches the lock file (the lock's hash is kept there)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed to run the Better Auth server")
    lock = BETTER_AUTH_DIRECTORY / "package-lock.json"
    marker = BETTER_AUTH_DIRECTORY / "node_modules" / ".taskflow-lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not marker.exists() or marker.read_text().strip() != digest:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=BETTER_AUTH_DIRECTORY,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci failed in {BETTER_AUTH_DIRECTORY}:\n{result.stdout}\n{result.stderr}", pytrace=False)
        marker.write_text(digest)
    return Path(node)


@pytest.fixture(scope="package")
def start_better_auth(
    better_auth_installed: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BetterAuthFactory]:
    """`start_better_auth("ES256")`: a new Better Auth server, stopped once the end-to-end tests are done."""
    servers: list[BetterAuthServer] = []
    logs = tmp_path_factory.mktemp("better-auth")

    def start(algorithm: str) -> BetterAuthServer:
        server = BetterAuthServer(better_auth_installed, algorithm, logs / f"{len(servers)}-{algorithm}.log")
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="package")
def better_auth_servers(start_better_auth: BetterAuthFactory) -> BetterAuthFactory:
    """`better_auth_servers("RS256")`: one server per algorithm shared by the end-to-end tests, started on first use."""
    running: dict[str, BetterAuthServer] = {}

    def get(algorithm: str) -> BetterAuthServer:
        if algorithm not in running:
            running[algorithm] = start_better_auth(algorithm)
        return running[algorithm]

    return get


@pytest.fixture
def better_auth(better_auth_servers: BetterAuthFactory) -> BetterAuthServer:
    """The shared Better Auth server with its default algorithm, EdDSA."""
    return better_auth_servers("EdDSA")


@pytest.fixture(scope="package")
def mcp_public_url() -> str:
    """The PUBLIC_URL for TaskFlow in the OAuth tests: a free loopback port chosen up front.

    The authorization server has to know the MCP resource, `{PUBLIC_URL}/mcp`, when it starts,
    before any TaskFlow serves it.
    """
    return f"http://{LOOPBACK}:{free_port()}"


@pytest.fixture(scope="package")
def oauth_server(
    better_auth_installed: Path, tmp_path_factory: pytest.TempPathFactory, mcp_public_url: str
) -> Iterator[BetterAuthServer]:
    """A Better Auth server that is also the OAuth 2.1 authorization server for `{mcp_public_url}/mcp` (EdDSA keys)."""
    log = tmp_path_factory.mktemp("better-auth-oauth") / "oauth-EdDSA.log"
    server = BetterAuthServer(better_auth_installed, "EdDSA", log, mcp_resource=f"{mcp_public_url}/mcp")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def taskflow_for(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[BetterAuthServer], TestClient]]:
    """`taskflow_for(server)`: TaskFlow on a fresh database, told of Better Auth only by AUTH_SERVER_URL."""
    with ExitStack() as stack:

        def start(server: BetterAuthServer) -> TestClient:
            for name in ("JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE", "DEV_AUTH"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("AUTH_SERVER_URL", server.base_url)
            settings = Settings(
                _env_file=None,
                database_url=database_url,
                auto_migrate=False,
                dev_key_file=str(tmp_path / "dev-key.pem"),
            )
            assert settings.jwks_url == f"{server.base_url}/api/auth/jwks"
            return stack.enter_context(TestClient(create_app(settings)))

        yield start


ServedTaskFlow = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def taskflow_at_public_url(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mcp_public_url: str
) -> ServedTaskFlow:
    """`with taskflow_at_public_url(oauth_server, **settings) as url:` TaskFlow served over real HTTP
    at exactly `mcp_public_url` (so its /mcp is the resource the OAuth server issues tokens for),
    on a fresh database, told of Better Auth only by AUTH_SERVER_URL. One at a time: the port is fixed.
    """

    @contextmanager
    def start(server: BetterAuthServer, **settings: object) -> Iterator[str]:
        for name in ("JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE", "DEV_AUTH", "PUBLIC_URL", "MCP_ISSUER"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AUTH_SERVER_URL", server.base_url)
        config = Settings(
            _env_file=None,
            database_url=database_url,
            auto_migrate=False,
            dev_key_file=str(tmp_path / "dev-key.pem"),
            public_url=mcp_public_url,
            **settings,  # type: ignore[arg-type]
        )
        assert config.mcp_resource == f"{mcp_public_url}/mcp"
        assert config.mcp_issuer == f"{server.base_url}/api/auth"
        port = urlsplit(mcp_public_url).port
        assert port is not None
        with serve(create_app(config), port=port) as url:
            assert url == mcp_public_url
            yield url

    return start


# ---------------------------------------------------------------- Chromium


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless Debian Chromium for the end-to-end tests.

    Package scope, not session: while Playwright's sync API is started, the main thread counts
    as running an asyncio loop, and later tests that call `anyio.run` or `asyncio.run` would fail.
    """
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (uv sync)")
    playwright = sync_playwright().start()
    try:
        # launch() gives the browser a new, empty --user-data-dir, and removes it on close.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def offline_page(browser: Browser) -> Iterator[OfflinePage]:
    """A page in a new browser context: requests to 127.0.0.1 go through, any other is aborted and noted."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(15_000)
    left_host: list[str] = []

    def guard(route: Route) -> None:
        if leaves_host(route.request.url):
            left_host.append(route.request.url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    context.route("**/*", guard)
    try:
        yield OfflinePage(context.new_page(), left_host)
    finally:
        context.close()


@pytest.fixture
def watched_page(browser: Browser) -> Iterator[OfflinePage]:
    """A page in a new browser context whose requests are watched, not intercepted: any leaving 127.0.0.1 is noted.

    For CORS tests: while routes are set, Playwright answers CORS preflights itself and the
    server never sees them, which would hide exactly what is under test.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(15_000)
    left_host: list[str] = []

    def watch(request: Request) -> None:
        if leaves_host(request.url):
            left_host.append(request.url)

    context.on("request", watch)
    try:
        yield OfflinePage(context.new_page(), left_host)
    finally:
        context.close()


def leaves_host(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme not in LOCAL_SCHEMES and parts.hostname != LOOPBACK
