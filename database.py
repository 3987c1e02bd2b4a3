"""Engines, the one-transaction-per-request session, and the migration runner.

Nothing here is built at import time: `main` creates the engine when the app starts.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 7_302_114_955


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2: SQLAlchemy 2.1 maps bare `postgresql://` to psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


# A connection idle for longer than this is pinged before it is handed out: Neon and other
# poolers close idle connections, and a ping on every checkout would cost a round trip each.
PING_AFTER_IDLE_SECONDS = 30.0
# Replaced after this long, before any server-side idle or lifetime limit can bite.
RECYCLE_SECONDS = 1800


@dataclass(frozen=True)
class Timeouts:
    """Seconds; 0 turns one off. PostgreSQL enforces all three; SQLite waits `lock` for its write lock."""

    statement: float = 0
    lock: float = 30
    idle_in_transaction: float = 0


def create_db_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 30,
    timeouts: Timeouts = Timeouts(),
) -> Engine:
    url = normalize_database_url(url)
    pool: dict[str, Any] = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeouts.lock}, **pool)
        event.listen(engine, "connect", functools.partial(_sqlite_on_connect, busy_ms=round(timeouts.lock * 1000)))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    engine = create_engine(
        url,
        **pool,
        # A server that does not answer (a dropped route, not a refusal) fails the connection
        # within the pool timeout rather than after minutes of TCP retries; psycopg2's minimum is 2 s.
        connect_args={"connect_timeout": max(2, math.ceil(pool_timeout))},
        pool_recycle=RECYCLE_SECONDS,
        # Checked-in connections are reused most recently used first, so the idle ones age
        # out at the back of the queue instead of all being kept barely alive.
        pool_use_lifo=True,
    )
    settings = {
        "statement_timeout": timeouts.statement,
        "lock_timeout": timeouts.lock,
        "idle_in_transaction_session_timeout": timeouts.idle_in_transaction,
    }
    # One round trip per new connection, not per request. Behind a pooler in transaction mode
    # (PgBouncer, Neon's -pooler host) a session's SET does not follow it from one server
    # connection to the next: there, set them on the role (ALTER ROLE … SET statement_timeout …).
    set_timeouts = "; ".join(f"SET {name} = {round(seconds * 1000)}" for name, seconds in settings.items())
    event.listen(engine, "connect", functools.partial(_postgresql_on_connect, set_timeouts))
    event.listen(engine, "begin", _autocommit_for_reads)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    _no_empty_commits(engine)
    return engine


def _postgresql_on_connect(set_timeouts: str, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(set_timeouts)
    finally:
        cursor.close()
    dbapi_connection.commit()


@dataclass(frozen=True)
class Outage:
    """Why the database could not serve a request: `reason` is one of a few words (a metric label)."""

    reason: str  # pool_timeout, connection, timeout, busy
    detail: str


# SQLSTATEs, by prefix, that mean the database cannot serve the request now rather than that the
# statement is wrong: connection exceptions and operator intervention (the server shutting
# down); statement_timeout and lock_timeout; insufficient resources (too many connections),
# serialization failures and deadlocks, which succeed when run again. (A transaction ended by
# idle_in_transaction_session_timeout loses its connection, which counts as "connection".)
_SQLSTATE_REASONS = (
    ("08", "connection"),
    ("57P", "connection"),
    ("57014", "timeout"),
    ("55P03", "timeout"),
    ("53", "busy"),
    ("40001", "busy"),
    ("40P01", "busy"),
)
# SQLite's primary result codes of the kind: BUSY and LOCKED; IOERR, FULL and CANTOPEN.
_SQLITE_REASONS = {5: "busy", 6: "busy", 10: "connection", 13: "connection", 14: "connection"}


def outage(error: BaseException) -> Outage | None:
    """The outage or overload `error` reports, or None when it reports a bug.

    Waiting too long for a pooled connection, a connection refused or lost, and a statement ended
    by a server-side timeout or a lock conflict are all answered 503: the client should retry
    later. A malformed statement or a missing table is a bug (500).
    """
    if isinstance(error, exc.TimeoutError):
        return Outage("pool_timeout", "no pooled connection became free within DB_POOL_TIMEOUT")
    if isinstance(error, exc.DisconnectionError):
        return Outage("connection", _first_line(error))
    if not isinstance(error, exc.DBAPIError):
        return None
    cause = error.orig
    if error.connection_invalidated or isinstance(error, exc.InterfaceError):
        return Outage("connection", _first_line(cause))
    if not isinstance(error, exc.OperationalError):
        return None
    sqlite_code = getattr(cause, "sqlite_errorcode", None)
    if sqlite_code is not None:
        reason = _SQLITE_REASONS.get(sqlite_code & 0xFF)
        return None if reason is None else Outage(reason, _first_line(cause))
    sqlstate = getattr(cause, "pgcode", None)
    if sqlstate is None:
        # psycopg2 has no SQLSTATE when no server answered: refused, closed, unresolvable.
        return Outage("connection", _first_line(cause))
    reason = next((reason for prefix, reason in _SQLSTATE_REASONS if sqlstate.startswith(prefix)), None)
    return None if reason is None else Outage(reason, f"{sqlstate}: {_first_line(cause)}")


def driver_detail(error: exc.DBAPIError) -> str:
    """What the driver says refused a statement, for the log: the constraint and SQLSTATE on
    PostgreSQL, SQLite's error name and message. Never sent to the client."""
    cause = error.orig
    sqlstate = getattr(cause, "pgcode", None)
    if sqlstate is not None:
        diagnostics = getattr(cause, "diag", None)
        constraint = getattr(diagnostics, "constraint_name", None)
        table = getattr(diagnostics, "table_name", None)
        where = f"constraint {constraint}{f' on {table}' if table else ''}, " if constraint else ""
        return f"{where}SQLSTATE {sqlstate}: {_first_line(cause)}"
    name = getattr(cause, "sqlite_errorname", None)
    return f"{name}: {_first_line(cause)}" if name else _first_line(cause)


