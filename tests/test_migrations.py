"""The schema: Alembic's migrations and the SQLModel tables agree, migrate safely, and settings fail early."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from config import Settings, load_settings
from database import alembic_config, create_db_engine, include_on, migrate, normalize_database_url
from main import create_app

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TABLES = {"worker", "project", "project_member", "task", "audit_log"}


# ---------------------------------------------------------------- helpers


@pytest.fixture
def scratch_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own: a SQLite file, or a PostgreSQL database created and dropped here."""
    if TEST_DATABASE_URL is None:
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    admin_url = make_url(normalize_database_url(TEST_DATABASE_URL))
    name = f"taskflow_scratch_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def scratch(scratch_url: str) -> Iterator[Engine]:
    engine = create_db_engine(scratch_url)
    yield engine
    engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def schema_differences(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        opts = {"compare_type": True, "include_object": include_on(connection.dialect.name)}
        context = MigrationContext.configure(connection, opts=opts)
        return list(compare_metadata(context, SQLModel.metadata))


def alembic(engine: Engine, action: Callable[[Any, str], None], revision: str) -> None:
    """Run an Alembic command on `engine` the way `database.migrate` does: on a connection we pass in."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        action(config, revision)


def append_only_trigger_exists(engine: Engine) -> bool:
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT count(*) FROM pg_trigger WHERE tgname = 'audit_log_append_only' AND NOT tgisinternal")
        ).scalar_one()
    return bool(found)


# ---------------------------------------------------------------- migrations and models agree


def test_the_migrated_test_database_matches_the_models(db: Engine) -> None:
    assert schema_differences(db) == []
    assert current_revision(db) == head_revision()


def test_upgrade_downgrade_and_upgrade_again_from_an_empty_database(scratch: Engine) -> None:
    assert table_names(scratch) == set()

    alembic(scratch, command.upgrade, "head")
    assert TABLES <= table_names(scratch)
    assert current_revision(scratch) == head_revision()
    assert schema_differences(scratch) == []

    alembic(scratch, command.downgrade, "base")
    assert table_names(scratch) - {"alembic_version"} == set()
    assert current_revision(scratch) is None

    alembic(scratch, command.upgrade, "head")
    assert TABLES <= table_names(scratch)
    assert current_revision(scratch) == head_revision()
    assert schema_differences(scratch) == []


def test_downgrade_removes_and_upgrade_restores_the_postgresql_audit_trigger(scratch: Engine) -> None:
    if scratch.dialect.name != "postgresql":
        pytest.skip("the append-only trigger is created on PostgreSQL only")

    alembic(scratch, command.upgrade, "head")
    assert append_only_trigger_exists(scratch)
    alembic(scratch, command.downgrade, "base")
    with scratch.connect() as connection:
        functions = connection.execute(
            text("SELECT count(*) FROM pg_proc WHERE proname = 'audit_log_append_only'")
        ).scalar_one()
    assert functions == 0

    alembic(scratch, command.upgrade, "head")
    assert append_only_trigger_exists(scratch)


# ---------------------------------------------------------------- database.migrate


def test_migrate_brings_an_empty_database_to_the_newest_revision(scratch: Engine) -> None:
    migrate(scratch)

    assert TABLES <= table_names(scratch)
    assert current_revision(scratch) == head_revision()


def test_upgrading_a_database_that_holds_data_keeps_it(scratch: Engine) -> None:
    # SQLite rebuilds tables in batch migrations; with rows pointing at them that must still work.
    alembic(scratch, command.upgrade, "0001")
    with scratch.begin() as connection:
        connection.execute(
            text("INSERT INTO worker (id, type, name, created_at) VALUES ('alice', 'human', 'Alice', :now)"),
            {"now": "2026-11-01 10:00:00"},
        )
        for task_id, parent in ((1, None), (2, 1)):
            connection.execute(
                text(
                    "INSERT INTO task (id, title, status, priority, progress_percent, parent_id, created_by,"
                    " created_at, updated_at) VALUES (:id, 'T', 'pending', 'medium', 0, :parent, 'alice', :now, :now)"
                ),
                {"id": task_id, "parent": parent, "now": "2026-11-01 10:00:00"},
            )

    migrate(scratch)

    assert current_revision(scratch) == head_revision()
    with scratch.connect() as connection:
        rows = connection.execute(text("SELECT id, parent_id, version FROM task ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [(1, None, 1), (2, 1, 1)]


def test_migrate_a_second_time_changes_nothing(scratch: Engine) -> None:
    migrate(scratch)
    with scratch.begin() as connection:
        connection.execute(
            text("INSERT INTO worker (id, type, name, created_at) VALUES ('keep', 'human', 'Keep', CURRENT_TIMESTAMP)")
        )
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.strip().split(None, 1)[0].upper())

    event.listen(scratch, "before_cursor_execute", record)
    try:
        migrate(scratch)
    finally:
        event.remove(scratch, "before_cursor_execute", record)

    assert statements, "the second migrate ran no statement at all"
    changes = {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE", "TRUNCATE"} & set(statements)
    assert changes == set(), f"a second migrate should only read, but it ran {statements}"
    assert current_revision(scratch) == head_revision()
    with scratch.connect() as connection:
        assert connection.execute(text("SELECT name FROM worker")).scalars().all() == ["Keep"]


def test_concurrent_migrations_on_postgresql_all_succeed(scratch_url: str) -> None:
    if TEST_DATABASE_URL is None:
        pytest.skip("the advisory lock that serializes migrations exists on PostgreSQL only")
    workers = 4
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def start_a_worker() -> None:
        engine = create_db_engine(scratch_url)
        try:
            barrier.wait(timeout=30)
            migrate(engine)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start_a_worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60  # only a guard against a hang: a deadlock must fail, not stall the run
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))

    assert not any(thread.is_alive() for thread in threads), "a migration never finished"
    assert errors == []
    engine = create_db_engine(scratch_url)
    try:
        assert current_revision(engine) == head_revision()
        assert TABLES <= table_names(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_the_app_with_auto_migrate_creates_the_schema_on_an_empty_database(
    settings: Settings, scratch_url: str, auth: AuthHeaders
) -> None:
    fresh = settings.model_copy(update={"database_url": scratch_url, "auto_migrate": True})

    with TestClient(create_app(fresh)) as client:
        created = client.post("/api/tasks", json={"title": "On a fresh database"}, headers=auth("alice"))
        assert created.status_code == 201, created.text
        listed = client.get("/api/tasks", headers=auth("alice"))
        assert listed.status_code == 200, listed.text
        assert [task["title"] for task in listed.json()] == ["On a fresh database"]

    engine = create_db_engine(scratch_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    # Starting again on the now-migrated database is just as fine.
    with TestClient(create_app(fresh)) as client:
        assert client.get("/api/tasks", headers=auth("alice")).headers["X-Total-Count"] == "1"


# ---------------------------------------------------------------- database URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://user:pw@db.example:5432/app", "postgresql+psycopg2://user:pw@db.example:5432/app"),
        ("postgresql://user:pw@db.example/app", "postgresql+psycopg2://user:pw@db.example/app"),
        (
            "postgresql://neon:s3cr3t@ep-x.eu-central-1.aws.neon.tech/app?sslmode=require",
            "postgresql+psycopg2://neon:s3cr3t@ep-x.eu-central-1.aws.neon.tech/app?sslmode=require",
        ),
        ("postgres://postgres@127.0.0.1/postgres", "postgresql+psycopg2://postgres@127.0.0.1/postgres"),
    ],
)
def test_bare_postgresql_urls_are_pinned_to_psycopg2(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://user:pw@db.example/app",
        "postgresql+psycopg://user:pw@db.example/app",
        "postgresql+asyncpg://user:pw@db.example/app",
        "sqlite:///./taskflow.db",
        "sqlite+pysqlite:///./taskflow.db",
        "sqlite:////var/lib/taskflow/taskflow.db",
        "sqlite://",
    ],
)
def test_explicit_drivers_and_sqlite_urls_are_left_alone(url: str) -> None:
    assert normalize_database_url(url) == url


@pytest.mark.parametrize("password", ["hunter2", "p%40ss%2Fword", "with%3Acolon", "sp%20ace", "pl%2Bus", "h%25x"])
def test_normalizing_keeps_the_password(password: str) -> None:
    original = make_url(f"postgres://app:{password}@db.example/app")

    normalized = make_url(normalize_database_url(f"postgres://app:{password}@db.example/app"))

    assert normalized.drivername == "postgresql+psycopg2"
    assert normalized.password == original.password
    assert (normalized.username, normalized.host, normalized.database) == ("app", "db.example", "app")


# ---------------------------------------------------------------- configuration fails early, in one line


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No settings from the real environment or a `.env` file: only what the test sets."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper() in {field.upper() for field in Settings.model_fields}:
            monkeypatch.delenv(name)
    return monkeypatch


def bad_configuration(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        load_settings()
    message = exited.value.code
    assert isinstance(message, str)
    assert "\n" not in message
    assert message.startswith("taskflow: bad configuration")
    return message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALLOWED_ORIGINS", "*"),
        ("ALLOWED_ORIGINS", "http://localhost:3000,*"),
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "not a database url"),
        ("DATABASE_URL", "sqlite://"),  # in memory: each connection would have a database of its own
        ("DATABASE_URL", "sqlite:///:memory:"),
        ("JWKS_CACHE_TTL", "abc"),
        ("AUTH_SERVER_URL", "not a url"),
    ],
)
def test_bad_setting_exits_with_one_line_naming_it(
    clean_environment: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = bad_configuration(clean_environment, **{name: value})

    assert name in message


def test_several_bad_settings_are_all_named_in_one_line(clean_environment: pytest.MonkeyPatch) -> None:
    message = bad_configuration(
        clean_environment,
        ALLOWED_ORIGINS="*",
        DATABASE_URL="mysql://x",
        JWKS_CACHE_TTL="abc",
        AUTH_SERVER_URL="not a url",
    )

    for name in ("ALLOWED_ORIGINS", "DATABASE_URL", "JWKS_CACHE_TTL", "AUTH_SERVER_URL"):
        assert name in message


@pytest.mark.parametrize(
    "url",
    [
        "mysql://admin:Tr0ub4dor-secret@db.example/app",
        "postgresql://admin:Tr0ub4dor-secret@db.example:notaport/app",
        "oracle://admin:Tr0ub4dor-secret@db.example/app",
    ],
)
def test_a_bad_database_url_never_shows_its_password(clean_environment: pytest.MonkeyPatch, url: str) -> None:
    message = bad_configuration(clean_environment, DATABASE_URL=url)

    assert "Tr0ub4dor-secret" not in message
    assert "DATABASE_URL" in message


def test_the_password_stays_hidden_when_another_setting_is_bad(clean_environment: pytest.MonkeyPatch) -> None:
    message = bad_configuration(
        clean_environment,
        DATABASE_URL="postgresql://admin:Tr0ub4dor-secret@db.example/app",
        AUTH_SERVER_URL="ftp://nope",
    )

    assert "Tr0ub4dor-secret" not in message
    assert "AUTH_SERVER_URL" in message


def test_good_settings_load(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("DATABASE_URL", "postgres://app:pw@db.example/app")
    clean_environment.setenv("ALLOWED_ORIGINS", "http://localhost:3000, https://app.example/")
    clean_environment.setenv("AUTH_SERVER_URL", "https://auth.example/")
    clean_environment.setenv("JWKS_CACHE_TTL", "60")

    settings = load_settings()

    assert settings.allowed_origins == ["http://localhost:3000", "https://app.example"]
    assert settings.jwks_url == "https://auth.example/api/auth/jwks"
    assert (settings.jwt_issuer, settings.jwt_audience) == ("https://auth.example", "https://auth.example")
    assert settings.jwks_cache_ttl == 60
