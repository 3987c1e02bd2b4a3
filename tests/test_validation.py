"""Hostile and malformed input: each is a clear 4xx in the error envelope, never a 500, and changes nothing.

Most tests here send many bad values in one test (one app and database for all of them) and report every
value that was not refused, so one failing case does not hide the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import Engine
from sqlmodel import Session, select
from support import CreateProject, CreateTask, case, count

from models import MAX_OFFSET, Project, ProjectMember, Task, Worker

MAX_ID = 2**31 - 1
NUL = "\x00"
JSON = {"Content-Type": "application/json"}


# The app as a caller meets it: an unhandled error comes back as a 500 response instead of raising here.
pytestmark = pytest.mark.errors_as_responses


def assert_validation_error(response: Response, loc: Sequence[str | int] | None = None) -> list[dict[str, Any]]:
    """A 422 in the envelope whose `detail` lists field errors (one of them at `loc`, when given)."""
    assert response.status_code == 422, f"{response.status_code}: {response.text[:500]}"
    body = response.json()
    assert set(body) == {"error", "status_code", "code", "detail"}, body
    assert body["status_code"] == 422
    assert body["code"] == "validation_error"
    assert isinstance(body["error"], str)
    assert body["error"].startswith("Invalid request")
    detail = body["detail"]
    assert isinstance(detail, list)
    assert detail
    for entry in detail:
        assert set(entry) == {"loc", "msg", "type"}, entry
        assert isinstance(entry["loc"], list)
        assert all(isinstance(part, str | int) for part in entry["loc"])
        assert isinstance(entry["msg"], str)
        assert entry["msg"]
        assert isinstance(entry["type"], str)
        assert entry["type"]
    if loc is not None:
        assert list(loc) in [entry["loc"] for entry in detail], detail
        if len(detail) == 1:
            assert ".".join(str(part) for part in loc) in body["error"]
    return detail


# ---------------------------------------------------------------- task fields

BAD_TASK_FIELDS: dict[str, tuple[str, Any]] = {
    "title empty": ("title", ""),
    "title spaces": ("title", "   "),
    "title tab and newline": ("title", "\t\n "),
    "title 201 chars": ("title", "x" * 201),
    "title NUL": ("title", f"a{NUL}b"),
    "title number": ("title", 123),
    "title list": ("title", ["a"]),
    "title object": ("title", {"text": "a"}),
    "title null": ("title", None),
    "description 10001 chars": ("description", "x" * 10_001),
    "description NUL": ("description", f"a{NUL}b"),
    "description number": ("description", 5),
    "description list": ("description", ["x"]),
    "priority urgent": ("priority", "urgent"),
    "priority uppercase": ("priority", "HIGH"),
    "priority empty": ("priority", ""),
    "priority number": ("priority", 3),
    "priority null": ("priority", None),
    "assigned_to with spaces": ("assigned_to", "bob smith"),
    "assigned_to 129 chars": ("assigned_to", "x" * 129),
    "assigned_to empty": ("assigned_to", ""),
    "assigned_to slash": ("assigned_to", "../bob"),
    "assigned_to NUL": ("assigned_to", f"bob{NUL}"),
    "assigned_to number": ("assigned_to", 42),
    "project_slug with space": ("project_slug", "Bad Slug"),
    "project_slug uppercase": ("project_slug", "UPPER"),
    "project_slug leading hyphen": ("project_slug", "-lead"),
    "project_slug double hyphen": ("project_slug", "a--b"),
    "project_slug 65 chars": ("project_slug", "a" * 65),
    "project_slug empty": ("project_slug", ""),
    "project_slug number": ("project_slug", 7),
    "parent_id -1": ("parent_id", -1),
    "parent_id 2**31": ("parent_id", 2**31),
    "parent_id 10**30": ("parent_id", 10**30),
    "parent_id abc": ("parent_id", "abc"),
    "parent_id 1.5": ("parent_id", 1.5),
    "parent_id list": ("parent_id", [1]),
    "due_date tomorrow": ("due_date", "tomorrow"),
    "due_date month 13": ("due_date", "2030-13-01T00:00:00Z"),
    "due_date February 30": ("due_date", "2030-02-30T00:00:00Z"),
    "due_date offset +25:00": ("due_date", "2030-01-01T00:00:00+25:00"),
    "due_date empty": ("due_date", ""),
    "due_date object": ("due_date", {"at": "2030-01-01"}),
}

# Well-formed ISO 8601 whose conversion to UTC leaves the range of a datetime.
OUT_OF_RANGE_DUE_DATES = ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"]


def test_create_task_refuses_each_bad_field_value_with_422(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    failures: list[str] = []
    for name, (field, value) in BAD_TASK_FIELDS.items():
        with case(failures, name):
            response = client.post("/api/tasks", json={"title": "Valid title", field: value}, headers=auth("alice"))
            assert_validation_error(response, ["body", field])

    assert not failures, "\n".join(failures)
    assert count(db, Task) == 0


@pytest.mark.parametrize("due_date", OUT_OF_RANGE_DUE_DATES)
def test_create_task_with_a_due_date_outside_the_utc_range_returns_422(
    client: TestClient, auth: AuthHeaders, db: Engine, due_date: str
) -> None:
    response = client.post("/api/tasks", json={"title": "Someday", "due_date": due_date}, headers=auth("alice"))

    assert_validation_error(response, ["body", "due_date"])
    assert count(db, Task) == 0


def test_create_task_without_a_title_returns_422(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post("/api/tasks", json={"description": "no title"}, headers=auth("alice"))

    detail = assert_validation_error(response, ["body", "title"])
    assert detail[0]["type"] == "missing"
    assert count(db, Task) == 0


UNKNOWN_TASK_FIELDS: dict[str, Any] = {
    "progress_percent": 50,
    "created_by": "mallory",
    "id": 7,
    "created_at": "2020-01-01T00:00:00Z",
    "updated_at": "2020-01-01T00:00:00Z",
    "titel": "typo",
    "project": "demo",
}


def test_create_task_refuses_unknown_fields_naming_them(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    failures: list[str] = []
    # No status in a create: a new task always starts pending.
    for field, value in {"status": "completed", **UNKNOWN_TASK_FIELDS}.items():
        with case(failures, field):
            response = client.post("/api/tasks", json={"title": "Valid title", field: value}, headers=auth("alice"))
            detail = assert_validation_error(response, ["body", field])
            assert [entry["type"] for entry in detail if entry["loc"] == ["body", field]] == ["extra_forbidden"]

    assert not failures, "\n".join(failures)
    assert count(db, Task) == 0


def test_create_task_with_status_pending_is_still_an_unknown_field(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    response = client.post("/api/tasks", json={"title": "Valid title", "status": "pending"}, headers=auth("alice"))

    assert_validation_error(response, ["body", "status"])
    assert count(db, Task) == 0


BAD_UPDATE_FIELDS: dict[str, tuple[str, Any]] = {
    **BAD_TASK_FIELDS,
    "status done": ("status", "done"),
    "status uppercase": ("status", "PENDING"),
    "status empty": ("status", ""),
    "status null": ("status", None),
    "status number": ("status", 1),
}


def test_patch_task_refuses_each_bad_field_value_with_422_and_changes_nothing(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Untouched", description="Text", due_date="2030-01-01T00:00:00Z")

    failures: list[str] = []
    for name, (field, value) in BAD_UPDATE_FIELDS.items():
        with case(failures, name):
            response = client.patch(f"/api/tasks/{task['id']}", json={field: value}, headers=auth("alice"))
            assert_validation_error(response, ["body", field])

    assert not failures, "\n".join(failures)
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == task


@pytest.mark.parametrize("due_date", OUT_OF_RANGE_DUE_DATES)
def test_patch_task_with_a_due_date_outside_the_utc_range_returns_422(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, due_date: str
) -> None:
    task = create_task("Untouched")

    response = client.patch(f"/api/tasks/{task['id']}", json={"due_date": due_date}, headers=auth("alice"))

    assert_validation_error(response, ["body", "due_date"])
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == task


def test_patch_task_refuses_unknown_fields_naming_them(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Untouched")

    failures: list[str] = []
    for field, value in UNKNOWN_TASK_FIELDS.items():
        with case(failures, field):
            response = client.patch(
                f"/api/tasks/{task['id']}", json={"title": "Changed", field: value}, headers=auth("alice")
            )
            detail = assert_validation_error(response, ["body", field])
            assert [entry["type"] for entry in detail if entry["loc"] == ["body", field]] == ["extra_forbidden"]

    assert not failures, "\n".join(failures)
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == task


# ---------------------------------------------------------------- task bodies that are not a JSON object

BAD_BODIES: dict[str, tuple[bytes | None, dict[str, str]]] = {
    "not JSON": (b"{not json", JSON),
    "trailing comma": (b'{"title": "x",}', JSON),
    "a list": (b'[{"title": "x"}]', JSON),
    "a string": (b'"a title"', JSON),
    "a number": (b"42", JSON),
    "null": (b"null", JSON),
    "empty": (b"", JSON),
    "no body at all": (None, {}),
    "JSON sent as text/plain": (b'{"title": "x"}', {"Content-Type": "text/plain"}),
    "form-encoded": (b"title=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    "JSON without a content type": (b'{"title": "x"}', {}),
}


def test_create_task_with_a_body_that_is_not_a_json_object_returns_422(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    failures: list[str] = []
    for name, (content, headers) in BAD_BODIES.items():
        with case(failures, name):
            response = client.post("/api/tasks", content=content, headers={**auth("alice"), **headers})
            assert_validation_error(response)

    assert not failures, "\n".join(failures)
    assert count(db, Task) == 0


def test_patch_task_with_a_body_that_is_not_a_json_object_returns_422(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Untouched")

    failures: list[str] = []
    for name, (content, headers) in BAD_BODIES.items():
        with case(failures, name):
            response = client.patch(f"/api/tasks/{task['id']}", content=content, headers={**auth("alice"), **headers})
            assert_validation_error(response)

    assert not failures, "\n".join(failures)
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == task


def test_malformed_json_is_reported_as_json_invalid(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post("/api/tasks", content=b"{not json", headers={**auth("alice"), **JSON})

    detail = assert_validation_error(response)
    assert detail[0]["type"] == "json_invalid"


def test_a_body_that_is_not_utf8_returns_a_4xx_envelope(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post("/api/tasks", content=b'{"title": "\xff\xfe"}', headers={**auth("alice"), **JSON})

    assert response.status_code in {400, 422}, response.text
    body = response.json()
    assert body["status_code"] == response.status_code
    assert body["code"] == {400: "bad_request", 422: "validation_error"}[response.status_code]
    assert body["error"]
    assert count(db, Task) == 0


def test_a_lone_surrogate_in_a_title_returns_422(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post("/api/tasks", content=b'{"title": "\\ud800"}', headers={**auth("alice"), **JSON})

    assert_validation_error(response, ["body", "title"])
    assert count(db, Task) == 0


# ---------------------------------------------------------------- Swagger's 0 means "none"


def test_create_task_with_parent_id_0_has_no_parent(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post("/api/tasks", json={"title": "Top level", "parent_id": 0}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    assert response.json()["parent_id"] is None


def test_patch_task_with_parent_id_0_clears_the_parent(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    parent = create_task("Parent")
    child = create_task("Child", parent_id=parent["id"])

    response = client.patch(f"/api/tasks/{child['id']}", json={"parent_id": 0}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["parent_id"] is None
    with Session(db) as session:
        stored = session.get(Task, child["id"])
        assert stored is not None
        assert stored.parent_id is None


# ---------------------------------------------------------------- path ids

TASK_ROUTES = [
    ("GET", "/api/tasks/{id}"),
    ("PATCH", "/api/tasks/{id}"),
    ("DELETE", "/api/tasks/{id}"),
    ("GET", "/api/tasks/{id}/audit"),
    ("POST", "/api/tasks/{id}/start"),
    ("POST", "/api/tasks/{id}/progress?percent=10"),
    ("POST", "/api/tasks/{id}/review"),
    ("POST", "/api/tasks/{id}/complete"),
    ("POST", "/api/tasks/{id}/block?reason=stuck"),
    ("POST", "/api/tasks/{id}/unblock"),
]


def test_bad_task_id_in_the_path_returns_422(client: TestClient, auth: AuthHeaders) -> None:
    failures: list[str] = []
    for method, route in TASK_ROUTES:
        for task_id in ["0", "-1", str(2**31), str(10**30), "abc", "1.5", "1e3"]:
            path = route.format(id=task_id)
            with case(failures, f"{method} {path}"):
                response = client.request(method, path, json={}, headers=auth("alice"))
                assert_validation_error(response, ["path", "task_id"])

    assert not failures, "\n".join(failures)


def test_largest_task_id_in_the_path_is_valid_and_not_found(client: TestClient, auth: AuthHeaders) -> None:
    failures: list[str] = []
    for method, route in TASK_ROUTES:
        path = route.format(id=MAX_ID)
        with case(failures, f"{method} {path}"):
            response = client.request(method, path, json={}, headers=auth("alice"))
            assert response.status_code == 404, response.text
            assert response.json()["code"] == "not_found"

    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- list filters

BAD_LIST_FILTERS: list[tuple[str, str]] = [
    ("status", "bogus"),
    ("status", "PENDING"),
    ("priority", "urgent"),
    ("assigned_to", "bob smith"),
    ("assigned_to", "x" * 129),
    ("project", "Bad Slug"),
    ("project", "a" * 65),
    ("parent_id", "abc"),
    ("parent_id", "-1"),
    ("parent_id", str(2**31)),
    ("q", f"a{NUL}b"),
    ("q", NUL),
    ("q", "x" * 201),
    ("sort", "title"),
    ("sort", "--priority"),
    ("sort", "+priority"),
    ("sort", "priority desc"),
    ("limit", "0"),
    ("limit", "101"),
    ("limit", "-1"),
    ("limit", "abc"),
    ("offset", "-1"),
    ("offset", str(2**31)),
    ("offset", str(MAX_OFFSET + 1)),
    ("offset", "abc"),
    ("after", "not a cursor!"),
    ("after", "A" * 501),
]


def test_list_tasks_with_an_invalid_filter_returns_422_not_an_empty_list(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    create_task("Something to list")

    failures: list[str] = []
    for name, value in BAD_LIST_FILTERS:
        with case(failures, f"{name}={value[:20]!r}"):
            response = client.get("/api/tasks", params={name: value}, headers=auth("alice"))
            assert_validation_error(response, ["query", name])

    assert not failures, "\n".join(failures)


def test_list_tasks_accepts_the_boundary_page_values(client: TestClient, auth: AuthHeaders) -> None:
    for limit, offset in [("1", "0"), ("100", str(MAX_OFFSET))]:
        response = client.get("/api/tasks", params={"limit": limit, "offset": offset}, headers=auth("alice"))

        assert response.status_code == 200, response.text
        assert response.json() == []


# ---------------------------------------------------------------- workflow query parameters


def test_progress_with_a_bad_percent_or_note_returns_422(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("In progress")
    started = client.post(f"/api/tasks/{task['id']}/start", headers=auth("alice"))
    assert started.status_code == 200, started.text

    failures: list[str] = []
    bad: list[tuple[dict[str, str], list[str]]] = [
        ({"percent": "-1"}, ["query", "percent"]),
        ({"percent": "101"}, ["query", "percent"]),
        ({"percent": "x"}, ["query", "percent"]),
        ({"percent": "1.5"}, ["query", "percent"]),
        ({}, ["query", "percent"]),
        ({"percent": "50", "note": f"half{NUL}way"}, ["query", "note"]),
        ({"percent": "50", "note": NUL}, ["query", "note"]),
        ({"percent": "50", "note": "x" * 2001}, ["query", "note"]),
    ]
    for params, loc in bad:
        with case(failures, repr(params)[:60]):
            response = client.post(f"/api/tasks/{task['id']}/progress", params=params, headers=auth("alice"))
            assert_validation_error(response, loc)

    assert not failures, "\n".join(failures)
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == started.json()


def test_block_with_a_missing_or_blank_reason_returns_422(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Not blocked")

    failures: list[str] = []
    for params in [{}, {"reason": ""}, {"reason": "   "}, {"reason": "\t\n"}, {"reason": "x" * 2001}]:
        with case(failures, repr(params)[:60]):
            response = client.post(f"/api/tasks/{task['id']}/block", params=params, headers=auth("alice"))
            assert_validation_error(response, ["query", "reason"])

    assert not failures, "\n".join(failures)
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == task


@pytest.mark.parametrize("reason", [f"stuck{NUL}", f"{NUL}", f"   {NUL}  "])
def test_block_with_a_nul_in_the_reason_returns_422(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, reason: str
) -> None:
    task = create_task("Not blocked")

    response = client.post(f"/api/tasks/{task['id']}/block", params={"reason": reason}, headers=auth("alice"))

    assert_validation_error(response, ["query", "reason"])
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == task


# ---------------------------------------------------------------- projects

BAD_PROJECT_CREATES: list[tuple[dict[str, Any], list[str]]] = [
    ({"slug": "Bad Slug", "name": "Bad"}, ["body", "slug"]),
    ({"slug": "UPPER", "name": "Bad"}, ["body", "slug"]),
    ({"slug": "-lead", "name": "Bad"}, ["body", "slug"]),
    ({"slug": "trail-", "name": "Bad"}, ["body", "slug"]),
    ({"slug": "under_score", "name": "Bad"}, ["body", "slug"]),
    ({"slug": "a" * 65, "name": "Bad"}, ["body", "slug"]),
    ({"slug": "", "name": "Bad"}, ["body", "slug"]),
    ({"slug": 5, "name": "Bad"}, ["body", "slug"]),
    ({"name": "No slug"}, ["body", "slug"]),
    ({"slug": "demo", "name": ""}, ["body", "name"]),
    ({"slug": "demo", "name": "x" * 201}, ["body", "name"]),
    ({"slug": "demo", "name": f"De{NUL}mo"}, ["body", "name"]),
    ({"slug": "demo", "name": None}, ["body", "name"]),
    ({"slug": "demo", "name": 5}, ["body", "name"]),
    ({"slug": "demo"}, ["body", "name"]),
    ({"slug": "demo", "name": "Demo", "description": "x" * 10_001}, ["body", "description"]),
    ({"slug": "demo", "name": "Demo", "description": f"a{NUL}"}, ["body", "description"]),
    ({"slug": "demo", "name": "Demo", "created_by": "mallory"}, ["body", "created_by"]),
    ({"slug": "demo", "name": "Demo", "owner": "mallory"}, ["body", "owner"]),
]


def test_create_project_refuses_bad_fields_with_422(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    failures: list[str] = []
    for body, loc in BAD_PROJECT_CREATES:
        with case(failures, repr(body)[:80]):
            assert_validation_error(client.post("/api/projects", json=body, headers=auth("alice")), loc)

    assert not failures, "\n".join(failures)
    assert count(db, Project) == 0


@pytest.mark.parametrize("name", ["   ", "\t\n"])
def test_create_project_with_a_blank_name_returns_422(
    client: TestClient, auth: AuthHeaders, db: Engine, name: str
) -> None:
    response = client.post("/api/projects", json={"slug": "demo", "name": name}, headers=auth("alice"))

    assert_validation_error(response, ["body", "name"])
    assert count(db, Project) == 0


def test_update_project_refuses_bad_fields_with_422(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    project = create_project("demo", owner="alice")

    failures: list[str] = []
    for body, loc in [
        ({"name": None}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({"name": "x" * 201}, ["body", "name"]),
        ({"name": f"a{NUL}"}, ["body", "name"]),
        ({"description": "x" * 10_001}, ["body", "description"]),
        ({"slug": "renamed"}, ["body", "slug"]),
        ({"created_by": "mallory"}, ["body", "created_by"]),
    ]:
        with case(failures, repr(body)[:80]):
            assert_validation_error(client.patch("/api/projects/demo", json=body, headers=auth("alice")), loc)

    assert not failures, "\n".join(failures)
    assert client.get("/api/projects/demo", headers=auth("alice")).json() == project


def test_update_project_with_a_blank_name_returns_422(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    project = create_project("demo", owner="alice")

    response = client.patch("/api/projects/demo", json={"name": "   "}, headers=auth("alice"))

    assert_validation_error(response, ["body", "name"])
    assert client.get("/api/projects/demo", headers=auth("alice")).json() == project


def test_bad_project_slug_in_the_path_returns_422(client: TestClient, auth: AuthHeaders) -> None:
    failures: list[str] = []
    for method, route in [
        ("GET", "/api/projects/{slug}"),
        ("PATCH", "/api/projects/{slug}"),
        ("DELETE", "/api/projects/{slug}"),
        ("GET", "/api/projects/{slug}/members"),
        ("POST", "/api/projects/{slug}/members"),
    ]:
        for slug in ["Bad%20Slug", "UPPER", "under_score", "-lead", "a" * 65]:
            path = route.format(slug=slug)
            with case(failures, f"{method} {path}"):
                response = client.request(method, path, json={"name": "x", "worker_id": "bob"}, headers=auth("alice"))
                assert_validation_error(response, ["path", "slug"])

    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- workers


def registered_workers(db: Engine) -> list[str]:
    with Session(db) as session:
        return sorted(session.exec(select(Worker.id)).all())


def test_register_worker_refuses_bad_fields_with_422(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    admin = auth("root", role="admin")
    client.get("/api/workers", headers=admin)

    failures: list[str] = []
    for body, loc in [
        ({"id": "has space", "type": "agent", "name": "Bot"}, ["body", "id"]),
        ({"id": "x" * 129, "type": "agent", "name": "Bot"}, ["body", "id"]),
        ({"id": "", "type": "agent", "name": "Bot"}, ["body", "id"]),
        ({"id": "a/b", "type": "agent", "name": "Bot"}, ["body", "id"]),
        ({"id": f"bot{NUL}", "type": "agent", "name": "Bot"}, ["body", "id"]),
        ({"id": 7, "type": "agent", "name": "Bot"}, ["body", "id"]),
        ({"type": "agent", "name": "Bot"}, ["body", "id"]),
        ({"id": "@bot", "type": "robot", "name": "Bot"}, ["body", "type"]),
        ({"id": "@bot", "type": "Agent", "name": "Bot"}, ["body", "type"]),
        ({"id": "@bot", "type": None, "name": "Bot"}, ["body", "type"]),
        ({"id": "@bot", "type": "agent", "name": ""}, ["body", "name"]),
        ({"id": "@bot", "type": "agent", "name": "x" * 201}, ["body", "name"]),
        ({"id": "@bot", "type": "agent", "name": f"B{NUL}t"}, ["body", "name"]),
        ({"id": "@bot", "type": "agent"}, ["body", "name"]),
        ({"id": "@bot", "type": "agent", "name": "Bot", "role": "admin"}, ["body", "role"]),
    ]:
        with case(failures, repr(body)[:80]):
            assert_validation_error(client.post("/api/workers", json=body, headers=admin), loc)

    assert not failures, "\n".join(failures)
    assert registered_workers(db) == ["root"]


def test_register_worker_with_a_blank_name_returns_422(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    admin = auth("root", role="admin")
    client.get("/api/workers", headers=admin)

    response = client.post("/api/workers", json={"id": "@bot", "type": "agent", "name": "   "}, headers=admin)

    assert_validation_error(response, ["body", "name"])
    assert registered_workers(db) == ["root"]


def test_update_worker_refuses_bad_fields_with_422(client: TestClient, auth: AuthHeaders) -> None:
    before = client.get("/api/workers/alice", headers=auth("alice")).json()

    failures: list[str] = []
    for body, loc in [
        ({"type": "robot"}, ["body", "type"]),
        ({"type": None}, ["body", "type"]),
        ({"name": None}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({"name": "x" * 201}, ["body", "name"]),
        ({"id": "renamed"}, ["body", "id"]),
    ]:
        with case(failures, repr(body)[:80]):
            response = client.patch("/api/workers/alice", json=body, headers=auth("alice", role="admin"))
            assert_validation_error(response, loc)

    assert not failures, "\n".join(failures)
    assert client.get("/api/workers/alice", headers=auth("alice")).json() == before


def test_update_worker_with_a_blank_name_returns_422(client: TestClient, auth: AuthHeaders) -> None:
    before = client.get("/api/workers/alice", headers=auth("alice")).json()

    response = client.patch("/api/workers/alice", json={"name": "   "}, headers=auth("alice"))

    assert_validation_error(response, ["body", "name"])
    assert client.get("/api/workers/alice", headers=auth("alice")).json() == before


def test_bad_worker_id_in_the_path_or_filter_returns_422(client: TestClient, auth: AuthHeaders) -> None:
    failures: list[str] = []
    for method in ["GET", "PATCH"]:
        for worker_id in ["has%20space", "x" * 129, "bad%00id", "comma,id"]:
            path = f"/api/workers/{worker_id}"
            with case(failures, f"{method} {path}"):
                response = client.request(method, path, json={"name": "x"}, headers=auth("alice"))
                assert_validation_error(response, ["path", "worker_id"])
    for value in ["robot", "HUMAN", ""]:
        with case(failures, f"type={value!r}"):
            response = client.get("/api/workers", params={"type": value}, headers=auth("alice"))
            assert_validation_error(response, ["query", "type"])

    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- project members


def test_add_member_refuses_bad_fields_with_422(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, db: Engine
) -> None:
    create_project("demo", owner="alice")
    client.get("/api/tasks", headers=auth("bob"))

    failures: list[str] = []
    for body, loc in [
        ({"worker_id": "bob", "role": "admin"}, ["body", "role"]),
        ({"worker_id": "bob", "role": "Owner"}, ["body", "role"]),
        ({"worker_id": "bob", "role": None}, ["body", "role"]),
        ({"worker_id": "bob", "role": 1}, ["body", "role"]),
        ({"worker_id": "bob smith"}, ["body", "worker_id"]),
        ({"worker_id": "x" * 129}, ["body", "worker_id"]),
        ({"worker_id": ""}, ["body", "worker_id"]),
        ({"role": "member"}, ["body", "worker_id"]),
        ({"worker_id": "bob", "project_slug": "other"}, ["body", "project_slug"]),
    ]:
        with case(failures, repr(body)[:80]):
            response = client.post("/api/projects/demo/members", json=body, headers=auth("alice"))
            assert_validation_error(response, loc)

    assert not failures, "\n".join(failures)
    assert count(db, ProjectMember) == 1


def test_update_member_refuses_a_bad_role_with_422(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])

    failures: list[str] = []
    for body, loc in [
        ({"role": "boss"}, ["body", "role"]),
        ({"role": "MEMBER"}, ["body", "role"]),
        ({"role": None}, ["body", "role"]),
        ({}, ["body", "role"]),
        ({"role": "owner", "worker_id": "carol"}, ["body", "worker_id"]),
    ]:
        with case(failures, repr(body)[:80]):
            response = client.patch("/api/projects/demo/members/bob", json=body, headers=auth("alice"))
            assert_validation_error(response, loc)
    for method in ["PATCH", "DELETE"]:
        with case(failures, f"{method} with a bad worker id in the path"):
            response = client.request(
                method, "/api/projects/demo/members/bob%20smith", json={"role": "owner"}, headers=auth("alice")
            )
            assert_validation_error(response, ["path", "worker_id"])

    assert not failures, "\n".join(failures)
    members = client.get("/api/projects/demo/members", headers=auth("alice")).json()
    assert {member["worker_id"]: member["role"] for member in members} == {"alice": "owner", "bob": "member"}
