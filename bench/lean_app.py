"""A deliberately lean reference app: TaskFlow's benchmarked requests, done with raw SQL.

It answers the same paths as TaskFlow, on TaskFlow's own schema and database, with the same
JSON shape (`models.TaskRead`) and the same access rule, and writes the same audit rows. It
is written to be as fast as it honestly can be, so that `bench/run.py` can say how far
TaskFlow is from what a FastAPI process on this machine can do:

- sync `def` routes; the bearer token is verified with PyJWT on every request (signature,
  `exp`, `iss`, `aud`; no cache), against keys fetched once at start-up from the JWKS URL;
- psycopg2 with a fixed pool of autocommit connections, as many as anyio's thread limiter
  has threads, so a thread never waits for a connection; the pool stays open;
- reads are one statement each: the visibility rule is a subquery, and the count of a list
  page rides along with the page (GET one: 1 round trip; a list page: 1);
- every benchmarked write is a real transaction, one statement per round trip, with its own
  `INSERT` of the audit row (whose `actor_type` and `owner_id` are a sub-select of the caller's
  `worker` row), as the issue that defines this reference describes it:
  - create: `BEGIN`; `INSERT INTO task … SELECT … WHERE` the caller's worker row exists and
    (no project, or `EXISTS` a membership of it) `RETURNING` the task (nothing inserted: 404);
    `INSERT INTO audit_log …`; `COMMIT`: 4 round trips;
  - progress: `BEGIN`; `UPDATE task … FROM (SELECT … FOR NO KEY UPDATE)` (the old percent)
    `WHERE` the task is in progress, the caller's and visible `RETURNING` it; the audit
    `INSERT`; `COMMIT`: 4 round trips;
  - claim: `BEGIN`; the pick, `SELECT … FOR NO KEY UPDATE OF t SKIP LOCKED LIMIT 1` in claim
    order, which also says whether the caller had lost a lease on the task, as TaskFlow's
    pick does; `UPDATE task … RETURNING`; `DELETE FROM lost_lease …` only when it had; the
    audit `INSERT`; `COMMIT`: 5 round trips (3 when nothing is ready: `BEGIN`, pick, `ROLLBACK`);
  - idempotent create: the lookup (autocommit); then `BEGIN`, the create's two `INSERT`s, the
    `INSERT INTO idempotency_key` of the answer, `COMMIT`: 6 round trips; a replay is 1;
  a failed check ends the transaction with `ROLLBACK`. Only a user's very first request, which
  registers their `worker` row (and its `worker.registered` audit row, one statement with a
  data-modifying CTE), is done differently; the benchmark's users all have one already;
- timestamps come back from psycopg2 as ISO 8601 text (a typecaster instead of datetime
  objects) and bodies are written by `json.dumps`.

Only the benchmarked endpoints exist (`GET /api/tasks/{id}`, `GET /api/tasks?limit&offset`,
`POST /api/tasks` with or without `Idempotency-Key`, `POST /api/tasks/{id}/progress`,
`POST /api/tasks/claim` without a body, `GET /health`); no If-Match, no leases (TaskFlow's
`LEASE_SECONDS` is unset in the benchmark), no X-Request-ID header. Configuration comes from
the same variables TaskFlow reads: `DATABASE_URL` (PostgreSQL only), `AUTH_SERVER_URL`,
`JWKS_URL`, `JWT_ISSUER`, `JWT_AUDIENCE`, plus `LEAN_POOL_SIZE` (default 16).

    DATABASE_URL=postgresql://… AUTH_SERVER_URL=http://… uvicorn bench.lean_app:app
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio.to_thread
import jwt
import psycopg2  # type: ignore[import-untyped]
import psycopg2.errors  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]
import psycopg2.pool  # type: ignore[import-untyped]
from fastapi import FastAPI, Header, Query, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

MAX_ID = 2_147_483_647
MAX_TOKEN_LENGTH = 16_384
TOTAL_COUNT_CAP = 10_000
IDEMPOTENCY_RETENTION_HOURS = 24
ALLOWED_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
SUBJECT = re.compile(r"^[A-Za-z0-9@._:|+-]{1,128}$")
SLUG = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
RANK_CASE = "CASE {t}.priority WHEN 'low' THEN 1 WHEN 'medium' THEN 2 WHEN 'high' THEN 3 WHEN 'critical' THEN 4 END"

# The fields of models.TaskRead, in its order.
TASK_COLUMNS = (
    "id",
    "title",
    "description",
    "status",
    "priority",
    "progress_percent",
    "assigned_to",
    "project_slug",
    "parent_id",
    "due_date",
    "created_by",
    "created_at",
    "updated_at",
    "version",
    "lease_expires_at",
    "labels",
    "result",
)
VERSION_INDEX = TASK_COLUMNS.index("version")
PROJECT_INDEX = TASK_COLUMNS.index("project_slug")

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _cast_timestamptz(value: str | None, _cursor: Any) -> str | None:
    """`2026-12-01 22:09:00.123456+00` (TimeZone=UTC, DateStyle ISO) → `2026-12-01T22:09:00.123456Z`."""
    if value is None:
        return None
    if value.endswith("+00"):
        return f"{value[:10]}T{value[11:-3]}Z"
    return value.replace(" ", "T", 1)


TIMESTAMPTZ_AS_ISO = psycopg2.extensions.new_type((1184,), "TIMESTAMPTZ_AS_ISO", _cast_timestamptz)


def _columns(alias: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in TASK_COLUMNS)


def _visible(alias: str, admin: bool) -> str:
    """TaskFlow's rule: tasks in my projects, and project-less tasks I created or am assigned."""
    if admin:
        return "TRUE"
    return (
        f"({alias}.project_slug IN (SELECT m.project_slug FROM project_member m WHERE m.worker_id = %(actor)s)"
        f" OR ({alias}.project_slug IS NULL AND ({alias}.created_by = %(actor)s OR {alias}.assigned_to = %(actor)s)))"
    )


