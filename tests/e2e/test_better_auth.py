"""TaskFlow with a real Better Auth server: its tokens, its keys, its restarts, and a stranger's tokens.

TaskFlow is told about the server only through AUTH_SERVER_URL (see `taskflow_for`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select
from support import app_of

from auth import JWKSVerifier
from e2e.harness import BetterAuthFactory, BetterAuthServer, decode_jwt
from models import AuditLog, Worker

TaskFlowFor = Callable[[BetterAuthServer], TestClient]


def verifier_of(client: TestClient) -> JWKSVerifier:
    verifier: JWKSVerifier = app_of(client).state.verifier
    return verifier


def ok(response: Any, status_code: int = 200) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256", "ES256"])
def test_better_auth_users_walk_the_workflow_and_the_audit_log_names_them(
    algorithm: str,
    better_auth_servers: BetterAuthFactory,
    taskflow_for: TaskFlowFor,
    db: Engine,
) -> None:
    server = better_auth_servers(algorithm)
    taskflow = taskflow_for(server)
    signed_up = server.sign_up("Alice")
    alice = server.sign_in(signed_up.email)
    assert alice.id == signed_up.id
    bob = server.sign_up("Bob")

    header, claims = decode_jwt(alice.token)
    assert header["alg"] == algorithm
    assert header["kid"] in {key["kid"] for key in server.jwks()["keys"]}
    assert claims["sub"] == alice.id
    assert claims["iss"] == claims["aud"] == server.base_url
    assert claims["role"] == "user"

    # Bob calls with the JWT from get-session's set-auth-jwt header, Alice with /api/auth/token's.
    bob_headers = {"Authorization": f"Bearer {bob.session_jwt}"}
    assert ok(taskflow.get(f"/api/workers/{bob.id}", headers=bob_headers))["name"] == "Bob"
    ok(taskflow.post("/api/projects", json={"slug": "launch", "name": "Launch"}, headers=alice.headers), 201)
    ok(taskflow.post("/api/projects/launch/members", json={"worker_id": bob.id}, headers=alice.headers), 201)
    task = ok(
        taskflow.post(
            "/api/tasks", json={"title": "Write the release notes", "project_slug": "launch"}, headers=alice.headers
        ),
        201,
    )
    assert task["created_by"] == alice.id
    task_id = task["id"]

    started = ok(taskflow.post(f"/api/tasks/{task_id}/start", headers=bob_headers))
    assert (started["status"], started["assigned_to"]) == ("in_progress", bob.id)
    assert ok(taskflow.post(f"/api/tasks/{task_id}/progress?percent=60", headers=bob_headers))["progress_percent"] == 60
    assert ok(taskflow.post(f"/api/tasks/{task_id}/review", headers=bob_headers))["status"] == "review"
    completed = ok(taskflow.post(f"/api/tasks/{task_id}/complete", headers=alice.headers))
    assert (completed["status"], completed["progress_percent"]) == ("completed", 100)

    history = taskflow.get(f"/api/tasks/{task_id}/audit", headers=alice.headers)
    assert history.status_code == 200, history.text
    assert [(row["action"], row["actor_id"], row["actor_type"]) for row in history.json()] == [
        ("task.created", alice.id, "human"),
        ("task.started", bob.id, "human"),
        ("task.progress", bob.id, "human"),
        ("task.review", bob.id, "human"),
        ("task.completed", alice.id, "human"),
    ]
    with Session(db) as session:
        registered = session.exec(select(AuditLog.actor_id).where(AuditLog.action == "worker.registered")).all()
        assert sorted(registered) == sorted([alice.id, bob.id])
        worker = session.get(Worker, alice.id)
        assert worker is not None
        assert worker.name == "Alice"


def test_admin_token_from_better_auth_sees_everything_and_a_plain_users_token_does_not(
    better_auth: BetterAuthServer, taskflow_for: TaskFlowFor
) -> None:
    taskflow = taskflow_for(better_auth)
    carol = better_auth.sign_up("Carol")
    dave = better_auth.sign_up("Dave")
    # `role` is a field clients cannot set: asking for it at sign-up changes nothing.
    eve = better_auth.sign_up("Eve", role="admin")
    admin = better_auth.admin()
    assert decode_jwt(admin.token)[1]["role"] == "admin"
    assert decode_jwt(eve.token)[1]["role"] == "user"

    ok(taskflow.post("/api/projects", json={"slug": "secret", "name": "Secret"}, headers=carol.headers), 201)
    in_project = ok(
        taskflow.post("/api/tasks", json={"title": "Plan", "project_slug": "secret"}, headers=carol.headers), 201
    )
    private = ok(taskflow.post("/api/tasks", json={"title": "Diary"}, headers=carol.headers), 201)

    for plain in (dave, eve):
        listed = taskflow.get("/api/tasks", headers=plain.headers)
        assert listed.status_code == 200, listed.text
        assert (listed.json(), listed.headers["X-Total-Count"]) == ([], "0")
        assert taskflow.get(f"/api/tasks/{private['id']}", headers=plain.headers).status_code == 404
        assert taskflow.get("/api/projects/secret", headers=plain.headers).status_code == 404

    listed = taskflow.get("/api/tasks", headers=admin.headers)
    assert listed.status_code == 200, listed.text
    assert sorted(task["id"] for task in listed.json()) == sorted([in_project["id"], private["id"]])
    assert listed.headers["X-Total-Count"] == "2"
    assert ok(taskflow.get(f"/api/tasks/{private['id']}", headers=admin.headers))["title"] == "Diary"
    assert ok(taskflow.get("/api/projects/secret", headers=admin.headers))["created_by"] == carol.id


def test_after_better_auth_restarts_its_new_key_is_trusted_and_tokens_of_the_vanished_key_are_refused(
    start_better_auth: BetterAuthFactory, taskflow_for: TaskFlowFor
) -> None:
    # A server of its own: restarting a shared one would sign out the other tests' users.
    server = start_better_auth("EdDSA")
    taskflow = taskflow_for(server)
    verifier = verifier_of(taskflow)
    before = server.sign_up("Alice")
    old_kid = decode_jwt(before.token)[0]["kid"]
    assert taskflow.get("/api/tasks", headers=before.headers).status_code == 200
    fetches = verifier.fetch_count

    server.restart()  # in-memory store: a new key, and every user is gone
    new_kids = {key["kid"] for key in server.jwks()["keys"]}
    assert old_kid not in new_kids
    after = server.sign_up("Alice")
    assert decode_jwt(after.token)[0]["kid"] in new_kids

    # TaskFlow is not restarted: the first token with the unknown kid makes it refetch the JWKS.
    response = taskflow.get("/api/tasks", headers=after.headers)
    assert response.status_code == 200, response.text
    assert verifier.fetch_count == fetches + 1

    # The key set it now holds is the restarted server's, without the old kid, so the old token is
    # refused. (Unknown-kid refetches are limited to one per `refetch_interval`, 30 s; one just ran,
    # so this refusal is decided on that fresh copy without fetching again.)
    response = taskflow.get("/api/tasks", headers=before.headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert verifier.fetch_count == fetches + 1


def test_token_from_an_unrelated_better_auth_server_is_refused(
    better_auth: BetterAuthServer, start_better_auth: BetterAuthFactory, taskflow_for: TaskFlowFor
) -> None:
    taskflow = taskflow_for(better_auth)
    other = start_better_auth("EdDSA")
    stranger = other.sign_up("Mallory")
    claims = decode_jwt(stranger.token)[1]
    assert claims["iss"] == other.base_url != better_auth.base_url

    response = taskflow.get("/api/tasks", headers=stranger.headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"

    member = better_auth.sign_up("Mallory")
    assert taskflow.get("/api/tasks", headers=member.headers).status_code == 200
    other.stop()
