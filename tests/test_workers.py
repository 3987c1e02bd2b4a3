"""The worker registry: humans appear on first sight, admins register agents, and audit rows name the actor's type."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AuthHeaders, TokenFactory
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from support import audit_rows, bearer, run_together, stored_worker

from config import Settings
from main import create_app
from models import Worker, WorkerType

AGENT = "@claude-code"


@pytest.fixture
def lenient_client(settings: Settings) -> Iterator[TestClient]:
    """A client that answers a server error with its 500 response instead of raising it in the test."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def register_agent(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post(
        "/api/workers", json={"id": AGENT, "type": "agent", "name": "Claude Code"}, headers=auth("root", role="admin")
    )
    assert response.status_code == 201, response.text


# ---------------------------------------------------------------- a human's row on first sight


def test_the_first_authenticated_request_registers_a_human_worker_named_from_the_token(
    client: TestClient, make_token: TokenFactory, db: Engine
) -> None:
    token = make_token("alice", name="Alice Liddell")

    response = client.get("/api/tasks", headers=bearer(token))

    assert response.status_code == 200, response.text
    worker = stored_worker(db, "alice")
    assert worker is not None
    assert (worker.type, worker.name) == (WorkerType.human, "Alice Liddell")
    [row] = audit_rows(db)
    assert (row.action, row.actor_id, row.actor_type, row.task_id, row.project_slug) == (
        "worker.registered",
        "alice",
        "human",
        None,
        None,
    )
    assert row.context == {"type": [None, "human"], "name": [None, "Alice Liddell"]}
    assert row.request_id == response.headers["X-Request-ID"]


