"""Idempotency-Key: a retried POST gets the first response back and nothing is done twice.

Project "demo" is owned by alice; bob is a member. Every test uses keys of its own (uuid4), so no
key can meet a record another test left behind.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select
from support import ON_POSTGRESQL, AnyResponse, CreateProject, CreateTask, assert_refused, count, holding_first

from config import Settings
from main import create_app
from models import AuditLog, IdempotencyKey, Task, utc_now


@pytest.fixture
def demo(create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob"])


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def keyed(auth: AuthHeaders, user: str, key: str) -> dict[str, str]:
    return {**auth(user), "Idempotency-Key": key}


def audit_actions(db: Engine, task_id: int) -> list[str]:
    with Session(db) as session:
        query = select(AuditLog.action).where(AuditLog.task_id == task_id).order_by(col(AuditLog.id))
        return list(session.exec(query).all())


def assert_replayed(first: AnyResponse, again: AnyResponse) -> None:
    assert again.status_code == first.status_code, again.text
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers


# ---------------------------------------------------------------- creating a task


@pytest.mark.usefixtures("demo")
def test_the_same_create_sent_twice_answers_the_first_response_and_creates_one_task(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = keyed(auth, "bob", new_key())
    body = {"title": "Write the report", "project_slug": "demo"}

    first = client.post("/api/tasks", json=body, headers=headers)
    again = client.post("/api/tasks", json=body, headers=headers)

    assert first.status_code == 201, first.text
    assert_replayed(first, again)
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert count(db, Task) == 1
    assert audit_actions(db, first.json()["id"]) == ["task.created"]


def test_a_replay_does_nothing_again_even_after_the_task_changed(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = keyed(auth, "bob", new_key())
    first = client.post("/api/tasks", json={"title": "Original"}, headers=headers)
    task_id = first.json()["id"]
    renamed = client.patch(f"/api/tasks/{task_id}", json={"title": "Renamed"}, headers=auth("bob"))
    assert renamed.status_code == 200, renamed.text

    again = client.post("/api/tasks", json={"title": "Original"}, headers=headers)

    assert_replayed(first, again)
    assert again.json()["title"] == "Original"
    assert count(db, Task) == 1
    assert audit_actions(db, task_id) == ["task.created", "task.updated"]


def test_the_same_key_with_a_different_body_returns_422_and_creates_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = keyed(auth, "bob", new_key())
    assert client.post("/api/tasks", json={"title": "First"}, headers=headers).status_code == 201

    response = client.post("/api/tasks", json={"title": "Second"}, headers=headers)

    assert_refused(response, 422, "idempotency_key_reused")
    assert count(db, Task) == 1


def test_the_same_key_on_another_path_returns_422(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    headers = keyed(auth, "bob", new_key())
    created = client.post("/api/tasks", json={"title": "First"}, headers=headers)
    assert created.status_code == 201, created.text

    response = client.post(f"/api/tasks/{created.json()['id']}/start", headers=headers)

    assert_refused(response, 422, "idempotency_key_reused")
    assert audit_actions(db, created.json()["id"]) == ["task.created"]


def test_the_same_key_with_another_query_string_returns_422(client: TestClient, auth: AuthHeaders) -> None:
    task_id = client.post("/api/tasks", json={"title": "Work"}, headers=auth("bob")).json()["id"]
    assert client.post(f"/api/tasks/{task_id}/start", headers=auth("bob")).status_code == 200
    headers = keyed(auth, "bob", new_key())
    assert client.post(f"/api/tasks/{task_id}/progress?percent=10", headers=headers).status_code == 200

    response = client.post(f"/api/tasks/{task_id}/progress?percent=20", headers=headers)

    assert_refused(response, 422, "idempotency_key_reused")
    assert client.get(f"/api/tasks/{task_id}", headers=auth("bob")).json()["progress_percent"] == 10


@pytest.mark.usefixtures("demo")
def test_the_same_key_from_another_caller_is_a_different_request(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    key = new_key()
    body = {"title": "Write the report", "project_slug": "demo"}

    alices = client.post("/api/tasks", json=body, headers=keyed(auth, "alice", key))
    bobs = client.post("/api/tasks", json=body, headers=keyed(auth, "bob", key))

    assert (alices.status_code, bobs.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in bobs.headers
    assert alices.json()["id"] != bobs.json()["id"]
    assert (alices.json()["created_by"], bobs.json()["created_by"]) == ("alice", "bob")
    assert count(db, Task) == 2


def test_different_keys_are_different_requests(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    body = {"title": "Write the report"}

    first = client.post("/api/tasks", json=body, headers=keyed(auth, "bob", new_key()))
    second = client.post("/api/tasks", json=body, headers=keyed(auth, "bob", new_key()))

    assert (first.status_code, second.status_code) == (201, 201)
    assert count(db, Task) == 2


def test_a_key_survives_a_restart_of_the_app(
    client: TestClient, auth: AuthHeaders, db: Engine, settings: Settings
) -> None:
    headers = keyed(auth, "bob", new_key())
    first = client.post("/api/tasks", json={"title": "Work"}, headers=headers)

    with TestClient(create_app(settings)) as restarted:
        again = restarted.post("/api/tasks", json={"title": "Work"}, headers=headers)

    assert_replayed(first, again)
    assert count(db, Task) == 1


# ---------------------------------------------------------------- workflow actions and claims


def test_a_replayed_complete_answers_the_first_200_instead_of_a_400(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    task_id = client.post("/api/tasks", json={"title": "Work"}, headers=auth("bob")).json()["id"]
    assert client.post(f"/api/tasks/{task_id}/start", headers=auth("bob")).status_code == 200
    headers = keyed(auth, "bob", new_key())

    first = client.post(f"/api/tasks/{task_id}/complete", headers=headers)
    again = client.post(f"/api/tasks/{task_id}/complete", headers=headers)

    assert first.status_code == 200, first.text
    assert first.json()["status"] == "completed"
    assert_replayed(first, again)
    assert again.headers["ETag"] == first.headers["ETag"]
    assert audit_actions(db, task_id) == ["task.created", "task.started", "task.completed"]
    unkeyed = client.post(f"/api/tasks/{task_id}/complete", headers=auth("bob"))
    assert_refused(unkeyed, 400, "invalid_transition")


def test_a_replayed_start_does_not_start_the_task_twice(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    task_id = client.post("/api/tasks", json={"title": "Work"}, headers=auth("bob")).json()["id"]
    headers = keyed(auth, "bob", new_key())

    first = client.post(f"/api/tasks/{task_id}/start?lease_seconds=60", headers=headers)
    again = client.post(f"/api/tasks/{task_id}/start?lease_seconds=60", headers=headers)

    assert first.status_code == 200, first.text
    assert_replayed(first, again)
    assert audit_actions(db, task_id) == ["task.created", "task.started"]


@pytest.mark.usefixtures("demo")
def test_a_replayed_claim_answers_the_same_task_and_claims_no_second_one(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    first_id = create_task("First", project_slug="demo", priority="high")["id"]
    second_id = create_task("Second", project_slug="demo")["id"]
    headers = keyed(auth, "bob", new_key())

    first = client.post("/api/tasks/claim", json={"lease_seconds": 60}, headers=headers)
    again = client.post("/api/tasks/claim", json={"lease_seconds": 60}, headers=headers)

    assert first.status_code == 200, first.text
    assert first.json()["id"] == first_id
    assert_replayed(first, again)
    assert again.headers["ETag"] == first.headers["ETag"]
    second = client.get(f"/api/tasks/{second_id}", headers=auth("bob")).json()
    assert (second["status"], second["assigned_to"]) == ("pending", None)
    assert count(db, AuditLog, AuditLog.action == "task.claimed") == 1


def test_a_replayed_claim_that_found_nothing_answers_204_again(client: TestClient, auth: AuthHeaders) -> None:
    headers = keyed(auth, "bob", new_key())

    first = client.post("/api/tasks/claim", headers=headers)
    again = client.post("/api/tasks/claim", headers=headers)

    assert first.status_code == 204, first.text
    assert again.status_code == 204, again.text
    assert again.content == b""
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.usefixtures("demo")
def test_a_replayed_dependency_add_answers_201_again_instead_of_409(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = create_task("Deploy", project_slug="demo")["id"]
    first_id = create_task("Build", project_slug="demo")["id"]
    headers = keyed(auth, "bob", new_key())
    path = f"/api/tasks/{task_id}/dependencies"

    first = client.post(path, json={"depends_on": first_id}, headers=headers)
    again = client.post(path, json={"depends_on": first_id}, headers=headers)

    assert first.status_code == 201, first.text
    assert_replayed(first, again)
    assert count(db, AuditLog, AuditLog.action == "dependency.added") == 1


def test_a_replayed_project_create_answers_201_again_instead_of_409(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = keyed(auth, "bob", new_key())
    body = {"slug": "retried", "name": "Retried"}

    first = client.post("/api/projects", json=body, headers=headers)
    again = client.post("/api/projects", json=body, headers=headers)

    assert first.status_code == 201, first.text
    assert_replayed(first, again)
    assert count(db, AuditLog, AuditLog.action == "project.created") == 1


# ---------------------------------------------------------------- what is not remembered


def test_a_failed_first_request_stores_nothing_so_its_retry_runs(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    key = new_key()
    headers = keyed(auth, "bob", key)
    body = {"title": "Work", "project_slug": "later"}

    failed = client.post("/api/tasks", json=body, headers=headers)
    assert_refused(failed, 404, "not_found")
    assert count(db, IdempotencyKey, IdempotencyKey.key == key) == 0
    create_project("later", owner="alice", members=["bob"])

    retried = client.post("/api/tasks", json=body, headers=headers)

    assert retried.status_code == 201, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert count(db, Task) == 1
    assert count(db, IdempotencyKey, IdempotencyKey.key == key) == 1


def test_a_first_request_refused_by_the_workflow_stores_nothing(client: TestClient, auth: AuthHeaders) -> None:
    task_id = client.post("/api/tasks", json={"title": "Work"}, headers=auth("bob")).json()["id"]
    headers = keyed(auth, "bob", new_key())

    refused = client.post(f"/api/tasks/{task_id}/complete", headers=headers)
    assert client.post(f"/api/tasks/{task_id}/start", headers=auth("bob")).status_code == 200
    retried = client.post(f"/api/tasks/{task_id}/complete", headers=headers)

    assert_refused(refused, 400, "invalid_transition")
    assert retried.status_code == 200, retried.text
    assert "Idempotent-Replayed" not in retried.headers


def test_a_malformed_first_request_stores_nothing(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    key = new_key()
    headers = keyed(auth, "bob", key)

    malformed = client.post("/api/tasks", json={"title": ""}, headers=headers)
    fixed = client.post("/api/tasks", json={"title": ""}, headers=headers)

    assert_refused(malformed, 422, "validation_error")
    assert_refused(fixed, 422, "validation_error")
    assert "Idempotent-Replayed" not in fixed.headers
    assert count(db, IdempotencyKey, IdempotencyKey.key == key) == 0


def test_a_key_older_than_24_hours_is_treated_as_new(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    key = new_key()
    headers = keyed(auth, "bob", key)
    first = client.post("/api/tasks", json={"title": "Work"}, headers=headers)
    with Session(db) as session:
        session.exec(
            update(IdempotencyKey)
            .where(col(IdempotencyKey.actor_id) == "bob", col(IdempotencyKey.key) == key)
            .values(created_at=utc_now() - timedelta(hours=24, minutes=1))
        )
        session.commit()

    again = client.post("/api/tasks", json={"title": "Work"}, headers=headers)
    replayed = client.post("/api/tasks", json={"title": "Work"}, headers=headers)

    assert again.status_code == 201, again.text
    assert "Idempotent-Replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert count(db, Task) == 2
    assert_replayed(again, replayed)


def test_a_key_just_under_24_hours_old_is_still_replayed(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    key = new_key()
    headers = keyed(auth, "bob", key)
    first = client.post("/api/tasks", json={"title": "Work"}, headers=headers)
    with Session(db) as session:
        session.exec(
            update(IdempotencyKey)
            .where(col(IdempotencyKey.actor_id) == "bob", col(IdempotencyKey.key) == key)
            .values(created_at=utc_now() - timedelta(hours=23, minutes=59))
        )
        session.commit()

    again = client.post("/api/tasks", json={"title": "Work"}, headers=headers)

    assert_replayed(first, again)
    assert count(db, Task) == 1


# ---------------------------------------------------------------- the header itself


def test_a_key_of_255_characters_is_accepted(client: TestClient, auth: AuthHeaders) -> None:
    headers = keyed(auth, "bob", "k" * 255)

    first = client.post("/api/tasks", json={"title": "Work"}, headers=headers)
    again = client.post("/api/tasks", json={"title": "Work"}, headers=headers)

    assert first.status_code == 201, first.text
    assert_replayed(first, again)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 256, id="too-long"),
        pytest.param("has space", id="space"),
        pytest.param("", id="empty"),
    ],
)
def test_a_malformed_key_returns_422_and_creates_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, key: str
) -> None:
    response = client.post("/api/tasks", json={"title": "Work"}, headers=keyed(auth, "bob", key))

    assert_refused(response, 422, "validation_error")
    assert count(db, Task) == 0


def test_a_key_is_no_substitute_for_a_token(client: TestClient) -> None:
    response = client.post("/api/tasks", json={"title": "Work"}, headers={"Idempotency-Key": new_key()})

    assert_refused(response, 401, "unauthorized")


def test_patch_ignores_the_idempotency_key(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    task_id = client.post("/api/tasks", json={"title": "Work"}, headers=auth("bob")).json()["id"]
    key = new_key()
    headers = keyed(auth, "bob", key)

    first = client.patch(f"/api/tasks/{task_id}", json={"title": "One"}, headers=headers)
    second = client.patch(f"/api/tasks/{task_id}", json={"title": "Two"}, headers=headers)

    assert (first.status_code, second.status_code) == (200, 200)
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["title"] == "Two"
    assert count(db, IdempotencyKey, IdempotencyKey.key == key) == 0


def test_delete_ignores_the_idempotency_key(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    first_id = client.post("/api/tasks", json={"title": "One"}, headers=auth("bob")).json()["id"]
    second_id = client.post("/api/tasks", json={"title": "Two"}, headers=auth("bob")).json()["id"]
    key = new_key()
    headers = keyed(auth, "bob", key)

    first = client.delete(f"/api/tasks/{first_id}", headers=headers)
    second = client.delete(f"/api/tasks/{second_id}", headers=headers)

    assert (first.status_code, second.status_code) == (204, 204)
    assert count(db, Task) == 0
    assert count(db, IdempotencyKey, IdempotencyKey.key == key) == 0


# ---------------------------------------------------------------- a duplicate while the first still runs


@pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="SQLite serializes writers, so a duplicate cannot arrive mid-request; proven on PostgreSQL in CI",
)
def test_a_duplicate_arriving_while_the_first_still_runs_returns_409(
    live_server: Any, auth: AuthHeaders, db: Engine
) -> None:
    headers = {**keyed(auth, "bob", new_key()), "Connection": "close"}
    body = {"title": "Slow work"}
    auditing = holding_first(live_server.app.state.engine, lambda statement: "INSERT INTO audit_log" in statement)
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        assert http.get("/api/tasks", headers=auth("bob")).status_code == 200  # bob's worker row exists
        with auditing as (held, release), ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(http.post, "/api/tasks", json=body, headers=headers)
            assert held.wait(timeout=10), "the first request never reached its audit insert"
            duplicate = http.post("/api/tasks", json=body, headers=headers)
            other_body = http.post("/api/tasks", json={"title": "Else"}, headers=headers)
            release.set()
            original = first.result(timeout=30)
        replayed = http.post("/api/tasks", json=body, headers=headers)

    assert_refused(duplicate, 409, "idempotency_in_progress")
    assert_refused(other_body, 409, "idempotency_in_progress")
    assert original.status_code == 201, original.text
    assert_replayed(original, replayed)
    assert count(db, Task) == 1
