"""`TaskFlowClient`'s keyword methods against a live server: where the clients' arguments become
JSON fields and query parameters, once, for the CLI and the MCP tools alike.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from support import later

from taskflow_client import JSON, TaskFlowClient

T = TypeVar("T")
# Only guards against a hang: every wait below ends long before this when things work.
HANG = 20.0


@pytest.fixture
def alice(live_server: Any, make_token: Callable[..., str]) -> Iterator[TaskFlowClient]:
    with TaskFlowClient(live_server.url, make_token("alice")) as client:
        yield client


@pytest.fixture
def admin(live_server: Any, make_token: Callable[..., str]) -> Iterator[TaskFlowClient]:
    with TaskFlowClient(live_server.url, make_token("root", role="admin")) as client:
        yield client


def test_create_task_names_the_project_by_its_slug_and_leaves_out_what_was_not_given(alice: TaskFlowClient) -> None:
    alice.create_project("demo", "Demo")

    task = alice.create_task("Plan", project="demo").data

    assert (task["project_slug"], task["priority"], task["description"], task["due_date"]) == (
        "demo",
        "medium",
        None,
        None,
    )


def test_update_task_changes_only_what_is_given_and_clear_wins_over_a_value_for_the_same_field(
    alice: TaskFlowClient,
) -> None:
    alice.create_project("demo", "Demo")
    task = alice.create_task("Plan", project="demo", description="Old", due_date="2026-12-01T00:00:00Z").data

    updated = alice.update_task(
        task["id"], title="Plan B", due_date="2027-01-01T00:00:00Z", clear=["due_date", "project"]
    ).data

    assert (updated["title"], updated["description"]) == ("Plan B", "Old")
    assert (updated["due_date"], updated["project_slug"]) == (None, None)


def test_list_tasks_maps_search_and_ready_and_ready_false_is_no_filter(alice: TaskFlowClient) -> None:
    free = alice.create_task("Free to take").data
    started = alice.create_task("Already started").data
    alice.start_task(started["id"])

    def titles(**filters: Any) -> list[str]:
        return [task["title"] for task in alice.list_tasks(**filters).items]

    assert titles(search="FREE") == ["Free to take"]
    assert titles(ready=True) == [free["title"]]
    assert titles(ready=False, sort="-created_at") == ["Already started", "Free to take"]


def test_register_worker_names_it_after_its_id_unless_given_a_name(
    alice: TaskFlowClient, admin: TaskFlowClient
) -> None:
    alice.list_tasks()  # alice's worker row appears on her first request

    plain = admin.register_worker("@plain", type="agent").data
    named = admin.register_worker("@named", type="agent", name="Named", owner_id="alice").data
    renamed = admin.update_worker("@plain", name="Plain").data

    assert (plain["name"], plain["owner_id"]) == ("@plain", None)
    assert (named["name"], named["owner_id"]) == ("Named", "alice")
    assert (renamed["name"], renamed["type"]) == ("Plain", "agent")


def test_update_project_clear_description_wins_over_a_new_description(alice: TaskFlowClient) -> None:
    alice.create_project("demo", "Demo", description="First")

    kept = alice.update_project("demo", name="Demo 2").data
    cleared = alice.update_project("demo", description="Second", clear_description=True).data

    assert (kept["name"], kept["description"]) == ("Demo 2", "First")
    assert cleared["description"] is None


def test_add_member_defaults_to_member_and_update_member_changes_the_role(
    alice: TaskFlowClient, live_server: Any, make_token: Callable[..., str]
) -> None:
    with TaskFlowClient(live_server.url, make_token("bob")) as bob:
        bob.list_tasks()
    alice.create_project("demo", "Demo")

    added = alice.add_member("demo", "bob").data
    promoted = alice.update_member("demo", "bob", "owner").data

    assert (added["role"], promoted["role"]) == ("member", "owner")


def test_list_audit_filters_by_keyword(alice: TaskFlowClient) -> None:
    first = alice.create_task("First").data
    second = alice.create_task("Second").data
    alice.start_task(second["id"])

    started = alice.list_audit(action="task.started")
    about_first = alice.list_audit(task_id=first["id"], actor_id="alice")

    assert [(row["task_id"], row["action"]) for row in started.items] == [(second["id"], "task.started")]
    assert [row["action"] for row in about_first.items] == ["task.created"]
    assert about_first.total == 1


def test_labels_go_to_create_update_list_and_claim_and_complete_sends_a_body_only_with_a_result(
    alice: TaskFlowClient,
) -> None:
    gpu = alice.create_task("GPU work", labels=["GPU", "python"]).data
    docs = alice.create_task("Docs", labels=("docs",)).data
    relabelled = alice.update_task(docs["id"], labels=["docs", "python"]).data

    both = alice.list_tasks(label=["python", "gpu"]).items
    python = alice.list_tasks(label=iter(["python"])).items
    claimed = alice.claim_next(labels=["docs"]).data
    plain = alice.complete_task(claimed["id"]).data
    alice.start_task(gpu["id"])
    delivered = alice.complete_task(
        gpu["id"], summary="Done", artifacts=[{"name": "Run", "url": "https://example.com/run/1"}]
    ).data

    assert (gpu["labels"], relabelled["labels"]) == (["gpu", "python"], ["docs", "python"])
    assert [task["id"] for task in both] == [gpu["id"]]
    assert [task["id"] for task in python] == [gpu["id"], docs["id"]]
    assert claimed["id"] == docs["id"]
    assert plain["result"] is None
    assert delivered["result"] == {
        "summary": "Done",
        "artifacts": [{"name": "Run", "url": "https://example.com/run/1"}],
    }


def test_the_comment_methods_post_list_page_edit_and_delete(alice: TaskFlowClient) -> None:
    task = alice.create_task("Talk").data
    first = alice.add_comment(task["id"], "First @alice").data
    second = alice.add_comment(task["id"], "Second").data

    page = alice.list_comments(task["id"], limit=1, offset=1)
    edited = alice.update_comment(task["id"], first["id"], "First, edited").data
    deleted = alice.delete_comment(task["id"], second["id"])

    assert first["mentions"] == ["alice"]
    assert (page.items, page.total) == ([second], 2)
    assert (edited["body"], edited["mentions"], edited["edited"]) == ("First, edited", [], True)
    assert deleted.data is None
    assert [comment["id"] for comment in alice.list_comments(task["id"]).items] == [first["id"]]


# ---------------------------------------------------------------- the event feed and waiting


def test_events_pages_oldest_first_and_next_after_continues_without_repeats(alice: TaskFlowClient) -> None:
    created = [alice.create_task(title).data["id"] for title in ["One", "Two", "Three"]]
    alice.start_task(created[0])

    first = alice.events(after=0, type=["task.created"], limit=2).data
    rest = alice.events(after=first["next_after"], type=["task.created"], limit=2).data
    nothing = alice.events(after=rest["next_after"], type=["task.created"]).data
    now = alice.events().data
    started = alice.events(after=0, task_id=created[0], type=["task.started", "task.claimed"]).data

    assert [event["task_id"] for event in first["events"] + rest["events"]] == created
    assert {event["type"] for event in first["events"] + rest["events"]} == {"task.created"}
    assert (nothing["events"], nothing["next_after"]) == ([], rest["next_after"])
    assert now["events"] == []
    assert now["next_after"] >= first["events"][0]["id"]
    assert [(event["type"], event["actor_id"]) for event in started["events"]] == [("task.started", "alice")]


def test_events_with_wait_seconds_returns_an_event_written_while_it_waits(
    alice: TaskFlowClient, live_server: Any, make_token: Callable[..., str]
) -> None:
    cursor = alice.events().data["next_after"]
    with TaskFlowClient(live_server.url, make_token("bob")) as bob:
        writer = later(0.5, lambda: bob.create_task("Made while alice waits", assigned_to="alice"))
        started = time.monotonic()
        page = alice.events(after=cursor, type=["task.created"], wait_seconds=30).data
        writer.join()

    assert [event["changes"]["title"][1] for event in page["events"]] == ["Made while alice waits"]
    assert page["next_after"] == page["events"][-1]["id"]
    assert time.monotonic() - started < HANG


def test_claim_next_with_wait_seconds_claims_a_task_created_while_it_waits(
    alice: TaskFlowClient, live_server: Any, make_token: Callable[..., str]
) -> None:
    nothing = alice.claim_next(wait_seconds=1)
    with TaskFlowClient(live_server.url, make_token("alice")) as other:
        writer = later(0.5, lambda: other.create_task("Arrives later"))
        claimed = alice.claim_next(wait_seconds=30).data
        writer.join()

    assert nothing.data is None
    assert (claimed["title"], claimed["status"], claimed["assigned_to"]) == ("Arrives later", "in_progress", "alice")


class CuttingProxy:
    """A TCP proxy to `port` whose connections can be cut, as a network failure cuts them: the
    client's side is reset (RST), the server's side closed. Keeps the request head of each connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.accepting = threading.Thread(target=self.accept, daemon=True)
        self.accepting.start()

    def accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.port))
            with self.lock:
                self.pairs.append((downstream, upstream))
                index = len(self.requests)
                self.requests.append(b"")
                for source, target, head in [(downstream, upstream, index), (upstream, downstream, None)]:
                    thread = threading.Thread(target=self.pump, args=(source, target, head), daemon=True)
                    self.threads.append(thread)
                    thread.start()

    def pump(self, source: socket.socket, target: socket.socket, head: int | None) -> None:
        try:
            while data := source.recv(65536):
                if head is not None:
                    with self.lock:
                        self.requests[head] += data
                target.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        """Drop every open connection."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for downstream, upstream in pairs:
            # SO_LINGER 0: closing sends a reset, not an orderly end.
            downstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            for sock in (downstream, upstream):
                try:
                    sock.shutdown(socket.SHUT_RD)  # wakes the pump blocked in recv
                except OSError:
                    pass
        with self.lock:
            threads, self.threads = self.threads, []
        for thread in threads:
            thread.join(timeout=5)
        for downstream, upstream in pairs:
            downstream.close()
            upstream.close()

    def close(self) -> None:
        self.listener.close()
        self.accepting.join(timeout=5)
        self.cut()


@pytest.fixture
def proxy(live_server: Any) -> Iterator[CuttingProxy]:
    port = int(live_server.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port)
    yield proxy
    proxy.close()


def next_within(pool: ThreadPoolExecutor, stream: Iterator[T]) -> T:
    """The stream's next item, failing instead of hanging if it does not come."""
    return pool.submit(next, stream).result(timeout=HANG)