def test_a_second_request_registers_no_second_worker(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    for _ in range(3):
        assert client.get("/api/tasks", headers=auth("alice")).status_code == 200

    with Session(db) as session:
        assert session.exec(select(func.count()).select_from(Worker)).one() == 1
    assert len(audit_rows(db, action="worker.registered")) == 1


def test_a_later_token_with_another_name_does_not_rename_the_worker(
    client: TestClient, make_token: TokenFactory, db: Engine
) -> None:
    assert client.get("/api/tasks", headers=bearer(make_token("alice", name="Alice"))).status_code == 200

    assert client.get("/api/tasks", headers=bearer(make_token("alice", name="Mallory"))).status_code == 200

    worker = stored_worker(db, "alice")
    assert worker is not None
    assert worker.name == "Alice"
    assert len(audit_rows(db)) == 1


@pytest.mark.parametrize(
    ("claims", "expected_name"),
    [
        ({"omit": ["name"]}, "alice@example.com"),
        ({"omit": ["name", "email"]}, "alice"),
        ({"name": "x" * 300}, "x" * 200),
    ],
)
def test_a_token_without_a_usable_name_names_the_worker_from_its_email_or_id(
    client: TestClient, make_token: TokenFactory, db: Engine, claims: dict[str, Any], expected_name: str
) -> None:
    response = client.get("/api/tasks", headers=bearer(make_token("alice", **claims)))

    assert response.status_code == 200, response.text
    worker = stored_worker(db, "alice")
    assert worker is not None
    assert worker.name == expected_name


def test_a_name_claim_with_a_nul_character_is_neither_stored_nor_a_500(
    lenient_client: TestClient, make_token: TokenFactory, db: Engine
) -> None:
    response = lenient_client.get("/api/tasks", headers=bearer(make_token("alice", name="Al\x00ice")))

    # An authentic token with an odd display name: accept it with the name cleaned up, or refuse it; never a 500.
    assert response.status_code in {200, 401}, response.text
    worker = stored_worker(db, "alice")
    assert worker is None or "\x00" not in worker.name


def test_a_failed_first_request_leaves_no_half_registered_worker(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    response = client.post("/api/tasks", json={"title": "x", "project_slug": "nowhere"}, headers=auth("alice"))

    assert response.status_code == 404, response.text
    # The worker row and its audit row are written in the request's transaction or not at all.
    assert (stored_worker(db, "alice") is None) == (audit_rows(db) == [])
    assert client.get("/api/tasks", headers=auth("alice")).status_code == 200
    assert stored_worker(db, "alice") is not None
    assert len(audit_rows(db, action="worker.registered", actor_id="alice")) == 1


def test_simultaneous_first_requests_register_exactly_one_worker(
    lenient_client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    assert lenient_client.get("/health").status_code == 200
    for round_ in range(5):
        user = f"newcomer-{round_}"
        headers = [auth(user) for _ in range(4)]

        responses = run_together(
            *[lambda headers=header: lenient_client.get("/api/workers", headers=headers) for header in headers]
        )

        assert [response.status_code for response in responses] == [200] * 4, [r.text for r in responses]
        with Session(db) as session:
            assert session.exec(select(func.count()).where(Worker.id == user)).one() == 1
        assert len(audit_rows(db, action="worker.registered", actor_id=user)) == 1


# ---------------------------------------------------------------- reading the directory


def test_list_workers_shows_everyone_with_a_type_filter_and_a_total(client: TestClient, auth: AuthHeaders) -> None:
    for user in ("bob", "alice"):
        client.get("/api/tasks", headers=auth(user))
    register_agent(client, auth)  # also registers root, the admin

    everyone = client.get("/api/workers", headers=auth("carol"))
    agents = client.get("/api/workers?type=agent", headers=auth("carol"))
    humans = client.get("/api/workers?type=human", headers=auth("carol"))
    page = client.get("/api/workers?limit=2&offset=1", headers=auth("carol"))

    assert everyone.status_code == 200, everyone.text
    assert [w["id"] for w in everyone.json()] == [AGENT, "alice", "bob", "carol", "root"]
    assert everyone.headers["X-Total-Count"] == "5"
    assert [(w["id"], w["type"], w["name"]) for w in agents.json()] == [(AGENT, "agent", "Claude Code")]
    assert agents.headers["X-Total-Count"] == "1"
    assert [w["id"] for w in humans.json()] == ["alice", "bob", "carol", "root"]
    assert humans.headers["X-Total-Count"] == "4"
    assert [w["id"] for w in page.json()] == ["alice", "bob"]
    assert page.headers["X-Total-Count"] == "5"
    assert {"id", "type", "name", "created_at"} <= set(everyone.json()[0])


@pytest.mark.parametrize("query", ["type=robot", "type=", "limit=0", "limit=101", "offset=-1"])
def test_list_workers_with_an_invalid_query_returns_422(client: TestClient, auth: AuthHeaders, query: str) -> None:
    response = client.get(f"/api/workers?{query}", headers=auth("alice"))

    assert response.status_code == 422, response.text


def test_get_worker_returns_it_and_404_for_an_unknown_id(client: TestClient, auth: AuthHeaders) -> None:
    client.get("/api/tasks", headers=auth("bob"))

    found = client.get("/api/workers/bob", headers=auth("alice"))
    unknown = client.get("/api/workers/ghost", headers=auth("alice"))
    malformed = client.get("/api/workers/not%20an%20id", headers=auth("alice"))

    assert found.status_code == 200, found.text
    assert (found.json()["id"], found.json()["type"], found.json()["name"]) == ("bob", "human", "Bob")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json() == {"error": "Worker 'ghost' not found", "status_code": 404, "code": "not_found"}
    assert malformed.status_code == 422, malformed.text


def test_the_worker_directory_needs_a_token(client: TestClient) -> None:
    response = client.get("/api/workers")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


# ---------------------------------------------------------------- registering


def test_a_plain_user_registering_another_id_returns_403(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    client.get("/api/tasks", headers=auth("alice"))

    response = client.post("/api/workers", json={"id": AGENT, "type": "agent", "name": "Mine"}, headers=auth("alice"))

    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"
    assert stored_worker(db, AGENT) is None
    assert [row.action for row in audit_rows(db)] == ["worker.registered"]


def test_a_plain_user_registering_their_own_id_returns_409(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    client.get("/api/tasks", headers=auth("alice"))

    response = client.post(
        "/api/workers", json={"id": "alice", "type": "agent", "name": "Alice Bot"}, headers=auth("alice")
    )

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
    worker = stored_worker(db, "alice")
    assert worker is not None
    assert (worker.type, worker.name) == (WorkerType.human, "Alice")
    assert len(audit_rows(db)) == 1


def test_an_admin_registers_an_agent_and_one_audit_row_records_it(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    admin = auth("root", role="admin")
    client.get("/api/tasks", headers=admin)
    before = len(audit_rows(db))

    response = client.post("/api/workers", json={"id": AGENT, "type": "agent", "name": "Claude Code"}, headers=admin)

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["id"], body["type"], body["name"]) == (AGENT, "agent", "Claude Code")
    worker = stored_worker(db, AGENT)
    assert worker is not None
    assert worker.type == WorkerType.agent
    rows = audit_rows(db)
    assert len(rows) == before + 1
    row = rows[-1]
    assert (row.action, row.actor_id, row.actor_type, row.task_id, row.project_slug) == (
        "worker.registered",
        "root",
        "human",
        None,
        None,
    )
    assert row.context == {"id": [None, AGENT], "type": [None, "agent"], "name": [None, "Claude Code"]}
    assert client.get(f"/api/workers/{AGENT}", headers=auth("bob")).json()["type"] == "agent"


def test_registering_a_worker_twice_returns_409(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    register_agent(client, auth)
    before = len(audit_rows(db))

    response = client.post(
        "/api/workers", json={"id": AGENT, "type": "human", "name": "Impostor"}, headers=auth("root", role="admin")
    )

    assert response.status_code == 409, response.text
    worker = stored_worker(db, AGENT)
    assert worker is not None
    assert (worker.type, worker.name) == (WorkerType.agent, "Claude Code")
    assert len(audit_rows(db)) == before


def test_a_token_for_a_registered_agent_acts_as_an_agent_in_the_audit_log(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    register_agent(client, auth)
    registrations = len(audit_rows(db, action="worker.registered"))

    response = client.post("/api/tasks", json={"title": "Written by a bot"}, headers=auth(AGENT))

    assert response.status_code == 201, response.text
    assert response.json()["created_by"] == AGENT
    [row] = audit_rows(db, action="task.created")
    assert (row.actor_id, row.actor_type, row.task_id) == (AGENT, "agent", response.json()["id"])
    history = client.get(f"/api/tasks/{response.json()['id']}/audit", headers=auth(AGENT))
    assert [(r["actor_id"], r["actor_type"]) for r in history.json()] == [(AGENT, "agent")]
    worker = stored_worker(db, AGENT)
    assert worker is not None
    assert (worker.type, worker.name) == (WorkerType.agent, "Claude Code")
    assert len(audit_rows(db, action="worker.registered")) == registrations


def test_an_admin_may_register_a_human_before_their_first_request(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    created = client.post(
        "/api/workers", json={"id": "dave", "name": "Dave from HR"}, headers=auth("root", role="admin")
    )
    assert created.status_code == 201, created.text
    assert created.json()["type"] == "human"

    assert client.get("/api/tasks", headers=auth("dave")).status_code == 200

    worker = stored_worker(db, "dave")
    assert worker is not None
    assert worker.name == "Dave from HR"
    assert audit_rows(db, action="worker.registered", actor_id="dave") == []


@pytest.mark.parametrize(
    "body",
    [
        {"id": "has space", "name": "X"},
        {"id": "", "name": "X"},
        {"id": "a" * 129, "name": "X"},
        {"id": "bot", "type": "robot", "name": "X"},
        {"id": "bot"},
        {"id": "bot", "name": ""},
        {"id": "bot", "name": "X", "role": "admin"},
    ],
)
def test_register_worker_with_a_bad_body_returns_422(
    client: TestClient, auth: AuthHeaders, db: Engine, body: dict[str, Any]
) -> None:
    response = client.post("/api/workers", json=body, headers=auth("root", role="admin"))

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    with Session(db) as session:
        assert session.exec(select(func.count()).where(Worker.id != "root")).one() == 0


# ---------------------------------------------------------------- updating


def test_a_worker_renames_themself_and_one_audit_row_records_it(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    client.get("/api/tasks", headers=auth("alice"))

    response = client.patch("/api/workers/alice", json={"name": "  Alicia  "}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["type"]) == ("Alicia", "human")
    worker = stored_worker(db, "alice")
    assert worker is not None
    assert worker.name == "Alicia"
    [row] = audit_rows(db, action="worker.updated")
    assert (row.actor_id, row.actor_type, row.task_id, row.project_slug) == ("alice", "human", None, None)
    assert row.context == {"worker_id": "alice", "name": ["Alice", "Alicia"]}
    mine = client.get("/api/audit?action=worker.updated", headers=auth("alice"))
    assert [r["id"] for r in mine.json()] == [row.id]


def test_renaming_to_the_same_name_writes_no_audit_row(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    client.get("/api/tasks", headers=auth("alice"))

    response = client.patch("/api/workers/alice", json={"name": "Alice", "type": "human"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert audit_rows(db, action="worker.updated") == []


def test_a_worker_changing_their_own_type_returns_403(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    client.get("/api/tasks", headers=auth("alice"))

    response = client.patch("/api/workers/alice", json={"type": "agent", "name": "Bot"}, headers=auth("alice"))

    assert response.status_code == 403, response.text
    worker = stored_worker(db, "alice")
    assert worker is not None
    assert (worker.type, worker.name) == (WorkerType.human, "Alice")
    assert audit_rows(db, action="worker.updated") == []


def test_changing_another_users_worker_returns_403(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    client.get("/api/tasks", headers=auth("bob"))
    register_agent(client, auth)

    for worker_id in ("bob", AGENT):
        response = client.patch(f"/api/workers/{worker_id}", json={"name": "Hijacked"}, headers=auth("alice"))
        assert response.status_code == 403, response.text
        worker = stored_worker(db, worker_id)
        assert worker is not None
        assert worker.name != "Hijacked"


def test_changing_an_unknown_worker_returns_404(client: TestClient, auth: AuthHeaders) -> None:
    for headers in (auth("alice"), auth("root", role="admin")):
        response = client.patch("/api/workers/ghost", json={"name": "Boo"}, headers=headers)
        assert response.status_code == 404, response.text


def test_an_admin_changes_a_workers_type_and_the_audit_log_follows(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    client.get("/api/tasks", headers=auth("bob"))

    response = client.patch(
        "/api/workers/bob", json={"type": "agent", "name": "Bob Bot"}, headers=auth("root", role="admin")
    )

    assert response.status_code == 200, response.text
    assert (response.json()["type"], response.json()["name"]) == ("agent", "Bob Bot")
    [row] = audit_rows(db, action="worker.updated")
    assert (row.actor_id, row.actor_type) == ("root", "human")
    assert row.context == {"worker_id": "bob", "type": ["human", "agent"], "name": ["Bob", "Bob Bot"]}
    created = client.post("/api/tasks", json={"title": "Now a bot"}, headers=auth("bob"))
    assert created.status_code == 201, created.text
    [task_row] = audit_rows(db, action="task.created")
    assert (task_row.actor_id, task_row.actor_type) == ("bob", "agent")


@pytest.mark.parametrize("body", [{"name": None}, {"type": None}, {"name": ""}, {"type": "robot"}, {"id": "other"}])
def test_update_worker_with_a_bad_body_returns_422(
    client: TestClient, auth: AuthHeaders, db: Engine, body: dict[str, Any]
) -> None:
    client.get("/api/tasks", headers=auth("alice"))

    response = client.patch("/api/workers/alice", json=body, headers=auth("alice"))

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    worker = stored_worker(db, "alice")
    assert worker is not None
    assert worker.name == "Alice"


def test_a_blank_worker_name_returns_422_on_register_and_rename(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    client.get("/api/tasks", headers=auth("root", role="admin"))
    registered = client.post("/api/workers", json={"id": "bot", "name": "   "}, headers=auth("root", role="admin"))
    renamed = client.patch("/api/workers/root", json={"name": " \t "}, headers=auth("root", role="admin"))

    assert registered.status_code == 422, registered.text
    assert renamed.status_code == 422, renamed.text
    assert stored_worker(db, "bot") is None
    root = stored_worker(db, "root")
    assert root is not None
    assert root.name == "Root"
