"""Projects and their members: who may change what, the last owner, and one audit row per change."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from support import CreateProject, CreateTask, audit_rows, run_together

from models import AuditLog, Project, ProjectMember, ProjectRole


def new_audit_rows(db: Engine, before: list[AuditLog]) -> list[AuditLog]:
    seen = {row.id for row in before}
    return [row for row in audit_rows(db) if row.id not in seen]


def members(db: Engine, slug: str) -> dict[str, ProjectRole]:
    with Session(db) as session:
        rows = session.exec(select(ProjectMember).where(ProjectMember.project_slug == slug)).all()
        return {row.worker_id: row.role for row in rows}


def register(client: TestClient, auth: AuthHeaders, *users: str) -> None:
    for user in users:
        assert client.get("/api/workers", headers=auth(user)).status_code == 200


# ---------------------------------------------------------------- create, list, read


def test_create_project_returns_201_and_makes_the_creator_its_owner(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    register(client, auth, "alice")
    before = audit_rows(db)

    response = client.post(
        "/api/projects", json={"slug": "demo", "name": "  Demo  ", "description": "A board"}, headers=auth("alice")
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert {key: body[key] for key in ("slug", "name", "description", "created_by")} == {
        "slug": "demo",
        "name": "Demo",
        "description": "A board",
        "created_by": "alice",
    }
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")
    listed = client.get("/api/projects/demo/members", headers=auth("alice"))
    assert [(m["worker_id"], m["role"]) for m in listed.json()] == [("alice", "owner")]
    assert members(db, "demo") == {"alice": ProjectRole.owner}
    [row] = new_audit_rows(db, before)
    assert (row.action, row.project_slug, row.task_id, row.actor_id, row.actor_type) == (
        "project.created",
        "demo",
        None,
        "alice",
        "human",
    )
    assert row.context == {"slug": [None, "demo"], "name": [None, "Demo"], "description": [None, "A board"]}


def test_create_project_with_a_taken_slug_returns_409(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    register(client, auth, "bob")
    before = audit_rows(db)

    for user in ("alice", "bob"):
        response = client.post("/api/projects", json={"slug": "demo", "name": "Again"}, headers=auth(user))
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "conflict"

    assert members(db, "demo") == {"alice": ProjectRole.owner}
    assert new_audit_rows(db, before) == []


@pytest.mark.parametrize("slug", ["Demo", "my project", "-demo", "demo-", "a--b", "dé", "", "a" * 65, "under_score"])
def test_create_project_with_an_invalid_slug_returns_422(client: TestClient, auth: AuthHeaders, slug: str) -> None:
    response = client.post("/api/projects", json={"slug": slug, "name": "X"}, headers=auth("alice"))

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert response.json()["detail"][0]["loc"] == ["body", "slug"]


@pytest.mark.parametrize(
    "body",
    [{"slug": "demo"}, {"slug": "demo", "name": ""}, {"slug": "demo", "name": "X", "owner": "bob"}],
)
def test_create_project_with_a_bad_body_returns_422(
    client: TestClient, auth: AuthHeaders, db: Engine, body: dict[str, Any]
) -> None:
    response = client.post("/api/projects", json=body, headers=auth("alice"))

    assert response.status_code == 422, response.text
    with Session(db) as session:
        assert session.exec(select(func.count()).select_from(Project)).one() == 0


def test_a_blank_project_name_returns_422_on_create_and_update(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    created = client.post("/api/projects", json={"slug": "blank", "name": "   "}, headers=auth("alice"))
    create_project("demo", owner="alice")
    renamed = client.patch("/api/projects/demo", json={"name": " \t "}, headers=auth("alice"))

    assert created.status_code == 422, created.text
    assert renamed.status_code == 422, renamed.text
    with Session(db) as session:
        assert session.get(Project, "blank") is None
        stored = session.get(Project, "demo")
        assert stored is not None
        assert stored.name == "Demo"


def test_list_projects_pages_with_limit_and_offset_and_counts_all(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    for slug in ("cherry", "apple", "banana"):
        create_project(slug, owner="alice")

    everything = client.get("/api/projects", headers=auth("alice"))
    page = client.get("/api/projects?limit=1&offset=1", headers=auth("alice"))
    past_the_end = client.get("/api/projects?offset=5", headers=auth("alice"))

    assert [p["slug"] for p in everything.json()] == ["apple", "banana", "cherry"]
    assert everything.headers["X-Total-Count"] == "3"
    assert [p["slug"] for p in page.json()] == ["banana"]
    assert page.headers["X-Total-Count"] == "3"
    assert past_the_end.json() == []
    assert past_the_end.headers["X-Total-Count"] == "3"
    for query in ("limit=0", "limit=101", "offset=-1", "limit=abc"):
        assert client.get(f"/api/projects?{query}", headers=auth("alice")).status_code == 422, query


def test_get_project_returns_it_to_a_member(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    created = create_project("demo", owner="alice", members=["bob"])

    response = client.get("/api/projects/demo", headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert response.json() == created


def test_get_project_unknown_returns_404_and_a_malformed_slug_422(client: TestClient, auth: AuthHeaders) -> None:
    assert client.get("/api/projects/nope", headers=auth("alice")).status_code == 404
    assert client.get("/api/projects/Not_A_Slug", headers=auth("alice")).status_code == 422


# ---------------------------------------------------------------- update


def test_owner_updates_a_project_and_one_audit_row_records_the_change(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    before = audit_rows(db)

    response = client.patch("/api/projects/demo", json={"name": "Renamed", "description": "Now"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["description"]) == ("Renamed", "Now")
    [row] = new_audit_rows(db, before)
    assert (row.action, row.project_slug, row.actor_id) == ("project.updated", "demo", "alice")
    assert row.context == {"name": ["Demo", "Renamed"], "description": [None, "Now"]}
    with Session(db) as session:
        stored = session.get(Project, "demo")
        assert stored is not None
        assert stored.name == "Renamed"


def test_update_project_with_nothing_changed_writes_no_audit_row(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    before = audit_rows(db)

    response = client.patch("/api/projects/demo", json={"name": "Demo"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert new_audit_rows(db, before) == []


def test_update_project_with_a_null_name_returns_422(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")

    response = client.patch("/api/projects/demo", json={"name": None}, headers=auth("alice"))

    assert response.status_code == 422, response.text


def test_update_project_by_a_member_returns_403(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    response = client.patch("/api/projects/demo", json={"name": "Bob's"}, headers=auth("bob"))

    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"
    assert client.get("/api/projects/demo", headers=auth("alice")).json()["name"] == "Demo"
    assert new_audit_rows(db, before) == []


def test_update_project_by_a_non_member_returns_404(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")

    response = client.patch("/api/projects/demo", json={"name": "Carol's"}, headers=auth("carol"))

    assert response.status_code == 404, response.text
    assert client.get("/api/projects/demo", headers=auth("alice")).json()["name"] == "Demo"


def test_update_project_by_an_admin_who_is_no_member_succeeds(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    before = audit_rows(db)

    response = client.patch("/api/projects/demo", json={"name": "Moderated"}, headers=auth("root", role="admin"))

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Moderated"
    assert [(r.action, r.actor_id) for r in new_audit_rows(db, before) if r.action != "worker.registered"] == [
        ("project.updated", "root")
    ]


# ---------------------------------------------------------------- delete


def test_owner_deletes_an_empty_project_and_its_members_go_with_it(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    response = client.delete("/api/projects/demo", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert response.content == b""
    with Session(db) as session:
        assert session.get(Project, "demo") is None
    assert members(db, "demo") == {}
    [row] = new_audit_rows(db, before)
    assert (row.action, row.project_slug, row.actor_id) == ("project.deleted", "demo", "alice")
    assert row.context == {"name": ["Demo", None]}
    assert client.get("/api/projects/demo", headers=auth("alice")).status_code == 404
    assert client.get("/api/projects", headers=auth("bob")).headers["X-Total-Count"] == "0"


def test_delete_project_that_still_has_tasks_returns_400(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Still here", project_slug="demo")
    assert client.post(f"/api/tasks/{task['id']}/start", headers=auth("alice")).status_code == 200
    assert client.post(f"/api/tasks/{task['id']}/complete", headers=auth("alice")).status_code == 200
    before = audit_rows(db)

    response = client.delete("/api/projects/demo", headers=auth("alice"))

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request"
    assert members(db, "demo") == {"alice": ProjectRole.owner, "bob": ProjectRole.member}
    assert new_audit_rows(db, before) == []


def test_delete_project_by_a_member_returns_403(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])

    response = client.delete("/api/projects/demo", headers=auth("bob"))

    assert response.status_code == 403, response.text
    assert members(db, "demo") == {"alice": ProjectRole.owner, "bob": ProjectRole.member}


def test_delete_project_by_a_non_member_returns_404(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")

    response = client.delete("/api/projects/demo", headers=auth("carol"))

    assert response.status_code == 404, response.text
    with Session(db) as session:
        assert session.get(Project, "demo") is not None


def test_delete_project_by_an_admin_succeeds(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")

    response = client.delete("/api/projects/demo", headers=auth("root", role="admin"))

    assert response.status_code == 204, response.text
    with Session(db) as session:
        assert session.get(Project, "demo") is None


# ---------------------------------------------------------------- members: add


def test_owner_adds_a_member_and_one_audit_row_records_it(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    register(client, auth, "bob")
    before = audit_rows(db)

    response = client.post("/api/projects/demo/members", json={"worker_id": "bob"}, headers=auth("alice"))

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["project_slug"], body["worker_id"], body["role"]) == ("demo", "bob", "member")
    assert members(db, "demo") == {"alice": ProjectRole.owner, "bob": ProjectRole.member}
    [row] = new_audit_rows(db, before)
    assert (row.action, row.project_slug, row.actor_id) == ("member.added", "demo", "alice")
    assert row.context == {"worker_id": [None, "bob"], "role": [None, "member"]}
    listed = client.get("/api/projects/demo/members", headers=auth("bob"))
    assert [m["worker_id"] for m in listed.json()] == ["alice", "bob"]
    assert listed.headers["X-Total-Count"] == "2"


def test_owner_adds_a_member_as_an_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    register(client, auth, "bob")

    response = client.post(
        "/api/projects/demo/members", json={"worker_id": "bob", "role": "owner"}, headers=auth("alice")
    )

    assert response.status_code == 201, response.text
    assert members(db, "demo")["bob"] == ProjectRole.owner


def test_add_member_who_is_no_registered_worker_returns_404(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    before = audit_rows(db)

    response = client.post("/api/projects/demo/members", json={"worker_id": "ghost"}, headers=auth("alice"))

    assert response.status_code == 404, response.text
    assert "ghost" in response.json()["error"]
    assert members(db, "demo") == {"alice": ProjectRole.owner}
    assert new_audit_rows(db, before) == []


def test_add_member_who_already_is_one_returns_409(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    for worker_id, role in (("bob", "member"), ("bob", "owner"), ("alice", "member")):
        response = client.post(
            "/api/projects/demo/members", json={"worker_id": worker_id, "role": role}, headers=auth("alice")
        )
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "conflict"

    assert members(db, "demo") == {"alice": ProjectRole.owner, "bob": ProjectRole.member}
    assert new_audit_rows(db, before) == []


def test_add_member_by_a_member_returns_403(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    register(client, auth, "carol")

    response = client.post("/api/projects/demo/members", json={"worker_id": "carol"}, headers=auth("bob"))

    assert response.status_code == 403, response.text
    assert "carol" not in members(db, "demo")


@pytest.mark.parametrize(
    "body", [{"worker_id": "bob", "role": "boss"}, {"worker_id": "has space"}, {}, {"worker_id": "bob", "x": 1}]
)
def test_add_member_with_a_bad_body_returns_422(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject, body: dict[str, Any]
) -> None:
    create_project("demo", owner="alice")
    register(client, auth, "bob")

    response = client.post("/api/projects/demo/members", json=body, headers=auth("alice"))

    assert response.status_code == 422, response.text


# ---------------------------------------------------------------- members: change role


def test_owner_promotes_a_member_to_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    response = client.patch("/api/projects/demo/members/bob", json={"role": "owner"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["role"] == "owner"
    assert members(db, "demo") == {"alice": ProjectRole.owner, "bob": ProjectRole.owner}
    [row] = new_audit_rows(db, before)
    assert (row.action, row.project_slug, row.actor_id) == ("member.updated", "demo", "alice")
    assert row.context == {"worker_id": "bob", "role": ["member", "owner"]}
    # Now bob may do owner things.
    assert client.patch("/api/projects/demo", json={"name": "Bob's too"}, headers=auth("bob")).status_code == 200


def test_setting_a_members_role_to_what_it_is_writes_no_audit_row(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    response = client.patch("/api/projects/demo/members/bob", json={"role": "member"}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert new_audit_rows(db, before) == []


def test_demoting_the_last_owner_returns_409(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])

    response = client.patch("/api/projects/demo/members/alice", json={"role": "member"}, headers=auth("alice"))

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
    assert members(db, "demo")["alice"] == ProjectRole.owner


def test_demoting_one_of_two_owners_succeeds(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    assert (
        client.patch("/api/projects/demo/members/bob", json={"role": "owner"}, headers=auth("alice")).status_code == 200
    )

    response = client.patch("/api/projects/demo/members/alice", json={"role": "member"}, headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert members(db, "demo") == {"alice": ProjectRole.member, "bob": ProjectRole.owner}


def test_change_role_by_a_member_returns_403(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])

    response = client.patch("/api/projects/demo/members/bob", json={"role": "owner"}, headers=auth("bob"))

    assert response.status_code == 403, response.text
    assert members(db, "demo")["bob"] == ProjectRole.member


def test_change_role_of_a_non_member_returns_404(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    register(client, auth, "carol")

    response = client.patch("/api/projects/demo/members/carol", json={"role": "owner"}, headers=auth("alice"))

    assert response.status_code == 404, response.text


# ---------------------------------------------------------------- members: remove


def test_owner_removes_a_member(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    response = client.delete("/api/projects/demo/members/bob", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert members(db, "demo") == {"alice": ProjectRole.owner}
    [row] = new_audit_rows(db, before)
    assert (row.action, row.project_slug, row.actor_id) == ("member.removed", "demo", "alice")
    assert row.context == {"worker_id": ["bob", None], "role": ["member", None]}


def test_a_member_leaves_a_project_by_removing_themself(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    response = client.delete("/api/projects/demo/members/bob", headers=auth("bob"))

    assert response.status_code == 204, response.text
    assert members(db, "demo") == {"alice": ProjectRole.owner}
    [row] = new_audit_rows(db, before)
    assert (row.action, row.actor_id) == ("member.removed", "bob")


def test_a_member_removing_another_member_returns_403(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob", "carol"])

    response = client.delete("/api/projects/demo/members/carol", headers=auth("bob"))

    assert response.status_code == 403, response.text
    assert set(members(db, "demo")) == {"alice", "bob", "carol"}


def test_removing_the_last_owner_returns_409(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    before = audit_rows(db)

    response = client.delete("/api/projects/demo/members/alice", headers=auth("alice"))

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
    assert members(db, "demo")["alice"] == ProjectRole.owner
    assert new_audit_rows(db, before) == []


def test_one_of_two_owners_may_leave(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    assert (
        client.patch("/api/projects/demo/members/bob", json={"role": "owner"}, headers=auth("alice")).status_code == 200
    )

    response = client.delete("/api/projects/demo/members/alice", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert members(db, "demo") == {"bob": ProjectRole.owner}


def test_removing_someone_who_is_no_member_returns_404(
    client: TestClient, auth: AuthHeaders, create_project: CreateProject
) -> None:
    create_project("demo", owner="alice")
    register(client, auth, "carol")

    for worker_id in ("carol", "ghost"):
        response = client.delete(f"/api/projects/demo/members/{worker_id}", headers=auth("alice"))
        assert response.status_code == 404, response.text


@pytest.mark.parametrize("status", ["pending", "in_progress", "review", "blocked"])
def test_removing_a_member_with_an_open_task_in_the_project_returns_409(
    client: TestClient,
    auth: AuthHeaders,
    db: Engine,
    create_project: CreateProject,
    create_task: CreateTask,
    status: str,
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Bob's job", project_slug="demo", assigned_to="bob")
    steps = {"pending": [], "in_progress": ["start"], "review": ["start", "review"], "blocked": ["block?reason=x"]}
    for step in steps[status]:
        assert client.post(f"/api/tasks/{task['id']}/{step}", headers=auth("bob")).status_code == 200
    before = audit_rows(db)

    for remover in ("alice", "bob"):
        response = client.delete("/api/projects/demo/members/bob", headers=auth(remover))
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "conflict"

    assert "bob" in members(db, "demo")
    assert new_audit_rows(db, before) == []


def test_a_member_whose_tasks_are_all_completed_can_be_removed(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    for title in ("One", "Two"):
        task = create_task(title, project_slug="demo", assigned_to="bob")
        assert client.post(f"/api/tasks/{task['id']}/start", headers=auth("bob")).status_code == 200
        assert client.post(f"/api/tasks/{task['id']}/complete", headers=auth("bob")).status_code == 200
    create_task("Created by bob, assigned to alice", as_user="bob", project_slug="demo", assigned_to="alice")

    response = client.delete("/api/projects/demo/members/bob", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert "bob" not in members(db, "demo")


def test_an_open_task_in_another_project_does_not_stop_a_removal(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject, create_task: CreateTask
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    create_project("other", owner="alice", members=["bob"])
    create_task("Elsewhere", project_slug="other", assigned_to="bob")
    create_task("Loose", assigned_to="bob")

    response = client.delete("/api/projects/demo/members/bob", headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert "bob" not in members(db, "demo")


# ---------------------------------------------------------------- concurrency


def two_owner_project(client: TestClient, auth: AuthHeaders, create_project: CreateProject, slug: str) -> None:
    create_project(slug, owner="alice", members=["bob"])
    promoted = client.patch(f"/api/projects/{slug}/members/bob", json={"role": "owner"}, headers=auth("alice"))
    assert promoted.status_code == 200, promoted.text


def test_two_owners_removing_each_other_at_once_leave_the_project_an_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    alice, bob = auth("alice"), auth("bob")
    for round_ in range(5):
        slug = f"race-{round_}"
        two_owner_project(client, auth, create_project, slug)

        responses = run_together(
            partial(client.delete, f"/api/projects/{slug}/members/bob", headers=alice),
            partial(client.delete, f"/api/projects/{slug}/members/alice", headers=bob),
        )

        statuses = sorted(response.status_code for response in responses)
        assert statuses.count(204) <= 1, [response.text for response in responses]
        assert all(code in {204, 403, 404, 409} for code in statuses), [response.text for response in responses]
        owners = [worker for worker, role in members(db, slug).items() if role == ProjectRole.owner]
        assert len(owners) >= 1, slug
        with Session(db) as session:
            removals = session.exec(
                select(func.count()).where(AuditLog.project_slug == slug, AuditLog.action == "member.removed")
            ).one()
        assert removals == statuses.count(204)


def test_two_owners_leaving_at_once_leave_the_project_an_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    alice, bob = auth("alice"), auth("bob")
    for round_ in range(5):
        slug = f"exodus-{round_}"
        two_owner_project(client, auth, create_project, slug)

        responses = run_together(
            partial(client.delete, f"/api/projects/{slug}/members/alice", headers=alice),
            partial(client.delete, f"/api/projects/{slug}/members/bob", headers=bob),
        )

        statuses = sorted(response.status_code for response in responses)
        assert statuses == [204, 409], [response.text for response in responses]
        assert len(members(db, slug)) == 1
        assert list(members(db, slug).values()) == [ProjectRole.owner]


def test_two_owners_demoting_each_other_at_once_leave_the_project_an_owner(
    client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject
) -> None:
    alice, bob = auth("alice"), auth("bob")
    for round_ in range(5):
        slug = f"coup-{round_}"
        two_owner_project(client, auth, create_project, slug)

        responses = run_together(
            partial(client.patch, f"/api/projects/{slug}/members/bob", json={"role": "member"}, headers=alice),
            partial(client.patch, f"/api/projects/{slug}/members/alice", json={"role": "member"}, headers=bob),
        )

        statuses = sorted(response.status_code for response in responses)
        assert statuses.count(200) == 1, [response.text for response in responses]
        assert all(code in {200, 403} for code in statuses), [response.text for response in responses]
        assert ProjectRole.owner in members(db, slug).values()