def _first_line(error: BaseException | None) -> str:
    text_ = str(error).strip()
    return text_.splitlines()[0] if text_ else type(error).__name__


def mark_read_only(connection: Connection) -> None:
    """Mark a connection, before its transaction begins, as one that only reads: no transaction on
    PostgreSQL, a shared lock on SQLite.

    Each statement of a read then sees committed data as of its own start, and a read never
    takes a row lock or holds a snapshot open. On PostgreSQL this also saves the BEGIN and
    COMMIT round trips. (SQLAlchemy's AUTOCOMMIT isolation level would cost a round trip of its
    own to reset each connection on its way back to the pool; psycopg2's flag costs none.)
    """
    connection.execution_options(taskflow_read_only=True)


def _autocommit_for_reads(connection: Any) -> None:
    """Reads run in autocommit mode, writes in a transaction; psycopg2 sends its BEGIN with the
    first statement, which has not been sent yet. The mode is switched only when it differs:
    switching costs no round trip, but psycopg2 lets go of the GIL for it, and under load every
    such release hands the GIL to another thread and waits to get it back."""
    dbapi_connection = connection.connection.dbapi_connection
    read_only = bool(connection.get_execution_options().get("taskflow_read_only"))
    if dbapi_connection.autocommit != read_only:
        dbapi_connection.autocommit = read_only


def _no_empty_commits(engine: Engine) -> None:
    """Skip the driver's commit and rollback on an autocommit connection: there is nothing to end,
    and psycopg2 would still let go of the GIL for it (see `_autocommit_for_reads`)."""
    dialect = engine.dialect
    for name in ("do_commit", "do_rollback"):
        end = getattr(dialect, name)

        def unless_autocommit(dbapi_connection: Any, end: Any = end) -> None:
            if not dbapi_connection.autocommit:
                end(dbapi_connection)

        setattr(dialect, name, unless_autocommit)


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    checked_in_at = record.info.get("checked_in_at")
    if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()
    except Exception as error:
        # The pool throws this connection away and checks out another (up to three times).
        raise exc.DisconnectionError("an idle connection was closed by the server") from error


def _sqlite_on_connect(dbapi_connection: Any, _record: Any, *, busy_ms: int) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself instead of pysqlite's implicit one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    if connection.get_execution_options().get("taskflow_read_only"):
        # A deferred transaction that only reads never takes the write lock (WAL).
        connection.exec_driver_sql("BEGIN")
        return
    # Take the write lock up front: a deferred transaction that reads and then writes
    # can fail with "database is locked" however long the busy timeout is.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One session, one transaction: commit if the block succeeds, else roll back."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()


_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")


def connection_of(session: Session) -> Connection:
    """The session's connection, for a Core statement that skips the ORM, with pending changes flushed
    first as the ORM would (a caller's first request adds its worker and audit rows)."""
    session.flush()
    return session.connection()


def advisory_lock(session: Session, name: str, *, wait: bool = True) -> bool:
    """Take a PostgreSQL lock on `name` until the transaction ends; False if `wait` is off and it is taken.

    Elsewhere it is a no-op that succeeds: SQLite runs one writing transaction at a time anyway.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    connection = session.connection()
    if wait:
        connection.execute(_LOCK, {"key": key})
        return True
    return bool(connection.execute(_TRY_LOCK, {"key": key}).scalar())


def alembic_config() -> Config:
    return Config(str(ALEMBIC_INI))


def include_on(dialect_name: str) -> Callable[..., bool]:
    """Alembic's `include_object` for a database of `dialect_name`: it leaves out what the models
    create on other dialects only (`.ddl_if(dialect=...)`, such as PostgreSQL's GIN index), so that
    comparing the models with a migrated SQLite database does not ask for it."""

    def include(schema_object: Any, _name: str | None, _type: str, _reflected: bool, _compare_to: Any) -> bool:
        condition = getattr(schema_object, "_ddl_if", None)
        if condition is None or condition.dialect is None:
            return True
        dialects = (condition.dialect,) if isinstance(condition.dialect, str) else tuple(condition.dialect)
        return dialect_name in dialects

    return include


def migrate(engine: Engine) -> None:
    """Bring the database to the newest revision.

    On PostgreSQL this runs under a transaction-level advisory lock, so several workers
    starting at once migrate one after another, and the later ones find nothing to do.
    """
    config = alembic_config()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations rebuild a table by copying it and dropping the old one, which
            # enforced foreign keys refuse while other rows point at it. The pragma only takes
            # effect outside a transaction; the keys are checked before committing instead.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with connection.begin():
                if not sqlite:
                    # A migration may rightly run long, and wait for another process's migration.
                    connection.exec_driver_sql(
                        "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; "
                        "SET LOCAL idle_in_transaction_session_timeout = 0"
                    )
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise RuntimeError("the migration left rows whose foreign keys point nowhere")
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def check_connection(engine: Engine) -> None:
    """Run `SELECT 1` as a read (it never waits behind a writer), once more on a fresh connection if
    the server had closed the pooled one."""
    for attempt in (1, 2):
        try:
            with engine.connect() as connection:
                mark_read_only(connection)
                connection.execute(text("SELECT 1"))
            return
        except exc.DBAPIError as error:
            if attempt == 2 or not error.connection_invalidated:
                raise
