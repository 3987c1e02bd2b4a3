"""The event feed, `GET /api/events` and its stream: what it serves, to whom, in which order, and from where.

Waiting (long polls, the stream's liveness, several instances) is in tests/test_waiting.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import httpx
import pytest
from conftest import AuthHeaders, LiveServer, TokenFactory
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from support import ON_POSTGRESQL, CreateProject, CreateTask, assert_error, feed_settled

import events
from models import AuditAction


def feed(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/api/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def types(page: dict[str, Any]) -> list[str]:
    return [event["type"] for event in page["events"]]


def caught_up(client: TestClient, headers: dict[str, str], db: Engine, after: int = 0, **params: Any) -> dict[str, Any]:
    """The events after `after` up to the last row written, as one page.

    On PostgreSQL the feed serves a row only once every older transaction has ended, including
    other test processes' on the same server, so a read right after a write may come too soon.
    """
    feed(client, headers, after=0, limit=1)  # a caller's first request registers them: one row more
    with db.connect() as connection:
        last = connection.execute(text("SELECT id FROM audit_log ORDER BY feed_tx DESC, id DESC LIMIT 1")).scalar()
    collected: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while after != (last or 0):
        assert time.monotonic() < deadline, f"the feed is stuck at {after}, short of {last}"
        page = feed(client, headers, after=after, limit=500, **params)
        if page["next_after"] == after:
            time.sleep(0.02)
        collected += page["events"]
        after = page["next_after"]
    return {"events": collected, "next_after": after}


@pytest.fixture
def board(create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob"])
    create_project("secret", owner="carol")


# ---------------------------------------------------------------- what is served, and in which order


@pytest.mark.usefixtures("board")
def test_the_feed_starts_now_by_default_and_then_serves_each_later_event_once_in_order(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    before = create_task("before", project_slug="demo")
    start = feed(client, auth("alice"))
    assert start["events"] == []

    task = create_task("after", project_slug="demo")
    assert client.post(f"/api/tasks/{task['id']}/start", headers=auth("bob")).status_code == 200
    first = caught_up(client, auth("alice"), db, after=start["next_after"])
    first["events"] = [event for event in first["events"] if event["task_id"] == task["id"]]
    assert types(first) == ["task.created", "task.started"]
    assert [event["task_id"] for event in first["events"]] == [task["id"], task["id"]]
    assert before["id"] not in {event["task_id"] for event in first["events"]}
    assert first["next_after"] == first["events"][-1]["id"]

    again = feed(client, auth("alice"), after=first["next_after"])
    assert again == {"events": [], "next_after": first["next_after"]}


@pytest.mark.usefixtures("board")
def test_an_event_carries_who_did_what_where_and_the_changes(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Write it", project_slug="demo", priority="high")
    (event,) = caught_up(client, auth("bob"), db, type="task.created")["events"]
    assert set(event) == {
        "id",
        "type",
        "at",
        "actor_id",
        "actor_type",
        "owner_id",
        "via",
        "client_id",
        "task_id",
        "project_slug",
        "changes",
        "comment",
    }
    assert event["type"] == "task.created"
    assert (event["actor_id"], event["actor_type"], event["owner_id"]) == ("alice", "human", None)
    assert (event["via"], event["client_id"]) == ("api", None)
    assert (event["task_id"], event["project_slug"]) == (task["id"], "demo")
    assert event["changes"]["title"] == [None, "Write it"]
    assert event["changes"]["priority"] == [None, "high"]
    assert event["comment"] is None
    assert event["at"].endswith(("Z", "+00:00"))


@pytest.mark.usefixtures("board")
def test_after_zero_is_the_whole_feed_and_limit_pages_it_without_gaps_or_repeats(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    for number in range(7):
        create_task(f"task {number}", project_slug="demo")
    whole = caught_up(client, auth("alice"), db)["events"]
    seen: list[int] = []
    after = 0
    while True:
        page = feed(client, auth("alice"), after=after, limit=3)
        if not page["events"]:
            break
        assert len(page["events"]) <= 3
        seen += [event["id"] for event in page["events"]]
        after = page["next_after"]
    assert seen == [event["id"] for event in whole]
    assert len(seen) == len(set(seen))


# ---------------------------------------------------------------- who sees what


@pytest.mark.usefixtures("board")
def test_events_about_what_you_cannot_see_are_never_served(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    mine = create_task("ours", project_slug="demo")
    create_task("carol's", project_slug="secret", as_user="carol")
    create_task("carol's loose task", as_user="carol")
    own_loose = create_task("alice's loose task")

    served = caught_up(client, auth("alice"), db)["events"]
    about = {(event["project_slug"], event["task_id"]) for event in served if event["task_id"] is not None}
    assert about == {("demo", mine["id"]), (None, own_loose["id"])}
    assert all(event["project_slug"] != "secret" for event in served)
    carols = caught_up(client, auth("carol"), db)["events"]
    assert len([event for event in carols if event["type"] == "task.created"]) == 2
    assert not {mine["id"], own_loose["id"]} & {event["task_id"] for event in carols}


@pytest.mark.usefixtures("board")
def test_a_project_filter_of_a_project_you_are_not_in_serves_nothing_and_an_admin_sees_all(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    create_task("carol's", project_slug="secret", as_user="carol")
    assert caught_up(client, auth("alice"), db, project="secret")["events"] == []
    assert types(caught_up(client, auth("root", role="admin"), db, project="secret")) == [
        "project.created",
        "task.created",
    ]


@pytest.mark.usefixtures("board")
def test_a_removed_member_stops_receiving_the_projects_events_at_once(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    create_task("before", project_slug="demo")
    assert caught_up(client, auth("bob"), db, project="demo")["events"]
    assert client.delete("/api/projects/demo/members/bob", headers=auth("alice")).status_code == 204
    create_task("after", project_slug="demo")
    assert caught_up(client, auth("bob"), db, project="demo")["events"] == []


# ---------------------------------------------------------------- filters


@pytest.mark.usefixtures("board")
def test_filters_narrow_by_task_type_and_project(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    one = create_task("one", project_slug="demo")
    two = create_task("two", project_slug="demo")
    client.post(f"/api/tasks/{two['id']}/start", headers=auth("alice"))
    loose = create_task("loose")

    assert {event["task_id"] for event in caught_up(client, auth("alice"), db, task_id=one["id"])["events"]} == {
        one["id"]
    }
    started = caught_up(client, auth("alice"), db, type="task.started")["events"]
    assert [event["task_id"] for event in started] == [two["id"]]
    both = caught_up(client, auth("alice"), db, type=["task.created", "task.started"])
    assert types(both) == ["task.created", "task.created", "task.started", "task.created"]
    in_demo = caught_up(client, auth("alice"), db, project="demo")["events"]
    assert loose["id"] not in {event["task_id"] for event in in_demo}
    assert {event["project_slug"] for event in in_demo} == {"demo"}


@pytest.mark.usefixtures("board")
def test_mentioning_serves_the_comments_that_mention_that_worker_with_the_comment(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Review", project_slug="demo")
    url = f"/api/tasks/{task['id']}/comments"
    quiet = client.post(url, json={"body": "nothing for anyone"}, headers=auth("alice")).json()
    asked = client.post(url, json={"body": "@bob can you look?"}, headers=auth("alice")).json()
    client.patch(f"{url}/{quiet['id']}", json={"body": "now for @bob too"}, headers=auth("alice"))
    client.post(url, json={"body": "@carol is not in the project"}, headers=auth("alice"))

    mentions = caught_up(client, auth("bob"), db, mentioning="bob")["events"]
    assert [(event["type"], event["comment"]["id"]) for event in mentions] == [
        ("comment.added", asked["id"]),
        ("comment.edited", quiet["id"]),
    ]
    first = mentions[0]
    assert first["comment"] == {"id": asked["id"], "body": "@bob can you look?", "mentions": ["bob"]}
    assert first["changes"]["body"] == [None, "@bob can you look?"]
    assert caught_up(client, auth("alice"), db, mentioning="carol")["events"] == []

    client.delete(f"{url}/{asked['id']}", headers=auth("alice"))
    deleted = caught_up(client, auth("bob"), db, type="comment.deleted")["events"]
    assert deleted[0]["comment"] == {"id": asked["id"], "body": None, "mentions": None}


@pytest.mark.parametrize(
    "params",
    [
        {"after": -1},
        {"after": "x"},
        {"limit": 0},
        {"limit": 501},
        {"type": "task.exploded"},
        {"project": "Not A Slug"},
        {"task_id": 0},
        {"mentioning": "has space"},
        {"wait_seconds": 61},
        {"wait_seconds": -1},
    ],
)
def test_a_bad_parameter_is_422_naming_it(client: TestClient, auth: AuthHeaders, params: dict[str, Any]) -> None:
    response = client.get("/api/events", params=params, headers=auth("alice"))
    body = assert_error(response, 422, "validation_error")
    assert next(iter(params)) in json.dumps(body["detail"])


def test_an_after_that_names_no_event_is_400(client: TestClient, auth: AuthHeaders) -> None:
    assert_error(client.get("/api/events", params={"after": 999_999}, headers=auth("alice")), 400, "bad_request")
    assert_error(
        client.get("/api/events/stream", headers={**auth("alice"), "Last-Event-ID": "999999"}), 400, "bad_request"
    )


def test_the_feed_needs_a_token(client: TestClient) -> None:
    assert_error(client.get("/api/events"), 401, "unauthorized")
    assert_error(client.get("/api/events/stream"), 401, "unauthorized")


def test_every_audit_action_is_a_type_the_feed_accepts(client: TestClient, auth: AuthHeaders) -> None:
    params: list[tuple[str, str | int | float | bool | None]] = [("type", action.value) for action in AuditAction]
    assert client.get("/api/events", params=params, headers=auth("alice")).status_code == 200


# ---------------------------------------------------------------- no gaps: a transaction that commits late


@pytest.mark.skipif(not ON_POSTGRESQL, reason="SQLite writers take turns: a later row never commits first")
@pytest.mark.usefixtures("board")
def test_a_row_whose_transaction_commits_after_a_later_one_is_still_served_and_in_commit_order(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    """The case that defeats `id > cursor`: an earlier id, committed after a later one was read."""
    start = caught_up(client, auth("alice"), db)["next_after"]
    with db.connect() as slow:
        slow.begin()
        early_id = slow.execute(
            text(
                "INSERT INTO audit_log (project_slug, actor_id, actor_type, action, context, timestamp) "
                "VALUES ('demo', 'alice', 'human', 'task.updated', '{}', now()) RETURNING id"
            )
        ).scalar_one()
        late = create_task("committed first", project_slug="demo")
        # The slow transaction is still open: nothing after it may be served yet, not even the later row.
        held = feed(client, auth("alice"), after=start)
        assert held == {"events": [], "next_after": start}
        slow.commit()
    served = [(event["id"], event["task_id"]) for event in caught_up(client, auth("alice"), db, after=start)["events"]]
    assert served == [(early_id, None), (served[1][0], late["id"])]
    assert served[1][0] > early_id


def test_the_horizon_never_passes_a_running_transaction(db: Engine) -> None:
    """The horizon is the oldest running transaction, so one that is open now is at or above it.

    (Once it ends the horizon moves past it, unless an older transaction of another test process
    on the same server still runs: not something to assert on here.)"""
    if not ON_POSTGRESQL:
        pytest.skip("SQLite has no transaction ids")
    with db.connect() as writer, db.connect() as reader:
        writer.begin()
        own = writer.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one()
        assert events._horizon(reader) <= own
        writer.rollback()


# ---------------------------------------------------------------- the stream


def stream_lines(server: LiveServer, headers: dict[str, str], **params: Any) -> Generator[str]:
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("GET", "/api/events/stream", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        assert response.headers["x-accel-buffering"] == "no"
        yield from response.iter_lines()


def read_events(lines: Iterator[str], count: int) -> list[dict[str, Any]]:
    """The next `count` events of an SSE stream, each with the `id` and `event` fields it was sent with."""
    found: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                found.append({"sse_id": fields["id"], "sse_event": fields["event"], **json.loads(fields["data"])})
                if len(found) == count:
                    return found
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    raise AssertionError(f"the stream ended after {len(found)} of {count} events")


@pytest.mark.usefixtures("board")
def test_the_stream_sends_each_event_with_its_id_and_type_and_resumes_after_last_event_id(
    live_server: LiveServer, auth: AuthHeaders, client: TestClient, create_task: CreateTask
) -> None:
    headers = auth("bob")
    lines = stream_lines(live_server, headers, after=0)
    first = read_events(lines, 2)
    assert [event["id"] for event in first] == [
        event["id"] for event in feed(client, headers, after=0, limit=2)["events"]
    ]
    assert [event["sse_id"] for event in first] == [str(event["id"]) for event in first]
    assert [event["sse_event"] for event in first] == [event["type"] for event in first]
    lines.close()

    task = create_task("while away", project_slug="demo")
    # Last-Event-ID wins over `after`: the stream goes on after the last event received, not from the start.
    resumed = stream_lines(live_server, {**headers, "Last-Event-ID": first[-1]["sse_id"]}, after=0)
    rest = feed(client, headers, after=first[-1]["id"], limit=500)["events"]
    again = read_events(resumed, len(rest))
    assert [event["id"] for event in again] == [event["id"] for event in rest]
    assert (again[-1]["type"], again[-1]["task_id"]) == ("task.created", task["id"])
    resumed.close()


@pytest.mark.usefixtures("board")
def test_a_removed_members_open_stream_stops_delivering_the_projects_events(
    live_server: LiveServer, auth: AuthHeaders, client: TestClient, create_task: CreateTask
) -> None:
    client.post("/api/projects", json={"slug": "bobs", "name": "Bob's"}, headers=auth("bob"))
    lines = stream_lines(live_server, auth("bob"))
    assert next(lines).startswith("retry:")  # connected: the stream starts from here
    received: list[dict[str, Any]] = []

    def read_until_the_sentinel() -> None:
        while not received or received[-1]["changes"].get("title") != [None, "sentinel"]:
            received.extend(read_events(lines, 1))

    reader = threading.Thread(target=read_until_the_sentinel, daemon=True)
    reader.start()
    create_task("seen", project_slug="demo")
    deadline = time.monotonic() + 20
    while not received:  # delivered while bob is a member
        assert time.monotonic() < deadline, "the stream delivered nothing"
        time.sleep(0.02)
    assert client.delete("/api/projects/demo/members/bob", headers=auth("alice")).status_code == 204
    create_task("not seen", project_slug="demo")
    # Bob's own project: once its event arrives, the stream has looked at every event before it.
    create_task("sentinel", project_slug="bobs", as_user="bob")
    reader.join(timeout=20)
    assert not reader.is_alive(), f"the stream delivered only {received}"
    titles = [event["changes"].get("title", [None, None])[1] for event in received]
    assert titles == ["seen", "sentinel"]
    lines.close()


def test_the_stream_ends_when_its_token_expires(live_server: LiveServer, make_token: TokenFactory) -> None:
    token = make_token("bob", exp=int(time.time()) + 2)
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        http.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})  # bob's worker row: no event later
    lines = stream_lines(live_server, {"Authorization": f"Bearer {token}"})
    assert next(lines).startswith("retry:")
    assert [line for line in lines if line.startswith("data:")] == []  # ended, not cut by a timeout
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        again = http.get("/api/events/stream", headers={"Authorization": f"Bearer {token}"})
    assert_error(again, 401, "unauthorized")


@pytest.mark.usefixtures("board")
def test_a_stream_cut_before_its_first_event_resumes_from_the_cursor_it_was_sent(
    live_server: LiveServer, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    feed_settled(db)
    lines = stream_lines(live_server, auth("bob"))  # from now
    assert next(lines).startswith("retry:")
    cursor = next(lines)  # an `id:` without data: a Last-Event-ID, no event
    assert cursor.startswith("id: ")
    assert next(lines) == ""
    lines.close()

    task = create_task("while cut off", project_slug="demo")
    resumed = stream_lines(live_server, {**auth("bob"), "Last-Event-ID": cursor.removeprefix("id: ")})
    (event,) = read_events(resumed, 1)
    assert (event["type"], event["task_id"]) == ("task.created", task["id"])
    resumed.close()
