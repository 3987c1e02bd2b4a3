"""The task endpoints as a user sees them: create, read, change, delete, and the list with its filters, sorts and pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import Engine
from sqlmodel import Session, func, select
from support import CreateProject, CreateTask, assert_error, audit_count, case, stored_task

from models import Task

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
# What the contract says a task is; responses may carry more (e.g. a version), which PATCH is free to bump.
TASK_FIELDS = [
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
]


# The app as a caller meets it: an unhandled error comes back as a 500 response instead of raising here.
pytestmark = pytest.mark.errors_as_responses


# ---------------------------------------------------------------- helpers


def utc(value: str) -> datetime:
    """Parse a timestamp from the API, insisting it carries an explicit UTC offset."""
    assert value.endswith(("Z", "+00:00")), f"not an explicit UTC timestamp: {value!r}"
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None
    return parsed


def set_columns(db: Engine, task_id: int, **values: Any) -> None:
    """Arrange a task's row directly, e.g. timestamps the API never lets a client set."""
    with Session(db) as session:
        task = session.get(Task, task_id)
        assert task is not None
        for name, value in values.items():
            setattr(task, name, value)
        session.add(task)
        session.commit()


def same_except(after: dict[str, Any], before: dict[str, Any], *changed: str) -> bool:
    """Whether every contract field but `changed` (and `updated_at`) kept its value."""
    kept = [name for name in TASK_FIELDS if name not in {*changed, "updated_at"}]
    return {name: after[name] for name in kept} == {name: before[name] for name in kept}


def titles(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list)
    return [task["title"] for task in body]


# ---------------------------------------------------------------- create


