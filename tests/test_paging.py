"""Paging as a hostile client meets it: keyset cursors, the Link header, the capped count and the offset cap.

Most rows are arranged straight into the database (one transaction each), with ties in every
sort key, tasks without due dates and rows that belong to other users, so that a walk along
`Link: <…>; rel="next"` can be checked against one unpaged list and against the order the
contract describes. Cursors are forged and tampered with the way a client could: they are
only base64 of JSON, and nothing stops a caller from decoding and re-encoding them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import AuthHeaders
from conftest import insert as insert_rows
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import Engine, delete, insert
from sqlmodel import Session, col, select
from support import assert_error

import services
from models import (
    MAX_OFFSET,
    PRIORITY_RANK,
    AuditLog,
    Project,
    ProjectMember,
    ProjectRole,
    Task,
    TaskPriority,
    TaskSort,
    TaskStatus,
    Worker,
    WorkerType,
)

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
ALL_SORTS = [sort.value for sort in TaskSort]
LINK_NEXT = re.compile(r'^<([^<>]+)>; rel="next"$')
# Who is in which project; tasks without a project belong to their creator and their assignee.
MEMBERS = {"demo": {"alice", "bob"}, "secret": {"carol"}}
ADMIN = "root"


# The app as a caller meets it: an unhandled error comes back as a 500 response instead of raising here.
pytestmark = pytest.mark.errors_as_responses


# ---------------------------------------------------------------- helpers


def headers_for(auth: AuthHeaders, user: str) -> dict[str, str]:
    return auth(ADMIN, role="admin") if user == ADMIN else auth(user)


def may_see(user: str, task: Task) -> bool:
    if user == ADMIN:
        return True
    if task.project_slug is not None:
        return user in MEMBERS[task.project_slug]
    return user in (task.created_by, task.assigned_to)


def sort_value(sort: str, task: Task) -> Any:
    key = sort.lstrip("-")
    if key == "priority":
        return PRIORITY_RANK[task.priority]
    return getattr(task, key)


def expected_order(tasks: list[Task], sort: str) -> list[int]:
    """The contract: by the key, ties by id in the sort's direction, tasks without a due date last either way."""
    descending = sort.startswith("-")
    keyed = [task for task in tasks if sort_value(sort, task) is not None]
    empty = [task for task in tasks if sort_value(sort, task) is None]
    keyed.sort(key=lambda task: (sort_value(sort, task), task.id), reverse=descending)
    empty.sort(key=lambda task: task.id or 0, reverse=descending)
    return [task.id for task in keyed + empty if task.id is not None]


def ids(response: Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()]


def next_link(response: Response) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    match = LINK_NEXT.match(link)
    assert match, f"not a rel=next link: {link!r}"
    return match.group(1)


def link_params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def cursor_of(response: Response) -> str:
    link = next_link(response)
    assert link is not None, f"expected a next link: {dict(response.headers)}"
    [cursor] = link_params(link)["after"]
    return cursor


@dataclass
class Walk:
    pages: list[Response]

    @property
    def ids(self) -> list[int]:
        return [task_id for page in self.pages for task_id in ids(page)]


def walk(
    client: TestClient,
    url: str,
    headers: dict[str, str],
    params: dict[str, Any],
    *,
    between: Callable[[Response], None] | None = None,
) -> Walk:
    """GET `url`, then follow every rel=next link to the end; `between(page)` runs after each page that has a next."""
    pages = [client.get(url, params=params, headers=headers)]
    while (link := next_link(pages[-1])) is not None:
        assert len(pages) < 500, "the walk never ends"
        if between is not None:
            between(pages[-1])
        pages.append(client.get(link, headers=headers))
    for page in pages:
        assert page.status_code == 200, page.text
    return Walk(pages)


def assert_pages_full_but_the_last(walk_: Walk, limit: int) -> None:
    sizes = [len(page.json()) for page in walk_.pages]
    assert all(size == limit for size in sizes[:-1]), sizes
    assert 1 <= sizes[-1] <= limit or sizes == [0], sizes


def assert_links_keep_the_query(walk_: Walk, params: dict[str, Any]) -> None:
    """Every next link carries the first request's parameters, no offset, and exactly one `after`."""
    expected = {name: [str(value)] for name, value in params.items() if name not in ("offset", "after")}
    for page in walk_.pages:
        link = next_link(page)
        if link is None:
            continue
        assert urlsplit(link).path == urlsplit(str(page.url)).path
        query = link_params(link)
        assert len(query.pop("after")) == 1, link
        assert "offset" not in query, link
        assert query == expected, link


