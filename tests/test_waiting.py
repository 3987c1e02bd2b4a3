"""Waiting without holding anything: long-poll claims and feed reads, woken across instances.

Each test serves the app over real HTTP with uvicorn. "Two instances" are two apps, each with
its own engine, pool and listener, on one database: on PostgreSQL only the database's NOTIFY
can carry a wake-up from one to the other.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, TypeVar

import anyio.to_thread
import httpx
import pytest
from conftest import AuthHeaders, LiveServer, serving
from sqlalchemy import Engine, text
from support import ON_POSTGRESQL, feed_settled

from config import Settings
from main import create_app
from wakeups import Topic, Wakeups

T = TypeVar("T")
# Long enough that only a wake-up, never the periodic re-check, can answer a waiter in time.
NO_RECHECK = 15.0


def wakeups(server: LiveServer) -> Wakeups:
    found: Wakeups = server.app.state.wakeups
    return found


def on_server_loop(server: LiveServer, make: Callable[[], Any]) -> Any:
    """Run a coroutine on the event loop that serves the app (its thread limiter is that loop's)."""
    loop = wakeups(server).loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)


async def _threads_in_use() -> int:
    return int(anyio.to_thread.current_default_thread_limiter().borrowed_tokens)


def until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def instances(settings: Settings) -> Iterator[Callable[..., LiveServer]]:
    """`instances(**settings)`: start another instance of the app on the test's database."""
    with ExitStack() as stack:

        def start(**changes: Any) -> LiveServer:
            changes.setdefault("wait_recheck_seconds", NO_RECHECK)
            return stack.enter_context(serving(create_app(settings.model_copy(update=changes))))

        yield start


def post(server: LiveServer, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=90) as http:
        return http.post(path, headers=headers, **kwargs)


def claim_as(server: LiveServer, headers: dict[str, str], wait_seconds: int) -> httpx.Response:
    return post(server, "/api/tasks/claim", headers, json={"wait_seconds": wait_seconds})


