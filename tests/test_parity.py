"""Parity: one agent workflow done through REST, through the `taskflow` CLI, through the local
`taskflow-mcp` server and through the API's own `/mcp` ends in the same task states and the same
audit trail, written as the agent; only the remote MCP's rows say `via: mcp` and name its client.

Each channel works in a project of its own, set up identically over REST; the agent is
`@agent-x`, registered by an admin as an agent owned by alice, acting with its own token (at
`/mcp`, an OAuth access token issued to its MCP client for that resource).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from conftest import AuthHeaders
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from typer.testing import CliRunner

from config import Settings
from taskflow_cli import app

AGENT = "@agent-x"
TASKFLOW_MCP = Path(sys.executable).parent / "taskflow-mcp"
CHANNELS = ["rest", "cli", "mcp", "remote"]
MCP_CLIENT = "parity-agent-client"
# What the agent says on a task, mentioning its human, and what it delivers on completing another.
COMMENT = "Rolled back to 1.4; @alice please confirm the numbers."
RESULT: dict[str, Any] = {
    "summary": "Published the postmortem.",
    "artifacts": [{"name": "Postmortem", "url": "https://example.com/postmortems/42"}],
}

# What each channel is handed: the project's slug and the ids of the tasks alice prepared.
Workflow = Callable[[str, dict[str, int]], None]


@pytest.fixture
def api(live_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url) as client:
        yield client


def prepare(api: httpx.Client, auth: AuthHeaders, slug: str) -> dict[str, int]:
    """Project `slug` of alice's with the agent as a member, and two tasks for it to find."""
    created = api.post("/api/projects", json={"slug": slug, "name": slug.title()}, headers=auth("alice"))
    assert created.status_code == 201, created.text
    added = api.post(f"/api/projects/{slug}/members", json={"worker_id": AGENT}, headers=auth("alice"))
    assert added.status_code == 201, added.text
    ids = {}
    for title, priority in [("Fix the outage", "critical"), ("Tidy the wiki", "low")]:
        task = api.post(
            "/api/tasks", json={"title": title, "priority": priority, "project_slug": slug}, headers=auth("alice")
        )
        assert task.status_code == 201, task.text
        ids[title] = task.json()["id"]
    return ids