def assert_client_error(response: Response) -> None:
    """Refused as the client's fault, with the error envelope: never a 500, never a page."""
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text}"
    body = response.json()
    assert body["status_code"] == response.status_code, body
    assert body["code"] in ("bad_request", "validation_error"), body
    assert isinstance(body["error"], str)
    assert body["error"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(payload: Any) -> str:
    """A cursor as a client can make one: the same encoding the server uses, with any content."""
    return b64(json.dumps(payload, separators=(",", ":")).encode())


def stored_tasks(db: Engine) -> list[Task]:
    with Session(db, expire_on_commit=False) as session:
        return list(session.exec(select(Task)).all())


# ---------------------------------------------------------------- the board


KINDS = [
    "demo",
    "secret",
    "alice-own",
    "demo",
    "bob-own",
    "demo",
    "bob-for-alice",
    "secret",
    "demo",
    "carol-own",
]
PRIORITIES = list(TaskPriority)
STATUSES = list(TaskStatus)


def board_task(n: int, kind: str) -> Task:
    """The n-th task: its sort keys take few values, so every order has ties, and a third has no due date."""
    project = {"demo": "demo", "secret": "secret"}.get(kind)
    creator = {"demo": "alice", "secret": "carol", "alice-own": "alice", "carol-own": "carol"}.get(kind, "bob")
    assignee = {"bob-for-alice": "alice", "demo": "bob" if n % 2 else None}.get(kind)
    due: datetime | None = None
    if n % 3:
        # Four dates, one of them a microsecond apart from another: the cursor must keep microseconds.
        due = BASE_TIME + timedelta(days=n % 4) + timedelta(microseconds=1 if n % 4 == 1 and n % 2 else 0)
    created = BASE_TIME + timedelta(minutes=n % 5, microseconds=n % 2)
    return Task(
        title=f"Task {n} ({kind})",
        priority=PRIORITIES[(n * 3) % len(PRIORITIES)],
        status=STATUSES[n % len(STATUSES)],
        project_slug=project,
        created_by=creator,
        assigned_to=assignee,
        due_date=due,
        created_at=created,
        updated_at=created + timedelta(hours=1, seconds=(n * 7) % 4),
    )


@pytest.fixture
def people(db: Engine) -> None:
    arrange_people(db)


def arrange_people(db: Engine) -> None:
    """alice and bob in "demo" (alice owns it), carol alone in "secret"."""
    insert_rows(db, *(Worker(id=name, type=WorkerType.human, name=name.title()) for name in ("alice", "bob", "carol")))
    insert_rows(db, Project(slug="demo", name="Demo", created_by="alice"))
    insert_rows(db, Project(slug="secret", name="Secret", created_by="carol"))
    insert_rows(
        db,
        ProjectMember(project_slug="demo", worker_id="alice", role=ProjectRole.owner),
        ProjectMember(project_slug="demo", worker_id="bob", role=ProjectRole.member),
        ProjectMember(project_slug="secret", worker_id="carol", role=ProjectRole.owner),
    )


@pytest.fixture
def board(db: Engine) -> list[Task]:
    """Sixty tasks: in "demo", in "secret", and without a project for each user, interleaved by id."""
    arrange_people(db)
    tasks = [board_task(n, KINDS[(n * 7) % len(KINDS)]) for n in range(60)]
    insert_rows(db, *tasks)
    return stored_tasks(db)


def visible(tasks: list[Task], user: str, **where: Any) -> list[Task]:
    return [
        task
        for task in tasks
        if may_see(user, task) and all(getattr(task, name) == value for name, value in where.items())
    ]


# ---------------------------------------------------------------- the arrangement itself


def test_the_board_has_ties_in_every_sort_key_and_tasks_without_due_dates(board: list[Task]) -> None:
    mine = visible(board, "alice")
    assert len(mine) > 20
    for sort in ("created_at", "updated_at", "priority", "due_date"):
        values = [sort_value(sort, task) for task in mine if sort_value(sort, task) is not None]
        assert len(set(values)) < len(values), f"no ties in {sort}"
    assert any(task.due_date is None for task in mine)
    assert any(not may_see("alice", task) for task in board)


# ---------------------------------------------------------------- walking the Link header


@pytest.mark.parametrize("limit", [1, 4])
@pytest.mark.parametrize("sort", ALL_SORTS)
def test_following_next_links_visits_every_visible_task_once_in_the_unpaged_order(
    client: TestClient, auth: AuthHeaders, board: list[Task], sort: str, limit: int
) -> None:
    headers = auth("alice")
    unpaged = client.get("/api/tasks", params={"sort": sort, "limit": 100}, headers=headers)
    assert next_link(unpaged) is None

    pages = walk(client, "/api/tasks", headers, {"sort": sort, "limit": limit})

    assert pages.ids == ids(unpaged)
    assert pages.ids == expected_order(visible(board, "alice"), sort)
    assert len(set(pages.ids)) == len(pages.ids)
    assert_pages_full_but_the_last(pages, limit)
    assert_links_keep_the_query(pages, {"sort": sort, "limit": limit})


def test_the_default_sort_walks_like_created_at(client: TestClient, auth: AuthHeaders, board: list[Task]) -> None:
    pages = walk(client, "/api/tasks", auth("alice"), {"limit": 7})

    assert pages.ids == expected_order(visible(board, "alice"), "created_at")
    assert_links_keep_the_query(pages, {"limit": 7})


@pytest.mark.usefixtures("people")
@pytest.mark.parametrize("sort", ALL_SORTS)
def test_a_walk_of_more_than_one_unpaged_list_holds_every_task_in_order(
    client: TestClient, auth: AuthHeaders, db: Engine, sort: str
) -> None:
    """250 tasks: more than the 100 a single page may hold, so only the walk can see them all."""
    insert_rows(db, *(board_task(n, "demo") for n in range(250)))

    pages = walk(client, "/api/tasks", auth("bob"), {"sort": sort, "limit": 100})

    assert [len(page.json()) for page in pages.pages] == [100, 100, 50]
    assert pages.ids == expected_order(stored_tasks(db), sort)


FILTERS: list[dict[str, Any]] = [
    {"project": "demo"},
    {"status": "pending"},
    {"priority": "high"},
    {"project": "demo", "status": "blocked"},
    {"assigned_to": "bob"},
    {"q": "demo"},
    {"q": "OWN", "priority": "high"},
    {"ready": "true"},
]


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize("sort", ALL_SORTS)
@pytest.mark.parametrize("filters", FILTERS, ids=lambda filters: "&".join(f"{k}={v}" for k, v in filters.items()))
def test_filters_are_kept_on_every_page_of_the_walk(
    client: TestClient, auth: AuthHeaders, filters: dict[str, Any], sort: str
) -> None:
    headers = auth("alice")
    params = {**filters, "sort": sort}
    unpaged = client.get("/api/tasks", params={**params, "limit": 100}, headers=headers)
    assert len(unpaged.json()) >= 3, "the filter should match a few pages' worth"

    pages = walk(client, "/api/tasks", headers, {**params, "limit": 2})

    assert pages.ids == ids(unpaged)
    assert_pages_full_but_the_last(pages, 2)
    assert_links_keep_the_query(pages, {**params, "limit": 2})
    total = unpaged.headers["X-Total-Count"]
    assert [page.headers["X-Total-Count"] for page in pages.pages] == [total] * len(pages.pages)
    for page in pages.pages:
        for task in page.json():
            for name, value in filters.items():
                if name == "project":
                    assert task["project_slug"] == value, task
                elif name in ("status", "priority", "assigned_to"):
                    assert task[name] == value, task
                elif name == "q":
                    assert value.lower() in task["title"].lower(), task


def test_the_filters_walk_matches_what_the_contract_selects(
    client: TestClient, auth: AuthHeaders, board: list[Task]
) -> None:
    """Checked against the arrangement, not only against the server's own unpaged answer."""
    pages = walk(client, "/api/tasks", auth("alice"), {"project": "demo", "status": "pending", "limit": 1})

    expected = visible(board, "alice", project_slug="demo", status=TaskStatus.pending)
    assert len(expected) >= 2
    assert pages.ids == expected_order(expected, "created_at")


def test_a_next_link_from_an_offset_page_drops_the_offset_and_continues_after_it(
    client: TestClient, auth: AuthHeaders, board: list[Task]
) -> None:
    headers = auth("alice")
    everything = expected_order(visible(board, "alice"), "-priority")

    pages = walk(client, "/api/tasks", headers, {"sort": "-priority", "limit": 5, "offset": 3})

    assert pages.ids == everything[3:]
    assert_links_keep_the_query(pages, {"sort": "-priority", "limit": 5})


def test_an_explicit_offset_of_zero_may_come_with_after(
    client: TestClient, auth: AuthHeaders, board: list[Task]
) -> None:
    headers = auth("alice")
    first = client.get("/api/tasks", params={"limit": 5}, headers=headers)

    second = client.get("/api/tasks", params={"limit": 5, "offset": 0, "after": cursor_of(first)}, headers=headers)

    assert ids(second) == expected_order(visible(board, "alice"), "created_at")[5:10]


@pytest.mark.usefixtures("people")
@pytest.mark.parametrize("sort", ["updated_at", "-updated_at"])
def test_a_task_whose_lease_ran_out_is_sorted_by_the_updated_at_it_is_shown_with(
    client: TestClient, auth: AuthHeaders, db: Engine, sort: str
) -> None:
    """A lapsed lease is handed back by the system, not edited by a worker: the task keeps its updated_at and its place."""
    insert_rows(
        db,
        Task(
            title="Lapsed",
            status=TaskStatus.in_progress,
            assigned_to="bob",
            project_slug="demo",
            created_by="alice",
            updated_at=BASE_TIME,
            lease_expires_at=BASE_TIME + timedelta(hours=2),
            lease_seconds=60,
        ),
        Task(
            title="Touched at one", project_slug="demo", created_by="alice", updated_at=BASE_TIME + timedelta(hours=1)
        ),
        Task(
            title="Touched at three", project_slug="demo", created_by="alice", updated_at=BASE_TIME + timedelta(hours=3)
        ),
    )

    pages = walk(client, "/api/tasks", auth("alice"), {"sort": sort, "limit": 1})

    shown = [(page.json()[0]["title"], page.json()[0]["updated_at"]) for page in pages.pages]
    assert dict(shown)["Lapsed"] == "2026-01-01T00:00:00Z"
    times = [updated_at for _, updated_at in shown]
    assert times == sorted(times, reverse=sort.startswith("-")), f"not in {sort} order as shown: {shown}"


@pytest.mark.usefixtures("people")
def test_a_query_made_to_break_the_link_header_is_kept_encoded_inside_it(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    nasty = '>; rel="prev", <http://evil.example/?x=1&y=2#'
    insert_rows(db, *(Task(title=f"{n} {nasty} é ✓", project_slug="demo", created_by="alice") for n in range(5)))
    params = {"q": nasty + " é ✓", "limit": 2}

    pages = walk(client, "/api/tasks", auth("alice"), params)

    assert len(pages.ids) == 5
    assert len(pages.pages) == 3
    for page in pages.pages[:-1]:
        link = next_link(page)  # one <…>; rel="next" and nothing else
        assert link is not None
        assert urlsplit(link).netloc == "testserver"
        assert link_params(link)["q"] == [nasty + " é ✓"]


# ---------------------------------------------------------------- where the walk ends


@pytest.mark.usefixtures("people")
def test_the_last_page_has_no_link_and_neither_has_an_exactly_full_one(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    headers = auth("bob")
    insert_rows(db, *(board_task(n, "bob-own") for n in range(6)))
    order = expected_order(stored_tasks(db), "due_date")

    exactly_full = walk(client, "/api/tasks", headers, {"sort": "due_date", "limit": 3})
    assert [ids(page) for page in exactly_full.pages] == [order[:3], order[3:]]
    assert next_link(exactly_full.pages[0]) is not None
    assert next_link(exactly_full.pages[1]) is None

    one_left = walk(client, "/api/tasks", headers, {"sort": "due_date", "limit": 5})
    assert [ids(page) for page in one_left.pages] == [order[:5], order[5:]]

    all_in_one = client.get("/api/tasks", params={"sort": "due_date", "limit": 6}, headers=headers)
    assert ids(all_in_one) == order
    assert "Link" not in all_in_one.headers


@pytest.mark.usefixtures("board")
def test_an_empty_list_has_no_link(client: TestClient, auth: AuthHeaders) -> None:
    response = client.get("/api/tasks", params={"status": "completed", "q": "no such title"}, headers=auth("alice"))

    assert ids(response) == []
    assert response.headers["X-Total-Count"] == "0"
    assert "Link" not in response.headers


@pytest.mark.parametrize("sort", ALL_SORTS)
def test_a_cursor_at_the_last_task_answers_an_empty_page_without_a_link(
    client: TestClient, auth: AuthHeaders, board: list[Task], sort: str
) -> None:
    mine = visible(board, "alice")
    last = next(task for task in mine if task.id == expected_order(mine, sort)[-1])
    value = sort_value(sort, last)
    cursor = forge([sort, value.isoformat() if isinstance(value, datetime) else value, last.id])

    response = client.get("/api/tasks", params={"sort": sort, "after": cursor}, headers=auth("alice"))

    assert ids(response) == []
    assert "Link" not in response.headers
    assert response.headers["X-Total-Count"] == str(len(mine))


# ---------------------------------------------------------------- other people's rows


@pytest.mark.parametrize("user", ["alice", "bob", "carol", ADMIN])
@pytest.mark.parametrize("sort", ["created_at", "-priority", "due_date", "-due_date"])
def test_a_walk_and_its_count_hold_exactly_the_tasks_the_caller_may_see(
    client: TestClient, auth: AuthHeaders, board: list[Task], user: str, sort: str
) -> None:
    mine = visible(board, user)
    assert 0 < len(mine)

    pages = walk(client, "/api/tasks", headers_for(auth, user), {"sort": sort, "limit": 3})

    assert pages.ids == expected_order(mine, sort)
    assert {page.headers["X-Total-Count"] for page in pages.pages} == {str(len(mine))}
    assert all("X-Total-Count-Exact" not in page.headers for page in pages.pages)


@pytest.mark.parametrize("sort", ALL_SORTS)
def test_a_cursor_never_opens_a_project_the_caller_is_not_in(
    client: TestClient, auth: AuthHeaders, board: list[Task], sort: str
) -> None:
    secret = visible(board, "carol", project_slug="secret")
    carols_page = client.get(
        "/api/tasks", params={"project": "secret", "sort": sort, "limit": 2}, headers=auth("carol")
    )
    carols_link = next_link(carols_page)
    assert carols_link is not None

    # alice follows carol's own link: the same project filter, carol's cursor.
    stolen = client.get(carols_link, headers=auth("alice"))
    assert ids(stolen) == []
    assert stolen.headers["X-Total-Count"] == "0"
    assert "Link" not in stolen.headers

    # alice forges a cursor just ahead of each of carol's tasks, with and without the project filter.
    descending = sort.startswith("-")
    for task in secret:
        assert task.id is not None
        value = sort_value(sort, task)
        value = value.isoformat() if isinstance(value, datetime) else value
        cursor = forge([sort, value, task.id + 1 if descending else task.id - 1])
        for params in ({"sort": sort, "after": cursor}, {"sort": sort, "after": cursor, "project": "secret"}):
            response = client.get("/api/tasks", params={**params, "limit": 100}, headers=auth("alice"))
            assert response.status_code == 200, response.text
            assert not {row["project_slug"] for row in response.json()} & {"secret"}, params
            assert task.id not in ids(response)
            assert response.headers["X-Total-Count"] == str(0 if "project" in params else len(visible(board, "alice")))


def test_loose_tasks_of_other_users_stay_out_of_every_page_whatever_the_cursor(
    client: TestClient, auth: AuthHeaders, board: list[Task]
) -> None:
    """bob walks from a cursor placed before everything: only his and demo's tasks come back."""
    earliest = min(task.created_at for task in board) - timedelta(days=1)
    cursor = forge(["created_at", earliest.isoformat(), 0])

    pages = walk(client, "/api/tasks", auth("bob"), {"after": cursor, "limit": 10})

    assert pages.ids == expected_order(visible(board, "bob"), "created_at")
    hidden = {task.id for task in board if not may_see("bob", task)}
    assert hidden
    assert not set(pages.ids) & hidden


# ---------------------------------------------------------------- forged and tampered cursors

TS = "2026-01-01T00:00:00+00:00"
NESTED = "[" * 180 + "]" * 180

MALFORMED: list[tuple[str, str, str]] = [
    # (what, sort, cursor)
    ("characters outside base64url", "created_at", "!!!!"),
    ("base64 padding", "created_at", "YQ=="),
    ("standard base64 plus and slash", "created_at", "a+b/"),
    ("the empty string", "created_at", ""),
    ("a length no base64 can have", "created_at", "abcde"),
    ("base64 of plain text", "created_at", b64(b"hello, world")),
    ("base64 of invalid UTF-8", "created_at", b64(b"\xff\xfe\xfd\xfc\x00\x01")),
    ("base64 of a JSON object", "created_at", forge({"sort": "created_at", "value": TS, "id": 1})),
    ("base64 of a JSON object with three keys", "created_at", forge({"a": 1, "b": 2, "c": 3})),
    ("base64 of a JSON number", "created_at", forge(7)),
    ("base64 of JSON null", "created_at", forge(None)),
    ("base64 of a three-letter JSON string", "created_at", forge("abc")),
    ("two elements", "created_at", forge(["created_at", TS])),
    ("four elements", "created_at", forge(["created_at", TS, 1, 2])),
    ("deeply nested lists", "created_at", forge(json.loads(NESTED))),
    ("the id as a string", "created_at", forge(["created_at", TS, "7"])),
    ("the id as a float", "created_at", forge(["created_at", TS, 1.5])),
    ("the id as true", "created_at", forge(["created_at", TS, True])),
    ("the id as null", "created_at", forge(["created_at", TS, None])),
    ("the id as NaN", "created_at", b64(b'["created_at","2026-01-01T00:00:00+00:00",NaN]')),
    ("the id as Infinity", "created_at", b64(b'["created_at","2026-01-01T00:00:00+00:00",1e999]')),
    ("the id as a list", "created_at", forge(["created_at", TS, [1]])),
    ("a time as a number", "created_at", forge(["created_at", 1767225600, 1])),
    ("a time as a word", "created_at", forge(["created_at", "yesterday", 1])),
    ("a time as a list", "created_at", forge(["created_at", ["2026"], 1])),
    ("an offset past a day", "updated_at", forge(["updated_at", "2026-01-01T00:00:00+25:00", 1])),
    ("a missing creation time", "created_at", forge(["created_at", None, 1])),
    ("a missing update time", "-updated_at", forge(["-updated_at", None, 1])),
    ("a rank as a word", "priority", forge(["priority", "high", 1])),
    ("a rank as a float", "priority", forge(["priority", 2.0, 1])),
    ("a rank as true", "-priority", forge(["-priority", True, 1])),
    ("a rank as null", "priority", forge(["priority", None, 1])),
    ("a rank as a time", "priority", forge(["priority", TS, 1])),
    ("a due date as a number", "due_date", forge(["due_date", 3, 1])),
    ("an unknown sort", "created_at", forge(["bogus", TS, 1])),
    ("a sort that is not a string", "created_at", forge([["created_at"], TS, 1])),
    ("a sort that is null", "created_at", forge([None, TS, 1])),
    ("the other direction", "-created_at", forge(["created_at", TS, 1])),
    ("the other direction, with no due date", "-due_date", forge(["due_date", None, 1])),
    ("another key with the same type", "due_date", forge(["updated_at", TS, 1])),
    ("another key of another type", "created_at", forge(["priority", 3, 1])),
    ("a time for priority", "priority", forge(["created_at", TS, 1])),
    ("just over the length limit", "created_at", "A" * 501),
    ("a huge one", "created_at", "A" * 5_000),
    ("a huge one that is valid base64 of JSON", "created_at", forge(["created_at", TS, 1, "x" * 3_000])),
    # Times that exist only in the cursor's own offset: once in UTC they are outside what a datetime can hold.
    ("a time before year 1 once in UTC", "created_at", forge(["created_at", "0001-01-01T00:00:00+05:00", 1])),
    ("a time after year 9999 once in UTC", "-due_date", forge(["-due_date", "9999-12-31T23:00:00-05:00", 1])),
]


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(("sort", "cursor"), [pytest.param(sort, cursor, id=what) for what, sort, cursor in MALFORMED])
def test_a_malformed_or_tampered_cursor_is_a_client_error_with_the_envelope(
    client: TestClient, auth: AuthHeaders, sort: str, cursor: str
) -> None:
    response = client.get("/api/tasks", params={"sort": sort, "after": cursor}, headers=auth("alice"))

    assert_client_error(response)
    assert "Link" not in response.headers


# Places no task can have: numbers no 64-bit column holds. Refusing them or answering an empty page are both fine.
OUT_OF_RANGE: list[tuple[str, str, str]] = [
    ("an id past 64 bits", "created_at", forge(["created_at", TS, 2**64])),
    ("a negative id past 64 bits", "-created_at", forge(["-created_at", TS, -(2**64)])),
    ("an id of 10**40", "-updated_at", forge(["-updated_at", TS, 10**40])),
    ("an undated place with an id past 64 bits", "due_date", forge(["due_date", None, 2**64])),
    ("a rank past 64 bits", "priority", forge(["priority", 2**64, 1])),
    ("a negative rank past 64 bits", "-priority", forge(["-priority", -(2**64), 1])),
]


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(
    ("sort", "cursor"), [pytest.param(sort, cursor, id=what) for what, sort, cursor in OUT_OF_RANGE]
)
def test_a_cursor_holding_numbers_no_column_can_hold_is_never_a_500(
    client: TestClient, auth: AuthHeaders, sort: str, cursor: str
) -> None:
    response = client.get("/api/tasks", params={"sort": sort, "after": cursor}, headers=auth("alice"))

    assert response.status_code < 500, f"{response.status_code}: {response.text}"
    if response.status_code != 200:
        assert_client_error(response)


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(
    "cursor",
    [b64(b"not json at all"), forge(["created_at", TS, "1"]), forge(["created_at", None, 1]), "abcde"],
    ids=["not json", "string id", "null time", "bad base64"],
)
def test_a_cursor_that_passes_the_pattern_but_not_decoding_is_400_bad_request(
    client: TestClient, auth: AuthHeaders, cursor: str
) -> None:
    response = client.get("/api/tasks", params={"after": cursor}, headers=auth("alice"))

    assert_error(response, 400, "bad_request")


@pytest.mark.usefixtures("board")
@pytest.mark.parametrize(
    ("made_for", "used_with"),
    [("created_at", "-created_at"), ("priority", "-priority"), ("due_date", "updated_at"), ("-updated_at", "priority")],
)
def test_a_real_cursor_for_another_sort_is_400(
    client: TestClient, auth: AuthHeaders, made_for: str, used_with: str
) -> None:
    headers = auth("alice")
    cursor = cursor_of(client.get("/api/tasks", params={"sort": made_for, "limit": 3}, headers=headers))

    response = client.get("/api/tasks", params={"sort": used_with, "after": cursor}, headers=headers)

    assert_error(response, 400, "bad_request")


@pytest.mark.usefixtures("board")
def test_a_cursor_for_the_other_direction_says_which_sort_it_is_for(client: TestClient, auth: AuthHeaders) -> None:
    headers = auth("alice")
    link = next_link(client.get("/api/tasks", params={"sort": "-due_date", "limit": 3}, headers=headers))
    assert link is not None

    response = client.get(link.replace("sort=-due_date", "sort=due_date"), headers=headers)

    assert_error(response, 400, "bad_request")
    assert "-due_date" in response.json()["error"]


@pytest.mark.usefixtures("board")
def test_a_truncated_real_cursor_is_400(client: TestClient, auth: AuthHeaders) -> None:
    headers = auth("alice")
    cursor = cursor_of(client.get("/api/tasks", params={"limit": 3}, headers=headers))

    for cut in (cursor[: len(cursor) // 2], cursor[:-1], cursor[:-2], cursor[1:]):
        response = client.get("/api/tasks", params={"after": cut}, headers=headers)
        assert_error(response, 400, "bad_request")


# ---------------------------------------------------------------- offset: capped, and never with after


@pytest.mark.parametrize("url", ["/api/tasks", "/api/audit", "/api/tasks/{task}/audit"])
def test_offset_and_after_together_is_422(client: TestClient, auth: AuthHeaders, board: list[Task], url: str) -> None:
    task = visible(board, "alice")[0]
    headers = auth("alice")
    after = forge(["created_at", TS, 1]) if url == "/api/tasks" else "1"

    response = client.get(url.format(task=task.id), params={"offset": 1, "after": after}, headers=headers)

    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("url", ["/api/tasks", "/api/audit", "/api/tasks/{task}/audit"])
def test_offset_is_capped_at_10000(client: TestClient, auth: AuthHeaders, board: list[Task], url: str) -> None:
    url = url.format(task=visible(board, "alice")[0].id)
    headers = auth("alice")
    assert MAX_OFFSET == 10_000

    at_the_cap = client.get(url, params={"offset": MAX_OFFSET}, headers=headers)
    assert at_the_cap.status_code == 200, at_the_cap.text
    assert at_the_cap.json() == []

    for offset in (MAX_OFFSET + 1, 10**12, 10**40, -1):
        assert_error(client.get(url, params={"offset": offset}, headers=headers), 422, "validation_error")


# ---------------------------------------------------------------- the audit log


def audit_row(n: int, *, project: str | None, task_id: int | None = None, actor: str = "bob") -> AuditLog:
    return AuditLog(
        task_id=task_id,
        project_slug=project,
        actor_id=actor,
        actor_type=WorkerType.human,
        action="task.updated" if n % 3 else "task.created",
        context={"n": n},
        # Timestamps out of id order: the log is paged by id, not by time.
        timestamp=BASE_TIME + timedelta(minutes=(n * 7) % 11),
    )


@pytest.fixture
def audit_log(db: Engine, board: list[Task]) -> dict[str, Any]:
    """Audit rows for "demo" (alice sees them), "secret" (she does not) and one demo task's history, interleaved."""
    demo_task = visible(board, "alice", project_slug="demo")[0]
    secret_task = visible(board, "carol", project_slug="secret")[0]
    rows: list[AuditLog] = []
    for n in range(40):
        kind = n % 4
        if kind == 0:
            rows.append(audit_row(n, project="demo", task_id=demo_task.id))
        elif kind == 1:
            rows.append(audit_row(n, project="secret", task_id=secret_task.id, actor="carol"))
        elif kind == 2:
            rows.append(audit_row(n, project="demo", actor="alice" if n % 16 == 2 else "bob"))
        else:
            rows.append(audit_row(n, project="secret", actor="carol"))
    insert_rows(db, *rows)
    with Session(db) as session:
        stored = list(session.exec(select(AuditLog).order_by(col(AuditLog.id))).all())
        by_project = {slug: [row.id for row in stored if row.project_slug == slug] for slug in ("demo", "secret")}
        history = [row.id for row in stored if row.task_id == demo_task.id]
        secret_history = [row.id for row in stored if row.task_id == secret_task.id]
        by_alice = [row.id for row in stored if row.actor_id == "alice"]
    return {
        "demo": by_project["demo"],
        "secret": by_project["secret"],
        "task": demo_task.id,
        "history": history,
        "secret_task": secret_task.id,
        "secret_history": secret_history,
        "by_alice": by_alice,
    }


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_the_audit_log_walks_newest_first_along_next_links(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any], limit: int
) -> None:
    headers = auth("alice")
    newest_first = sorted(audit_log["demo"], reverse=True)
    unpaged = client.get("/api/audit", params={"limit": 100}, headers=headers)
    assert ids(unpaged) == newest_first

    pages = walk(client, "/api/audit", headers, {"limit": limit})

    assert pages.ids == newest_first
    assert_pages_full_but_the_last(pages, limit)
    assert_links_keep_the_query(pages, {"limit": limit})
    assert {page.headers["X-Total-Count"] for page in pages.pages} == {str(len(newest_first))}
    # The cursor is the id of the last row of the page.
    for page in pages.pages[:-1]:
        assert link_params(next_link(page) or "")["after"] == [str(ids(page)[-1])]


@pytest.mark.usefixtures("audit_log")
def test_the_audit_log_keeps_its_filters_across_pages(client: TestClient, auth: AuthHeaders) -> None:
    headers = auth("alice")
    params: dict[str, Any] = {"project": "demo", "action": "task.updated", "since": "2026-01-01T00:02:00Z", "limit": 2}
    unpaged = client.get("/api/audit", params={**params, "limit": 100}, headers=headers)
    assert len(unpaged.json()) > 2

    pages = walk(client, "/api/audit", headers, params)

    assert pages.ids == ids(unpaged)
    assert_links_keep_the_query(pages, params)
    for page in pages.pages:
        for row in page.json():
            assert row["project_slug"] == "demo"
            assert row["action"] == "task.updated"
            assert row["timestamp"] >= "2026-01-01T00:02:00"


def test_audit_after_is_the_id_of_the_last_row_you_have_and_gives_older_rows(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any]
) -> None:
    headers = auth("alice")
    demo = sorted(audit_log["demo"], reverse=True)
    # Any id works as a place, even one of a row alice may not see.
    for after in (demo[3], audit_log["secret"][5], max(audit_log["secret"]) + 1000):
        response = client.get("/api/audit", params={"after": after, "limit": 100}, headers=headers)
        assert ids(response) == [row_id for row_id in demo if row_id < after]
        assert response.headers["X-Total-Count"] == str(len(demo))
        assert "Link" not in response.headers


def test_the_audit_log_of_a_project_i_am_not_in_stays_empty_whatever_the_cursor(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any]
) -> None:
    headers = auth("alice")
    carols = walk(client, "/api/audit", auth("carol"), {"project": "secret", "limit": 3})
    assert carols.ids == sorted(audit_log["secret"], reverse=True)

    for page in carols.pages[:-1]:
        link = next_link(page)
        assert link is not None
        stolen = client.get(link, headers=headers)
        assert ids(stolen) == []
        assert stolen.headers["X-Total-Count"] == "0"
        assert "Link" not in stolen.headers


def test_the_last_audit_page_has_no_link_even_when_exactly_full(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any]
) -> None:
    headers = auth("alice")
    count = len(audit_log["demo"])
    assert count % 2 == 0

    pages = walk(client, "/api/audit", headers, {"limit": count // 2})
    assert [len(page.json()) for page in pages.pages] == [count // 2, count // 2]
    assert next_link(pages.pages[-1]) is None

    whole = client.get("/api/audit", params={"limit": count}, headers=headers)
    assert len(whole.json()) == count
    assert "Link" not in whole.headers


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_a_tasks_history_walks_oldest_first_along_next_links(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any], limit: int
) -> None:
    headers = auth("alice")
    url = f"/api/tasks/{audit_log['task']}/audit"
    oldest_first = sorted(audit_log["history"])
    assert len(oldest_first) == 10

    pages = walk(client, url, headers, {"limit": limit})

    assert pages.ids == oldest_first
    assert pages.ids == ids(client.get(url, params={"limit": 100}, headers=headers))
    assert_pages_full_but_the_last(pages, limit)
    assert_links_keep_the_query(pages, {"limit": limit})
    assert {page.headers["X-Total-Count"] for page in pages.pages} == {"10"}
    if len(oldest_first) % limit == 0:
        assert len(pages.pages[-1].json()) == limit
        assert next_link(pages.pages[-1]) is None


def test_a_tasks_history_after_gives_newer_rows(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any]
) -> None:
    headers = auth("alice")
    url = f"/api/tasks/{audit_log['task']}/audit"
    history = sorted(audit_log["history"])

    for after in (history[0], history[4], history[-1], 1):
        response = client.get(url, params={"after": after, "limit": 100}, headers=headers)
        assert ids(response) == [row_id for row_id in history if row_id > after]
        assert response.headers["X-Total-Count"] == str(len(history))
        assert "Link" not in response.headers


def test_a_hidden_tasks_history_is_404_whatever_the_cursor(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any]
) -> None:
    url = f"/api/tasks/{audit_log['secret_task']}/audit"
    carols = client.get(url, params={"limit": 2}, headers=auth("carol"))
    link = next_link(carols)
    assert link is not None

    assert_error(client.get(link, headers=auth("alice")), 404, "not_found")
    for after in (1, audit_log["secret_history"][0]):
        assert_error(client.get(url, params={"after": after}, headers=auth("alice")), 404, "not_found")


@pytest.mark.usefixtures("audit_log")
@pytest.mark.parametrize("url", ["/api/audit", "/api/tasks/{task}/audit"])
@pytest.mark.parametrize("after", ["0", "-1", "abc", "1.5", "", "2147483648", str(10**40), "1e3", "0x10"])
def test_an_audit_after_that_is_not_an_id_is_422(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any], url: str, after: str
) -> None:
    response = client.get(url.format(task=audit_log["task"]), params={"after": after}, headers=auth("alice"))

    assert_error(response, 422, "validation_error")