AUDIT_INSERT = 'INSERT INTO audit_log (task_id, project_slug, actor_id, actor_type, owner_id, action, context, request_id, "timestamp")'


class Statements:
    """Every SQL statement, built once at start-up, in an admin and a non-admin variant."""

    def __init__(self, rank: str) -> None:
        self.rank = rank
        self.get = {admin: self._get(admin) for admin in (False, True)}
        self.list = {admin: self._list(admin) for admin in (False, True)}
        self.create = {admin: self._create(admin) for admin in (False, True)}
        self.progress = {admin: self._progress(admin) for admin in (False, True)}
        self.claim = {admin: self._claim(admin) for admin in (False, True)}
        self.task_state = {
            admin: f"SELECT t.status, t.assigned_to FROM task t WHERE t.id = %(id)s AND {_visible('t', admin)}"
            for admin in (False, True)
        }

    @staticmethod
    def _get(admin: bool) -> str:
        return f"SELECT {_columns('t')} FROM task t WHERE t.id = %(id)s AND {_visible('t', admin)}"

    @staticmethod
    def _list(admin: bool) -> str:
        # The capped count and the page in one statement; an empty page is one row of NULLs.
        return (
            "WITH total AS (SELECT count(*) AS n FROM "
            f"(SELECT 1 FROM task t WHERE {_visible('t', admin)} LIMIT {TOTAL_COUNT_CAP + 1}) s) "
            f"SELECT total.n, {_columns('p')} FROM total LEFT JOIN ("
            f"SELECT {_columns('t')} FROM task t WHERE {_visible('t', admin)} "
            "ORDER BY t.created_at, t.id LIMIT %(limit)s OFFSET %(offset)s) p ON TRUE "
            "ORDER BY p.created_at, p.id"
        )

    @staticmethod
    def _create(admin: bool) -> str:
        # The access check is the INSERT's WHERE: no row inserted means 404 (or no worker row yet).
        allowed = (
            "EXISTS (SELECT 1 FROM project p WHERE p.slug = %(slug)s)"
            if admin
            else "EXISTS (SELECT 1 FROM project_member m WHERE m.project_slug = %(slug)s AND m.worker_id = %(actor)s)"
        )
        return (
            "INSERT INTO task (title, description, status, priority, progress_percent, project_slug, "
            "created_by, created_at, updated_at, version) "
            "SELECT %(title)s, %(description)s, 'pending', %(priority)s, 0, %(slug)s, %(actor)s, now(), now(), 1 "
            "WHERE EXISTS (SELECT 1 FROM worker w WHERE w.id = %(actor)s) "
            f"AND (%(slug)s::varchar IS NULL OR {allowed}) "
            f"RETURNING {', '.join(TASK_COLUMNS)}"
        )

    @staticmethod
    def _progress(admin: bool) -> str:
        # The subquery locks the row first, so `old_percent` is the value this UPDATE replaces.
        assignee = "TRUE" if admin else "t.assigned_to = %(actor)s"
        return (
            "UPDATE task SET progress_percent = %(percent)s, version = task.version + 1, updated_at = now(), "
            "lease_expires_at = CASE WHEN task.lease_seconds > 0 "
            "THEN now() + make_interval(secs => task.lease_seconds) ELSE task.lease_expires_at END "
            "FROM (SELECT t.id, t.progress_percent FROM task t "
            f"WHERE t.id = %(id)s AND t.status = 'in_progress' AND {assignee} AND {_visible('t', admin)} "
            "FOR NO KEY UPDATE) o "
            f"WHERE task.id = o.id RETURNING {_columns('task')}, o.progress_percent"
        )

    def _claim(self, admin: bool) -> str:
        # The pick: the task's id, its assignee, and whether the caller had lost a lease on it.
        rank = self.rank.format(t="t")
        return (
            "SELECT t.id, t.assigned_to, "
            "EXISTS (SELECT 1 FROM lost_lease ll WHERE ll.task_id = t.id AND ll.worker_id = %(actor)s) "
            f"FROM task t WHERE {_visible('t', admin)} AND t.status = 'pending' "
            "AND (t.assigned_to IS NULL OR t.assigned_to = %(actor)s) "
            "AND NOT EXISTS (SELECT 1 FROM task_dependency d JOIN task b ON b.id = d.depends_on_id "
            "WHERE d.task_id = t.id AND b.status <> 'completed') "
            f"ORDER BY {rank} DESC, t.due_date ASC NULLS LAST, t.created_at, t.id "
            "LIMIT 1 FOR NO KEY UPDATE OF t SKIP LOCKED"
        )

    CLAIM_UPDATE = (
        "UPDATE task SET status = 'in_progress', assigned_to = %(actor)s, version = version + 1, "
        "updated_at = now(), lease_seconds = NULL, lease_expires_at = NULL "
        f"WHERE id = %(id)s RETURNING {', '.join(TASK_COLUMNS)}"
    )
    # Whoever lost an earlier claim on this task has it again.
    CLAIM_LOST_LEASE = "DELETE FROM lost_lease WHERE task_id = %(id)s AND worker_id = %(actor)s"
    # The audit row of a change, its actor's type and owner from the worker row; `now()` is the
    # transaction's start, so a created task's row has its `created_at`.
    AUDIT = (
        f"{AUDIT_INSERT} SELECT %(task_id)s, %(slug)s, w.id, w.type, w.owner_id, %(action)s, %(context)s::jsonb, "
        "%(request_id)s, now() FROM worker w WHERE w.id = %(actor)s"
    )

    IDEMPOTENCY_LOOKUP = (
        "SELECT fingerprint, status_code, headers::text, body, "
        f"created_at < now() - interval '{IDEMPOTENCY_RETENTION_HOURS} hours' "
        "FROM idempotency_key WHERE actor_id = %(actor)s AND key = %(key)s"
    )
    IDEMPOTENCY_DELETE = "DELETE FROM idempotency_key WHERE actor_id = %(actor)s AND key = %(key)s"
    IDEMPOTENCY_SAVE = (
        "INSERT INTO idempotency_key (actor_id, key, fingerprint, status_code, headers, body, created_at) "
        "VALUES (%(actor)s, %(key)s, %(fingerprint)s, %(status)s, %(headers)s, %(body)s, now())"
    )
    WORKER_EXISTS = "SELECT EXISTS (SELECT 1 FROM worker WHERE id = %(actor)s)"
    # A human's worker row appears on its first request, as in TaskFlow (which audits it too).
    REGISTER_WORKER = (
        "WITH w AS (INSERT INTO worker (id, type, name, created_at) VALUES (%(actor)s, 'human', %(name)s, now()) "
        "ON CONFLICT (id) DO NOTHING RETURNING id) "
        f"{AUDIT_INSERT} SELECT NULL, NULL, w.id, 'human', NULL, 'worker.registered', %(context)s::jsonb, "
        "%(request_id)s, now() FROM w"
    )


