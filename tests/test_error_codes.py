"""The error codes are the error classes: the README's table is made from them, and a write the
database itself refuses is answered in one of them and logged with what refused it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_DATABASE_URL, AuthHeaders, captured_warnings
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

import errors

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_table_is_the_error_classes() -> None:
    # Regenerate with: uv run python -c "import errors; print(errors.error_table())"
    assert errors.error_table() in README.read_text()


def test_every_code_is_one_class_with_a_docstring() -> None:
    codes = [error.code for error in errors.ERRORS]
    assert len(codes) == len(set(codes))
    assert all(error.__doc__ and error.__doc__.strip() for error in errors.ERRORS)
    assert [error.status_code for error in errors.ERRORS] == sorted(error.status_code for error in errors.ERRORS)


def test_the_openapi_description_lists_every_code(client: TestClient) -> None:
    description = client.get("/openapi.json").json()["info"]["description"]
    for error in errors.ERRORS:
        assert f"`{error.code}`: {error.status_code}: {error.__doc__}" in description


@pytest.fixture
def unique_titles(db: Engine) -> Iterator[None]:
    """A constraint the app does not know of, as one added by a migration another process ran."""
    with db.begin() as connection:
        connection.execute(text("CREATE UNIQUE INDEX test_unique_title ON task (title)"))
    yield
    with db.begin() as connection:
        connection.execute(text("DROP INDEX test_unique_title"))


@pytest.mark.usefixtures("unique_titles")
def test_a_constraint_the_database_enforces_is_a_409_logged_with_the_constraint(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    assert client.post("/api/tasks", json={"title": "Same"}, headers=auth("alice")).status_code == 201
    with captured_warnings("taskflow") as warnings:
        response = client.post("/api/tasks", json={"title": "Same"}, headers=auth("alice"))
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
    assert "test_unique_title" not in response.text  # the client learns nothing of the schema
    logged = "\n".join(record.getMessage() for record in warnings)
    if TEST_DATABASE_URL:
        assert "constraint test_unique_title on task, SQLSTATE 23505" in logged
    else:
        assert "SQLITE_CONSTRAINT_UNIQUE: UNIQUE constraint failed: task.title" in logged
    with db.connect() as connection:  # the refused write left nothing, not even its audit row
        assert connection.execute(text("SELECT count(*) FROM task")).scalar_one() == 1
        assert (
            connection.execute(text("SELECT count(*) FROM audit_log WHERE action = 'task.created'")).scalar_one() == 1
        )


@pytest.fixture
def short_titles(db: Engine) -> Iterator[None]:
    with db.begin() as connection:
        connection.execute(text("ALTER TABLE task ALTER COLUMN title TYPE varchar(5)"))
    yield
    with db.begin() as connection:
        connection.execute(text("ALTER TABLE task ALTER COLUMN title TYPE varchar(200)"))


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="SQLite does not enforce a column's length")
@pytest.mark.usefixtures("short_titles")
def test_a_value_the_database_refuses_is_a_400_logged_with_its_sqlstate(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    with captured_warnings("taskflow") as warnings:
        response = client.post("/api/tasks", json={"title": "Far too long"}, headers=auth("alice"))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request"
    assert "SQLSTATE 22001" in "\n".join(record.getMessage() for record in warnings)
    with db.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM task")).scalar_one() == 0