def test_rest_cli_mcp_and_remote_mcp_leave_the_same_states_and_audit_trail(
    live_server: Any,
    api: httpx.Client,
    auth: AuthHeaders,
    make_token: Callable[..., str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    api.get("/api/tasks", headers=auth("alice"))
    registered = api.post(
        "/api/workers",
        json={"id": AGENT, "type": "agent", "name": "Agent X", "owner_id": "alice"},
        headers=auth("root", role="admin"),
    )
    assert registered.status_code == 201, registered.text
    token = make_token(AGENT)
    agent = {"Authorization": f"Bearer {token}"}

    # ------------------------------------------------------------ the workflow, three times

    def through_rest(slug: str, ids: dict[str, int]) -> None:
        def post(path: str, **kwargs: Any) -> dict[str, Any]:
            response = api.post(path, headers=agent, **kwargs)
            assert response.status_code in {200, 201}, response.text
            body: dict[str, Any] = response.json()
            return body

        note = post("/api/tasks", json={"title": "Write a postmortem", "project_slug": slug, "priority": "high"})
        claimed = post("/api/tasks/claim", json={"project": slug, "lease_seconds": 300})
        post(f"/api/tasks/{claimed['id']}/heartbeat")
        post(f"/api/tasks/{claimed['id']}/progress", params={"percent": 50, "note": "rolled back"})
        post(f"/api/tasks/{claimed['id']}/comments", json={"body": COMMENT})
        post(f"/api/tasks/{claimed['id']}/review")
        post(f"/api/tasks/{claimed['id']}/complete")
        wiki = ids["Tidy the wiki"]
        post(f"/api/tasks/{wiki}/start")
        post(f"/api/tasks/{wiki}/release")
        post(f"/api/tasks/{wiki}/block", params={"reason": "needs a human"})
        patched = api.patch(f"/api/tasks/{note['id']}", json={"description": "Timeline and causes"}, headers=agent)
        assert patched.status_code == 200, patched.text
        last = post("/api/tasks/claim", json={"project": slug})
        assert last["id"] == note["id"]
        post(f"/api/tasks/{note['id']}/complete", json=RESULT)
        nothing = api.post("/api/tasks/claim", json={"project": slug, "wait_seconds": 1}, headers=agent)
        assert nothing.status_code == 204, nothing.text

    def through_cli(slug: str, ids: dict[str, int]) -> None:
        env = {"TASKFLOW_URL": live_server.url, "TASKFLOW_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path)}

        def taskflow(*args: str) -> Any:
            result = CliRunner().invoke(app, ["--json", *args], env=env, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)

        note = taskflow("add", "Write a postmortem", "--project", slug, "--priority", "high")
        claimed = taskflow("claim", "--project", slug, "--lease", "300")
        task_id = str(claimed["id"])
        taskflow("heartbeat", task_id)
        taskflow("progress", task_id, "50", "--note", "rolled back")
        taskflow("comment", task_id, COMMENT)
        taskflow("review", task_id)
        taskflow("done", task_id)
        wiki = str(ids["Tidy the wiki"])
        taskflow("start", wiki)
        taskflow("release", wiki)
        taskflow("block", wiki, "--reason", "needs a human")
        taskflow("edit", str(note["id"]), "--description", "Timeline and causes")
        assert taskflow("claim", "--project", slug)["id"] == note["id"]
        [artifact] = RESULT["artifacts"]
        taskflow(
            "done",
            str(note["id"]),
            "--summary",
            RESULT["summary"],
            "--artifact",
            f"{artifact['name']}={artifact['url']}",
        )
        assert taskflow("claim", "--project", slug, "--wait", "1") is None

    async def work_through(client: Client, slug: str, ids: dict[str, int]) -> None:
        async def call(tool: str, **arguments: Any) -> Any:
            result = await client.call_tool(tool, arguments)
            assert not result.is_error, result.content
            return result.structured_content

        note = await call("create_task", title="Write a postmortem", project=slug, priority="high")
        claimed = (await call("claim_next_task", project=slug, lease_seconds=300))["task"]
        await call("heartbeat", task_id=claimed["id"])
        await call("update_progress", task_id=claimed["id"], percent=50, note="rolled back")
        await call("add_comment", task_id=claimed["id"], body=COMMENT)
        await call("submit_for_review", task_id=claimed["id"])
        await call("complete_task", task_id=claimed["id"])
        wiki = ids["Tidy the wiki"]
        await call("claim_task", task_id=wiki)
        await call("release_task", task_id=wiki)
        await call("block_task", task_id=wiki, reason="needs a human")
        await call("update_task", task_id=note["id"], description="Timeline and causes")
        assert (await call("claim_next_task", project=slug))["task"]["id"] == note["id"]
        await call("complete_task", task_id=note["id"], **RESULT)
        assert (await call("claim_next_task", project=slug, wait_seconds=1))["claimed"] is False

    def through_mcp(slug: str, ids: dict[str, int]) -> None:
        params = StdioServerParameters(
            command=str(TASKFLOW_MCP), env={"TASKFLOW_URL": live_server.url, "TASKFLOW_TOKEN": token}, cwd=str(tmp_path)
        )

        async def main() -> None:
            async with Client(params, read_timeout_seconds=30) as client:
                await work_through(client, slug, ids)

        anyio.run(main)

    def through_remote_mcp(slug: str, ids: dict[str, int]) -> None:
        access_token = make_token(
            AGENT,
            aud=settings.mcp_resource,
            iss=settings.mcp_issuer,
            scope="taskflow:read taskflow:write",
            client_id=MCP_CLIENT,
        )

        async def main() -> None:
            headers = {"Authorization": f"Bearer {access_token}"}
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                async with Client(streamable_http_client(f"{live_server.url}/mcp", http_client=http)) as client:
                    await work_through(client, slug, ids)

        anyio.run(main)

    workflows: dict[str, Workflow] = {
        "rest": through_rest,
        "cli": through_cli,
        "mcp": through_mcp,
        "remote": through_remote_mcp,
    }
    outcomes = {}
    for channel in CHANNELS:
        slug = f"parity-{channel}"
        workflows[channel](slug, prepare(api, auth, slug))
        outcomes[channel] = outcome(api, auth, slug)

    # ------------------------------------------------------------ the same, whichever way

    # How each change came: the agent's at /mcp through its OAuth client, everything else over REST.
    ways = {channel: came_through(outcome) for channel, outcome in outcomes.items()}
    assert ways["rest"] == ways["cli"] == ways["mcp"] == {(AGENT, "api", None), ("alice", "api", None)}
    assert ways["remote"] == {(AGENT, "mcp", MCP_CLIENT), ("alice", "api", None)}
    assert outcomes["cli"] == outcomes["rest"]
    assert outcomes["mcp"] == outcomes["rest"]
    assert outcomes["remote"] == outcomes["rest"]

    states, trails, feed = outcomes["rest"]
    assert states["Fix the outage"]["status"] == "completed"
    assert states["Fix the outage"]["assigned_to"] == AGENT
    assert states["Tidy the wiki"]["status"] == "blocked"
    assert states["Write a postmortem"]["description"] == "Timeline and causes"
    assert states["Write a postmortem"]["status"] == "completed"
    assert [row["action"] for row in trails["Fix the outage"]] == [
        "task.created",
        "task.claimed",
        "task.progress",
        "comment.added",
        "task.review",
        "task.completed",
    ]
    assert [row["action"] for row in trails["Tidy the wiki"]] == [
        "task.created",
        "task.started",
        "task.released",
        "task.blocked",
    ]
    agent_rows = [row for trail in trails.values() for row in trail if row["actor_id"] == AGENT]
    assert [row["action"] for row in trails["Write a postmortem"]] == [
        "task.created",
        "task.updated",
        "task.claimed",
        "task.completed",
    ]
    assert len(agent_rows) == 12
    [comment] = [row for row in trails["Fix the outage"] if row["action"] == "comment.added"]
    assert comment["context"]["body"] == [None, COMMENT]
    assert comment["context"]["mentions"] == [None, ["alice"]]
    assert states["Write a postmortem"]["result"] == RESULT
    assert states["Fix the outage"]["result"] is None
    assert [event["comment"] for event in feed if event["type"] == "comment.added"] == [
        {"body": COMMENT, "mentions": ["alice"]}
    ]
    assert sum(len(trail) for trail in trails.values()) + 2 == len(feed)  # and project.created, member.added
    assert {(row["actor_type"], row["owner_id"]) for row in agent_rows} == {("agent", "alice")}
    human_rows = [row for trail in trails.values() for row in trail if row["actor_id"] != AGENT]
    assert {(row["actor_id"], row["actor_type"]) for row in human_rows} == {("alice", "human")}


VOLATILE = {"id", "project_slug", "created_at", "updated_at", "lease_expires_at", "timestamp", "request_id", "task_id"}
# How a change came differs by channel on purpose: `came_through` compares it apart.
CHANNEL = {"via", "client_id"}


Outcome = tuple[dict[str, Any], dict[str, list[dict[str, Any]]], list[dict[str, Any]]]


def came_through(outcome: Outcome) -> set[tuple[str, str, str | None]]:
    """Each actor with the way and the OAuth client its audit rows and events name, the channel's marks removed."""
    _states, trails, feed = outcome
    rows = [row for trail in trails.values() for row in trail] + feed
    return {(row["actor_id"], row.pop("via"), row.pop("client_id")) for row in rows}


def outcome(api: httpx.Client, auth: AuthHeaders, slug: str) -> Outcome:
    """The project's tasks by title, their audit trails and the project's event feed, without ids, slugs and times."""
    tasks = api.get("/api/tasks", params={"project": slug, "limit": 100}, headers=auth("alice")).json()
    states = {task["title"]: {k: v for k, v in task.items() if k not in VOLATILE} for task in tasks}
    trails = {}
    for task in tasks:
        rows = api.get(f"/api/tasks/{task['id']}/audit", headers=auth("alice")).json()
        trails[task["title"]] = [
            {k: json.loads(json.dumps(v).replace(slug, "<project>")) for k, v in row.items() if k not in VOLATILE}
            | {"context": context(row["context"], slug)}
            for row in rows
        ]
    events = api.get("/api/events", params={"after": 0, "project": slug, "limit": 500}, headers=auth("alice"))
    assert events.status_code == 200, events.text
    feed = [
        {k: v for k, v in event.items() if k not in VOLATILE | {"at", "changes", "comment"}}
        | {"changes": context(event["changes"], slug)}
        | {"comment": event["comment"] and {k: v for k, v in event["comment"].items() if k != "id"}}
        for event in events.json()["events"]
    ]
    return states, trails, feed


def context(changes: dict[str, Any], slug: str) -> dict[str, Any]:
    """An audit row's context with the project's slug and lease end times made comparable."""
    normal: dict[str, Any] = json.loads(
        json.dumps(changes).replace(slug, "<project>").replace(slug.title(), "<Project>")  # its slug and its name
    )
    if "lease_expires_at" in normal:
        normal["lease_expires_at"] = [value and "<time>" for value in normal["lease_expires_at"]]
    if "comment_id" in normal:
        normal["comment_id"] = "<comment>"
    return normal
