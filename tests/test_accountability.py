"""Accountable humans: an agent may name the human responsible for it, and its audit rows carry that owner.

root is an admin. alice and bob are humans (their rows appear on their first request). Project
"demo" is owned by alice, with bob and the agents as members.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from support import CreateProject, assert_refused, audit_rows, stored_worker


@pytest.fixture
def humans(client: TestClient, auth: AuthHeaders) -> None:
    for user in ("alice", "bob"):
        assert client.get("/api/tasks", headers=auth(user)).status_code == 200


@pytest.fixture
def admin(auth: AuthHeaders) -> dict[str, str]:
    return auth("root", role="admin")


def register(client: TestClient, headers: dict[str, str], worker_id: str, **fields: Any) -> httpx2.Response:
    body = {"id": worker_id, "type": "agent", "name": worker_id.strip("@").title(), **fields}
    return client.post("/api/workers", json=body, headers=headers)


@pytest.fixture
def bot(client: TestClient, admin: dict[str, str], humans: None, create_project: CreateProject) -> str:  # noqa: ARG001
    """The agent "@bot", owned by alice and a member of "demo"."""
    response = register(client, admin, "@bot", owner_id="alice")
    assert response.status_code == 201, response.text
    create_project("demo", owner="alice", members=["bob", "@bot"])
    return "@bot"


def work(client: TestClient, auth: AuthHeaders, user: str) -> int:
    """Create a task in "demo" as `user` and start it: two audit rows by `user`."""
    created = client.post("/api/tasks", json={"title": f"{user}'s work", "project_slug": "demo"}, headers=auth(user))
    assert created.status_code == 201, created.text
    task_id: int = created.json()["id"]
    started = client.post(f"/api/tasks/{task_id}/start", headers=auth(user))
    assert started.status_code == 200, started.text
    return task_id


# ---------------------------------------------------------------- registering an owned agent


@pytest.mark.usefixtures("humans")
def test_an_admin_registers_an_agent_owned_by_a_human(client: TestClient, admin: dict[str, str], db: Engine) -> None:
    response = register(client, admin, "@bot", owner_id="alice")

    assert response.status_code == 201, response.text
    assert (response.json()["id"], response.json()["type"], response.json()["owner_id"]) == ("@bot", "agent", "alice")
    worker = stored_worker(db, "@bot")
    assert worker is not None
    assert worker.owner_id == "alice"
    (row,) = [row for row in audit_rows(db, action="worker.registered") if row.context.get("id") == [None, "@bot"]]
    assert (row.actor_id, row.context["owner_id"]) == ("root", [None, "alice"])
    assert client.get("/api/workers/@bot", headers=admin).json()["owner_id"] == "alice"


@pytest.mark.usefixtures("humans")
def test_an_agent_without_an_owner_is_allowed(client: TestClient, admin: dict[str, str]) -> None:
    response = register(client, admin, "@loner")

    assert response.status_code == 201, response.text
    assert response.json()["owner_id"] is None


@pytest.mark.usefixtures("humans")
def test_an_agent_owned_by_another_agent_returns_400(client: TestClient, admin: dict[str, str], db: Engine) -> None:
    assert register(client, admin, "@boss").status_code == 201

    response = register(client, admin, "@minion", owner_id="@boss")

    assert_refused(response, 400, "bad_request")
    assert stored_worker(db, "@minion") is None


@pytest.mark.usefixtures("humans")
def test_an_agent_owned_by_an_unknown_worker_returns_404(client: TestClient, admin: dict[str, str], db: Engine) -> None:
    response = register(client, admin, "@bot", owner_id="nobody")

    assert_refused(response, 404, "not_found")
    assert stored_worker(db, "@bot") is None


@pytest.mark.usefixtures("humans")
def test_a_human_with_an_owner_returns_400(client: TestClient, admin: dict[str, str], db: Engine) -> None:
    response = client.post(
        "/api/workers", json={"id": "carol", "type": "human", "name": "Carol", "owner_id": "alice"}, headers=admin
    )

    assert_refused(response, 400, "bad_request")
    assert stored_worker(db, "carol") is None


@pytest.mark.usefixtures("humans")
def test_a_non_admin_cannot_register_an_owned_agent(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = register(client, auth("alice"), "@bot", owner_id="alice")

    assert_refused(response, 403, "forbidden")
    assert stored_worker(db, "@bot") is None


@pytest.mark.parametrize("owner_id", ["not a worker id", "x" * 129])
@pytest.mark.usefixtures("humans")
def test_a_malformed_owner_id_returns_422(client: TestClient, admin: dict[str, str], owner_id: str) -> None:
    response = register(client, admin, "@bot", owner_id=owner_id)

    assert_refused(response, 422, "validation_error")


# ---------------------------------------------------------------- changing the owner


def test_an_admin_changes_an_agents_owner_and_it_is_audited(
    client: TestClient, admin: dict[str, str], db: Engine, bot: str
) -> None:
    response = client.patch(f"/api/workers/{bot}", json={"owner_id": "bob"}, headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["owner_id"] == "bob"
    worker = stored_worker(db, bot)
    assert worker is not None
    assert worker.owner_id == "bob"
    (row,) = audit_rows(db, action="worker.updated")
    assert row.context == {"worker_id": bot, "owner_id": ["alice", "bob"]}


def test_an_admin_clears_an_agents_owner(client: TestClient, admin: dict[str, str], db: Engine, bot: str) -> None:
    response = client.patch(f"/api/workers/{bot}", json={"owner_id": None}, headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["owner_id"] is None
    worker = stored_worker(db, bot)
    assert worker is not None
    assert worker.owner_id is None


@pytest.mark.parametrize(
    ("owner_id", "status_code", "code"),
    [("@other", 400, "bad_request"), ("nobody", 404, "not_found")],
)
def test_an_admin_cannot_make_an_agent_or_an_unknown_worker_the_owner(
    client: TestClient, admin: dict[str, str], db: Engine, bot: str, owner_id: str, status_code: int, code: str
) -> None:
    assert register(client, admin, "@other").status_code == 201

    response = client.patch(f"/api/workers/{bot}", json={"owner_id": owner_id}, headers=admin)

    assert_refused(response, status_code, code)
    worker = stored_worker(db, bot)
    assert worker is not None
    assert worker.owner_id == "alice"


@pytest.mark.usefixtures("bot")
def test_an_owner_cannot_be_given_to_a_human(client: TestClient, admin: dict[str, str], db: Engine) -> None:
    response = client.patch("/api/workers/bob", json={"owner_id": "alice"}, headers=admin)

    assert_refused(response, 400, "bad_request")
    worker = stored_worker(db, "bob")
    assert worker is not None
    assert worker.owner_id is None


def test_an_owned_agent_cannot_become_a_human_while_it_has_an_owner(
    client: TestClient, admin: dict[str, str], db: Engine, bot: str
) -> None:
    response = client.patch(f"/api/workers/{bot}", json={"type": "human"}, headers=admin)

    assert_refused(response, 400, "bad_request")
    worker = stored_worker(db, bot)
    assert worker is not None
    assert (worker.type, worker.owner_id) == ("agent", "alice")


def test_a_human_accountable_for_an_agent_cannot_become_an_agent(
    client: TestClient, admin: dict[str, str], db: Engine, bot: str
) -> None:
    response = client.patch("/api/workers/alice", json={"type": "agent"}, headers=admin)

    assert response.status_code in {400, 409}, response.text
    alice = stored_worker(db, "alice")
    assert alice is not None
    assert alice.type == "human"
    owned = stored_worker(db, bot)
    assert owned is not None
    assert owned.owner_id == "alice"


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_a_non_admin_cannot_change_an_agents_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, bot: str, user: str
) -> None:
    response = client.patch(f"/api/workers/{bot}", json={"owner_id": user}, headers=auth(user))

    assert_refused(response, 403, "forbidden")
    worker = stored_worker(db, bot)
    assert worker is not None
    assert worker.owner_id == "alice"


@pytest.mark.parametrize("owner_id", ["bob", None])
def test_an_agent_cannot_change_its_own_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, bot: str, owner_id: str | None
) -> None:
    response = client.patch(f"/api/workers/{bot}", json={"owner_id": owner_id}, headers=auth(bot))

    assert_refused(response, 403, "forbidden")
    worker = stored_worker(db, bot)
    assert worker is not None
    assert worker.owner_id == "alice"


def test_an_agent_may_rename_itself_and_keeps_its_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, bot: str
) -> None:
    response = client.patch(f"/api/workers/{bot}", json={"name": "Botty", "owner_id": "alice"}, headers=auth(bot))

    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["owner_id"]) == ("Botty", "alice")
    worker = stored_worker(db, bot)
    assert worker is not None
    assert (worker.name, worker.owner_id) == ("Botty", "alice")


# ---------------------------------------------------------------- audit rows carry the owner


def test_audit_rows_written_by_an_owned_agent_carry_its_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, bot: str
) -> None:
    task_id = work(client, auth, bot)

    rows = audit_rows(db, task_id=task_id)
    assert [(row.action, row.actor_id, row.actor_type, row.owner_id) for row in rows] == [
        ("task.created", bot, "agent", "alice"),
        ("task.started", bot, "agent", "alice"),
    ]
    history = client.get(f"/api/tasks/{task_id}/audit", headers=auth("bob")).json()
    assert [row["owner_id"] for row in history] == ["alice", "alice"]


@pytest.mark.usefixtures("bot")
def test_audit_rows_written_by_humans_or_unowned_agents_have_no_owner(
    client: TestClient, auth: AuthHeaders, admin: dict[str, str], db: Engine
) -> None:
    assert register(client, admin, "@loner").status_code == 201
    added = client.post("/api/projects/demo/members", json={"worker_id": "@loner"}, headers=auth("alice"))
    assert added.status_code == 201, added.text

    humans_task = work(client, auth, "bob")
    loners_task = work(client, auth, "@loner")

    for task_id, actor_type in ((humans_task, "human"), (loners_task, "agent")):
        rows = audit_rows(db, task_id=task_id)
        assert [(row.actor_type, row.owner_id) for row in rows] == [(actor_type, None), (actor_type, None)]


def test_rows_written_after_the_owner_changes_carry_the_new_owner_and_earlier_rows_keep_theirs(
    client: TestClient, auth: AuthHeaders, admin: dict[str, str], db: Engine, bot: str
) -> None:
    before = work(client, auth, bot)
    assert client.patch(f"/api/workers/{bot}", json={"owner_id": "bob"}, headers=admin).status_code == 200

    after = work(client, auth, bot)

    assert {row.owner_id for row in audit_rows(db, task_id=before)} == {"alice"}
    assert {row.owner_id for row in audit_rows(db, task_id=after)} == {"bob"}


def test_the_audit_log_filters_by_owner_id(
    client: TestClient, auth: AuthHeaders, admin: dict[str, str], db: Engine, bot: str
) -> None:
    work(client, auth, "bob")
    bots_task = work(client, auth, bot)

    as_alice = client.get("/api/audit?owner_id=alice", headers=auth("alice"))
    as_admin = client.get("/api/audit?owner_id=alice", headers=admin)
    for_bob = client.get("/api/audit?owner_id=bob", headers=auth("alice"))

    assert as_alice.status_code == 200, as_alice.text
    expected = [row.id for row in reversed(audit_rows(db, owner_id="alice"))]
    assert [row["id"] for row in as_alice.json()] == expected
    assert {(row["actor_id"], row["owner_id"]) for row in as_alice.json()} == {(bot, "alice")}
    assert {row["task_id"] for row in as_alice.json()} == {bots_task}
    assert as_alice.headers["X-Total-Count"] == str(len(expected))
    assert [row["id"] for row in as_admin.json()] == expected
    assert for_bob.json() == []
    assert for_bob.headers["X-Total-Count"] == "0"


def test_the_owner_id_filter_shows_only_rows_the_caller_may_see(
    client: TestClient, auth: AuthHeaders, bot: str
) -> None:
    work(client, auth, bot)

    outsider = client.get("/api/audit?owner_id=alice", headers=auth("mallory"))

    assert outsider.status_code == 200, outsider.text
    assert outsider.json() == []
    assert outsider.headers["X-Total-Count"] == "0"


def test_the_owner_id_filter_combines_with_the_others(client: TestClient, auth: AuthHeaders, bot: str) -> None:
    task_id = work(client, auth, bot)

    response = client.get(f"/api/audit?owner_id=alice&action=task.started&task_id={task_id}", headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert [(row["action"], row["actor_id"]) for row in response.json()] == [("task.started", bot)]


def test_a_malformed_owner_id_filter_returns_422(client: TestClient, auth: AuthHeaders) -> None:
    response = client.get("/api/audit?owner_id=not%20an%20id", headers=auth("alice"))

    assert_refused(response, 422, "validation_error")