def test_create_task_returns_201_with_defaults(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post("/api/tasks", json={"title": "Write the tests"}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    body = response.json()
    assert isinstance(body["id"], int)
    assert body["title"] == "Write the tests"
    assert body["description"] is None
    assert body["status"] == "pending"
    assert body["priority"] == "medium"
    assert body["progress_percent"] == 0
    assert body["assigned_to"] is None
    assert body["project_slug"] is None
    assert body["parent_id"] is None
    assert body["due_date"] is None
    assert body["created_by"] == "alice"
    stored = stored_task(db, body["id"])
    assert stored is not None
    assert (stored.title, stored.status, stored.priority, stored.created_by) == (
        "Write the tests",
        "pending",
        "medium",
        "alice",
    )


def test_create_task_sets_created_by_to_the_token_subject(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post("/api/tasks", json={"title": "Mine"}, headers=auth("carol@example.com"))

    assert response.status_code == 201, response.text
    assert response.json()["created_by"] == "carol@example.com"


def test_create_task_returns_utc_timestamps_with_created_at_equal_to_updated_at(
    client: TestClient, auth: AuthHeaders
) -> None:
    response = client.post("/api/tasks", json={"title": "Stamped"}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    body = response.json()
    assert utc(body["created_at"]) == utc(body["updated_at"])
    fetched = client.get(f"/api/tasks/{body['id']}", headers=auth("alice")).json()
    assert utc(fetched["created_at"]) == utc(body["created_at"])
    assert utc(fetched["updated_at"]) == utc(body["updated_at"])


def test_create_task_strips_the_title(client: TestClient, auth: AuthHeaders) -> None:
    padded = "  " + "x" * 200 + "\t "

    response = client.post("/api/tasks", json={"title": padded}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    assert response.json()["title"] == "x" * 200


def test_create_task_with_every_field(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    parent = create_task("Parent", project_slug="demo")
    fields = {
        "title": "Child",
        "description": "All the fields",
        "priority": "high",
        "assigned_to": "bob",
        "project_slug": "demo",
        "parent_id": parent["id"],
        "due_date": "2030-05-06T07:08:09Z",
    }

    response = client.post("/api/tasks", json=fields, headers=auth("alice"))

    assert response.status_code == 201, response.text
    body = response.json()
    for name in ("title", "description", "priority", "assigned_to", "project_slug", "parent_id"):
        assert body[name] == fields[name], name
    assert utc(body["due_date"]) == datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert body["status"] == "pending"
    assert client.get(f"/api/tasks/{body['id']}", headers=auth("bob")).json() == body


def test_due_date_with_another_offset_comes_back_in_utc(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post(
        "/api/tasks", json={"title": "Due", "due_date": "2030-01-15T10:30:00+02:00"}, headers=auth("alice")
    )

    assert response.status_code == 201, response.text
    expected = datetime(2030, 1, 15, 8, 30, tzinfo=UTC)
    assert utc(response.json()["due_date"]) == expected
    fetched = client.get(f"/api/tasks/{response.json()['id']}", headers=auth("alice"))
    assert utc(fetched.json()["due_date"]) == expected
    stored = stored_task(db, response.json()["id"])
    assert stored is not None
    assert stored.due_date == expected


def test_naive_due_date_is_taken_as_utc(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post(
        "/api/tasks", json={"title": "Due", "due_date": "2030-01-15T10:30:00"}, headers=auth("alice")
    )

    assert response.status_code == 201, response.text
    assert utc(response.json()["due_date"]) == datetime(2030, 1, 15, 10, 30, tzinfo=UTC)
    fetched = client.get(f"/api/tasks/{response.json()['id']}", headers=auth("alice"))
    assert utc(fetched.json()["due_date"]) == datetime(2030, 1, 15, 10, 30, tzinfo=UTC)


def test_create_task_in_a_project_the_caller_is_not_in_returns_404(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, db: Engine
) -> None:
    create_project("demo", owner="alice")

    response = client.post("/api/tasks", json={"title": "Sneak", "project_slug": "demo"}, headers=auth("bob"))

    assert_error(response, 404, "not_found")
    with Session(db) as session:
        assert session.exec(select(func.count()).select_from(Task)).one() == 0


def test_create_task_in_a_missing_project_returns_404(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post("/api/tasks", json={"title": "Lost", "project_slug": "nowhere"}, headers=auth("alice"))

    assert_error(response, 404, "not_found")


# ---------------------------------------------------------------- get


def test_get_task_returns_what_was_created(client: TestClient, auth: AuthHeaders, create_task: CreateTask) -> None:
    created = create_task("Read me", description="Some text")

    response = client.get(f"/api/tasks/{created['id']}", headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json() == created


def test_get_missing_task_returns_404(client: TestClient, auth: AuthHeaders) -> None:
    assert_error(client.get("/api/tasks/4242", headers=auth("alice")), 404, "not_found")


# ---------------------------------------------------------------- patch


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("title", "  Renamed  ", "Renamed"),
        ("description", "More words", "More words"),
        ("priority", "critical", "critical"),
        ("priority", "low", "low"),
        ("assigned_to", "bob", "bob"),
        ("due_date", "2031-06-01T12:00:00+05:30", "2031-06-01T06:30:00+00:00"),
    ],
)
def test_patch_changes_only_the_field_sent(
    client: TestClient,
    auth: AuthHeaders,
    create_project: CreateProject,
    create_task: CreateTask,
    db: Engine,
    field: str,
    value: str,
    expected: str,
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Original", project_slug="demo", description="Text", due_date="2030-01-01T00:00:00Z")

    response = client.patch(f"/api/tasks/{task['id']}", json={field: value}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    body = response.json()
    if field == "due_date":
        assert utc(body[field]) == datetime.fromisoformat(expected)
    else:
        assert body[field] == expected
    assert same_except(body, task, field)
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == body
    stored = stored_task(db, task["id"])
    assert stored is not None
    stored_value = getattr(stored, field)
    assert stored_value == (datetime.fromisoformat(expected) if field == "due_date" else expected)


def test_patch_status_follows_the_workflow(client: TestClient, auth: AuthHeaders, create_task: CreateTask) -> None:
    task = create_task("Go")

    response = client.patch(f"/api/tasks/{task['id']}", json={"status": "in_progress"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "in_progress"
    assert response.json()["assigned_to"] == "alice"


def test_patch_moves_a_task_to_another_project_of_mine(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice")
    create_project("ops", owner="alice")
    task = create_task("Move me", project_slug="demo")

    response = client.patch(f"/api/tasks/{task['id']}", json={"project_slug": "ops"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["project_slug"] == "ops"
    listed = client.get("/api/tasks", params={"project": "ops"}, headers=auth("alice"))
    assert titles(listed) == ["Move me"]


def test_patch_to_a_project_i_am_not_in_returns_404(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("secret", owner="bob")
    task = create_task("Stay")

    response = client.patch(f"/api/tasks/{task['id']}", json={"project_slug": "secret"}, headers=auth("alice"))

    assert_error(response, 404, "not_found")
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()["project_slug"] is None


def test_patch_moving_an_assigned_task_to_a_project_without_the_assignee_returns_400(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    create_project("ops", owner="alice")
    task = create_task("Bob's", project_slug="demo", assigned_to="bob")

    response = client.patch(f"/api/tasks/{task['id']}", json={"project_slug": "ops"}, headers=auth("alice"))

    assert_error(response, 400, "bad_request")
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()["project_slug"] == "demo"


def test_patch_sets_a_parent_in_the_same_project(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice")
    parent = create_task("Parent", project_slug="demo")
    child = create_task("Child", project_slug="demo")

    response = client.patch(f"/api/tasks/{child['id']}", json={"parent_id": parent["id"]}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["parent_id"] == parent["id"]


@pytest.mark.parametrize("field", ["description", "assigned_to", "project_slug", "parent_id", "due_date"])
def test_patch_null_clears_a_nullable_field(
    client: TestClient,
    auth: AuthHeaders,
    create_project: CreateProject,
    create_task: CreateTask,
    db: Engine,
    field: str,
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    parent = create_task("Parent", project_slug="demo")
    # A subtask cannot leave its parent's project, so the task has a parent only when that is what is cleared.
    task = create_task(
        "Full",
        project_slug="demo",
        description="Text",
        assigned_to="bob",
        due_date="2030-01-01T00:00:00Z",
        parent_id=parent["id"] if field == "parent_id" else None,
    )
    assert task[field] is not None

    response = client.patch(f"/api/tasks/{task['id']}", json={field: None}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body[field] is None
    assert same_except(body, task, field)
    stored = stored_task(db, task["id"])
    assert stored is not None
    assert getattr(stored, field) is None


def test_patch_null_clears_every_nullable_field_at_once(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    parent = create_task("Parent", project_slug="demo")
    task = create_task(
        "Full",
        project_slug="demo",
        description="Text",
        assigned_to="bob",
        due_date="2030-01-01T00:00:00Z",
        parent_id=parent["id"],
    )
    cleared = dict.fromkeys(["description", "assigned_to", "project_slug", "parent_id", "due_date"])

    response = client.patch(f"/api/tasks/{task['id']}", json=cleared, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert {name: response.json()[name] for name in cleared} == cleared
    # Without a project the task stays visible to its creator.
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).status_code == 200


def test_patch_clearing_the_assignee_of_a_task_in_progress_returns_400(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Busy")
    started = client.post(f"/api/tasks/{task['id']}/start", headers=auth("alice"))
    assert started.status_code == 200, started.text

    response = client.patch(f"/api/tasks/{task['id']}", json={"assigned_to": None}, headers=auth("alice"))

    assert_error(response, 400, "bad_request")
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()["assigned_to"] == "alice"


def test_patch_moves_updated_at_and_keeps_created_at(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Old")
    set_columns(db, task["id"], created_at=LONG_AGO, updated_at=LONG_AGO)

    response = client.patch(f"/api/tasks/{task['id']}", json={"title": "New"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert utc(body["created_at"]) == LONG_AGO
    assert utc(body["updated_at"]) > LONG_AGO
    fetched = client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()
    assert utc(fetched["updated_at"]) == utc(body["updated_at"])
    assert utc(fetched["created_at"]) == LONG_AGO


NOOP_PATCHES: list[dict[str, Any]] = [
    {},
    {"title": "Same"},
    {"title": "  Same  "},
    {"priority": "high", "description": "Text"},
    {"due_date": "2030-01-01T02:00:00+02:00"},
    {"status": "pending"},
    {"assigned_to": None, "parent_id": None, "project_slug": None},
]


def test_noop_patch_changes_nothing(client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine) -> None:
    task = create_task("Same", priority="high", description="Text", due_date="2030-01-01T00:00:00Z")
    set_columns(db, task["id"], updated_at=LONG_AGO)
    before = client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()
    rows = audit_count(db, task_id=task["id"])

    failures: list[str] = []
    for patch in NOOP_PATCHES:
        with case(failures, repr(patch)):
            response = client.patch(f"/api/tasks/{task['id']}", json=patch, headers=auth("alice"))
            assert response.status_code == 200, response.text
            assert response.json() == before
            assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json() == before
            assert audit_count(db, task_id=task["id"]) == rows

    assert not failures, "\n".join(failures)
    assert utc(before["updated_at"]) == LONG_AGO


def test_patch_missing_task_returns_404(client: TestClient, auth: AuthHeaders) -> None:
    assert_error(client.patch("/api/tasks/4242", json={"title": "x"}, headers=auth("alice")), 404, "not_found")


# ---------------------------------------------------------------- delete


def test_delete_task_returns_204_then_404(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Doomed")

    response = client.delete(f"/api/tasks/{task['id']}", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert stored_task(db, task["id"]) is None
    assert_error(client.get(f"/api/tasks/{task['id']}", headers=auth("alice")), 404, "not_found")
    assert_error(client.delete(f"/api/tasks/{task['id']}", headers=auth("alice")), 404, "not_found")


def test_delete_task_with_subtasks_returns_400(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    parent = create_task("Parent")
    child = create_task("Child", parent_id=parent["id"])

    response = client.delete(f"/api/tasks/{parent['id']}", headers=auth("alice"))

    assert_error(response, 400, "bad_request")
    assert stored_task(db, parent["id"]) is not None
    assert client.delete(f"/api/tasks/{child['id']}", headers=auth("alice")).status_code == 204
    assert client.delete(f"/api/tasks/{parent['id']}", headers=auth("alice")).status_code == 204


def test_delete_by_a_plain_member_who_did_not_create_it_returns_403(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask, db: Engine
) -> None:
    create_project("demo", owner="alice", members=["bob", "carol"])
    task = create_task("Carol's", as_user="carol", project_slug="demo")

    response = client.delete(f"/api/tasks/{task['id']}", headers=auth("bob"))

    assert_error(response, 403, "forbidden")
    assert stored_task(db, task["id"]) is not None


def test_delete_by_a_project_owner_returns_204(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask, db: Engine
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Bob's", as_user="bob", project_slug="demo")

    response = client.delete(f"/api/tasks/{task['id']}", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert stored_task(db, task["id"]) is None


def test_delete_by_its_creator_who_is_a_plain_member_returns_204(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Bob's", as_user="bob", project_slug="demo")

    assert client.delete(f"/api/tasks/{task['id']}", headers=auth("bob")).status_code == 204


def test_delete_by_someone_who_cannot_see_it_returns_404(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Private")

    assert_error(client.delete(f"/api/tasks/{task['id']}", headers=auth("bob")), 404, "not_found")
    assert stored_task(db, task["id"]) is not None


# ---------------------------------------------------------------- parent rules


def test_parent_owned_by_someone_else_returns_404(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    bobs = create_task("Bob's own", as_user="bob")
    mine = create_task("Mine")

    created = client.post("/api/tasks", json={"title": "Child", "parent_id": bobs["id"]}, headers=auth("alice"))
    patched = client.patch(f"/api/tasks/{mine['id']}", json={"parent_id": bobs["id"]}, headers=auth("alice"))

    assert_error(created, 404, "not_found")
    assert_error(patched, 404, "not_found")
    stored = stored_task(db, mine["id"])
    assert stored is not None
    assert stored.parent_id is None


def test_parent_that_does_not_exist_returns_404(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Mine")

    created = client.post("/api/tasks", json={"title": "Orphan", "parent_id": 4242}, headers=auth("alice"))
    patched = client.patch(f"/api/tasks/{task['id']}", json={"parent_id": 4242}, headers=auth("alice"))

    assert_error(created, 404, "not_found")
    assert_error(patched, 404, "not_found")
    stored = stored_task(db, task["id"])
    assert stored is not None
    assert stored.parent_id is None


def test_parent_in_another_project_returns_400(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice")
    create_project("ops", owner="alice")
    parent = create_task("Parent", project_slug="demo")
    loose = create_task("Loose")
    other = create_task("Other", project_slug="ops")

    into_other = client.post(
        "/api/tasks", json={"title": "Child", "project_slug": "ops", "parent_id": parent["id"]}, headers=auth("alice")
    )
    without_project = client.post(
        "/api/tasks", json={"title": "Child", "parent_id": parent["id"]}, headers=auth("alice")
    )
    patched = client.patch(f"/api/tasks/{other['id']}", json={"parent_id": parent["id"]}, headers=auth("alice"))
    patched_loose = client.patch(f"/api/tasks/{loose['id']}", json={"parent_id": parent["id"]}, headers=auth("alice"))

    for response in (into_other, without_project, patched, patched_loose):
        assert_error(response, 400, "bad_request")
    assert titles(client.get("/api/tasks", params={"parent_id": parent["id"]}, headers=auth("alice"))) == []


def test_moving_a_subtask_away_from_its_parents_project_returns_400(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice")
    create_project("ops", owner="alice")
    parent = create_task("Parent", project_slug="demo")
    child = create_task("Child", project_slug="demo", parent_id=parent["id"])

    response = client.patch(f"/api/tasks/{child['id']}", json={"project_slug": "ops"}, headers=auth("alice"))

    assert_error(response, 400, "bad_request")
    assert client.get(f"/api/tasks/{child['id']}", headers=auth("alice")).json()["project_slug"] == "demo"


def test_moving_a_task_with_subtasks_to_another_project_returns_400(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice")
    create_project("ops", owner="alice")
    parent = create_task("Parent", project_slug="demo")
    create_task("Child", project_slug="demo", parent_id=parent["id"])

    response = client.patch(f"/api/tasks/{parent['id']}", json={"project_slug": "ops"}, headers=auth("alice"))

    assert_error(response, 400, "bad_request")
    assert client.get(f"/api/tasks/{parent['id']}", headers=auth("alice")).json()["project_slug"] == "demo"


def test_parent_cycle_is_rejected(client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine) -> None:
    a = create_task("A")
    b = create_task("B", parent_id=a["id"])
    c = create_task("C", parent_id=b["id"])

    response = client.patch(f"/api/tasks/{a['id']}", json={"parent_id": c["id"]}, headers=auth("alice"))

    assert_error(response, 400, "bad_request")
    stored = stored_task(db, a["id"])
    assert stored is not None
    assert stored.parent_id is None


def test_task_as_its_own_parent_is_rejected(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    a = create_task("A")

    response = client.patch(f"/api/tasks/{a['id']}", json={"parent_id": a["id"]}, headers=auth("alice"))

    assert_error(response, 400, "bad_request")
    stored = stored_task(db, a["id"])
    assert stored is not None
    assert stored.parent_id is None


def test_reparenting_within_a_tree_without_a_cycle_is_allowed(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    a = create_task("A")
    b = create_task("B", parent_id=a["id"])
    c = create_task("C", parent_id=b["id"])

    response = client.patch(f"/api/tasks/{c['id']}", json={"parent_id": a["id"]}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["parent_id"] == a["id"]


# ---------------------------------------------------------------- assignee rules


def test_assigning_an_unknown_worker_returns_404(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Mine")

    created = client.post("/api/tasks", json={"title": "x", "assigned_to": "ghost"}, headers=auth("alice"))
    patched = client.patch(f"/api/tasks/{task['id']}", json={"assigned_to": "ghost"}, headers=auth("alice"))

    assert_error(created, 404, "not_found")
    assert_error(patched, 404, "not_found")
    stored = stored_task(db, task["id"])
    assert stored is not None
    assert stored.assigned_to is None


def test_assigning_a_worker_who_is_not_a_project_member_returns_400(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask, db: Engine
) -> None:
    create_project("demo", owner="alice")
    client.get("/api/tasks", headers=auth("carol"))  # carol is a registered worker, but not in demo
    task = create_task("In demo", project_slug="demo")

    created = client.post(
        "/api/tasks", json={"title": "x", "project_slug": "demo", "assigned_to": "carol"}, headers=auth("alice")
    )
    patched = client.patch(f"/api/tasks/{task['id']}", json={"assigned_to": "carol"}, headers=auth("alice"))

    assert_error(created, 400, "bad_request")
    assert_error(patched, 400, "bad_request")
    stored = stored_task(db, task["id"])
    assert stored is not None
    assert stored.assigned_to is None


def test_assigning_a_project_member_is_allowed(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])

    response = client.post(
        "/api/tasks", json={"title": "For Bob", "project_slug": "demo", "assigned_to": "bob"}, headers=auth("alice")
    )

    assert response.status_code == 201, response.text
    assert response.json()["assigned_to"] == "bob"
    assert titles(client.get("/api/tasks", params={"assigned_to": "bob"}, headers=auth("bob"))) == ["For Bob"]


def test_assigning_a_task_without_project_to_any_registered_worker_is_allowed(
    client: TestClient, auth: AuthHeaders
) -> None:
    client.get("/api/tasks", headers=auth("bob"))

    response = client.post("/api/tasks", json={"title": "For Bob", "assigned_to": "bob"}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    assert client.get(f"/api/tasks/{response.json()['id']}", headers=auth("bob")).status_code == 200


# ---------------------------------------------------------------- list: filters


@pytest.fixture
def board(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> dict[str, int]:
    """Five tasks alice can see (title -> id), in creation order, plus one of carol's that she cannot."""
    create_project("demo", owner="alice", members=["bob"])
    create_project("ops", owner="alice")
    ids: dict[str, int] = {}
    ids["Fix login bug"] = create_task("Fix login bug", project_slug="demo", priority="high", assigned_to="bob")["id"]
    ids["Write docs"] = create_task("Write docs", project_slug="demo", priority="low")["id"]
    ids["fix CSS glitch"] = create_task("fix CSS glitch", project_slug="ops", priority="critical")["id"]
    ids["Login tests"] = create_task("Login tests", project_slug="demo", parent_id=ids["Fix login bug"])["id"]
    ids["Plan LOGIN page"] = create_task("Plan LOGIN page")["id"]
    started = client.post(f"/api/tasks/{ids['Write docs']}/start", headers=auth("alice"))
    assert started.status_code == 200, started.text
    create_task("Carol's login secret", as_user="carol")
    return ids


ALL_OF_ALICES = ["Fix login bug", "Write docs", "fix CSS glitch", "Login tests", "Plan LOGIN page"]


LIST_FILTERS: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ALL_OF_ALICES),
    ({"status": "pending"}, ["Fix login bug", "fix CSS glitch", "Login tests", "Plan LOGIN page"]),
    ({"status": "in_progress"}, ["Write docs"]),
    ({"status": "completed"}, []),
    ({"priority": "medium"}, ["Login tests", "Plan LOGIN page"]),
    ({"priority": "critical"}, ["fix CSS glitch"]),
    ({"assigned_to": "bob"}, ["Fix login bug"]),
    ({"assigned_to": "alice"}, ["Write docs"]),
    ({"assigned_to": "nobody"}, []),
    ({"project": "demo"}, ["Fix login bug", "Write docs", "Login tests"]),
    ({"project": "ops"}, ["fix CSS glitch"]),
    ({"project": "missing"}, []),
    ({"q": "login"}, ["Fix login bug", "Login tests", "Plan LOGIN page"]),
    ({"q": "FIX"}, ["Fix login bug", "fix CSS glitch"]),
    ({"q": "n b"}, ["Fix login bug"]),
    ({"q": "nothing like it"}, []),
    ({"project": "demo", "status": "pending", "q": "LOGIN"}, ["Fix login bug", "Login tests"]),
]


@pytest.mark.usefixtures("board")
def test_list_filters_by_each_field(client: TestClient, auth: AuthHeaders) -> None:
    failures: list[str] = []
    for params, expected in LIST_FILTERS:
        with case(failures, repr(params)):
            response = client.get("/api/tasks", params=params, headers=auth("alice"))
            assert titles(response) == expected
            assert response.headers["X-Total-Count"] == str(len(expected))

    assert not failures, "\n".join(failures)


def test_list_filter_by_parent_id(client: TestClient, auth: AuthHeaders, board: dict[str, int]) -> None:
    response = client.get("/api/tasks", params={"parent_id": board["Fix login bug"]}, headers=auth("alice"))

    assert titles(response) == ["Login tests"]
    assert response.headers["X-Total-Count"] == "1"


@pytest.mark.usefixtures("board")
def test_list_parent_id_0_means_no_filter(client: TestClient, auth: AuthHeaders) -> None:
    response = client.get("/api/tasks", params={"parent_id": 0}, headers=auth("alice"))

    assert titles(response) == ALL_OF_ALICES
    assert response.headers["X-Total-Count"] == str(len(ALL_OF_ALICES))


def test_list_q_treats_wildcards_literally(client: TestClient, auth: AuthHeaders, create_task: CreateTask) -> None:
    for title in ["100% done", "100 done", "snake_case", "snakeXcase", "either/or", "eitheror", "back\\slash", "it's"]:
        create_task(title)

    failures: list[str] = []
    for q, expected in [
        ("%", ["100% done"]),
        ("0%", ["100% done"]),
        ("_", ["snake_case"]),
        ("e_c", ["snake_case"]),
        ("/", ["either/or"]),
        ("\\", ["back\\slash"]),
        ("'", ["it's"]),
    ]:
        with case(failures, repr(q)):
            response = client.get("/api/tasks", params={"q": q}, headers=auth("alice"))
            assert titles(response) == expected
            assert response.headers["X-Total-Count"] == str(len(expected))

    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- list: sorting


@pytest.fixture
def sortable(create_task: CreateTask, db: Engine) -> None:
    """Tasks A..E with distinct created/updated times, priorities with a tie, and two without due date."""
    spec = {
        # title: (priority, due_date, created day, updated day)
        "A": ("low", "2030-03-01T00:00:00Z", 3, 2),
        "B": ("critical", None, 1, 4),
        "C": ("medium", "2030-01-01T00:00:00Z", 4, 1),
        "D": ("high", None, 2, 3),
        "E": ("medium", "2030-02-01T00:00:00Z", 5, 5),
    }
    for title, (priority, due_date, created, updated) in spec.items():
        task = create_task(title, priority=priority, due_date=due_date)
        set_columns(
            db,
            task["id"],
            created_at=datetime(2020, 1, created, tzinfo=UTC),
            updated_at=datetime(2020, 2, updated, tzinfo=UTC),
        )


@pytest.mark.usefixtures("sortable")
def test_list_sorts_by_each_key_both_ways(client: TestClient, auth: AuthHeaders) -> None:
    failures: list[str] = []
    for sort, expected in [
        (None, ["B", "D", "A", "C", "E"]),
        ("created_at", ["B", "D", "A", "C", "E"]),
        ("-created_at", ["E", "C", "A", "D", "B"]),
        ("updated_at", ["C", "A", "D", "B", "E"]),
        ("-updated_at", ["E", "B", "D", "A", "C"]),
        # low < medium < high < critical; the two medium ones tie and fall back to id.
        ("priority", ["A", "C", "E", "D", "B"]),
        ("-priority", ["B", "D", "E", "C", "A"]),
        # Tasks without a due date come last either way.
        ("due_date", ["C", "E", "A", "B", "D"]),
        ("-due_date", ["A", "E", "C", "D", "B"]),
    ]:
        with case(failures, f"sort={sort}"):
            params = {} if sort is None else {"sort": sort}
            assert titles(client.get("/api/tasks", params=params, headers=auth("alice"))) == expected

    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- list: paging


def test_list_pages_with_limit_and_offset_and_counts_all_matches(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    for number in range(7):
        create_task(f"Task {number}")
    create_task("Someone else's", as_user="bob")

    pages = [
        client.get("/api/tasks", params={"limit": 3, "offset": offset}, headers=auth("alice"))
        for offset in (0, 3, 6, 9)
    ]

    assert [titles(page) for page in pages] == [
        ["Task 0", "Task 1", "Task 2"],
        ["Task 3", "Task 4", "Task 5"],
        ["Task 6"],
        [],
    ]
    assert [page.headers["X-Total-Count"] for page in pages] == ["7", "7", "7", "7"]


def test_list_total_counts_only_the_filtered_matches(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    for number in range(5):
        create_task(f"High {number}", priority="high")
    create_task("Low one", priority="low")

    response = client.get("/api/tasks", params={"priority": "high", "limit": 2}, headers=auth("alice"))

    assert titles(response) == ["High 0", "High 1"]
    assert response.headers["X-Total-Count"] == "5"


def test_list_returns_50_by_default_and_up_to_100(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    client.get("/api/tasks", headers=auth("alice"))  # registers alice as a worker
    with Session(db) as session:
        session.add_all(
            Task(title=f"Task {number:03d}", created_by="alice", created_at=datetime(2020, 1, 1, 0, number, tzinfo=UTC))
            for number in range(55)
        )
        session.commit()

    default = client.get("/api/tasks", headers=auth("alice"))
    largest = client.get("/api/tasks", params={"limit": 100}, headers=auth("alice"))

    assert titles(default) == [f"Task {number:03d}" for number in range(50)]
    assert default.headers["X-Total-Count"] == "55"
    assert len(titles(largest)) == 55
    assert largest.headers["X-Total-Count"] == "55"


def test_empty_list_is_a_json_array_with_a_zero_count(client: TestClient, auth: AuthHeaders) -> None:
    response = client.get("/api/tasks", headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json() == []
    assert response.headers["X-Total-Count"] == "0"


# ---------------------------------------------------------------- work under way is not grabbed


def test_a_member_cannot_reassign_a_task_someone_else_is_working_on(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", members=["bob", "carol"])
    task = create_task("Busy", project_slug="demo")
    assert client.post(f"/api/tasks/{task['id']}/start", headers=auth("bob")).status_code == 200

    grab = client.patch(f"/api/tasks/{task['id']}", json={"assigned_to": "carol"}, headers=auth("carol"))
    move = client.patch(f"/api/tasks/{task['id']}", json={"project_slug": None}, headers=auth("carol"))
    handover = client.patch(f"/api/tasks/{task['id']}", json={"assigned_to": "carol"}, headers=auth("bob"))

    assert_error(grab, 403, "forbidden")
    assert_error(move, 403, "forbidden")
    assert handover.status_code == 200, handover.text
    assert handover.json()["assigned_to"] == "carol"


def test_a_block_reason_of_only_unicode_separators_is_refused(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Stuck")

    response = client.post(f"/api/tasks/{task['id']}/block", params={"reason": "\x1c\u2028"}, headers=auth("alice"))

    assert_error(response, 422, "validation_error")