def in_background(call: Callable[[], T]) -> Callable[[], T]:
    """Start `call` in a thread; what is returned waits for its result."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return lambda: future.result(timeout=120)


async def all_waiting(
    requests: Sequence[asyncio.Future[httpx.Response]], waiting: Callable[[], int], count: int
) -> None:
    """Until `count` requests wait at once; none may have answered yet."""
    deadline = time.monotonic() + 30
    while waiting() < count:
        answered = [request.result() for request in requests if request.done()]
        assert not answered, f"answered before their wait ended: {[(r.status_code, r.text) for r in answered[:3]]}"
        assert time.monotonic() < deadline, f"only {waiting()} of {count} are waiting"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- one instance


def test_a_waiting_claim_takes_a_task_created_meanwhile_before_its_wait_ends(
    instances: Callable[..., LiveServer], auth: AuthHeaders
) -> None:
    server = instances()
    post(server, "/api/tasks/claim", auth("alice"))  # alice's worker row, so that she can assign
    claim = in_background(lambda: post(server, "/api/tasks/claim", auth("bob"), json={"wait_seconds": 40}))
    until(lambda: wakeups(server).waiting(Topic.work) == 1, "the claim to wait")
    started = time.monotonic()
    created = post(server, "/api/tasks", auth("alice"), json={"title": "Fresh work", "assigned_to": "bob"}).json()
    claimed = claim()
    assert claimed.status_code == 200, claimed.text
    assert (claimed.json()["id"], claimed.json()["status"], claimed.json()["assigned_to"]) == (
        created["id"],
        "in_progress",
        "bob",
    )
    assert claimed.headers["ETag"] == f'"{claimed.json()["version"]}"'
    # Woken by the commit, not by a re-check (every NO_RECHECK seconds) or the end of its wait.
    assert time.monotonic() - started < NO_RECHECK


def test_a_claim_that_finds_nothing_answers_204_when_its_wait_ends(
    instances: Callable[..., LiveServer], auth: AuthHeaders
) -> None:
    server = instances()
    response = post(server, "/api/tasks/claim", auth("bob"), json={"wait_seconds": 1})
    assert response.status_code == 204
    assert response.content == b""
    assert wakeups(server).waiting(Topic.work) == 0


def test_a_waiting_claim_only_takes_work_it_may_see_and_that_matches(
    instances: Callable[..., LiveServer], auth: AuthHeaders
) -> None:
    server = instances()
    post(server, "/api/projects", auth("carol"), json={"slug": "secret", "name": "Secret"})
    claim = in_background(
        lambda: post(server, "/api/tasks/claim", auth("bob"), json={"wait_seconds": 40, "labels": ["gpu"]})
    )
    until(lambda: wakeups(server).waiting(Topic.work) == 1, "the claim to wait")
    post(server, "/api/tasks", auth("carol"), json={"title": "Not bob's", "project_slug": "secret", "labels": ["gpu"]})
    post(server, "/api/tasks", auth("bob"), json={"title": "No gpu"})
    wanted = post(server, "/api/tasks", auth("bob"), json={"title": "On a gpu", "labels": ["gpu"]}).json()
    assert claim().json()["id"] == wanted["id"]


def test_waiting_claims_hold_no_thread_and_no_connection_and_others_are_served(
    instances: Callable[..., LiveServer], auth: AuthHeaders
) -> None:
    """With four request threads and connections, thirty waiting claims leave all four free."""
    server = instances(db_pool_size=4, db_max_overflow=0)
    # Admins, who may claim any task: the test is about waiting, not about who sees what.
    claims = [
        in_background(functools.partial(claim_as, server, auth(f"agent-{n}", role="admin"), 20)) for n in range(30)
    ]
    until(lambda: wakeups(server).waiting(Topic.work) == 30, "thirty claims to wait")
    engine: Engine = server.app.state.engine
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert on_server_loop(server, _threads_in_use) == 0
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(10):
            assert http.get("/api/tasks", headers=auth("alice")).status_code == 200
        assert 'taskflow_waiters{topic="work"} 30.0' in http.get("/metrics").text
    # Each claim takes one of the tasks: no task twice, no waiter left behind.
    for number in range(30):
        post(server, "/api/tasks", auth("alice"), json={"title": f"Job {number}"})
    answers = [claim() for claim in claims]
    assert [answer.status_code for answer in answers] == [200] * 30
    assert len({answer.json()["id"] for answer in answers}) == 30


def test_two_hundred_waiters_on_one_worker_while_plain_reads_keep_answering(
    instances: Callable[..., LiveServer], auth: AuthHeaders
) -> None:
    server = instances()
    headers = [auth(f"agent-{n % 20}") for n in range(200)]
    reads: list[int] = []

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            waiting = [
                asyncio.ensure_future(http.post("/api/tasks/claim", headers=header, json={"wait_seconds": 6}))
                for header in headers
            ]
            await all_waiting(waiting, lambda: wakeups(server).waiting(Topic.work), 200)
            for _ in range(20):
                response = await http.get("/api/tasks", headers=headers[0])
                reads.append(response.status_code)
            assert wakeups(server).waiting(Topic.work) == 200  # the reads did not disturb them
            return [(await claim).status_code for claim in waiting]

    statuses = asyncio.run(run())
    assert reads == [200] * 20
    assert statuses == [204] * 200


def test_a_long_poll_of_the_feed_returns_when_an_event_arrives(
    instances: Callable[..., LiveServer], auth: AuthHeaders, db: Engine
) -> None:
    server = instances()
    with httpx.Client(base_url=server.url, timeout=90) as http:
        http.get("/api/tasks", headers=auth("alice"))  # her worker row, and its event
        feed_settled(db)
        start = http.get("/api/events", headers=auth("alice")).json()["next_after"]
        read = in_background(
            lambda: http.get("/api/events", params={"after": start, "wait_seconds": 40}, headers=auth("alice"))
        )
        until(lambda: wakeups(server).waiting(Topic.events) == 1, "the read to wait")
        began = time.monotonic()
        created = http.post("/api/tasks", json={"title": "Something"}, headers=auth("alice")).json()
        page = read().json()
        assert time.monotonic() - began < NO_RECHECK
    assert [(event["type"], event["task_id"]) for event in page["events"]] == [("task.created", created["id"])]


def test_a_long_poll_with_nothing_to_see_answers_an_empty_page_when_its_wait_ends(
    instances: Callable[..., LiveServer], auth: AuthHeaders, db: Engine
) -> None:
    server = instances()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.get("/api/tasks", headers=auth("bob"))
        feed_settled(db)
        start = http.get("/api/events", headers=auth("bob")).json()["next_after"]
        read = in_background(
            lambda: http.get("/api/events", params={"after": start, "wait_seconds": 2}, headers=auth("bob"))
        )
        until(lambda: wakeups(server).waiting(Topic.events) == 1, "the read to wait")
        http.post("/api/tasks", json={"title": "Alice's own"}, headers=auth("alice"))  # not bob's to see
        page = read().json()
    assert page["events"] == []
    assert page["next_after"] >= start


def test_a_waiting_claim_whose_client_has_gone_takes_nothing(
    instances: Callable[..., LiveServer], auth: AuthHeaders
) -> None:
    server = instances()
    with httpx.Client(base_url=server.url, timeout=1) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/api/tasks/claim", json={"wait_seconds": 30}, headers=auth("bob"))  # and hangs up
    until(lambda: wakeups(server).waiting(Topic.work) == 1, "the claim to wait")
    task = post(server, "/api/tasks", auth("bob"), json={"title": "For whoever is there"}).json()
    until(lambda: wakeups(server).waiting(Topic.work) == 0, "the claim to notice its client left")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        after = http.get(f"/api/tasks/{task['id']}", headers=auth("bob")).json()
    assert (after["status"], after["assigned_to"]) == ("pending", None)


def test_a_stopping_server_answers_its_waiters_at_once(instances: Callable[..., LiveServer], auth: AuthHeaders) -> None:
    server = instances()
    claim = in_background(lambda: post(server, "/api/tasks/claim", auth("bob"), json={"wait_seconds": 60}))
    until(lambda: wakeups(server).waiting(Topic.work) == 1, "the claim to wait")
    wakeups(server).drain()  # what SIGTERM does first (main.drain_on_signals)
    assert claim().status_code == 204


# ---------------------------------------------------------------- several instances


two_instances = pytest.mark.skipif(
    not ON_POSTGRESQL, reason="instances wake each other through PostgreSQL's NOTIFY; SQLite serves one process"
)


@two_instances
def test_a_claim_waiting_on_one_instance_takes_a_task_created_through_another(
    instances: Callable[..., LiveServer], auth: AuthHeaders
) -> None:
    waiting_on, created_on = instances(), instances()
    until(lambda: wakeups(waiting_on).listening.is_set(), "the listener to connect")
    claim = in_background(lambda: post(waiting_on, "/api/tasks/claim", auth("bob"), json={"wait_seconds": 40}))
    until(lambda: wakeups(waiting_on).waiting(Topic.work) == 1, "the claim to wait")
    began = time.monotonic()
    created = post(
        created_on, "/api/tasks", auth("alice"), json={"title": "From elsewhere", "assigned_to": "bob"}
    ).json()
    assert claim().json()["id"] == created["id"]
    assert time.monotonic() - began < NO_RECHECK


@two_instances
def test_fifty_tasks_among_a_hundred_waiting_agents_are_each_claimed_once(
    instances: Callable[..., LiveServer], auth: AuthHeaders, db: Engine
) -> None:
    servers = [instances(), instances()]
    until(lambda: all(wakeups(server).listening.is_set() for server in servers), "the listeners to connect")
    headers = [auth(f"agent-{n}", role="admin") for n in range(100)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with (
            httpx.AsyncClient(base_url=servers[0].url, timeout=90, limits=limits) as first,
            httpx.AsyncClient(base_url=servers[1].url, timeout=90, limits=limits) as second,
        ):
            clients = [first, second]
            waiting = [
                asyncio.ensure_future(
                    clients[n % 2].post("/api/tasks/claim", headers=header, json={"wait_seconds": 40})
                )
                for n, header in enumerate(headers)
            ]
            await all_waiting(waiting, lambda: sum(wakeups(server).waiting(Topic.work) for server in servers), 100)
            for number in range(50):
                created = await clients[number % 2].post(
                    "/api/tasks", json={"title": f"Job {number}"}, headers=auth("alice")
                )
                assert created.status_code == 201
            return [await claim for claim in waiting]

    answers = asyncio.run(run())
    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {200: 50, 204: 50}
    claimed = [answer.json()["id"] for answer in answers if answer.status_code == 200]
    assert len(set(claimed)) == 50
    with db.connect() as connection:
        starts = connection.execute(
            text("SELECT task_id, count(*) FROM audit_log WHERE action = 'task.claimed' GROUP BY task_id")
        ).all()
    assert sorted(task_id for task_id, _ in starts) == sorted(claimed)
    assert {count for _, count in starts} == {1}


@two_instances
def test_followers_of_the_feed_and_of_the_stream_get_every_visible_row_once_under_writers_on_two_instances(
    instances: Callable[..., LiveServer], auth: AuthHeaders, db: Engine
) -> None:
    servers = [instances(wait_recheck_seconds=1), instances(wait_recheck_seconds=1)]
    bob = auth("bob")
    post(servers[0], "/api/projects", auth("alice"), json={"slug": "demo", "name": "Demo"})
    post(servers[0], "/api/projects", auth("carol"), json={"slug": "secret", "name": "Secret"})
    with httpx.Client(base_url=servers[0].url, timeout=30) as http:
        http.get("/api/tasks", headers=bob)
        http.post("/api/projects/demo/members", json={"worker_id": "bob"}, headers=auth("alice"))
        feed_settled(db)
        start = http.get("/api/events", headers=bob).json()["next_after"]

    polled: list[int] = []
    streamed: list[int] = []
    done = threading.Event()

    def poll() -> None:
        after = start
        with httpx.Client(base_url=servers[0].url, timeout=30) as http:
            while not done.is_set():
                page = http.get("/api/events", params={"after": after, "wait_seconds": 1}, headers=bob).json()
                polled.extend(event["id"] for event in page["events"])
                after = page["next_after"]

    def stream() -> None:
        with (
            httpx.Client(base_url=servers[1].url, timeout=30) as http,
            http.stream("GET", "/api/events/stream", params={"after": start}, headers=bob) as response,
        ):
            last_id = None
            for line in response.iter_lines():
                if line.startswith("id: "):
                    last_id = int(line.removeprefix("id: "))
                elif line.startswith("data: ") and last_id is not None:  # an event, not a cursor alone
                    streamed.append(last_id)
                if done.is_set():
                    return

    def write(writer: int) -> None:
        server = servers[writer % 2]
        who, project = (auth("alice"), "demo") if writer % 3 else (auth("carol"), "secret")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for number in range(12):
                task = http.post(
                    "/api/tasks", json={"title": f"w{writer} #{number}", "project_slug": project}, headers=who
                ).json()
                http.patch(f"/api/tasks/{task['id']}", json={"priority": "high"}, headers=who)

    followers = [threading.Thread(target=poll, daemon=True), threading.Thread(target=stream, daemon=True)]
    for follower in followers:
        follower.start()
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(write, range(6)))

    with db.connect() as connection:
        start_tx = connection.execute(text("SELECT feed_tx FROM audit_log WHERE id = :id"), {"id": start}).scalar_one()
        expected = list(
            connection.execute(
                text(
                    "SELECT id FROM audit_log WHERE (feed_tx, id) > (:tx, :id) AND project_slug = 'demo' "
                    "ORDER BY feed_tx, id"
                ),
                {"tx": start_tx, "id": start},
            ).scalars()
        )
        invisible = set(connection.execute(text("SELECT id FROM audit_log WHERE project_slug = 'secret'")).scalars())
    assert len(expected) == 4 * 12 * 2  # four of the six writers write to demo
    until(lambda: len(polled) >= len(expected) and len(streamed) >= len(expected), "the followers to catch up")
    # The stream's reader checks `done` after each line: a keep-alive or the next event lets it go.
    done.set()
    post(servers[0], "/api/tasks", auth("alice"), json={"title": "the last", "project_slug": "demo"})
    for follower in followers:
        follower.join(timeout=20)
    assert polled[: len(expected)] == expected
    assert streamed[: len(expected)] == expected
    assert not invisible & (set(polled) | set(streamed))
