"""Comments on tasks: posting, reading, editing and deleting them, who may, their @mentions, their audit rows.

Project "demo" is owned by alice with bob and the agent "@coder" as members; project "secret"
belongs to dave alone; carol is a registered worker in no project.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from support import CreateProject, CreateTask, assert_error, audit_rows, count, run_together

from models import Comment

AGENT = "@coder"


@pytest.fixture
def board(client: TestClient, auth: AuthHeaders, create_project: CreateProject) -> None:
    client.get("/api/tasks", headers=auth("carol"))  # carol's worker row appears on her first request
    client.get("/api/tasks", headers=auth("alice"))
    registered = client.post(
        "/api/workers", json={"id": AGENT, "type": "agent", "name": "Coder"}, headers=auth("root", role="admin")
    )
    assert registered.status_code == 201, registered.text
    create_project("demo", owner="alice", members=["bob", AGENT])
    create_project("secret", owner="dave")


@pytest.fixture
def task_id(board: None, create_task: CreateTask) -> int:  # noqa: ARG001
    created: int = create_task("Ship it", project_slug="demo")["id"]
    return created


def post(client: TestClient, auth: AuthHeaders, task_id: int, body: Any, user: str = "alice") -> httpx2.Response:
    return client.post(f"/api/tasks/{task_id}/comments", json={"body": body}, headers=auth(user))


def comment(client: TestClient, auth: AuthHeaders, task_id: int, body: str, user: str = "alice") -> dict[str, Any]:
    response = post(client, auth, task_id, body, user)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def edit(
    client: TestClient, auth: AuthHeaders, task_id: int, comment_id: int, body: Any, user: str = "alice"
) -> httpx2.Response:
    return client.patch(f"/api/tasks/{task_id}/comments/{comment_id}", json={"body": body}, headers=auth(user))


def remove(
    client: TestClient, auth: AuthHeaders, task_id: int, comment_id: int, user: str = "alice"
) -> httpx2.Response:
    return client.delete(f"/api/tasks/{task_id}/comments/{comment_id}", headers=auth(user))


def listed(client: TestClient, auth: AuthHeaders, task_id: int, user: str = "alice", **params: Any) -> httpx2.Response:
    return client.get(f"/api/tasks/{task_id}/comments", params=params, headers=auth(user))


def comment_audit(db: Engine, action: str) -> list[tuple[int | None, str | None, str, dict[str, Any]]]:
    return [(row.task_id, row.project_slug, row.actor_id, row.context) for row in audit_rows(db, action=action)]


# ---------------------------------------------------------------- posting and reading


def test_a_comment_is_stored_exactly_as_written_and_answered_201(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    body = "  **Done?**\n\n- [ ] tests\n\t"

    created = comment(client, auth, task_id, body, user="bob")

    assert set(created) == {"id", "task_id", "author_id", "body", "mentions", "created_at", "updated_at", "edited"}
    assert (created["task_id"], created["author_id"], created["body"]) == (task_id, "bob", body)
    assert (created["mentions"], created["edited"]) == ([], False)
    assert created["created_at"] == created["updated_at"]
    assert listed(client, auth, task_id).json() == [created]


def test_a_body_of_exactly_10000_characters_is_accepted(client: TestClient, auth: AuthHeaders, task_id: int) -> None:
    assert len(comment(client, auth, task_id, "é" * 10_000)["body"]) == 10_000


BAD_BODIES: dict[str, Any] = {
    "empty": {"body": ""},
    "too long": {"body": "x" * 10_001},
    "blank": {"body": " \n\t "},
    "a number": {"body": 123},
    "null": {"body": None},
    "a NUL character": {"body": "a\x00b"},
    "missing": {},
    "an unknown field": {"body": "Hi", "mentions": ["bob"]},
}


@pytest.mark.parametrize("method", ["post", "patch"])
@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_a_bad_body_is_422_naming_the_field_and_saves_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int, method: str, case: str
) -> None:
    existing = comment(client, auth, task_id, "Original")
    url = f"/api/tasks/{task_id}/comments" + (f"/{existing['id']}" if method == "patch" else "")

    response = client.request(method.upper(), url, json=BAD_BODIES[case], headers=auth("alice"))

    body = assert_error(response, 422, "validation_error")
    field = "mentions" if case == "an unknown field" else "body"
    assert ["body", field] in [entry["loc"] for entry in body["detail"]], body
    assert count(db, Comment) == 1
    assert listed(client, auth, task_id).json()[0]["body"] == "Original"
    assert len(audit_rows(db, action="comment.edited")) == 0


def test_comments_are_listed_oldest_first_a_page_at_a_time_with_the_total(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    ids = [comment(client, auth, task_id, f"Comment {n}", user="bob" if n % 2 else "alice")["id"] for n in range(5)]

    first = listed(client, auth, task_id, limit=2)
    last = listed(client, auth, task_id, limit=2, offset=4)

    assert first.status_code == 200, first.text
    assert [row["id"] for row in first.json()] == ids[:2]
    assert [row["id"] for row in last.json()] == ids[4:]
    assert first.headers["X-Total-Count"] == last.headers["X-Total-Count"] == "5"
    assert [row["body"] for row in listed(client, auth, task_id, user="bob").json()] == [
        f"Comment {n}" for n in range(5)
    ]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "many"}])
def test_a_bad_page_is_422(client: TestClient, auth: AuthHeaders, task_id: int, params: dict[str, Any]) -> None:
    assert_error(listed(client, auth, task_id, **params), 422, "validation_error")


def test_comments_on_one_task_are_not_listed_on_another(
    client: TestClient, auth: AuthHeaders, task_id: int, create_task: CreateTask
) -> None:
    other = create_task("Other", project_slug="demo")["id"]
    comment(client, auth, task_id, "Here")

    response = listed(client, auth, other)

    assert (response.json(), response.headers["X-Total-Count"]) == ([], "0")


# ---------------------------------------------------------------- who may


@pytest.mark.usefixtures("board")
def test_a_task_you_cannot_see_is_404_on_every_comment_endpoint_exactly_like_a_missing_one(
    client: TestClient,
    auth: AuthHeaders,
    db: Engine,
    create_task: CreateTask,
) -> None:
    secret = create_task("Secret plan", as_user="dave", project_slug="secret")["id"]
    hidden = comment(client, auth, secret, "Only dave sees this", user="dave")["id"]
    missing = secret + 1000

    for task in (secret, missing):
        responses = [
            listed(client, auth, task, user="bob"),
            post(client, auth, task, "Hello?", user="bob"),
            edit(client, auth, task, hidden, "Mine now", user="bob"),
            remove(client, auth, task, hidden, user="bob"),
        ]
        for response in responses:
            assert assert_error(response, 404, "not_found")["error"] == f"Task {task} not found"
    assert count(db, Comment) == 1
    assert [row[:3] for row in comment_audit(db, "comment.added")] == [(secret, "secret", "dave")]


@pytest.mark.usefixtures("board")
def test_a_task_without_a_project_is_commented_on_by_its_creator_and_assignee_only(
    client: TestClient,
    auth: AuthHeaders,
    create_task: CreateTask,
) -> None:
    loose = create_task("Loose", assigned_to="bob")["id"]

    assert post(client, auth, loose, "From the creator").status_code == 201
    assert post(client, auth, loose, "From the assignee", user="bob").status_code == 201
    assert_error(post(client, auth, loose, "From a stranger", user="carol"), 404, "not_found")
    assert_error(listed(client, auth, loose, user="carol"), 404, "not_found")


def test_a_member_who_leaves_the_project_can_no_longer_read_its_comments(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    comment(client, auth, task_id, "Before you go")
    assert client.delete("/api/projects/demo/members/bob", headers=auth("bob")).status_code == 204

    assert_error(listed(client, auth, task_id, user="bob"), 404, "not_found")


def test_another_members_comment_is_403_to_edit_or_delete_and_stays_as_it_was(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    mine = comment(client, auth, task_id, "Alice's words")

    assert_error(edit(client, auth, task_id, mine["id"], "Bob's words", user="bob"), 403, "forbidden")
    # Not even the project's owner may put words in a member's mouth.
    bobs = comment(client, auth, task_id, "Bob's own", user="bob")
    assert_error(edit(client, auth, task_id, bobs["id"], "Alice's now"), 403, "forbidden")
    assert_error(remove(client, auth, task_id, mine["id"], user="bob"), 403, "forbidden")

    assert listed(client, auth, task_id).json() == [mine, bobs]
    assert audit_rows(db, action="comment.edited") == audit_rows(db, action="comment.deleted") == []


def test_the_author_and_an_admin_may_edit_and_delete_a_comment(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    first = comment(client, auth, task_id, "First", user="bob")
    second = comment(client, auth, task_id, "Second", user="bob")

    by_author = edit(client, auth, task_id, first["id"], "First, edited", user="bob")
    by_admin = client.patch(
        f"/api/tasks/{task_id}/comments/{second['id']}", json={"body": "Moderated"}, headers=auth("root", role="admin")
    )

    assert by_author.status_code == by_admin.status_code == 200, (by_author.text, by_admin.text)
    assert (by_author.json()["body"], by_author.json()["edited"]) == ("First, edited", True)
    assert (by_admin.json()["body"], by_admin.json()["author_id"]) == ("Moderated", "bob")
    assert remove(client, auth, task_id, first["id"], user="bob").status_code == 204
    deleted = client.delete(f"/api/tasks/{task_id}/comments/{second['id']}", headers=auth("root", role="admin"))
    assert deleted.status_code == 204, deleted.text
    assert count(db, Comment) == 0
    assert [row[2] for row in comment_audit(db, "comment.deleted")] == ["bob", "root"]


def test_a_comment_of_another_task_is_404_through_this_one(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int, create_task: CreateTask
) -> None:
    other = create_task("Other", project_slug="demo")["id"]
    elsewhere = comment(client, auth, other, "On the other task")

    assert_error(edit(client, auth, task_id, elsewhere["id"], "Moved?"), 404, "not_found")
    assert_error(remove(client, auth, task_id, elsewhere["id"]), 404, "not_found")
    assert_error(remove(client, auth, task_id, 999_999), 404, "not_found")
    assert count(db, Comment) == 1


# ---------------------------------------------------------------- mentions


def test_mentions_are_the_members_named_sorted_and_once_each(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    body = "@bob and @alice, please look. @bob again; cc @coder (the agent), @carol, @nobody, mail me at carol@bob.com"

    created = comment(client, auth, task_id, body)

    # carol is registered but not a member; nobody is no worker; `carol@bob.com` is an e-mail address.
    assert created["mentions"] == [AGENT, "alice", "bob"]


def test_a_mention_may_end_a_sentence_or_be_written_with_the_agents_own_at(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    assert comment(client, auth, task_id, "Thanks @bob.")["mentions"] == ["bob"]
    assert comment(client, auth, task_id, "Over to you, @@coder:")["mentions"] == [AGENT]
    assert comment(client, auth, task_id, "(@bob)")["mentions"] == ["bob"]
    assert comment(client, auth, task_id, "no@bob, `x@coder`, @ bob, @")["mentions"] == []


@pytest.mark.usefixtures("board")
def test_on_a_task_without_a_project_only_its_creator_and_assignee_can_be_mentioned(
    client: TestClient,
    auth: AuthHeaders,
    create_task: CreateTask,
) -> None:
    loose = create_task("Loose", assigned_to="bob")["id"]

    assert comment(client, auth, loose, "@alice @bob @carol @coder")["mentions"] == ["alice", "bob"]


def test_a_mention_counts_only_while_the_worker_can_see_the_task(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    before = comment(client, auth, task_id, "@carol, can you help?")
    added = client.post("/api/projects/demo/members", json={"worker_id": "carol"}, headers=auth("alice"))
    assert added.status_code == 201, added.text

    after = comment(client, auth, task_id, "@carol, can you help?")

    assert (before["mentions"], after["mentions"]) == ([], ["carol"])
    # Stored when written: the first comment keeps what it mentioned then.
    assert [row["mentions"] for row in listed(client, auth, task_id).json()] == [[], ["carol"]]


def test_an_edit_works_out_the_mentions_again(client: TestClient, auth: AuthHeaders, task_id: int) -> None:
    created = comment(client, auth, task_id, "@bob, have a look")

    edited = edit(client, auth, task_id, created["id"], "@coder, have a look (and @coder again)")

    assert edited.status_code == 200, edited.text
    assert edited.json()["mentions"] == [AGENT]
    assert listed(client, auth, task_id).json()[0]["mentions"] == [AGENT]


def test_a_body_that_is_all_mentions_is_answered_with_those_that_count(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    body = " ".join(f"@w{n}" for n in range(1_400)) + " @bob"
    assert len(body) <= 10_000

    assert comment(client, auth, task_id, body)["mentions"] == ["bob"]


# ---------------------------------------------------------------- the audit log


def test_adding_editing_and_deleting_write_one_audit_row_each_with_body_and_mentions(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    created = comment(client, auth, task_id, "Hi @bob")
    cid = created["id"]
    assert edit(client, auth, task_id, cid, "Hi @bob, and @coder").status_code == 200
    assert edit(client, auth, task_id, cid, "Hello @bob, and @coder").status_code == 200
    assert remove(client, auth, task_id, cid).status_code == 204

    assert comment_audit(db, "comment.added") == [
        (task_id, "demo", "alice", {"comment_id": cid, "body": [None, "Hi @bob"], "mentions": [None, ["bob"]]})
    ]
    assert comment_audit(db, "comment.edited") == [
        (
            task_id,
            "demo",
            "alice",
            {"comment_id": cid, "body": ["Hi @bob", "Hi @bob, and @coder"], "mentions": [["bob"], [AGENT, "bob"]]},
        ),
        (
            task_id,
            "demo",
            "alice",
            # Mentions unchanged, and still in the row: a reader finds the whole comment in each.
            {
                "comment_id": cid,
                "body": ["Hi @bob, and @coder", "Hello @bob, and @coder"],
                "mentions": [[AGENT, "bob"], [AGENT, "bob"]],
            },
        ),
    ]
    assert comment_audit(db, "comment.deleted") == [
        (
            task_id,
            "demo",
            "alice",
            {"comment_id": cid, "body": ["Hello @bob, and @coder", None], "mentions": [[AGENT, "bob"], None]},
        )
    ]
    history = client.get(f"/api/tasks/{task_id}/audit", headers=auth("bob")).json()
    assert [row["action"] for row in history] == [
        "task.created",
        "comment.added",
        "comment.edited",
        "comment.edited",
        "comment.deleted",
    ]


def test_a_comment_without_mentions_is_audited_with_an_empty_list(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    cid = comment(client, auth, task_id, "Plain")["id"]
    remove(client, auth, task_id, cid)

    assert comment_audit(db, "comment.added")[0][3] == {
        "comment_id": cid,
        "body": [None, "Plain"],
        "mentions": [None, []],
    }
    assert comment_audit(db, "comment.deleted")[0][3] == {
        "comment_id": cid,
        "body": ["Plain", None],
        "mentions": [[], None],
    }


def test_an_edit_that_changes_nothing_writes_no_row_and_bumps_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    created = comment(client, auth, task_id, "Same @bob")

    again = edit(client, auth, task_id, created["id"], "Same @bob")

    assert again.status_code == 200, again.text
    assert again.json() == created
    assert audit_rows(db, action="comment.edited") == []


def test_commenting_leaves_the_task_and_its_version_alone(client: TestClient, auth: AuthHeaders, task_id: int) -> None:
    before = client.get(f"/api/tasks/{task_id}", headers=auth("alice"))
    comment(client, auth, task_id, "Just a remark")

    after = client.get(f"/api/tasks/{task_id}", headers=auth("alice"))

    assert (after.json(), after.headers["ETag"]) == (before.json(), before.headers["ETag"])


# ---------------------------------------------------------------- deletion, retries, races


def test_deleting_a_task_deletes_its_comments(client: TestClient, auth: AuthHeaders, db: Engine, task_id: int) -> None:
    comment(client, auth, task_id, "One")
    comment(client, auth, task_id, "Two @bob", user="bob")

    deleted = client.delete(f"/api/tasks/{task_id}", headers=auth("alice"))

    assert deleted.status_code == 204, deleted.text
    assert count(db, Comment) == 0
    assert_error(listed(client, auth, task_id), 404, "not_found")
    # The audit rows keep what was said.
    assert [row[3]["body"][1] for row in comment_audit(db, "comment.added")] == ["One", "Two @bob"]


def test_comment_ids_are_never_reused(client: TestClient, auth: AuthHeaders, task_id: int) -> None:
    first = comment(client, auth, task_id, "Gone soon")["id"]
    remove(client, auth, task_id, first)

    assert comment(client, auth, task_id, "Next")["id"] > first


def test_a_retried_post_with_the_same_idempotency_key_returns_the_same_comment_once(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    headers = {**auth("bob"), "Idempotency-Key": "comment-0001"}
    url = f"/api/tasks/{task_id}/comments"

    first = client.post(url, json={"body": "Once @alice"}, headers=headers)
    second = client.post(url, json={"body": "Once @alice"}, headers=headers)

    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert first.json() == second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert count(db, Comment) == 1
    assert len(audit_rows(db, action="comment.added")) == 1


def test_two_comments_posted_at_once_both_land(client: TestClient, auth: AuthHeaders, db: Engine, task_id: int) -> None:
    responses = run_together(
        partial(post, client, auth, task_id, "From alice", "alice"),
        partial(post, client, auth, task_id, "From bob", "bob"),
    )

    assert [response.status_code for response in responses] == [201, 201], [r.text for r in responses]
    assert len({response.json()["id"] for response in responses}) == 2
    assert count(db, Comment) == 2
    assert len(audit_rows(db, action="comment.added")) == 2
