"""TaskFlow's benchmark: TaskFlow against a lean raw-SQL reference app, interleaved, on a throwaway database.

    uv run python bench/run.py --smoke                       # seconds: CI's check that it all still runs
    uv run python bench/run.py --duration 2 --rounds 1       # a short look
    uv run python bench/run.py                               # 15 s × 3 rounds, 1 and 2 workers
    uv run python bench/run.py --scale 1000,100000,1000000   # and how TaskFlow scales with the table

One command: it creates a PostgreSQL database (dropped at the end, also on Ctrl-C), serves a JWKS
and signs Better-Auth-shaped tokens, starts TaskFlow and `bench/lean_app.py` under uvicorn with the
same flags, seeds data through TaskFlow's API, drives both with wrk (bench/wrk/*.lua), counts
TaskFlow's SQL statements and round trips per request in-process, and prints markdown tables and
writes JSON. bench/README.md says what every figure means. Never trust one absolute figure on a
shared machine: the ratios are measured interleaved, in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import psycopg2  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WRK_SCRIPTS = BENCH / "wrk"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # TaskFlow's modules, for the in-process counts

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PYTHONS = {
    "3.11": "/root/.pyenv/versions/3.11.7/bin/python",
    "3.12": "/root/.pyenv/versions/3.12.1/bin/python",
    "3.13": "/root/.pyenv/versions/3.13.0/bin/python",
}
TOOL_APPLICATION = "taskflow-bench-tool"  # our own connections, left out of the database CPU figures
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The bench's cast: who does what, in which project.
OWNER, READER, WRITER, CLAIMER = "bench-owner", "bench-reader", "bench-writer", "bench-claimer"
MAIN, WRITES, CLAIMS = "bench", "bench-writes", "bench-claims"
USERS = (OWNER, READER, WRITER, CLAIMER)
PRIORITIES = ("low", "medium", "high", "critical")
# The status mix of bulk-inserted tasks, one entry per 5 %.
BULK_STATUSES = ["pending"] * 8 + ["in_progress"] * 2 + ["review"] + ["completed"] * 8 + ["blocked"]

# Variables TaskFlow (and the lean app) read; the servers get ours, never the caller's.
APP_VARIABLES = {
    "DATABASE_URL",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "AUTO_MIGRATE",
    "AUTH_SERVER_URL",
    "JWKS_URL",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWKS_CACHE_TTL",
    "ALLOWED_ORIGINS",
    "LEASE_SECONDS",
    "LOG_LEVEL",
    "DEV_AUTH",
    "DEV_KEY_FILE",
    "LEAN_POOL_SIZE",
    "VIRTUAL_ENV",
}


class BenchError(Exception):
    """The benchmark cannot go on: a server did not start, the seed failed, a tool is missing."""


def say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 (the benchmark's report goes to stdout)


# ---------------------------------------------------------------- options


@dataclass
class Options:
    admin_url: str
    smoke: bool
    duration: int
    rounds: int
    connections: int
    threads: int
    workers: list[int]
    warmup: int
    tasks: int
    progress_tasks: int
    claim_pool: int
    scale: list[int]
    scale_duration: int
    deep_pages: int
    python: str | None
    compare_pythons: list[str]
    json_path: Path
    compare: Path | None
    lean_pool: int
    taskflow_env: dict[str, str]
    explain: bool


def _count(text: str) -> int:
    """`1000`, `100_000`, `100k`, `1M`."""
    value = text.strip().lower().replace("_", "")
    factor = 1
    if value.endswith("k"):
        factor, value = 1_000, value[:-1]
    elif value.endswith("m"):
        factor, value = 1_000_000, value[:-1]
    return int(float(value) * factor)


def _counts(text: str) -> list[int]:
    return [_count(part) for part in text.split(",") if part.strip()]


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark TaskFlow against a lean raw-SQL reference app (see bench/README.md).",
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI: fails only on errors")
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run (default 15)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts, e.g. 1,2 (default 1,2)")
    parser.add_argument("--warmup", type=int, default=None, help="seconds of unrecorded load per endpoint and app")
    parser.add_argument("--tasks", type=int, default=None, help="tasks seeded through the API (default 1000)")
    parser.add_argument("--progress-tasks", type=int, default=None, help="seeded tasks the reader starts")
    parser.add_argument("--claim-pool", type=int, default=None, help="pending tasks kept ready for claim runs")
    parser.add_argument(
        "--scale", default="", help="table sizes for the scale table, e.g. 1000000 or 1000,100000,1000000 (k/M ok)"
    )
    parser.add_argument("--scale-duration", type=int, default=None, help="seconds per scale-table run (default 5)")
    parser.add_argument("--deep-pages", type=int, default=20, help="pages to follow for the deep list page")
    parser.add_argument("--python", choices=sorted(PYTHONS), help="run both apps under this interpreter")
    parser.add_argument(
        "--compare-pythons", default="", help="e.g. 3.11,3.12,3.13: TaskFlow under each, instead of TaskFlow vs lean"
    )
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json", help="where results go")
    parser.add_argument("--compare", type=Path, help="a previous run's JSON: print its figures ÷ this run's")
    parser.add_argument("--lean-pool", type=int, default=16, help="lean app: connections = threads per worker")
    parser.add_argument(
        "--taskflow-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for TaskFlow"
    )
    parser.add_argument("--no-explain", action="store_true", help="skip EXPLAIN (ANALYZE, BUFFERS)")
    args = parser.parse_args(argv)

    smoke: bool = args.smoke
    extra: dict[str, str] = {}
    for item in args.taskflow_env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--taskflow-env wants KEY=VALUE, got {item!r}")
        extra[key] = value
    compare_pythons = [v.strip() for v in args.compare_pythons.split(",") if v.strip()]
    for version in compare_pythons:
        if version not in PYTHONS:
            parser.error(f"--compare-pythons: unknown version {version!r} (known: {', '.join(sorted(PYTHONS))})")
    tasks = args.tasks if args.tasks is not None else (200 if smoke else 1000)
    options = Options(
        admin_url=os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL),
        smoke=smoke,
        duration=1 if smoke else args.duration,
        rounds=1 if smoke else args.rounds,
        connections=args.connections,
        threads=max(1, min(args.threads, args.connections)),
        workers=[1] if smoke else [int(w) for w in args.workers.split(",") if w.strip()],
        warmup=args.warmup if args.warmup is not None else (0 if smoke else 1),
        tasks=tasks,
        progress_tasks=args.progress_tasks if args.progress_tasks is not None else max(10, tasks // 5),
        claim_pool=args.claim_pool if args.claim_pool is not None else (200 if smoke else 1000),
        scale=[] if smoke else _counts(args.scale),
        scale_duration=args.scale_duration if args.scale_duration is not None else min(5, args.duration),
        deep_pages=args.deep_pages,
        python=args.python,
        compare_pythons=compare_pythons,
        json_path=args.json,
        compare=args.compare,
        lean_pool=args.lean_pool,
        taskflow_env=extra,
        explain=not args.no_explain,
    )
    if options.duration < 1 or options.rounds < 1 or not options.workers or min(options.workers) < 1:
        parser.error("--duration, --rounds and --workers must be at least 1")
    if options.progress_tasks + 1 >= options.tasks:
        parser.error("--progress-tasks must leave some seeded tasks pending")
    return options


# ---------------------------------------------------------------- the machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info(tool: Any) -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    with tool.cursor() as cursor:
        cursor.execute("SELECT version()")
        postgres = cursor.fetchone()[0]
        settings = {}
        for name in ("shared_buffers", "max_connections", "synchronous_commit", "work_mem"):
            cursor.execute(f"SHOW {name}")
            settings[name] = cursor.fetchone()[0]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "memory_mb": int(memory.group(1)) // 1024 if memory else None,
        "cpu_model": cpu.group(1).strip() if cpu else platform.processor(),
        "python": platform.python_version(),
        "postgres": postgres,
        "postgres_settings": settings,
        "wrk": wrk_version[0].strip() if wrk_version else None,
        "kernel": platform.release(),
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
    }


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    changed = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "changed_files": changed.splitlines() if changed else []}


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    say("wrk is missing: installing the Debian package")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=environment)
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk is still missing after apt-get install wrk")
    return found


# ---------------------------------------------------------------- PostgreSQL


def libpq_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in {"postgresql", "postgres"}:
        raise BenchError(f"BENCH_DATABASE_URL must be a postgresql:// URL, got {url!r}")
    return f"postgresql://{rest}"


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(libpq_url(url))._replace(path=f"/{name}"))


def with_address(url: str, host: str, port: int, **params: str) -> str:
    parts = urlsplit(libpq_url(url))
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def pg_address(url: str) -> tuple[str, int]:
    parts = urlsplit(libpq_url(url))
    return parts.hostname or "127.0.0.1", parts.port or 5432


def connect(url: str) -> Any:
    connection = psycopg2.connect(libpq_url(url), application_name=TOOL_APPLICATION)
    connection.autocommit = True
    return connection


@contextlib.contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    name = f"taskflow_bench_{secrets.token_hex(6)}"
    with contextlib.closing(connect(admin_url)) as admin, admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    say(f"database {name} created")
    try:
        yield with_database(admin_url, name)
    finally:
        for attempt in range(3):
            try:
                with contextlib.closing(connect(admin_url)) as admin, admin.cursor() as cursor:
                    cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                say(f"database {name} dropped")
                break
            except psycopg2.Error as exc:
                if attempt == 2:
                    say(f"could not drop database {name}: {exc}")
                time.sleep(1)


# ---------------------------------------------------------------- keys, the JWKS and tokens


class Issuer:
    """An Ed25519 key published at {base_url}/api/auth/jwks, and tokens shaped like Better Auth's."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.kid = f"bench-ed25519-{secrets.token_hex(4)}"
        public = json.loads(jwt.get_algorithm_by_name("EdDSA").to_jwk(self.key.public_key()))
        document = json.dumps({"keys": [{**public, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/api/auth/jwks":
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self._tokens: dict[str, tuple[float, str]] = {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def token(self, subject: str) -> str:
        """A token valid for an hour; reused for half of that."""
        cached = self._tokens.get(subject)
        if cached is not None and time.time() - cached[0] < 1800:
            return cached[1]
        now = int(time.time())
        claims = {
            "sub": subject,
            "id": subject,
            "name": subject.replace("-", " ").title(),
            "email": f"{subject}@example.com",
            "iat": now,
            "exp": now + 3600,
            "iss": self.base_url,
            "aud": self.base_url,
        }
        # Better Auth's header is {"alg", "kid"}: a None "typ" makes PyJWT leave it out.
        token = jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid, "typ": None})
        self._tokens[subject] = (time.time(), token)
        return token

    def headers(self, subject: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject)}"}


# ---------------------------------------------------------------- a round-trip counting relay


class PgRelay:
    """A TCP relay in front of PostgreSQL that records every round trip its clients start.

    psycopg2 speaks the simple query protocol, so each `Query` message is one round trip
    (BEGIN, pings and COMMIT included); extended-protocol `Sync` messages are counted too.
    Connect with sslmode=disable, or there is nothing to read.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._queries: list[str] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self._queries.clear()

    def queries(self) -> list[str]:
        with self._lock:
            return list(self._queries)

    def settled(self, quiet: float = 0.05, limit: float = 1.0) -> list[str]:
        """The queries so far, once none has arrived for `quiet` seconds.

        A pool resets a connection after the response has gone (e.g. `SET
        default_transaction_isolation TO DEFAULT`): that round trip belongs to this request too.
        """
        deadline = time.monotonic() + limit
        seen = -1
        while time.monotonic() < deadline:
            count = len(self.queries())
            if count == seen:
                break
            seen = count
            time.sleep(quiet)
        return self.queries()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buffer = bytearray()
        started = False
        try:
            while data := client.recv(65536):
                buffer += data
                while True:
                    if not started:  # the startup packet (or an SSL/GSS request) has no type byte
                        if len(buffer) < 8:
                            break
                        size = int.from_bytes(buffer[:4], "big")
                        if len(buffer) < size:
                            break
                        code = int.from_bytes(buffer[4:8], "big")
                        del buffer[:size]
                        started = code not in (80877103, 80877104)
                        continue
                    if len(buffer) < 5:
                        break
                    size = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < 1 + size:
                        break
                    kind, payload = bytes(buffer[0:1]), bytes(buffer[5 : 1 + size])
                    del buffer[: 1 + size]
                    if kind in (b"Q", b"S"):
                        text = payload.rstrip(b"\0").decode(errors="replace") if kind == b"Q" else "<sync>"
                        with self._lock:
                            self._queries.append(text)
                server.sendall(data)  # counted before it is sent: the answer cannot overtake the count
        except OSError:
            pass
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def split_statements(query: str) -> list[str]:
    """The statements of one simple-protocol query (ours have no `;` inside literals)."""
    return [part.strip() for part in query.split(";") if part.strip()]


# ---------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_table() -> dict[int, tuple[int, float]]:
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def descendants(root: int, table: dict[int, tuple[int, float]] | None = None) -> list[int]:
    table = table if table is not None else process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def rss_mb(pid: int) -> float | None:
    match = re.search(r"^VmRSS:\s*(\d+) kB", _read(f"/proc/{pid}/status"), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace("\0", " ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_FAST_MODULES: dict[str, bool] = {}


def has_fast_modules(python: str) -> bool:
    """Whether uvloop and httptools import under this interpreter."""
    if python not in _FAST_MODULES:
        result = subprocess.run([python, "-c", "import uvloop, httptools"], capture_output=True)
        _FAST_MODULES[python] = result.returncode == 0
    return _FAST_MODULES[python]


@dataclass
class Server:
    name: str
    kind: str
    python: str
    workers: int
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    def worker_pids(self) -> list[int]:
        """uvicorn's workers: the spawned children, or the process itself with one worker."""
        workers = [pid for pid in self.pids() if "multiprocessing.spawn" in cmdline(pid)]
        return sorted(workers) or [self.process.pid]

    def cpu_seconds(self) -> float:
        table = process_table()
        return sum(table[pid][1] for pid in descendants(self.process.pid, table))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(_read(str(self.log_path)).splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # Workers that outlived their parent are still in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


# ---------------------------------------------------------------- results


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]


@dataclass
class Run:
    phase: str
    app: str
    endpoint: str
    workers: int
    round: int
    threads: int
    connections: int
    duration: int
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]
    non_2xx: int
    unexpected: int
    cpu_ms_per_req: float | None
    db_cpu_ms_per_req: float | None
    size: int | None = None
    capped: bool = False  # threads stopped at max=N responses: req/s is not meaningful
    loadavg: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    script: str
    user: str
    success: int = 200  # the normal answer; anything else (a claim's 204 too) is counted as unexpected


ENDPOINTS = (
    Endpoint("get_one", "GET /api/tasks/{id}", "get_task.lua", READER),
    Endpoint("list", "GET /api/tasks?limit=50", "get_path.lua", READER),
    Endpoint("create", "POST /api/tasks", "create_task.lua", WRITER, 201),
    Endpoint("progress", "POST /api/tasks/{id}/progress", "progress.lua", READER),
    Endpoint("claim", "POST /api/tasks/claim", "claim.lua", CLAIMER),
    Endpoint("create_idempotent", "POST /api/tasks + Idempotency-Key", "create_task_idempotent.lua", WRITER, 201),
)
PYTHON_ENDPOINTS = tuple(e for e in ENDPOINTS if e.key in {"get_one", "list", "create"})
SCALE_ENDPOINTS = (
    Endpoint("get_one", "GET /api/tasks/{id}", "get_task.lua", READER),
    Endpoint("list_first", "GET /api/tasks?limit=50", "get_path.lua", READER),
    Endpoint("list_deep", "GET /api/tasks (deep page)", "get_path.lua", READER),
    Endpoint("claim_next", "POST /api/tasks/claim", "claim.lua", READER),
    Endpoint("audit_feed", "GET /api/tasks/{id}/audit", "get_path.lua", READER),
)


@dataclass
class Seed:
    ids_file: Path
    progress_ids: list[int]
    progress_file: Path
    audit_task_id: int
    sample_id: int


# ---------------------------------------------------------------- the benchmark


class Bench:
    def __init__(
        self, options: Options, db_url: str, issuer: Issuer, workdir: Path, stack: contextlib.ExitStack
    ) -> None:
        self.options = options
        self.db_url = db_url
        self.db_name = urlsplit(db_url).path.lstrip("/")
        self.issuer = issuer
        self.workdir = workdir
        self.stack = stack
        self.tool = stack.enter_context(contextlib.closing(connect(db_url)))
        self.admin = stack.enter_context(contextlib.closing(connect(options.admin_url)))
        self.runs: list[Run] = []
        self.failures: list[str] = []
        self.warnings: list[str] = []
        self.seed: Seed | None = None
        self.report: dict[str, Any] = {}
        self.servers: list[Server] = []
        self.bulk_counter = 0
        stack.callback(self._stop_all)

    # ------------------------------------------------------------ servers

    def _stop_all(self) -> None:
        for server in list(self.servers):
            server.stop()
        self.servers.clear()

    def start(self, kind: str, python: str, workers: int, name: str | None = None) -> Server:
        port = free_port()
        app = "main:app" if kind == "taskflow" else "bench.lean_app:app"
        command = [python, "-m", "uvicorn", app, "--workers", str(workers), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--no-access-log"]
        if has_fast_modules(python):
            command += ["--loop", "uvloop", "--http", "httptools"]
        environment = {key: value for key, value in os.environ.items() if key not in APP_VARIABLES}
        environment.update(
            DATABASE_URL=self.db_url,
            AUTH_SERVER_URL=self.issuer.base_url,
            LOG_LEVEL="WARNING",
            AUTO_MIGRATE="true",
            DEV_AUTH="false",
            PYTHONDONTWRITEBYTECODE="1",
        )
        if kind == "taskflow":
            environment.update(self.options.taskflow_env)
        else:
            environment["LEAN_POOL_SIZE"] = str(self.options.lean_pool)
        name = name or kind
        log_path = self.workdir / f"{name}-w{workers}-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Server(name, kind, python, workers, port, process, log_path, command)
        self.servers.append(server)
        self._wait_ready(server)
        return server

    def _wait_ready(self, server: Server, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                if server.process.poll() is not None:
                    raise BenchError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{server.name} did not answer /health within {timeout:.0f} s:\n{server.log_tail()}"
                    )
                try:
                    if client.get(f"{server.url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        # Every worker, not just the first to answer, has finished its start-up (uvicorn logs it
        # at INFO; if the app's logging hides that, go on after a while and say so).
        patience = time.monotonic() + 20
        while _read(str(server.log_path)).count("Application startup complete") < server.workers:
            if server.process.poll() is not None:
                raise BenchError(f"{server.name}: a worker failed to start:\n{server.log_tail()}")
            if time.monotonic() > patience:
                self.warnings.append(f"{server.name}: could not see every worker start in its log; went on")
                break
            time.sleep(0.1)

    def stop(self, *servers: Server) -> None:
        for server in servers:
            server.stop()
            if server in self.servers:
                self.servers.remove(server)

    # ------------------------------------------------------------ SQL helpers

    def sql(self, statement: str, params: dict[str, Any] | Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.tool.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    def backend_pids(self) -> list[int]:
        with self.admin.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend' "
                "AND application_name <> %s",
                (self.db_name, TOOL_APPLICATION),
            )
            return [row[0] for row in cursor.fetchall()]

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds of the bench database's backends (ours left out), by pid."""
        cpu = {}
        for pid in self.backend_pids():
            stat = _stat(pid)
            if stat is not None:
                cpu[pid] = stat[1]
        return cpu

    def has_priority_rank(self) -> bool:
        rows = self.sql(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'task' AND column_name = 'priority_rank')"
        )
        return bool(rows[0][0])

    # ------------------------------------------------------------ the API, for seeding and checks

    def call(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        user: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        expect: Sequence[int] = (200, 201, 204),
    ) -> httpx.Response:
        answer = client.request(method, path, json=body, headers={**self.issuer.headers(user), **(headers or {})})
        if answer.status_code not in expect:
            raise BenchError(f"{method} {path} as {user}: {answer.status_code} {answer.text[:500]}")
        return answer

    # ------------------------------------------------------------ seeding

    def seed_data(self, taskflow: Server) -> Seed:
        options = self.options
        started = time.monotonic()
        with httpx.Client(base_url=taskflow.url, timeout=60) as client:
            for user in USERS:  # a human's worker row appears on its first request
                self.call(client, "GET", "/api/tasks?limit=1", user)
            members = {MAIN: READER, WRITES: WRITER, CLAIMS: CLAIMER}
            for slug, member in members.items():
                self.call(client, "POST", "/api/projects", OWNER, body={"slug": slug, "name": slug.title()})
                self.call(client, "POST", f"/api/projects/{slug}/members", OWNER, body={"worker_id": member})
            due = datetime.now(UTC) + timedelta(days=30)

            def create(index: int) -> int:
                body: dict[str, Any] = {
                    "title": f"Seed task {index}",
                    "project_slug": MAIN,
                    "priority": PRIORITIES[index % 4],
                }
                if index % 3 == 0:
                    body["due_date"] = (due + timedelta(hours=index)).isoformat()
                if index % 4 == 0:
                    body["description"] = f"What seed task {index} is about. " * 4
                task_id: int = self.call(client, "POST", "/api/tasks", READER, body=body).json()["id"]
                return task_id

            with ThreadPoolExecutor(8) as pool:
                ids = sorted(pool.map(create, range(options.tasks)))
            progress_ids = ids[: options.progress_tasks]

            def start(task_id: int) -> None:
                self.call(client, "POST", f"/api/tasks/{task_id}/start", READER)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(start, progress_ids))
            audit_task = ids[options.progress_tasks]  # a finished task: claims never pick it
            self.call(client, "POST", f"/api/tasks/{audit_task}/start", READER)
            self.call(client, "POST", f"/api/tasks/{audit_task}/progress?percent=50&note=half", READER)
            self.call(client, "POST", f"/api/tasks/{audit_task}/complete", READER)
        ids_file = self.workdir / "visible-ids.txt"
        ids_file.write_text("\n".join(map(str, ids)) + "\n")
        progress_file = self.workdir / "progress-ids.txt"
        progress_file.write_text("\n".join(map(str, progress_ids)) + "\n")
        self.refill_claims(options.claim_pool)
        say(
            f"seeded {options.tasks} tasks through the API ({len(progress_ids)} in progress), "
            f"{options.claim_pool} claimable, in {time.monotonic() - started:.1f} s"
        )
        self.seed = Seed(ids_file, progress_ids, progress_file, audit_task, ids[-1])
        self.report["seed"] = {
            "tasks": options.tasks,
            "progress_tasks": len(progress_ids),
            "claim_pool": options.claim_pool,
            "audit_task_id": audit_task,
            "users": list(USERS),
            "projects": {MAIN: READER, WRITES: WRITER, CLAIMS: CLAIMER},
        }
        return self.seed

    def refill_claims(self, target: int, connection: Any = None) -> int:
        """Top the claim project up to `target` pending tasks; how many were added."""
        statement = (
            "INSERT INTO task (title, status, priority, progress_percent, project_slug, created_by, "
            "created_at, updated_at, version) "
            "SELECT 'Claimable ' || g, 'pending', (ARRAY['low','medium','high','critical'])[1 + mod(g, 4)], 0, "
            "%(slug)s, %(owner)s, now(), now(), 1 FROM generate_series(1, greatest(0, %(target)s - "
            "(SELECT count(*) FROM task WHERE project_slug = %(slug)s AND status = 'pending'))) g"
        )
        with (connection or self.tool).cursor() as cursor:
            cursor.execute(statement, {"slug": CLAIMS, "owner": OWNER, "target": target})
            added: int = cursor.rowcount
            return added

    def reset_claims(self) -> None:
        """Before a claim run: only pending tasks in the claim project, `claim_pool` of them."""
        self.sql("DELETE FROM task WHERE project_slug = %s AND status <> 'pending'", (CLAIMS,))
        self.refill_claims(self.options.claim_pool)

    @contextlib.contextmanager
    def claim_pool_kept_full(self) -> Iterator[None]:
        """During a claim run, keep the pool at its size, so every app claims from the same table."""
        stop = threading.Event()
        connection = connect(self.db_url)

        def keep() -> None:
            while not stop.wait(0.05):
                try:
                    self.refill_claims(self.options.claim_pool, connection)
                except psycopg2.Error as exc:
                    self.warnings.append(f"claim pool refill failed: {exc}")
                    return

        thread = threading.Thread(target=keep, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            connection.close()

    # ------------------------------------------------------------ checks: the two apps do the same job

    def check_apps(self, taskflow: Server, lean: Server) -> None:
        assert self.seed is not None
        from models import TaskRead

        fields = set(TaskRead.model_fields)
        problems: list[str] = []
        task_id = self.seed.sample_id
        bodies: dict[str, Any] = {}
        for server in (taskflow, lean):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                one = self.call(client, "GET", f"/api/tasks/{task_id}", READER)
                page = self.call(client, "GET", "/api/tasks?limit=50", READER)
                key = f"check-{server.name}-{secrets.token_hex(4)}"
                created = self.call(
                    client,
                    "POST",
                    "/api/tasks",
                    WRITER,
                    body={"title": "Check", "project_slug": WRITES},
                    headers={"Idempotency-Key": key},
                )
                replay = self.call(
                    client,
                    "POST",
                    "/api/tasks",
                    WRITER,
                    body={"title": "Check", "project_slug": WRITES},
                    headers={"Idempotency-Key": key},
                )
                progress = self.call(
                    client, "POST", f"/api/tasks/{self.seed.progress_ids[0]}/progress?percent=7", READER
                )
                self.reset_claims()
                claim = self.call(client, "POST", "/api/tasks/claim", CLAIMER, expect=(200,))
                # The writer is no member of the reader's project: the task does not exist for them.
                self.call(client, "GET", f"/api/tasks/{task_id}", WRITER, expect=(404,))
            bodies[server.name] = one.json()
            if set(one.json()) != fields:
                problems.append(
                    f"{server.name}: GET one has fields {sorted(one.json())}, TaskRead has {sorted(fields)}"
                )
            if one.headers.get("etag") != f'"{one.json()["version"]}"':
                problems.append(f"{server.name}: GET one's ETag is {one.headers.get('etag')}")
            if replay.content != created.content or replay.status_code != created.status_code:
                problems.append(f"{server.name}: an Idempotency-Key replay did not return the first answer")
            for name, answer in (("progress", progress), ("claim", claim)):
                if set(answer.json()) != fields:
                    problems.append(f"{server.name}: {name} answers fields {sorted(answer.json())}")
            if len(page.json()) != 50 or "x-total-count" not in page.headers:
                problems.append(f"{server.name}: the list page has {len(page.json())} rows")
            bodies[f"{server.name}-list"] = ([t["id"] for t in page.json()], page.headers.get("x-total-count"))
        normalized = {name: _normalized(body) for name, body in bodies.items() if not name.endswith("-list")}
        if normalized.get(taskflow.name) != normalized.get(lean.name):
            problems.append(f"GET one differs: {bodies[taskflow.name]} vs {bodies[lean.name]}")
        if bodies[f"{taskflow.name}-list"] != bodies[f"{lean.name}-list"]:
            problems.append("the first list page (ids or X-Total-Count) differs between TaskFlow and lean")
        self.report["checks"] = {"problems": problems, "sample_task": bodies}
        if problems:
            for problem in problems:
                self.warnings.append(f"check: {problem}")
            say("checks: " + "; ".join(problems))
        else:
            say("checks: both apps answer the same JSON shape, the same page, replay the same body")

    # ------------------------------------------------------------ wrk

    def wrk(
        self, url: str, endpoint: Endpoint, args: list[str], *, threads: int, connections: int, duration: int
    ) -> WrkResult:
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPTS / endpoint.script),
            "-H",
            f"Authorization: Bearer {self.issuer.token(endpoint.user)}",
            url,
            "--",
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
        line = next((row for row in result.stdout.splitlines() if row.startswith("BENCH_JSON ")), None)
        if result.returncode != 0 or line is None:
            raise BenchError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout[-2000:]}")
        data = json.loads(line.removeprefix("BENCH_JSON "))
        seconds = data["duration_us"] / 1e6
        latency = data["latency_us"]
        return WrkResult(
            requests=data["requests"],
            duration_s=seconds,
            rps=data["requests"] / seconds if seconds else 0.0,
            p50_ms=latency["p50"] / 1000,
            p90_ms=latency["p90"] / 1000,
            p99_ms=latency["p99"] / 1000,
            max_ms=latency["max"] / 1000,
            statuses=data["statuses"],
            errors=data["errors"],
        )

    def script_args(self, endpoint: Endpoint, *, ids_file: Path | None = None, path: str | None = None) -> list[str]:
        assert self.seed is not None
        if endpoint.key in {"get_one"}:
            return [f"ids={ids_file or self.seed.ids_file}"]
        if endpoint.key == "progress":
            return [f"ids={self.seed.progress_file}"]
        if endpoint.key in {"create", "create_idempotent"}:
            return [f"slug={WRITES}", f"prefix=bench-{secrets.token_hex(6)}"]
        if endpoint.script == "get_path.lua":
            return [f"path={path or '/api/tasks?limit=50'}"]
        return []

    def measure(
        self,
        phase: str,
        server: Server,
        endpoint: Endpoint,
        args: list[str],
        *,
        round_number: int,
        threads: int | None = None,
        connections: int | None = None,
        duration: int | None = None,
        size: int | None = None,
        record: bool = True,
    ) -> Run:
        threads = threads or self.options.threads
        connections = connections or self.options.connections
        duration = duration or self.options.duration
        if endpoint.key == "claim":
            self.reset_claims()
        loadavg = _read("/proc/loadavg").split()[:3]
        cpu_before = server.cpu_seconds()
        db_before = self.backend_cpu()
        keeper = self.claim_pool_kept_full() if endpoint.key == "claim" else contextlib.nullcontext()
        with keeper:
            result = self.wrk(server.url, endpoint, args, threads=threads, connections=connections, duration=duration)
        cpu_after = server.cpu_seconds()
        db_after = self.backend_cpu()
        db_seconds = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} died during {endpoint.key}:\n{server.log_tail()}")
        non_2xx = sum(n for code, n in result.statuses.items() if not code.startswith("2"))
        unexpected = sum(n for code, n in result.statuses.items() if code != str(endpoint.success))
        per_request = 1000 / result.requests if result.requests else None
        run = Run(
            phase=phase,
            app=server.name,
            endpoint=endpoint.key,
            workers=server.workers,
            round=round_number,
            threads=threads,
            connections=connections,
            duration=duration,
            requests=result.requests,
            rps=result.rps,
            p50_ms=result.p50_ms,
            p90_ms=result.p90_ms,
            p99_ms=result.p99_ms,
            max_ms=result.max_ms,
            statuses=result.statuses,
            errors=result.errors,
            non_2xx=non_2xx,
            unexpected=unexpected,
            cpu_ms_per_req=(cpu_after - cpu_before) * per_request if per_request else None,
            db_cpu_ms_per_req=db_seconds * per_request if per_request else None,
            size=size,
            capped=_capped(args, threads, result.requests),
            loadavg=loadavg,
        )
        self._judge(run)  # a warm-up's errors count too
        if record:
            self.runs.append(run)
        return run

    def _judge(self, run: Run) -> None:
        where = f"{run.phase} {run.app} {run.endpoint} w{run.workers} r{run.round}"
        if run.non_2xx:
            bad = {code: n for code, n in run.statuses.items() if not code.startswith("2")}
            self.failures.append(f"{where}: non-2xx answers {bad}")
        broken = {kind: n for kind, n in run.errors.items() if kind in {"connect", "read", "write"} and n}
        if broken:
            self.failures.append(f"{where}: socket errors {broken}")
        if run.errors.get("timeout"):
            self.warnings.append(f"{where}: {run.errors['timeout']} requests timed out (10 s)")
        if run.requests == 0:
            self.failures.append(f"{where}: no request completed")

    @staticmethod
    def line(run: Run) -> str:
        cpu = f"{run.cpu_ms_per_req:.2f}" if run.cpu_ms_per_req is not None else "-"
        db = f"{run.db_cpu_ms_per_req:.2f}" if run.db_cpu_ms_per_req is not None else "-"
        extra = f" unexpected {run.unexpected} {run.statuses}" if run.unexpected else ""
        return (
            f"  {run.app:<16} {run.endpoint:<18} w{run.workers} c{run.connections:<3} {run.rps:8.0f} req/s  "
            f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:7.2f} ms  cpu {cpu} ms/req  db {db} ms/req{extra}"
        )

    # ------------------------------------------------------------ memory

    def memory_snapshot(self, servers: Sequence[Server], phase: str, round_number: int) -> None:
        snapshot = self.report.setdefault("memory", [])
        for server in servers:
            for index, pid in enumerate(server.worker_pids()):
                snapshot.append(
                    {
                        "phase": phase,
                        "app": server.name,
                        "workers": server.workers,
                        "worker": index,
                        "pid": pid,
                        "round": round_number,
                        "rss_mb": rss_mb(pid),
                    }
                )

    # ------------------------------------------------------------ phases

    def interleaved(
        self,
        phase: str,
        servers: Sequence[Server],
        endpoints: Sequence[Endpoint],
    ) -> None:
        """Rounds of every endpoint on every server back to back, rotating who goes first each round."""
        options = self.options
        if options.warmup:
            for endpoint in endpoints:
                for server in servers:
                    self.measure(
                        phase,
                        server,
                        endpoint,
                        self.script_args(endpoint),
                        round_number=0,
                        duration=options.warmup,
                        record=False,
                    )
        self.memory_snapshot(servers, phase, 0)
        for round_number in range(1, options.rounds + 1):
            shift = (round_number - 1) % len(servers)
            order = list(servers[shift:]) + list(servers[:shift])
            say(
                f"round {round_number}/{options.rounds}, {servers[0].workers} worker(s): {' then '.join(s.name for s in order)}"
            )
            for endpoint in endpoints:
                for server in order:
                    run = self.measure(phase, server, endpoint, self.script_args(endpoint), round_number=round_number)
                    say(self.line(run))
            self.memory_snapshot(servers, phase, round_number)

    def main_phase(self, python: str) -> None:
        for index, workers in enumerate(self.options.workers):
            taskflow = self.start("taskflow", python, workers)
            lean = self.start("lean", python, workers)
            try:
                say(
                    f"TaskFlow on {taskflow.url} and lean on {lean.url}, {workers} worker(s) each: {' '.join(taskflow.command[1:])}"
                )
                if index == 0:
                    self.check_apps(taskflow, lean)
                self.interleaved("main", [taskflow, lean], ENDPOINTS)
            finally:
                self.stop(taskflow, lean)

    def pythons_phase(self, interpreters: dict[str, str]) -> None:
        for workers in self.options.workers:
            servers = [
                self.start("taskflow", python, workers, name=f"taskflow-{v}") for v, python in interpreters.items()
            ]
            try:
                self.interleaved("pythons", servers, PYTHON_ENDPOINTS)
            finally:
                self.stop(*servers)

    # ------------------------------------------------------------ in-process: statements and round trips

    def count_statements(self) -> None:
        """One request of each kind, after a warm-up one, in-process, through the counting relay."""
        assert self.seed is not None
        host, port = pg_address(self.db_url)
        relay = PgRelay(host, port)
        relayed = with_address(self.db_url, "127.0.0.1", relay.port, sslmode="disable", gssencmode="disable")
        try:
            taskflow = self._count_taskflow(relay, relayed)
            lean = self._count_lean(relay, relayed)
        finally:
            relay.close()
        self.report["statements"] = {"taskflow": taskflow, "lean": lean}

    def _requests(self) -> list[tuple[str, str, str, str, dict[str, Any] | None, bool]]:
        """(kind, method, path, user, body, idempotent) for the in-process counts."""
        assert self.seed is not None
        return [
            ("get_one", "GET", f"/api/tasks/{self.seed.sample_id}", READER, None, False),
            ("list", "GET", "/api/tasks?limit=50", READER, None, False),
            ("create", "POST", "/api/tasks", WRITER, {"title": "Counted", "project_slug": WRITES}, False),
            ("progress", "POST", f"/api/tasks/{self.seed.progress_ids[-1]}/progress?percent=42", READER, None, False),
            ("claim", "POST", "/api/tasks/claim", CLAIMER, None, False),
            ("create_idempotent", "POST", "/api/tasks", WRITER, {"title": "Counted", "project_slug": WRITES}, True),
        ]

    def _drive(
        self,
        client: Any,
        relay: PgRelay,
        statements: list[tuple[str, Any]] | None,
    ) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        for kind, method, path, user, body, idempotent in self._requests():
            self.refill_claims(self.options.claim_pool)
            for attempt in ("warm-up", "counted"):
                headers = self.issuer.headers(user)
                if idempotent:
                    headers["Idempotency-Key"] = f"count-{secrets.token_hex(8)}"
                if statements is not None:
                    statements.clear()
                relay.reset()
                answer = client.request(method, path, json=body, headers=headers)
                if answer.status_code >= 300:
                    raise BenchError(f"in-process {kind}: {answer.status_code} {answer.text[:300]}")
                queries = relay.settled()
                if attempt == "counted":
                    counts[kind] = self._tally(queries, statements)
                    if idempotent:  # and the replay of that same request
                        relay.reset()
                        if statements is not None:
                            statements.clear()
                        again = client.request(method, path, json=body, headers=headers)
                        if again.status_code >= 300:
                            raise BenchError(f"in-process replay: {again.status_code} {again.text[:300]}")
                        counts["create_idempotent_replay"] = self._tally(relay.settled(), statements)
        return counts

    @staticmethod
    def _tally(queries: list[str], statements: list[tuple[str, Any]] | None) -> dict[str, Any]:
        parts = [part for query in queries for part in split_statements(query)]
        words = [part.split(None, 1)[0].upper() if part else "" for part in parts]
        control = sum(1 for word in words if word in {"BEGIN", "COMMIT", "ROLLBACK"})
        entry: dict[str, Any] = {
            "round_trips": len(queries),
            "begin": words.count("BEGIN"),
            "commit": words.count("COMMIT"),
            "rollback": words.count("ROLLBACK"),
            "pings": sum(1 for part in parts if part.strip().upper() == "SELECT 1"),
            "wire": [query if len(query) < 300 else query[:300] + "…" for query in queries],
        }
        if statements is not None:
            entry["statements"] = len(statements)
            writes = any(_writes(statement) for statement, _ in statements)
            entry["writes"] = writes
            entry["estimate"] = len(statements) + (2 if writes else 0)
            entry["sql"] = [" ".join(s.split())[:300] for s, _ in statements]
        else:
            entry["statements"] = len(parts) - control
        return entry

    def _count_taskflow(self, relay: PgRelay, relayed_url: str) -> dict[str, Any]:
        from fastapi.testclient import TestClient
        from sqlalchemy import event

        from config import Settings
        from main import create_app

        settings = Settings(
            _env_file=None,
            database_url=relayed_url,
            auth_server_url=self.issuer.base_url,
            auto_migrate=False,
            log_level="WARNING",
            **_settings_overrides(self.options.taskflow_env),
        )
        statements: list[tuple[str, Any]] = []

        def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            statements.append((statement, parameters))

        with TestClient(create_app(settings)) as client:
            engine = client.app.state.engine  # type: ignore[attr-defined]
            event.listen(engine, "before_cursor_execute", listen)
            try:
                return self._drive(client, relay, statements)
            finally:
                event.remove(engine, "before_cursor_execute", listen)

    def _count_lean(self, relay: PgRelay, relayed_url: str) -> dict[str, Any]:
        from fastapi.testclient import TestClient

        from bench.lean_app import LeanSettings, create_app

        settings = LeanSettings(
            database_url=relayed_url,
            jwks_url=f"{self.issuer.base_url}/api/auth/jwks",
            issuer=self.issuer.base_url,
            audience=self.issuer.base_url,
            pool_size=2,
        )
        with TestClient(create_app(settings)) as client:
            return self._drive(client, relay, None)

    # ------------------------------------------------------------ the scale table

    def grow(self, size: int) -> None:
        """Bulk-insert tasks (and their 'task.created' audit rows) until the main project holds `size`."""
        have = self.sql("SELECT count(*) FROM task WHERE project_slug = %s", (MAIN,))[0][0]
        missing = size - have
        started = time.monotonic()
        if missing <= 0:  # measured in the same state as the bigger sizes: vacuumed, fresh statistics
            self.sql("VACUUM (ANALYZE) task")
            self.sql("VACUUM (ANALYZE) audit_log")
            return
        statuses = "ARRAY[" + ",".join(f"'{s}'" for s in BULK_STATUSES) + "]"
        statement = (
            "WITH g AS (SELECT i, (" + statuses + ")[1 + mod(i, " + str(len(BULK_STATUSES)) + ")] AS status "
            "FROM generate_series(%(first)s, %(last)s) AS i), "
            "new AS (INSERT INTO task (title, description, status, priority, progress_percent, assigned_to, "
            "project_slug, due_date, created_by, created_at, updated_at, version) "
            "SELECT 'Bulk task ' || i, CASE WHEN mod(i, 5) = 0 THEN 'What bulk task ' || i || ' is about' END, status, "
            "(ARRAY['low','medium','high','critical'])[1 + mod(i, 4)], "
            "CASE status WHEN 'completed' THEN 100 WHEN 'in_progress' THEN mod(i, 100) WHEN 'review' THEN 90 ELSE 0 END, "
            "CASE WHEN status IN ('in_progress', 'review', 'completed') THEN %(owner)s END, "
            "%(slug)s, CASE WHEN mod(i, 3) = 0 THEN %(base)s + mod(i, 90) * interval '1 day' END, "
            "CASE WHEN mod(i, 2) = 0 THEN %(owner)s ELSE %(reader)s END, "
            "%(base)s - i * interval '1 second', %(base)s - i * interval '1 second' + interval '1 hour', 1 FROM g "
            "RETURNING id, title, priority, project_slug, created_by, created_at) "
            'INSERT INTO audit_log (task_id, project_slug, actor_id, actor_type, owner_id, action, context, "timestamp") '
            "SELECT id, project_slug, created_by, 'human', NULL, 'task.created', "
            "jsonb_build_object('title', jsonb_build_array(NULL, title), 'priority', jsonb_build_array(NULL, priority), "
            "'project_slug', jsonb_build_array(NULL, project_slug)), created_at FROM new"
        )
        base = datetime.now(UTC) - timedelta(days=1)
        chunk = 100_000
        done = 0
        while done < missing:
            count = min(chunk, missing - done)
            first = self.bulk_counter + 1
            self.bulk_counter += count
            self.sql(
                statement,
                {
                    "first": first,
                    "last": self.bulk_counter,
                    "owner": OWNER,
                    "reader": READER,
                    "slug": MAIN,
                    "base": base,
                },
            )
            done += count
            if missing > chunk:
                say(f"  bulk insert: {done:,}/{missing:,} tasks")
        self.sql("VACUUM (ANALYZE) task")
        self.sql("VACUUM (ANALYZE) audit_log")
        say(
            f"the project now holds {size:,} tasks (+{missing:,} in {time.monotonic() - started:.1f} s, then VACUUM ANALYZE)"
        )

    def deep_page(self, taskflow: Server) -> tuple[str, str]:
        """The path of a deep list page: follow `Link: rel="next"` up to --deep-pages times, else use offset."""
        path = "/api/tasks?limit=50"
        with httpx.Client(base_url=taskflow.url, timeout=120) as client:
            answer = self.call(client, "GET", path, READER)
            if _next_link(answer.headers.get("link")) is None:
                total = int(answer.headers.get("x-total-count", "0"))
                offset = max(0, min(self.options.deep_pages * 50, total - 50))
                return f"/api/tasks?limit=50&offset={offset}", f"offset={offset}"
            followed = 0
            while followed < self.options.deep_pages:
                link = _next_link(answer.headers.get("link"))
                if link is None:
                    break
                parts = urlsplit(link)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                answer = self.call(client, "GET", path, READER)
                followed += 1
            return path, f"Link rel=next followed {followed} times"

    def revert_claims(self) -> int:
        assert self.seed is not None
        rows = self.sql(
            "UPDATE task SET status = 'pending', assigned_to = NULL, lease_expires_at = NULL, lease_seconds = NULL "
            "WHERE project_slug = %(slug)s AND status = 'in_progress' AND assigned_to = %(reader)s "
            "AND NOT (id = ANY(%(keep)s)) RETURNING id",
            {"slug": MAIN, "reader": READER, "keep": self.seed.progress_ids},
        )
        return len(rows)

    def scale_phase(self, python: str) -> None:
        assert self.seed is not None
        options = self.options
        sizes = sorted({options.tasks, *[s for s in options.scale if s >= options.tasks]})
        workers = max(options.workers)
        taskflow = self.start("taskflow", python, workers)
        table: dict[str, Any] = {"sizes": sizes, "workers": workers, "duration": options.scale_duration, "rows": []}
        self.report["scale"] = table
        try:
            for size in sizes:
                self.grow(size)
                sample = self.sql("SELECT id FROM task WHERE project_slug = %s ORDER BY random() LIMIT 20000", (MAIN,))
                ids_file = self.workdir / f"ids-{size}.txt"
                ids_file.write_text("\n".join(str(row[0]) for row in sample) + "\n")
                deep_path, how = self.deep_page(taskflow)
                table.setdefault("deep_pages", {})[str(size)] = {"path": deep_path, "how": how}
                say(f"scale {size:,}: deep page {deep_path} ({how})")
                for endpoint in SCALE_ENDPOINTS:
                    for threads, connections in ((1, 1), (options.threads, options.connections)):
                        args = self._scale_args(endpoint, ids_file, deep_path, threads)
                        run = self.measure(
                            "scale",
                            taskflow,
                            endpoint,
                            args,
                            round_number=1,
                            threads=threads,
                            connections=connections,
                            duration=options.scale_duration,
                            size=size,
                        )
                        if endpoint.key == "claim_next":
                            self.revert_claims()
                        say(self.line(run))
                        table["rows"].append(asdict(run))
        finally:
            self.stop(taskflow)

    def _scale_args(self, endpoint: Endpoint, ids_file: Path, deep_path: str, threads: int) -> list[str]:
        assert self.seed is not None
        if endpoint.key == "get_one":
            return [f"ids={ids_file}"]
        if endpoint.key == "list_first":
            return ["path=/api/tasks?limit=50"]
        if endpoint.key == "list_deep":
            return [f"path={deep_path}"]
        if endpoint.key == "audit_feed":
            return [f"path=/api/tasks/{self.seed.audit_task_id}/audit"]
        # claim_next: stop before the table runs out of claimable tasks (they are put back after)
        ready = self.sql(
            "SELECT count(*) FROM task WHERE project_slug = %s AND status = 'pending' AND assigned_to IS NULL", (MAIN,)
        )[0][0]
        cap = max(threads, min(ready // 2, 50_000))
        return [f"max={max(1, cap // threads)}"]

    # ------------------------------------------------------------ EXPLAIN

    def explain(self) -> None:
        """EXPLAIN (ANALYZE, BUFFERS) what TaskFlow (and lean) send for the list and claim requests."""
        from fastapi.testclient import TestClient
        from sqlalchemy import event

        from config import Settings
        from main import create_app

        assert self.seed is not None
        size = self.sql("SELECT count(*) FROM task WHERE project_slug = %s", (MAIN,))[0][0]
        settings = Settings(
            _env_file=None,
            database_url=self.db_url,
            auth_server_url=self.issuer.base_url,
            auto_migrate=False,
            log_level="WARNING",
            **_settings_overrides(self.options.taskflow_env),
        )
        captured: list[tuple[str, Any]] = []

        def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            captured.append((statement, parameters))

        deep = (self.report.get("scale", {}).get("deep_pages") or {}).get(str(size), {}).get("path")
        requests = [("list", "GET", "/api/tasks?limit=50"), ("claim", "POST", "/api/tasks/claim")]
        if deep:
            requests.insert(1, ("list_deep", "GET", deep))
        plans: dict[str, list[dict[str, Any]]] = {}
        with TestClient(create_app(settings)) as client:
            engine = client.app.state.engine  # type: ignore[attr-defined]
            event.listen(engine, "before_cursor_execute", listen)
            try:
                for kind, method, path in requests:
                    captured.clear()
                    answer = client.request(method, path, headers=self.issuer.headers(READER))
                    if answer.status_code >= 300:
                        raise BenchError(f"explain {kind}: {answer.status_code} {answer.text[:300]}")
                    plans[kind] = [
                        self._plan(statement, parameters)
                        for statement, parameters in captured
                        if _worth_explaining(statement)
                    ]
            finally:
                event.remove(engine, "before_cursor_execute", listen)
        self.revert_claims()
        plans.update(self._lean_plans())
        self.revert_claims()
        self.report["explain"] = {"size": size, "plans": plans}

    def _plan(self, statement: str, parameters: Any) -> dict[str, Any]:
        with self.tool.cursor() as cursor:
            sql = cursor.mogrify(statement, parameters).decode()
            cursor.execute("BEGIN")
            try:
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
                plan = "\n".join(row[0] for row in cursor.fetchall())
            finally:
                cursor.execute("ROLLBACK")
        return {"sql": sql, "plan": plan}

    def _lean_plans(self) -> dict[str, list[dict[str, Any]]]:
        from bench.lean_app import RANK_CASE, Statements

        statements = Statements("{t}.priority_rank" if self.has_priority_rank() else RANK_CASE)
        list_params = {"actor": READER, "limit": 50, "offset": 0}
        claim_params = {"actor": READER, "request_id": "explain"}
        return {
            "lean_list": [self._plan(statements.list[False], list_params)],
            "lean_claim": [self._plan(statements.claim[False], claim_params)],
        }


def _writes(statement: str) -> bool:
    """Whether a statement changes rows: a plain INSERT, UPDATE or DELETE, or one in a CTE (`WITH change AS (UPDATE …)`)."""
    words = statement.upper().split()
    dml = {"INSERT", "UPDATE", "DELETE"}
    return bool(words) and (words[0] in dml or (words[0] == "WITH" and bool(dml & set(words))))


def _capped(args: Sequence[str], threads: int, requests: int) -> bool:
    cap = next((int(arg[4:]) for arg in args if arg.startswith("max=")), 0)
    return cap > 0 and requests >= cap * threads


def _settings_overrides(extra: dict[str, str]) -> dict[str, Any]:
    """--taskflow-env values as Settings keyword arguments (DB_POOL_SIZE → db_pool_size)."""
    return {key.lower(): value for key, value in extra.items()}


def _worth_explaining(statement: str) -> bool:
    text = " ".join(statement.split()).upper()
    return text.startswith("SELECT") and " FROM TASK" in text


def _next_link(header: str | None) -> str | None:
    """The target of `rel="next"` in an RFC 8288 Link header."""
    for match in re.finditer(r"<([^>]*)>([^,]*)", header or ""):
        rel = re.search(r'rel\s*=\s*(?:"([^"]*)"|([^;\s]+))', match.group(2), re.IGNORECASE)
        if rel and "next" in (rel.group(1) or rel.group(2) or "").lower().split():
            return match.group(1)
    return None


def _normalized(body: dict[str, Any]) -> dict[str, Any]:
    """A task's JSON with its timestamps parsed, so `…00Z` and `….000000Z` compare equal."""
    result = {}
    for key, value in body.items():
        if isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT", value):
            with contextlib.suppress(ValueError):
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        result[key] = value
    return result


# ---------------------------------------------------------------- interpreters


def interpreter(version: str | None) -> str:
    """The Python to run the servers with: ours, or a uv environment of the project under that version."""
    if version is None or sys.version_info[:2] == tuple(int(part) for part in version.split(".")):
        return sys.executable
    base = PYTHONS[version]
    if not Path(base).exists():
        raise BenchError(f"Python {version} is not installed at {base}")
    environment_dir = BENCH / f".venv-{version}"
    say(f"syncing {environment_dir.relative_to(ROOT)} for Python {version} (uv sync --locked)")
    environment = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    environment["UV_PROJECT_ENVIRONMENT"] = str(environment_dir)
    result = subprocess.run(
        ["uv", "sync", "--locked", "--no-dev", "--python", base],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BenchError(f"uv sync for Python {version} failed:\n{result.stderr[-3000:]}")
    return str(environment_dir / "bin" / "python")


def python_version(python: str) -> str:
    result = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True)
    return result.stdout.decode().strip()


# ---------------------------------------------------------------- summaries and tables


def _median_spread(values: Sequence[float | None]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


METRICS = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "db_cpu_ms_per_req")


def summarize(runs: Sequence[Run], phase: str) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str, str], list[Run]] = {}
    for run in runs:
        if run.phase == phase:
            groups.setdefault((run.workers, run.endpoint, run.app), []).append(run)
    rows = []
    for (workers, endpoint, app), group in groups.items():
        row: dict[str, Any] = {"workers": workers, "endpoint": endpoint, "app": app, "rounds": len(group)}
        for metric in METRICS:
            row[metric] = _median_spread([getattr(run, metric) for run in group])
        row["unexpected"] = [run.unexpected for run in group]
        row["non_2xx"] = [run.non_2xx for run in group]
        rows.append(row)
    return rows


