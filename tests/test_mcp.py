"""The `taskflow-mcp` server, driven by the MCP SDK's own client over stdio (and streamable HTTP).

The server is the installed console script in a subprocess, given TASKFLOW_URL of a live
TaskFlow server and a real agent token: every tool call goes over real HTTP to the API. Only
the registration of tools is also checked in process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import AuthHeaders
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent
from sqlalchemy import Engine, text
from support import free_port, later

from taskflow_client import TaskFlowClient
from taskflow_mcp import bind, task

TASKFLOW_MCP = Path(sys.executable).parent / "taskflow-mcp"
TOOLS = {
    "list_tasks",
    "get_task",
    "create_task",
    "update_task",
    "claim_next_task",
    "claim_task",
    "heartbeat",
    "update_progress",
    "submit_for_review",
    "complete_task",
    "block_task",
    "release_task",
    "get_task_history",
    "list_comments",
    "add_comment",
    "wait_for_events",
}
AGENT = "@agent-x"

Scenario = Callable[[Client], Awaitable[None]]


@pytest.fixture
def api(live_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url) as client:
        yield client


@pytest.fixture
def board(api: httpx.Client, auth: AuthHeaders) -> None:
    """Agent @agent-x (registered by an admin, owned by alice) is a member of alice's project `demo`."""
    api.get("/api/tasks", headers=auth("alice"))
    registered = api.post(
        "/api/workers",
        json={"id": AGENT, "type": "agent", "name": "Agent X", "owner_id": "alice"},
        headers=auth("root", role="admin"),
    )
    assert registered.status_code == 201, registered.text
    created = api.post("/api/projects", json={"slug": "demo", "name": "Demo"}, headers=auth("alice"))
    assert created.status_code == 201, created.text
    added = api.post("/api/projects/demo/members", json={"worker_id": AGENT}, headers=auth("alice"))
    assert added.status_code == 201, added.text


@pytest.fixture
def run_mcp(live_server: Any, make_token: Callable[..., str], tmp_path: Path) -> Callable[..., None]:
    """`run_mcp(scenario)`: start `taskflow-mcp` over stdio as the agent and run `scenario(client)` against it."""

    def run(scenario: Scenario, *, url: str | None = None, token: str | None = None) -> None:
        params = StdioServerParameters(
            command=str(TASKFLOW_MCP),
            env={"TASKFLOW_URL": url or live_server.url, "TASKFLOW_TOKEN": token or make_token(AGENT)},
            cwd=str(tmp_path),
        )

        async def main() -> None:
            async with Client(params, read_timeout_seconds=30) as client:
                await scenario(client)

        anyio.run(main)

    return run