# ---------------------------------------------------------------- errors and bodies


class Refused(Exception):
    """An error answer in TaskFlow's envelope."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


def _refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    body = _encode({"error": exc.message, "status_code": exc.status_code, "code": exc.code})
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=headers)


def _task_body(row: tuple[Any, ...]) -> str:
    return _encode(dict(zip(TASK_COLUMNS, row, strict=False)))


def _task_response(row: tuple[Any, ...], status_code: int = 200) -> Response:
    return Response(
        _task_body(row),
        status_code=status_code,
        media_type="application/json",
        headers={"ETag": f'"{row[VERSION_INDEX]}"'},
    )


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """TaskFlow's request fingerprint (idempotency.fingerprint)."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class TaskCreate(BaseModel):
    """The part of TaskFlow's TaskCreate that the benchmark sends."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
        AfterValidator(_no_nul),
        AfterValidator(_not_blank),
    ]
    description: Annotated[str, StringConstraints(max_length=10_000), AfterValidator(_no_nul)] | None = None
    priority: Literal["low", "medium", "high", "critical"] = "medium"
    project_slug: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=SLUG)] | None = None


# ---------------------------------------------------------------- settings and start-up


@dataclass(frozen=True)
class LeanSettings:
    database_url: str
    jwks_url: str
    issuer: str
    audience: str
    pool_size: int = 16

    @classmethod
    def from_env(cls) -> LeanSettings:
        auth_server = os.environ.get("AUTH_SERVER_URL", "http://localhost:3001").rstrip("/")
        return cls(
            database_url=os.environ["DATABASE_URL"],
            jwks_url=os.environ.get("JWKS_URL") or f"{auth_server}/api/auth/jwks",
            issuer=os.environ.get("JWT_ISSUER") or auth_server,
            audience=os.environ.get("JWT_AUDIENCE") or auth_server,
            pool_size=int(os.environ.get("LEAN_POOL_SIZE", "16")),
        )


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy-style URL as libpq takes it: `postgresql+psycopg2://` → `postgresql://`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in {"postgresql", "postgres"}:
        raise SystemExit(f"lean_app: DATABASE_URL must be a postgresql:// URL, got {scheme!r}")
    return f"postgresql://{rest}"


def load_keys(jwks_url: str) -> dict[str | None, tuple[Any, str]]:
    """The signing keys of the JWKS, by kid: (key, algorithm). Fetched once."""
    with urllib.request.urlopen(jwks_url, timeout=10) as answer:
        document = json.load(answer)
    keys: dict[str | None, tuple[Any, str]] = {}
    for data in document.get("keys", []):
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(data)
        except (jwt.PyJWTError, TypeError, ValueError):
            continue
        if key.algorithm_name in ALLOWED_ALGORITHMS:
            kid = data.get("kid")
            keys[kid if isinstance(kid, str) else None] = (key.key, key.algorithm_name)
    if not keys:
        raise SystemExit(f"lean_app: no usable signing key at {jwks_url}")
    return keys


@dataclass(frozen=True, slots=True)
class Caller:
    id: str
    admin: bool
    name: str


class Runtime:
    """What the routes share: the keys, the connection pool and the statements."""

    def __init__(self, settings: LeanSettings) -> None:
        self.settings = settings
        self.keys = load_keys(settings.jwks_url)
        self.only_key = next(iter(self.keys.values())) if len(self.keys) == 1 else None
        size = settings.pool_size
        self.pool = psycopg2.pool.ThreadedConnectionPool(
            size,
            size,
            dsn=libpq_dsn(settings.database_url),
            options="-c timezone=UTC",
            application_name="taskflow-lean",
        )
        self._configured: set[Any] = set()
        self._configure_lock = threading.Lock()
        with self.cursor() as cursor:
            # A migration may add `task.priority_rank` (GENERATED from priority); use it when it exists.
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'task' AND column_name = 'priority_rank')"
            )
            has_rank = bool(cursor.fetchone()[0])
        self.statements = Statements("{t}.priority_rank" if has_rank else RANK_CASE)

    def close(self) -> None:
        self.pool.closeall()

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        connection = self.pool.getconn()
        if connection not in self._configured:
            with self._configure_lock:
                connection.autocommit = True
                psycopg2.extensions.register_type(TIMESTAMPTZ_AS_ISO, connection)
                self._configured.add(connection)
        broken = False
        try:
            with connection.cursor() as cursor:
                yield cursor
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        finally:
            if not broken and connection.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                # A transaction that a failed statement (or an exception) left open: end it here.
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("ROLLBACK")
                except psycopg2.Error:
                    broken = True
            if broken or connection.closed:
                self._configured.discard(connection)
            self.pool.putconn(connection, close=broken or bool(connection.closed))

    def authenticate(self, authorization: str | None) -> Caller:
        if authorization is None or authorization[:7].lower() != "bearer ":
            raise Refused(401, "unauthorized", "Missing bearer token: send 'Authorization: Bearer <JWT>'")
        token = authorization[7:].strip()
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Refused(401, "unauthorized", "Malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused(401, "unauthorized", "Malformed token") from None
        kid = header.get("kid")
        entry = self.keys.get(kid) if isinstance(kid, str) else self.only_key if kid is None else None
        if entry is None:
            raise Refused(401, "unauthorized", "Token is signed by an unknown key")
        key, algorithm = entry
        if header.get("alg") != algorithm:
            raise Refused(401, "unauthorized", "Token algorithm does not match its signing key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=5,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            raise Refused(401, "unauthorized", "Invalid token") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not SUBJECT.match(subject) or subject == "system":
            raise Refused(401, "unauthorized", "Token has an invalid 'sub' claim")
        name = claims.get("name") or claims.get("email") or subject
        return Caller(subject, claims.get("role") == "admin", str(name)[:200])

    def register_worker_if_missing(self, cursor: Any, caller: Caller) -> bool:
        """Create the caller's worker row if it has none; whether it was missing."""
        cursor.execute(Statements.WORKER_EXISTS, {"actor": caller.id})
        if cursor.fetchone()[0]:
            return False
        context = json.dumps({"type": [None, "human"], "name": [None, caller.name]})
        cursor.execute(
            Statements.REGISTER_WORKER,
            {"actor": caller.id, "name": caller.name, "context": context, "request_id": uuid.uuid4().hex},
        )
        return True

    @staticmethod
    def audit(cursor: Any, caller: Caller, task: tuple[Any, ...], action: str, context: str, request_id: str) -> None:
        """The audit row of a change to `task` (a row in TASK_COLUMNS order), in the open transaction."""
        cursor.execute(
            Statements.AUDIT,
            {
                "task_id": task[0],
                "slug": task[PROJECT_INDEX],
                "actor": caller.id,
                "action": action,
                "context": context,
                "request_id": request_id,
            },
        )
        if cursor.rowcount != 1:  # the worker row went away: no audit row, no change
            raise RuntimeError(f"lean_app: no worker row for {caller.id!r}, the {action} audit row was not written")

    def begin_create(self, cursor: Any, caller: Caller, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """`BEGIN`, the task's INSERT and its audit row's, leaving the transaction open for `COMMIT`.

        None, the transaction rolled back, when nothing was inserted: no worker row yet, or the
        project is not the caller's.
        """
        cursor.execute("BEGIN")
        cursor.execute(self.statements.create[caller.admin], params)
        row: tuple[Any, ...] | None = cursor.fetchone()
        if row is None:
            cursor.execute("ROLLBACK")
            return None
        self.audit(cursor, caller, row, "task.created", params["context"], params["request_id"])
        return row


class _Holder:
    runtime: Runtime | None = None

    def get(self) -> Runtime:
        runtime = self.runtime
        if runtime is None:
            raise Refused(503, "service_unavailable", "Starting up")
        return runtime


# ---------------------------------------------------------------- the app

AuthorizationHeader = Annotated[str | None, Header()]


def create_app(settings: LeanSettings | None = None) -> FastAPI:
    holder = _Holder()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        chosen = settings or LeanSettings.from_env()
        runtime = await anyio.to_thread.run_sync(Runtime, chosen)
        # One thread per pooled connection: no request ever waits for a connection.
        anyio.to_thread.current_default_thread_limiter().total_tokens = chosen.pool_size
        holder.runtime = runtime
        try:
            yield
        finally:
            holder.runtime = None
            runtime.close()

    app = FastAPI(title="TaskFlow lean reference", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(Refused, _refused)

    def not_found(task_id: int) -> Refused:
        return Refused(404, "not_found", f"Task {task_id} not found")

    @app.get("/health")
    def health() -> Response:
        return Response('{"status":"healthy"}', media_type="application/json")

    @app.post("/api/tasks/claim")
    def claim_task(authorization: AuthorizationHeader = None) -> Response:
        runtime = holder.get()
        caller = runtime.authenticate(authorization)
        with runtime.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(runtime.statements.claim[caller.admin], {"actor": caller.id})
            picked = cursor.fetchone()
            if picked is None:
                cursor.execute("ROLLBACK")
                return Response(status_code=204)
            task_id, old_assignee, lost_lease = picked
            cursor.execute(Statements.CLAIM_UPDATE, {"id": task_id, "actor": caller.id})
            row = cursor.fetchone()
            if lost_lease:
                cursor.execute(Statements.CLAIM_LOST_LEASE, {"id": task_id, "actor": caller.id})
            context: dict[str, Any] = {"status": ["pending", "in_progress"]}
            if old_assignee != caller.id:
                context["assigned_to"] = [old_assignee, caller.id]
            runtime.audit(cursor, caller, row, "task.claimed", json.dumps(context), uuid.uuid4().hex)
            cursor.execute("COMMIT")
        return _task_response(row)

    @app.get("/api/tasks/{task_id}")
    def get_task(task_id: int, authorization: AuthorizationHeader = None) -> Response:
        runtime = holder.get()
        caller = runtime.authenticate(authorization)
        if not 1 <= task_id <= MAX_ID:
            raise not_found(task_id)
        with runtime.cursor() as cursor:
            cursor.execute(runtime.statements.get[caller.admin], {"id": task_id, "actor": caller.id})
            row = cursor.fetchone()
        if row is None:
            raise not_found(task_id)
        return _task_response(row)

    @app.get("/api/tasks")
    def list_tasks(
        authorization: AuthorizationHeader = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> Response:
        runtime = holder.get()
        caller = runtime.authenticate(authorization)
        with runtime.cursor() as cursor:
            cursor.execute(
                runtime.statements.list[caller.admin], {"actor": caller.id, "limit": limit, "offset": offset}
            )
            rows = cursor.fetchall()
        total = rows[0][0] if rows else 0
        body = _encode([dict(zip(TASK_COLUMNS, row[1:], strict=False)) for row in rows if row[1] is not None])
        headers = {"X-Total-Count": str(min(total, TOTAL_COUNT_CAP))}
        if total > TOTAL_COUNT_CAP:
            headers["X-Total-Count-Capped"] = "true"
        return Response(body, media_type="application/json", headers=headers)

    @app.post("/api/tasks", status_code=201)
    def create_task(
        data: TaskCreate,
        authorization: AuthorizationHeader = None,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")] = None,
    ) -> Response:
        runtime = holder.get()
        caller = runtime.authenticate(authorization)
        context: dict[str, Any] = {"title": [None, data.title]}
        if data.description is not None:
            context["description"] = [None, data.description]
        context["priority"] = [None, data.priority]
        if data.project_slug is not None:
            context["project_slug"] = [None, data.project_slug]
        params = {
            "actor": caller.id,
            "title": data.title,
            "description": data.description,
            "priority": data.priority,
            "slug": data.project_slug,
            "context": json.dumps(context),
            "request_id": uuid.uuid4().hex,
        }
        with runtime.cursor() as cursor:
            for attempt in (1, 2):
                if idempotency_key is None:
                    row = runtime.begin_create(cursor, caller, params)
                    if row is not None:
                        cursor.execute("COMMIT")
                        return _task_response(row, 201)
                else:
                    answer = _create_idempotently(runtime, cursor, caller, data, idempotency_key, params)
                    if answer is not None:
                        return answer
                # Nothing inserted: the caller has no worker row yet, or may not use the project.
                if attempt == 1 and runtime.register_worker_if_missing(cursor, caller):
                    continue
                break
        raise Refused(404, "not_found", f"Project '{data.project_slug}' not found")

    @app.post("/api/tasks/{task_id}/progress")
    def update_progress(
        task_id: int,
        percent: Annotated[int, Query(ge=0, le=100)],
        note: Annotated[str | None, Query(max_length=2000, pattern=r"^[^\x00]*$")] = None,
        authorization: AuthorizationHeader = None,
    ) -> Response:
        runtime = holder.get()
        caller = runtime.authenticate(authorization)
        if not 1 <= task_id <= MAX_ID:
            raise not_found(task_id)
        with runtime.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                runtime.statements.progress[caller.admin], {"id": task_id, "actor": caller.id, "percent": percent}
            )
            updated = cursor.fetchone()
            if updated is not None:
                row, old_percent = updated[:-1], updated[-1]
                context: dict[str, Any] = {}
                if old_percent != percent:
                    context["progress_percent"] = [old_percent, percent]
                if note:
                    context["note"] = note
                runtime.audit(cursor, caller, row, "task.progress", json.dumps(context), uuid.uuid4().hex)
                cursor.execute("COMMIT")
                return _task_response(row)
            cursor.execute("ROLLBACK")
            # Only on failure: say why, as TaskFlow does.
            cursor.execute(runtime.statements.task_state[caller.admin], {"id": task_id, "actor": caller.id})
            state = cursor.fetchone()
        if state is None:
            raise not_found(task_id)
        if state[0] != "in_progress":
            raise Refused(
                400,
                "invalid_transition",
                f"Cannot report progress on task {task_id}: it is {state[0]}, not in_progress",
            )
        raise Refused(403, "forbidden", "Only the task's assignee may report its progress")

    return app


def _create_idempotently(
    runtime: Runtime, cursor: Any, caller: Caller, data: TaskCreate, key: str, params: dict[str, Any]
) -> Response | None:
    """Create with an Idempotency-Key: replay the saved answer, or create and save it in one transaction.

    Six round trips: the lookup; `BEGIN`, the task's and its audit row's INSERTs, the saved
    answer's INSERT, `COMMIT`. A replay is the lookup alone. None when nothing was inserted (no
    worker row yet, or the project is not the caller's).
    """
    request_fingerprint = fingerprint("POST", "/api/tasks", "", data.model_dump_json().encode())
    lookup = {"actor": caller.id, "key": key}
    cursor.execute(Statements.IDEMPOTENCY_LOOKUP, lookup)
    saved = cursor.fetchone()
    if saved is not None:
        if not saved[4]:
            return _replay(saved, request_fingerprint)
        cursor.execute(Statements.IDEMPOTENCY_DELETE, lookup)
    row = runtime.begin_create(cursor, caller, params)
    if row is None:
        return None
    body = _task_body(row)
    etag = f'"{row[VERSION_INDEX]}"'
    headers = {"content-type": "application/json", "etag": etag}
    try:
        cursor.execute(
            Statements.IDEMPOTENCY_SAVE,
            {
                **lookup,
                "fingerprint": request_fingerprint,
                "status": 201,
                "headers": json.dumps(headers),
                "body": body,
            },
        )
    except psycopg2.errors.UniqueViolation:
        # The same key was answered meanwhile by another request: ours is undone, theirs replayed.
        cursor.execute("ROLLBACK")
        cursor.execute(Statements.IDEMPOTENCY_LOOKUP, lookup)
        saved = cursor.fetchone()
        if saved is None:
            raise Refused(
                409, "idempotency_in_progress", "A request with this Idempotency-Key is still being processed"
            ) from None
        return _replay(saved, request_fingerprint)
    cursor.execute("COMMIT")
    return Response(body, status_code=201, media_type="application/json", headers={"ETag": etag})


def _replay(saved: tuple[Any, ...], request_fingerprint: str) -> Response:
    stored_fingerprint, status_code, headers_text, body, _expired = saved
    if stored_fingerprint != request_fingerprint:
        raise Refused(422, "idempotency_key_reused", "This Idempotency-Key was already used for a different request")
    headers = {**json.loads(headers_text), "Idempotent-Replayed": "true"}
    return Response(body, status_code=status_code, headers=headers)


app = create_app()
