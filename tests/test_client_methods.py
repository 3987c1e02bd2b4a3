"""`TaskFlowClient`'s keyword methods against a live server: where the clients' arguments become
JSON fields and query parameters, once, for the CLI and the MCP tools alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskflow_client import TaskFlowClient


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