def data(result: CallToolResult) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def message(result: CallToolResult) -> str:
    assert result.is_error, result
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def new_task(api: httpx.Client, auth: AuthHeaders, title: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/api/tasks", json={"title": title, "project_slug": "demo", **fields}, headers=auth("alice"))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------- the tools


def test_the_server_offers_every_tool_described_for_a_language_model(run_mcp: Callable[..., None]) -> None:
    async def scenario(client: Client) -> None:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description is not None
            assert len(tool.description) > 80, tool.name
            for name, schema in tool.input_schema.get("properties", {}).items():
                assert schema.get("description"), f"{tool.name}.{name} has no description"
        assert tools["list_tasks"].annotations is not None
        assert tools["list_tasks"].annotations.read_only_hint is True
        assert tools["wait_for_events"].annotations is not None
        assert tools["wait_for_events"].annotations.read_only_hint is True
        assert "next_after" in (tools["wait_for_events"].description or "")
        assert "wait_seconds" in tools["claim_next_task"].input_schema["properties"]
        assert client.instructions is not None
        assert "claim_next_task" in client.instructions

    run_mcp(scenario)


@pytest.mark.usefixtures("board")
def test_an_agent_works_the_board_through_every_tool(
    run_mcp: Callable[..., None], api: httpx.Client, auth: AuthHeaders
) -> None:
    urgent = new_task(api, auth, "Fix the outage", priority="critical")
    other = new_task(api, auth, "Tidy the wiki", priority="low")
    ids: dict[str, int] = {}

    async def scenario(client: Client) -> None:
        created = data(
            await client.call_tool(
                "create_task",
                {"title": "Write a postmortem", "project": "demo", "priority": "high", "due_date": "2026-12-01"},
            )
        )
        assert (created["title"], created["created_by"], created["status"]) == ("Write a postmortem", AGENT, "pending")
        ids["created"] = created["id"]

        listed = data(await client.call_tool("list_tasks", {"project": "demo", "sort": "-priority"}))
        assert [task["id"] for task in listed["tasks"]] == [urgent["id"], created["id"], other["id"]]
        assert listed["total"] == 3
        ready = data(await client.call_tool("list_tasks", {"ready": True, "priority": "low"}))
        assert [task["id"] for task in ready["tasks"]] == [other["id"]]

        fetched = data(await client.call_tool("get_task", {"task_id": created["id"]}))
        assert fetched == created
        updated = data(
            await client.call_tool(
                "update_task",
                {
                    "task_id": created["id"],
                    "description": "Timeline and causes",
                    "clear": ["due_date"],
                    "expected_version": fetched["version"],
                },
            )
        )
        assert (updated["description"], updated["due_date"]) == ("Timeline and causes", None)

        claimed = data(await client.call_tool("claim_next_task", {"project": "demo", "lease_seconds": 300}))
        assert claimed["claimed"] is True
        task = claimed["task"]
        assert (task["id"], task["status"], task["assigned_to"]) == (urgent["id"], "in_progress", AGENT)
        beat = data(await client.call_tool("heartbeat", {"task_id": task["id"], "lease_seconds": 600}))
        assert beat["lease_expires_at"] >= task["lease_expires_at"]
        progressed = data(
            await client.call_tool("update_progress", {"task_id": task["id"], "percent": 50, "note": "rolled back"})
        )
        assert progressed["progress_percent"] == 50
        reviewed = data(await client.call_tool("submit_for_review", {"task_id": task["id"]}))
        assert reviewed["status"] == "review"
        completed = data(await client.call_tool("complete_task", {"task_id": task["id"]}))
        assert (completed["status"], completed["progress_percent"]) == ("completed", 100)

        started = data(await client.call_tool("claim_task", {"task_id": other["id"]}))
        assert (started["status"], started["assigned_to"]) == ("in_progress", AGENT)
        released = data(await client.call_tool("release_task", {"task_id": other["id"]}))
        assert (released["status"], released["assigned_to"]) == ("pending", None)
        blocked = data(await client.call_tool("block_task", {"task_id": other["id"], "reason": "needs a human"}))
        assert blocked["status"] == "blocked"

        history = data(await client.call_tool("get_task_history", {"task_id": task["id"]}))
        assert [entry["action"] for entry in history["entries"]] == [
            "task.created",
            "task.claimed",
            "task.progress",
            "task.review",
            "task.completed",
        ]
        assert history["total"] == 5

    run_mcp(scenario)

    # What the API itself recorded: the agent's changes, as an agent, on behalf of its owner.
    rows = api.get("/api/audit", params={"actor_id": AGENT, "limit": 100}, headers=auth("alice")).json()
    assert sorted(row["action"] for row in rows) == sorted(
        [
            "task.created",
            "task.updated",
            "task.claimed",
            "task.progress",
            "task.review",
            "task.completed",
            "task.started",
            "task.released",
            "task.blocked",
        ]
    )
    assert {row["actor_type"] for row in rows} == {"agent"}
    assert {row["owner_id"] for row in rows} == {"alice"}
    assert api.get(f"/api/tasks/{other['id']}", headers=auth("alice")).json()["status"] == "blocked"
    assert api.get(f"/api/tasks/{ids['created']}", headers=auth("alice")).json()["description"] == "Timeline and causes"


@pytest.mark.usefixtures("board")
def test_an_agent_reads_and_adds_comments_and_mentions_a_human(
    run_mcp: Callable[..., None], api: httpx.Client, auth: AuthHeaders
) -> None:
    task = new_task(api, auth, "Needs a decision")
    question = api.post(
        f"/api/tasks/{task['id']}/comments", json={"body": f"@{AGENT} which option?"}, headers=auth("alice")
    )
    assert question.status_code == 201, question.text
    secret = api.post("/api/tasks", json={"title": "Alice's own"}, headers=auth("alice")).json()

    async def scenario(client: Client) -> None:
        read = data(await client.call_tool("list_comments", {"task_id": task["id"]}))
        assert read == {"comments": [question.json()], "total": 1}

        answer = data(await client.call_tool("add_comment", {"task_id": task["id"], "body": "Option B, @alice."}))
        assert (answer["author_id"], answer["body"], answer["mentions"]) == (AGENT, "Option B, @alice.", ["alice"])

        paged = data(await client.call_tool("list_comments", {"task_id": task["id"], "limit": 1, "offset": 1}))
        assert paged == {"comments": [answer], "total": 2}

        hidden = await client.call_tool("add_comment", {"task_id": secret["id"], "body": "Let me in"})
        assert hidden.structured_content is not None
        assert hidden.structured_content["code"] == "not_found"
        empty = await client.call_tool("add_comment", {"task_id": task["id"], "body": ""})
        assert empty.is_error  # refused by the tool's own schema, before any API call

    run_mcp(scenario)
    rows = api.get("/api/audit", params={"action": "comment.added"}, headers=auth("alice")).json()
    assert [(row["actor_id"], row["actor_type"]) for row in rows] == [(AGENT, "agent"), ("alice", "human")]


@pytest.mark.usefixtures("board")
def test_claim_next_task_with_nothing_ready_says_so_without_an_error(run_mcp: Callable[..., None]) -> None:
    async def scenario(client: Client) -> None:
        result = data(await client.call_tool("claim_next_task", {}))

        assert result["claimed"] is False
        assert result["task"] is None

    run_mcp(scenario)


# Only guards against a hang: every wait below ends long before this when things work.
HANG = 20.0


@pytest.mark.usefixtures("board")
def test_wait_for_events_returns_an_event_written_meanwhile_and_an_empty_page_when_nothing_happens(
    run_mcp: Callable[..., None], api: httpx.Client, auth: AuthHeaders
) -> None:
    seen: dict[str, Any] = {}

    async def scenario(client: Client) -> None:
        now = data(await client.call_tool("wait_for_events", {"wait_seconds": 0}))
        writer = later(
            0.5,
            lambda: api.post(
                f"/api/tasks/{new_task(api, auth, 'Ask the agent')['id']}/comments",
                json={"body": f"Can you take this, {AGENT}?"},
                headers=auth("alice"),
            ),
        )
        started = time.monotonic()
        mentioned = data(
            await client.call_tool(
                "wait_for_events", {"after": now["next_after"], "mentioning": AGENT, "wait_seconds": 30}
            )
        )
        seen["waited"] = time.monotonic() - started
        await anyio.to_thread.run_sync(writer.join)
        quiet = data(await client.call_tool("wait_for_events", {"after": mentioned["next_after"], "wait_seconds": 1}))
        typed = data(
            await client.call_tool(
                "wait_for_events", {"after": now["next_after"], "types": ["task.created"], "wait_seconds": 0}
            )
        )
        seen.update(now=now, mentioned=mentioned, quiet=quiet, typed=typed)

    run_mcp(scenario)

    assert seen["now"]["events"] == []
    [comment] = seen["mentioned"]["events"]
    assert (comment["type"], comment["actor_id"], comment["actor_type"]) == ("comment.added", "alice", "human")
    assert comment["comment"]["mentions"] == [AGENT]
    assert seen["mentioned"]["next_after"] >= comment["id"]
    assert seen["quiet"]["events"] == []
    assert seen["quiet"]["next_after"] >= seen["mentioned"]["next_after"]
    assert [event["changes"]["title"][1] for event in seen["typed"]["events"]] == ["Ask the agent"]
    assert seen["waited"] < HANG


@pytest.mark.usefixtures("board")
def test_claim_next_task_with_wait_seconds_claims_a_task_created_while_it_waits(
    run_mcp: Callable[..., None], api: httpx.Client, auth: AuthHeaders
) -> None:
    seen: dict[str, Any] = {}

    async def scenario(client: Client) -> None:
        seen["nothing"] = data(await client.call_tool("claim_next_task", {"wait_seconds": 1}))
        writer = later(0.5, lambda: new_task(api, auth, "Arrives while the agent waits"))
        seen["claimed"] = data(await client.call_tool("claim_next_task", {"project": "demo", "wait_seconds": 30}))
        await anyio.to_thread.run_sync(writer.join)

    run_mcp(scenario)

    assert (seen["nothing"]["claimed"], seen["nothing"]["task"]) == (False, None)
    assert "waited 1 s" in seen["nothing"]["message"]
    claimed = seen["claimed"]["task"]
    assert (claimed["title"], claimed["status"], claimed["assigned_to"]) == (
        "Arrives while the agent waits",
        "in_progress",
        AGENT,
    )


@pytest.mark.usefixtures("board")
def test_an_agent_routes_work_by_labels_and_completes_it_with_a_result(
    run_mcp: Callable[..., None], api: httpx.Client, auth: AuthHeaders
) -> None:
    new_task(api, auth, "Urgent Rust", priority="critical", labels=["rust"])
    wanted = new_task(api, auth, "Python on GPU", priority="low", labels=["python", "gpu"])
    result = {
        "summary": "Trained it; loss 0.12.",
        "artifacts": [{"name": "Report", "url": "https://example.com/report?run=3"}],
    }

    async def scenario(client: Client) -> None:
        created = data(
            await client.call_tool("create_task", {"title": "Label me", "project": "demo", "labels": ["Docs"]})
        )
        assert created["labels"] == ["docs"]
        relabelled = data(
            await client.call_tool("update_task", {"task_id": created["id"], "labels": ["docs", "python"]})
        )
        assert relabelled["labels"] == ["docs", "python"]
        listed = data(await client.call_tool("list_tasks", {"labels": ["python"]}))
        assert [task["id"] for task in listed["tasks"]] == [wanted["id"], created["id"]]

        claimed = data(await client.call_tool("claim_next_task", {"labels": ["python", "gpu"]}))
        assert claimed["task"]["id"] == wanted["id"]
        refused = await client.call_tool(
            "complete_task",
            {"task_id": wanted["id"], "artifacts": [{"name": "Dump", "url": "ftp://example.com/dump"}]},
        )
        assert "validation_error" in message(refused)
        completed = data(await client.call_tool("complete_task", {"task_id": wanted["id"], **result}))
        assert (completed["status"], completed["result"]) == ("completed", result)

    run_mcp(scenario)

    assert api.get(f"/api/tasks/{wanted['id']}", headers=auth("alice")).json()["result"] == result


def test_a_tool_that_does_not_take_the_client_first_is_refused_at_registration() -> None:
    # Binding strips the first parameter from the schema: were it not the client, an argument would vanish.
    def get_task(task_id: int, client: TaskFlowClient) -> dict[str, Any]:
        return task(client.get_task(task_id))

    with TaskFlowClient("http://127.0.0.1:9", "token") as client, pytest.raises(TypeError, match="get_task"):
        bind(get_task, client)


# ---------------------------------------------------------------- errors


@pytest.mark.usefixtures("board")
def test_api_errors_come_back_as_tool_errors_with_the_apis_message_and_code(
    run_mcp: Callable[..., None], api: httpx.Client, auth: AuthHeaders
) -> None:
    missing = api.get("/api/tasks/999", headers=auth("alice")).json()
    task = new_task(api, auth, "Someone else's", assigned_to="alice")

    async def scenario(client: Client) -> None:
        not_found = await client.call_tool("get_task", {"task_id": 999})
        assert not_found.structured_content == missing
        assert missing["error"] in message(not_found)
        assert "not_found" in message(not_found)

        forbidden = await client.call_tool("claim_task", {"task_id": task["id"]})
        assert forbidden.structured_content is not None
        assert forbidden.structured_content["code"] == "forbidden"
        assert forbidden.structured_content["error"] in message(forbidden)

        stale = await client.call_tool(
            "update_task", {"task_id": task["id"], "title": "Mine now", "expected_version": task["version"] + 1}
        )
        assert stale.structured_content is not None
        assert stale.structured_content["code"] == "precondition_failed"
        assert "get_task" in message(stale)  # what to do next, for the model

        invalid = await client.call_tool("update_progress", {"task_id": task["id"], "percent": 150})
        assert invalid.is_error  # refused by the tool's own schema, before any API call

    run_mcp(scenario)
    assert api.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()["title"] == "Someone else's"


@pytest.mark.usefixtures("board")
def test_a_lost_lease_is_a_lease_lost_tool_error_telling_the_agent_to_stop(
    run_mcp: Callable[..., None], api: httpx.Client, auth: AuthHeaders, db: Engine
) -> None:
    task = new_task(api, auth, "Slow work")

    async def scenario(client: Client) -> None:
        data(await client.call_tool("claim_task", {"task_id": task["id"], "lease_seconds": 60}))
        with db.begin() as connection:  # the lease runs out
            connection.execute(
                text("UPDATE task SET lease_expires_at = :past WHERE id = :id"),
                {"past": "2020-01-01 00:00:00", "id": task["id"]},
            )

        lost = await client.call_tool("update_progress", {"task_id": task["id"], "percent": 10})

        assert lost.structured_content is not None
        assert lost.structured_content["code"] == "lease_lost"
        assert "stop working on it" in message(lost)

    run_mcp(scenario)


def test_an_unreachable_api_is_a_tool_error_naming_the_url(run_mcp: Callable[..., None]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def scenario(client: Client) -> None:
        result = await client.call_tool("list_tasks", {})

        assert f"Could not reach TaskFlow at {url}" in message(result)

    run_mcp(scenario, url=url)


def test_without_url_or_token_the_server_refuses_to_start(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TASKFLOW_")}

    result = subprocess.run(
        [str(TASKFLOW_MCP)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 2
    assert "TASKFLOW_URL and TASKFLOW_TOKEN" in result.stderr


# ---------------------------------------------------------------- streamable HTTP


@pytest.mark.usefixtures("board")
def test_with_http_the_server_speaks_streamable_http(
    live_server: Any, make_token: Callable[..., str], api: httpx.Client, auth: AuthHeaders, tmp_path: Path
) -> None:
    task = new_task(api, auth, "Over HTTP")
    port = free_port()
    env = {**os.environ, "TASKFLOW_URL": live_server.url, "TASKFLOW_TOKEN": make_token(AGENT)}
    log = (tmp_path / "mcp.log").open("w")
    process = subprocess.Popen(
        [str(TASKFLOW_MCP), "--http", "--port", str(port)], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    try:
        wait_for_port(port, process)

        async def main() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=30) as client:
                result = await client.call_tool("get_task", {"task_id": task["id"]})
                assert data(result)["title"] == "Over HTTP"
                assert json.loads(result.content[0].text)["id"] == task["id"]  # type: ignore[union-attr]

        anyio.run(main)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "taskflow-mcp --http exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"taskflow-mcp --http did not listen on port {port}")