def _figure(entry: dict[str, float] | None, digits: int, spread: bool = True) -> str:
    if entry is None:
        return "-"
    text = f"{entry['median']:.{digits}f}"
    if spread and entry["min"] != entry["max"]:
        text += f" ({entry['min']:.{digits}f}–{entry['max']:.{digits}f})"
    return text


def _ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
    if not a or not b or not b["median"]:
        return "-"
    return f"{a['median'] / b['median']:.2f}"


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


ENDPOINT_LABELS = {e.key: e.label for e in (*ENDPOINTS, *SCALE_ENDPOINTS)}


def main_tables(summary: list[dict[str, Any]], apps: tuple[str, str] = ("taskflow", "lean")) -> str:
    index = {(r["workers"], r["endpoint"], r["app"]): r for r in summary}
    keys = sorted({(r["workers"], r["endpoint"]) for r in summary}, key=lambda k: (k[0], _order(k[1])))
    first, second = apps
    out = []
    rows = []
    for workers, endpoint in keys:
        a, b = index.get((workers, endpoint, first), {}), index.get((workers, endpoint, second), {})
        rows.append(
            [
                ENDPOINT_LABELS.get(endpoint, endpoint),
                str(workers),
                _figure(a.get("rps"), 0),
                _figure(b.get("rps"), 0),
                _ratio(a.get("rps"), b.get("rps")),
            ]
        )
    out.append("### Requests per second (median of rounds, min–max)\n")
    out.append(markdown(["endpoint", "workers", "TaskFlow", "lean", "TaskFlow/lean"], rows))
    rows = []
    for workers, endpoint in keys:
        a, b = index.get((workers, endpoint, first), {}), index.get((workers, endpoint, second), {})
        rows.append(
            [
                ENDPOINT_LABELS.get(endpoint, endpoint),
                str(workers),
                _figure(a.get("p50_ms"), 2),
                _figure(b.get("p50_ms"), 2),
                _figure(a.get("p99_ms"), 1),
                _figure(b.get("p99_ms"), 1),
            ]
        )
    out.append("\n### Latency, ms (median of rounds, min–max)\n")
    out.append(markdown(["endpoint", "workers", "TaskFlow p50", "lean p50", "TaskFlow p99", "lean p99"], rows))
    rows = []
    for workers, endpoint in keys:
        a, b = index.get((workers, endpoint, first), {}), index.get((workers, endpoint, second), {})
        rows.append(
            [
                ENDPOINT_LABELS.get(endpoint, endpoint),
                str(workers),
                _figure(a.get("cpu_ms_per_req"), 2),
                _figure(b.get("cpu_ms_per_req"), 2),
                _ratio(a.get("cpu_ms_per_req"), b.get("cpu_ms_per_req")),
                _figure(a.get("db_cpu_ms_per_req"), 2),
                _figure(b.get("db_cpu_ms_per_req"), 2),
                "/".join(map(str, a.get("unexpected", []))) + " · " + "/".join(map(str, b.get("unexpected", []))),
            ]
        )
    out.append("\n### CPU ms per request: uvicorn process tree, and the database's backends\n")
    out.append(
        markdown(
            [
                "endpoint",
                "workers",
                "TaskFlow app",
                "lean app",
                "TaskFlow/lean",
                "TaskFlow db",
                "lean db",
                "unexpected answers per round (TaskFlow · lean)",
            ],
            rows,
        )
    )
    return "\n".join(out)