def test_stream_events_follows_live_and_resumes_after_a_dropped_connection_without_gaps_or_repeats(
    alice: TaskFlowClient, proxy: CuttingProxy, make_token: Callable[..., str]
) -> None:
    cursor = alice.events().data["next_after"]
    titles: list[str] = []

    def title(event: JSON) -> str:
        assert event["type"] == "task.created", event
        return str(event["changes"]["title"][1])

    with (
        TaskFlowClient(proxy.url, make_token("alice")) as watcher,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        stream = watcher.stream_events(after=cursor, type=["task.created"], max_reconnects=5)
        try:
            alice.create_task("Before the stream opened")
            titles.append(title(next_within(pool, stream)))
            writer = later(0.5, lambda: alice.create_task("While it listens"))
            titles.append(title(next_within(pool, stream)))
            writer.join()

            proxy.cut()
            alice.create_task("While it was cut off")
            alice.update_task(alice.create_task("Also while cut off").data["id"], title="Renamed, not created")
            titles.append(title(next_within(pool, stream)))
            titles.append(title(next_within(pool, stream)))
            alice.create_task("After it came back")
            titles.append(title(next_within(pool, stream)))
        finally:
            pool.submit(stream.close).result(timeout=HANG)

    assert titles == [
        "Before the stream opened",
        "While it listens",
        "While it was cut off",
        "Also while cut off",
        "After it came back",
    ]
    streams = [head for head in proxy.requests if head.startswith(b"GET /api/events/stream")]
    assert len(streams) == 2
    last_before_the_cut = alice.events(after=cursor, type=["task.created"], limit=2).data["events"][1]["id"]
    assert f"last-event-id: {last_before_the_cut}\r\n".encode() in streams[1].lower()