# ---------------------------------------------------------------- the count cap


def test_an_exact_count_sends_no_exactness_header(client: TestClient, auth: AuthHeaders, board: list[Task]) -> None:
    for url in ("/api/tasks", "/api/audit", "/api/projects", "/api/workers"):
        response = client.get(url, headers=auth("alice"))
        assert response.status_code == 200, response.text
        assert "X-Total-Count-Exact" not in response.headers, url
    response = client.get("/api/tasks", headers=auth("alice"))
    assert response.headers["X-Total-Count"] == str(len(visible(board, "alice")))


@pytest.mark.usefixtures("people")
def test_past_the_cap_the_count_says_the_cap_and_that_it_is_not_exact(
    client: TestClient, auth: AuthHeaders, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "COUNT_CAP", 3)
    headers = auth("alice")

    def count(**params: Any) -> tuple[str, str | None]:
        response = client.get("/api/tasks", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return response.headers["X-Total-Count"], response.headers.get("X-Total-Count-Exact")

    assert count() == ("0", None)
    insert_rows(db, *(board_task(n, "alice-own") for n in range(2)))
    assert count() == ("2", None)
    insert_rows(db, board_task(2, "alice-own"))
    assert count() == ("3", None)  # exactly the cap is still exact
    insert_rows(db, board_task(3, "alice-own"))
    assert count() == ("3", "false")  # one past it is not
    insert_rows(db, *(board_task(n, "alice-own") for n in range(4, 9)))
    assert count() == ("3", "false")
    assert count(limit=1) == ("3", "false")
    assert count(q="Task 8") == ("1", None)  # a filter narrowed below the cap is exact again


@pytest.mark.usefixtures("people")
def test_other_users_rows_do_not_count_toward_the_cap(
    client: TestClient, auth: AuthHeaders, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "COUNT_CAP", 3)
    insert_rows(db, *(board_task(n, "alice-own") for n in range(3)))
    insert_rows(db, *(board_task(n, kind) for n in range(3, 30) for kind in ("bob-own", "secret", "carol-own")))

    response = client.get("/api/tasks", headers=auth("alice"))

    assert len(ids(response)) == 3
    assert response.headers["X-Total-Count"] == "3"
    assert "X-Total-Count-Exact" not in response.headers


def test_a_walk_goes_on_past_the_cap_and_every_page_says_the_count_is_not_exact(
    client: TestClient, auth: AuthHeaders, board: list[Task], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "COUNT_CAP", 3)

    pages = walk(client, "/api/tasks", auth("alice"), {"sort": "-due_date", "limit": 4})

    assert pages.ids == expected_order(visible(board, "alice"), "-due_date")
    assert len(pages.ids) > 3
    for page in pages.pages:
        assert page.headers["X-Total-Count"] == "3"
        assert page.headers["X-Total-Count-Exact"] == "false"


def test_the_audit_endpoints_cap_their_counts_too(
    client: TestClient, auth: AuthHeaders, audit_log: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "COUNT_CAP", 3)
    headers = auth("alice")
    history_url = f"/api/tasks/{audit_log['task']}/audit"

    for url, params in (("/api/audit", {}), (history_url, {}), ("/api/audit", {"project": "demo"})):
        pages = walk(client, url, headers, {**params, "limit": 4})
        assert len(pages.ids) > 3
        for page in pages.pages:
            assert page.headers["X-Total-Count"] == "3", url
            assert page.headers["X-Total-Count-Exact"] == "false", url

    exact = client.get("/api/audit", params={"actor_id": "alice"}, headers=headers)
    assert len(audit_log["by_alice"]) <= 3
    assert exact.headers["X-Total-Count"] == str(len(audit_log["by_alice"]))
    assert "X-Total-Count-Exact" not in exact.headers
    # carol's rows never count toward alice's cap: her whole view is the demo rows.
    monkeypatch.setattr(services, "COUNT_CAP", len(audit_log["demo"]))
    mine = client.get("/api/audit", headers=headers)
    assert mine.headers["X-Total-Count"] == str(len(audit_log["demo"]))
    assert "X-Total-Count-Exact" not in mine.headers


@pytest.mark.usefixtures("people")
def test_the_real_cap_counts_exactly_to_1000_and_then_stops(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    assert services.COUNT_CAP == 1_000
    rows: list[dict[str, Any]] = [
        {
            "project_slug": "demo",
            "actor_id": "bob",
            "actor_type": "human",
            "action": "task.created" if n < 1_000 else "task.updated",
            "context": {},
            "timestamp": BASE_TIME,
        }
        for n in range(10_001)
    ]
    with db.begin() as connection:
        connection.execute(insert(AuditLog), rows)
    headers = auth("alice")

    over = client.get("/api/audit", params={"limit": 1}, headers=headers)
    assert over.status_code == 200, over.text
    assert over.headers["X-Total-Count"] == "1000"
    assert over.headers["X-Total-Count-Exact"] == "false"
    # The deepest offset skips 10,000 rows: its page is the oldest row, and nothing follows.
    deepest = client.get("/api/audit", params={"limit": 1, "offset": MAX_OFFSET}, headers=headers)
    assert ids(deepest) == [1]
    assert next_link(deepest) is None
    assert deepest.headers["X-Total-Count-Exact"] == "false"

    # Filtered down to exactly 1,000 rows, the count is exact.
    exact = client.get("/api/audit", params={"limit": 1, "action": "task.created"}, headers=headers)
    assert exact.status_code == 200, exact.text
    assert exact.headers["X-Total-Count"] == "1000"
    assert "X-Total-Count-Exact" not in exact.headers


# ---------------------------------------------------------------- writes between two pages


def newcomers(round_: int, existing: list[Task]) -> list[Task]:
    """New tasks whose keys tie with existing ones, fall before the first and after the last, or have no due date."""
    template = existing[round_ % len(existing)]
    tie = Task(
        title=f"New tie {round_}",
        priority=template.priority,
        status=TaskStatus.pending,
        project_slug="demo",
        created_by="alice",
        due_date=template.due_date,
        created_at=template.created_at,
        updated_at=template.updated_at,
    )
    earliest = Task(
        title=f"New earliest {round_}",
        priority=TaskPriority.low,
        project_slug="demo",
        created_by="alice",
        due_date=BASE_TIME - timedelta(days=30),
        created_at=BASE_TIME - timedelta(days=30),
        updated_at=BASE_TIME - timedelta(days=30),
    )
    latest = Task(
        title=f"New latest {round_}",
        priority=TaskPriority.critical,
        project_slug="demo",
        created_by="alice",
        due_date=None,
        created_at=BASE_TIME + timedelta(days=30),
        updated_at=BASE_TIME + timedelta(days=30),
    )
    return [tie, earliest, latest]


@pytest.mark.parametrize("sort", ALL_SORTS)
def test_tasks_created_between_pages_make_the_walk_neither_repeat_nor_skip_a_task(
    client: TestClient, auth: AuthHeaders, db: Engine, board: list[Task], sort: str
) -> None:
    headers = auth("alice")
    at_the_start = expected_order(visible(board, "alice"), sort)
    limit = 4

    # The order of what exists when each page after the first is asked for.
    orders: list[list[int]] = []

    def create_some(_page: Response) -> None:
        round_ = len(orders)
        insert_rows(db, *newcomers(round_, visible(board, "alice")))
        created = client.post(
            "/api/tasks",
            json={"title": f"Through the API {round_}", "project_slug": "demo", "priority": "high"},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        orders.append(expected_order(visible(stored_tasks(db), "alice"), sort))

    pages = walk(client, "/api/tasks", headers, {"sort": sort, "limit": limit}, between=create_some)

    seen = pages.ids
    assert len(seen) == len(set(seen)), "a task came twice"
    assert [task_id for task_id in seen if task_id in at_the_start] == at_the_start
    # Each later page is exactly the tasks that follow the previous page's last one, in the order of that moment.
    assert len(orders) == len(pages.pages) - 1 > 3
    for previous, page, order in zip(pages.pages[:-1], pages.pages[1:], orders, strict=True):
        start = order.index(ids(previous)[-1]) + 1
        assert ids(page) == order[start : start + limit]
    assert seen[-1] == orders[-1][-1], "the walk stopped before the end"
    assert_pages_full_but_the_last(pages, limit)


def test_a_walk_goes_on_when_the_last_task_of_a_page_is_deleted(
    client: TestClient, auth: AuthHeaders, db: Engine, board: list[Task]
) -> None:
    """The cursor holds the last task's place, not the task: it still works once that task is gone."""
    headers = auth("alice")
    at_the_start = expected_order(visible(board, "alice"), "due_date")
    deleted: list[int] = []

    def delete_the_last_one_seen(page: Response) -> None:
        task_id = ids(page)[-1]
        with db.begin() as connection:
            connection.execute(delete(Task).where(col(Task.id) == task_id))
        deleted.append(task_id)

    pages = walk(client, "/api/tasks", headers, {"sort": "due_date", "limit": 5}, between=delete_the_last_one_seen)

    assert len(deleted) == len(pages.pages) - 1 > 2
    assert pages.ids == at_the_start


# ---------------------------------------------------------------- a browser's view of the headers


@pytest.mark.usefixtures("board")
def test_a_browser_page_can_read_the_link_and_exactness_headers(
    client: TestClient, auth: AuthHeaders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind CORS a script reads only the headers the server exposes: paging past offset 10,000 needs Link."""
    monkeypatch.setattr(services, "COUNT_CAP", 3)
    response = client.get(
        "/api/tasks", params={"limit": 2}, headers={**auth("alice"), "Origin": "http://localhost:3000"}
    )
    assert response.status_code == 200, response.text
    assert "Link" in response.headers
    assert response.headers["X-Total-Count-Exact"] == "false"

    exposed = {name.strip().lower() for name in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert "x-total-count" in exposed
    assert "link" in exposed, f"a browser cannot read the Link header: exposed {sorted(exposed)}"
    assert "x-total-count-exact" in exposed, f"a browser cannot read X-Total-Count-Exact: exposed {sorted(exposed)}"