def _order(endpoint: str) -> int:
    keys = [e.key for e in (*ENDPOINTS, *SCALE_ENDPOINTS)]
    return keys.index(endpoint) if endpoint in keys else len(keys)


def statements_table(statements: dict[str, Any]) -> str:
    taskflow, lean = statements.get("taskflow", {}), statements.get("lean", {})
    rows = []
    for kind in [*taskflow.keys()]:
        a, b = taskflow.get(kind, {}), lean.get(kind, {})
        rows.append(
            [
                ENDPOINT_LABELS.get(kind, kind.replace("_", " ")),
                str(a.get("statements", "-")),
                str(a.get("round_trips", "-")),
                f"{a.get('begin', 0)}/{a.get('commit', 0)}/{a.get('rollback', 0)}/{a.get('pings', 0)}",
                str(a.get("estimate", "-")),
                str(b.get("statements", "-")),
                str(b.get("round_trips", "-")),
            ]
        )
    return markdown(
        [
            "request",
            "TaskFlow SQL statements",
            "TaskFlow round trips",
            "of which BEGIN/COMMIT/ROLLBACK/ping",
            "estimate (statements + 2 if it wrote)",
            "lean statements",
            "lean round trips",
        ],
        rows,
    )


def memory_table(memory: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for entry in memory:
        groups.setdefault((entry["phase"], entry["app"], entry["workers"], entry["worker"]), []).append(entry)
    rows = []
    for (phase, app, workers, worker), entries in sorted(groups.items()):
        entries.sort(key=lambda e: e["round"])
        values = [e["rss_mb"] for e in entries if e["rss_mb"] is not None]
        if not values:
            continue
        growth = values[-1] - values[1] if len(values) > 2 else values[-1] - values[0]
        rows.append(
            [
                phase,
                app,
                str(workers),
                str(worker),
                " → ".join(f"{v:.0f}" for v in values),
                f"{growth:+.1f}",
            ]
        )
    return markdown(
        ["phase", "app", "workers", "worker", "RSS MB before round 1 → after each round", "growth since round 1"], rows
    )


def scale_table(scale: dict[str, Any]) -> str:
    sizes: list[int] = scale["sizes"]
    index = {(r["endpoint"], r["connections"], r["size"]): r for r in scale["rows"]}
    endpoints = sorted({r["endpoint"] for r in scale["rows"]}, key=_order)
    connections = sorted({r["connections"] for r in scale["rows"]})
    base = sizes[0]
    rows = []
    for endpoint in endpoints:
        for clients in connections:
            cells = [ENDPOINT_LABELS.get(endpoint, endpoint), str(clients)]
            for size in sizes:
                run = index.get((endpoint, clients, size))
                first = index.get((endpoint, clients, base))
                if run is None:
                    cells.append("-")
                    continue
                rate = "capped" if run.get("capped") else f"{run['rps']:.0f}/s"
                text = f"{run['p50_ms']:.2f} / {run['p99_ms']:.1f} ms, {rate}"
                if size != base and first and first["p50_ms"]:
                    text += f" (p50 ×{run['p50_ms'] / first['p50_ms']:.1f})"
                if run["unexpected"]:
                    text += f" [{run['unexpected']} unexpected]"
                cells.append(text)
            rows.append(cells)
    headers = ["endpoint", "clients", *[f"{size:,} tasks" for size in sizes]]
    return markdown(headers, rows)


def pythons_table(summary: list[dict[str, Any]], versions: list[str]) -> str:
    index = {(r["workers"], r["endpoint"], r["app"]): r for r in summary}
    baseline = "3.11" if "3.11" in versions else versions[0]
    keys = sorted({(r["workers"], r["endpoint"]) for r in summary}, key=lambda k: (k[0], _order(k[1])))
    rows = []
    for workers, endpoint in keys:
        base = index.get((workers, endpoint, f"taskflow-{baseline}"), {}).get("rps")
        cells = [ENDPOINT_LABELS.get(endpoint, endpoint), str(workers)]
        for version in versions:
            entry = index.get((workers, endpoint, f"taskflow-{version}"), {}).get("rps")
            cells.append(f"{_figure(entry, 0)} (×{_ratio(entry, base)})")
        rows.append(cells)
    return markdown(["endpoint", "workers", *[f"Python {v} req/s (÷ {baseline})" for v in versions]], rows)


def flatten(report: dict[str, Any]) -> dict[str, float]:
    """The comparable figures of a report, by a stable name."""
    figures: dict[str, float] = {}
    for phase in ("main", "pythons"):
        for row in report.get("summary", {}).get(phase, []):
            for metric in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req"):
                if row.get(metric):
                    figures[f"{phase} w{row['workers']} {row['endpoint']} {row['app']} {metric}"] = row[metric][
                        "median"
                    ]
    for row in report.get("scale", {}).get("rows", []):
        for metric in ("p50_ms", "p99_ms") if row.get("capped") else ("p50_ms", "p99_ms", "rps"):
            figures[f"scale {row['size']} {row['endpoint']} c{row['connections']} {metric}"] = row[metric]
    for app, kinds in report.get("statements", {}).items():
        for kind, entry in kinds.items():
            figures[f"statements {kind} {app} round_trips"] = entry["round_trips"]
    return figures


def compare_table(old: dict[str, Any], new: dict[str, Any]) -> str:
    before, after = flatten(old), flatten(new)
    rows = []
    for name in sorted(before.keys() & after.keys()):
        ratio = f"{before[name] / after[name]:.2f}" if after[name] else "-"
        rows.append([name, f"{before[name]:.2f}", f"{after[name]:.2f}", ratio])
    note = f"(only in the old run: {len(before.keys() - after.keys())}, only in this one: {len(after.keys() - before.keys())})"
    return markdown(["figure", "old", "new", "old ÷ new"], rows) + "\n\n" + note


def print_report(report: dict[str, Any]) -> None:
    say()
    say(f"## TaskFlow benchmark, {report['date']}")
    machine = report["machine"]
    say(
        f"\n{machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_mb']} MB, Python "
        f"{report['server_python']} for the servers, {machine['postgres'].split(' on ')[0]}, {machine['wrk']}"
    )
    say(f"command: {' '.join(report['command'])}")
    options = report["options"]
    say(
        f"wrk -t{options['threads']} -c{options['connections']} -d{options['duration']}s, "
        f"{options['rounds']} round(s), workers {options['workers']}, {options['tasks']} seeded tasks"
    )
    if report["summary"].get("main"):
        say()
        say(main_tables(report["summary"]["main"]))
    if report.get("statements"):
        say("\n### SQL per request (in-process, one request after a warm-up)\n")
        say(statements_table(report["statements"]))
    if report.get("memory"):
        say("\n### Memory per worker\n")
        say(memory_table(report["memory"]))
    if report["summary"].get("pythons"):
        interpreters = ", ".join(f"{v} = {full}" for v, full in report["pythons"]["interpreters"].items())
        say(f"\n### TaskFlow under each Python ({interpreters}), interleaved\n")
        say(pythons_table(report["summary"]["pythons"], report["pythons"]["versions"]))
    if report.get("scale"):
        scale = report["scale"]
        say(
            f"\n### Scale: TaskFlow, {scale['workers']} worker(s), {scale['duration']} s per cell, "
            "p50 / p99 latency and req/s\n"
        )
        say(scale_table(scale))
        for size, deep in scale.get("deep_pages", {}).items():
            say(f"- deep page at {int(size):,}: `{deep['path']}` ({deep['how']})")
    if report.get("explain"):
        explain = report["explain"]
        say(f"\n### EXPLAIN (ANALYZE, BUFFERS) at {explain['size']:,} tasks\n")
        for kind, plans in explain["plans"].items():
            for number, entry in enumerate(plans, 1):
                say(f"**{kind}, statement {number}**\n\n```sql\n{entry['sql']}\n```\n\n```\n{entry['plan']}\n```\n")
    if report["warnings"]:
        say("\n### Warnings\n")
        for warning in report["warnings"]:
            say(f"- {warning}")
    if report["failures"]:
        say("\n### Failures\n")
        for failure in report["failures"]:
            say(f"- {failure}")


# ---------------------------------------------------------------- main


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(options: Options, argv: Sequence[str]) -> int:
    ensure_wrk()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["uv", "run", "python", "bench/run.py", *argv],
        "options": {
            key: redact(value) if key == "admin_url" else str(value) if isinstance(value, Path) else value
            for key, value in asdict(options).items()
        },
        "git": git_info(),
        "summary": {},
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taskflow-bench-")))
        db_url = stack.enter_context(throwaway_database(options.admin_url))
        issuer = Issuer()
        stack.callback(issuer.close)
        bench = Bench(options, db_url, issuer, workdir, stack)
        report["machine"] = machine_info(bench.tool)
        bench.report = report
        python = interpreter(options.python)
        report["server_python"] = python_version(python)

        setup = bench.start("taskflow", python, 1, name="taskflow-setup")  # migrates the database
        try:
            bench.seed_data(setup)
        finally:
            bench.stop(setup)
        report["priority_rank_column"] = bench.has_priority_rank()
        try:
            bench.count_statements()
        except Exception as exc:  # the in-process count is a bonus; the load test still runs
            bench.warnings.append(f"statement count failed: {type(exc).__name__}: {exc}")
            say(f"statement count failed: {type(exc).__name__}: {exc}")

        if options.compare_pythons:
            interpreters = {version: interpreter(version) for version in options.compare_pythons}
            report["pythons"] = {
                "versions": options.compare_pythons,
                "interpreters": {v: python_version(p) for v, p in interpreters.items()},
            }
            bench.pythons_phase(interpreters)
            report["summary"]["pythons"] = summarize(bench.runs, "pythons")
        else:
            bench.main_phase(python)
            report["summary"]["main"] = summarize(bench.runs, "main")
        if not options.smoke and (options.scale or not options.compare_pythons):
            bench.scale_phase(python)
        if options.explain:
            try:
                bench.explain()
            except Exception as exc:
                bench.warnings.append(f"EXPLAIN failed: {type(exc).__name__}: {exc}")
        report["machine"]["loadavg_at_end"] = _read("/proc/loadavg").split()[:3]
        report["runs"] = [asdict(r) for r in bench.runs]
        report["warnings"] = bench.warnings
        report["failures"] = bench.failures

    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    say(f"\nresults: {options.json_path}")
    if options.compare:
        say(f"\n### {options.compare} ÷ this run\n")
        say(compare_table(json.loads(options.compare.read_text()), report))
    if report["failures"]:
        say(f"\nFAILED: {len(report['failures'])} problem(s), listed above")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(arguments)
    # TaskFlow is imported in-process for the counts: keep its logging (and httpx's) quiet.
    os.environ["LOG_LEVEL"] = "WARNING"
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = time.monotonic()
    try:
        code = run(options, arguments)
    except BenchError as exc:
        say(f"\nbench: {exc}")
        code = 2
    except KeyboardInterrupt:
        say("\nbench: interrupted; servers stopped and the database dropped")
        code = 130
    except SystemExit as exc:  # SIGTERM or SIGHUP, by _terminate
        say("\nbench: stopped by a signal; servers stopped and the database dropped")
        code = exc.code if isinstance(exc.code, int) else 1
    say(f"bench: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
