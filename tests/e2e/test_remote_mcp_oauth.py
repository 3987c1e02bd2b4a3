"""TaskFlow's remote MCP endpoint, `/mcp`, as an OAuth 2.1 resource server, end to end.

Against the real Better Auth server as the authorization server (`oauth_server`, which issues
tokens for `{mcp_public_url}/mcp`), and TaskFlow served over real HTTP at exactly that origin,
driven by the official MCP SDK client: the discovery chain an MCP client follows from a 401, a
person signing in through dynamic client registration and the code flow with PKCE, a headless
agent with client_credentials acting for its owner, refusals with real tokens, and two users
on the same endpoint at once, each seeing only their own. The audit trail, read over REST,
says who acted, how (`via`) and through which OAuth client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from sqlalchemy import Engine, text

import taskflow_mcp
from e2e.conftest import ServedTaskFlow
from e2e.harness import BetterAuthServer, BetterAuthUser
from e2e.oauth import (
    OAuthClient,
    authorize_with_pkce,
    client_credentials,
    create_agent_client,
    discover,
    issuer,
    metadata_url,
    refresh,
    register_client,
)

READ, WRITE = "taskflow:read", "taskflow:write"
SCOPE = f"{READ} {WRITE}"
REDIRECT_URI = "http://127.0.0.1:8976/callback"  # never requested: the flow stops at the redirect
TOOL_NAMES = [tool.__name__ for tool, _ in taskflow_mcp.TOOLS]
T = TypeVar("T")


# ---------------------------------------------------------------- helpers


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """An async scenario run to its end from a sync test, on asyncio, in a thread of its own.

    Not in the test's thread: while the package's Playwright (the `browser` fixture) is started,
    that thread counts as running an event loop, and `anyio.run` there would refuse to start.
    """
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(anyio.run, scenario).result()


@asynccontextmanager
async def mcp_client(url: str, token: str, seen: list[httpx2.Response] | None = None) -> AsyncIterator[Client]:
    """The MCP SDK's client on `{url}/mcp` with the bearer token; every HTTP answer is noted in `seen`."""

    async def note(response: httpx2.Response) -> None:
        if seen is not None:
            seen.append(response)

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"response": [note]}) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), read_timeout_seconds=30) as client,
    ):
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    content = result.structured_content
    assert isinstance(content, dict), result
    return content


def rest(url: str, method: str, path: str, user: BetterAuthUser, **kwargs: Any) -> Any:
    """A REST call as the user (their jwt-plugin token) that must succeed; its JSON body."""
    response = httpx.request(method, f"{url}{path}", headers=user.headers, timeout=10, **kwargs)
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def sign_in_with_pkce(server: BetterAuthServer, user: BetterAuthUser, resource: str, scope: str = SCOPE) -> str:
    """A new MCP client registers itself and the user authorizes it: the access token for the resource."""
    client = register_client(server, [REDIRECT_URI], confidential=False, scope=scope)
    return authorize_with_pkce(server, user.email, client, resource, scope).access_token


def registered_client(server: BetterAuthServer) -> OAuthClient:
    return register_client(server, [REDIRECT_URI], confidential=False, scope=SCOPE)


def counts(db: Engine) -> tuple[int, int]:
    """How many tasks and audit rows the database holds."""
    with db.connect() as connection:
        tasks = connection.execute(text("SELECT count(*) FROM task")).scalar_one()
        rows = connection.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
    return int(tasks), int(rows)


def challenge(response: httpx.Response | httpx2.Response) -> str:
    value: str = response.headers["www-authenticate"]
    return value


@pytest.fixture
def resource(mcp_public_url: str) -> str:
    return f"{mcp_public_url}/mcp"


# ---------------------------------------------------------------- 1. discovery


def test_an_mcp_client_finds_the_authorization_server_from_the_401(
    oauth_server: BetterAuthServer, taskflow_at_public_url: ServedTaskFlow, mcp_public_url: str, resource: str
) -> None:
    with taskflow_at_public_url(oauth_server) as url:
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"},
            },
        }
        refused = httpx.post(
            f"{url}/mcp",
            json=initialize,
            headers={"Accept": "application/json, text/event-stream"},
            timeout=10,
        )
        assert refused.status_code == 401, refused.text
        metadata_at = f"{mcp_public_url}/.well-known/oauth-protected-resource/mcp"
        assert challenge(refused).startswith("Bearer ")
        assert f'resource_metadata="{metadata_at}"' in challenge(refused)
        assert "error=" not in challenge(refused)  # RFC 6750: no error code when no token was sent

        protected = httpx.get(metadata_at, timeout=10)
        assert protected.status_code == 200, protected.text
        document = protected.json()
        assert document["resource"] == resource
        assert document["authorization_servers"] == [issuer(oauth_server)]
        assert document["scopes_supported"] == [READ, WRITE]

    # The issuer's metadata at RFC 8414's path insertion, as the MCP client looks for it.
    authorization_server = document["authorization_servers"][0]
    parts = urlsplit(authorization_server)
    well_known = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}"
    assert well_known == metadata_url(oauth_server)
    found = httpx.get(well_known, timeout=10)
    assert found.status_code == 200, found.text
    metadata = found.json()
    assert metadata == discover(oauth_server)
    assert metadata["issuer"] == authorization_server
    assert metadata["authorization_endpoint"] == f"{authorization_server}/oauth2/authorize"
    assert metadata["token_endpoint"] == f"{authorization_server}/oauth2/token"
    assert metadata["registration_endpoint"] == f"{authorization_server}/oauth2/register"
    assert {READ, WRITE} <= set(metadata["scopes_supported"])


# ---------------------------------------------------------------- 2. a person, through an MCP client


def test_a_person_signed_in_with_pkce_works_through_mcp_and_the_audit_names_the_client(
    oauth_server: BetterAuthServer, taskflow_at_public_url: ServedTaskFlow, resource: str
) -> None:
    alice = oauth_server.sign_up("Alice")
    client = registered_client(oauth_server)
    token = authorize_with_pkce(oauth_server, alice.email, client, resource, SCOPE).access_token

    with taskflow_at_public_url(oauth_server) as url:
        rest(url, "POST", "/api/projects", alice, json={"slug": "garden", "name": "Garden"})

        async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
            async with mcp_client(url, token) as mcp:
                tools = await mcp.list_tools()
                assert [tool.name for tool in tools.tools] == TOOL_NAMES
                created = await call(mcp, "create_task", title="Water the roses", project="garden", priority="high")
                assert created["created_by"] == alice.id
                claimed = await call(mcp, "claim_next_task", project="garden")
                assert claimed["claimed"] is True
                assert claimed["task"]["id"] == created["id"]
                assert claimed["task"]["assigned_to"] == alice.id
                progressed = await call(mcp, "update_progress", task_id=created["id"], percent=40, note="Half the bed")
                assert progressed["progress_percent"] == 40
                done = await call(mcp, "complete_task", task_id=created["id"], summary="All watered")
                assert done["status"] == "completed"
                assert done["result"]["summary"] == "All watered"
                history = await call(mcp, "get_task_history", task_id=created["id"])
                return created, history

        created, history = run(scenario)
        task_id = created["id"]

        # A change over REST, by the same person.
        rest(url, "PATCH", f"/api/tasks/{task_id}", alice, json={"description": "Before nine"})
        trail = rest(url, "GET", f"/api/tasks/{task_id}/audit", alice)
        everything = rest(url, "GET", "/api/audit", alice, params={"actor_id": alice.id})
        events = rest(url, "GET", "/api/events", alice, params={"after": 0, "task_id": task_id})["events"]

    by_mcp, by_rest = trail[:-1], trail[-1]
    assert [row["action"] for row in trail] == [
        "task.created",
        "task.claimed",
        "task.progress",
        "task.completed",
        "task.updated",
    ]
    for row in by_mcp:
        assert (row["actor_id"], row["actor_type"], row["via"], row["client_id"]) == (
            alice.id,
            "human",
            "mcp",
            client.client_id,
        ), row
        assert row["owner_id"] is None
    assert (by_rest["actor_id"], by_rest["actor_type"], by_rest["via"], by_rest["client_id"]) == (
        alice.id,
        "human",
        "api",
        None,
    )
    # The MCP tool's history is the same trail, up to the REST change that came after it.
    assert [entry["id"] for entry in history["entries"]] == [row["id"] for row in by_mcp]
    assert history["total"] == len(by_mcp)
    assert {(entry["via"], entry["client_id"]) for entry in history["entries"]} == {("mcp", client.client_id)}
    # The feed over REST says the same of each change.
    assert [(event["id"], event["via"], event["client_id"]) for event in events] == [
        (row["id"], row["via"], row["client_id"]) for row in trail
    ]
    # Before the task: her worker row (her first request) and the project, both over REST.
    earlier = [row for row in everything if row["task_id"] is None]
    assert [row["action"] for row in earlier] == ["project.created", "worker.registered"]
    assert {(row["via"], row["client_id"]) for row in earlier} == {("api", None)}


# ---------------------------------------------------------------- 3. a headless agent, for its owner


def test_an_agent_with_client_credentials_works_for_its_owner_through_mcp(
    oauth_server: BetterAuthServer, taskflow_at_public_url: ServedTaskFlow, resource: str
) -> None:
    alice = oauth_server.sign_up("Alice")
    admin = oauth_server.admin()
    agent = create_agent_client(oauth_server, [READ, WRITE], client_name="Alice's gardener")
    token = client_credentials(oauth_server, agent, resource, SCOPE).access_token

    with taskflow_at_public_url(oauth_server, wait_recheck_seconds=15) as url:
        rest(url, "POST", "/api/projects", alice, json={"slug": "orchard", "name": "Orchard"})
        worker = rest(
            url,
            "POST",
            "/api/workers",
            admin,
            json={"id": agent.client_id, "type": "agent", "name": "Gardener", "owner_id": alice.id},
        )
        assert (worker["id"], worker["type"], worker["owner_id"]) == (agent.client_id, "agent", alice.id)
        rest(url, "POST", "/api/projects/orchard/members", alice, json={"worker_id": agent.client_id})

        def create() -> dict[str, Any]:
            body = {"title": "Prune the apple trees", "project_slug": "orchard"}
            created: dict[str, Any] = rest(url, "POST", "/api/tasks", alice, json=body)
            return created

        async def scenario() -> dict[str, Any]:
            async with mcp_client(url, token) as mcp:
                # Idle, the agent waits for work; alice's new task wakes it, and it is claimed.
                waiting = asyncio.ensure_future(call(mcp, "claim_next_task", project="orchard", wait_seconds=30))
                await asyncio.sleep(0.5)
                assert not waiting.done()
                started = time.monotonic()
                task = await anyio.to_thread.run_sync(create)
                claimed = await waiting
                assert time.monotonic() - started < 10  # woken by the commit, not by the 15 s recheck
                assert claimed["claimed"] is True
                assert claimed["task"]["id"] == task["id"]
                assert claimed["task"]["assigned_to"] == agent.client_id
                done = await call(
                    mcp,
                    "complete_task",
                    task_id=task["id"],
                    summary="Pruned",
                    artifacts=[{"name": "Photo", "url": "https://example.com/trees.jpg"}],
                )
                assert done["status"] == "completed"
                assert done["result"]["artifacts"] == [{"name": "Photo", "url": "https://example.com/trees.jpg"}]
                return task

        task = run(scenario)
        trail = rest(url, "GET", f"/api/tasks/{task['id']}/audit", alice)
        owned = rest(url, "GET", "/api/audit", alice, params={"owner_id": alice.id})

    created, *by_agent = trail
    assert (created["action"], created["actor_id"], created["via"], created["client_id"]) == (
        "task.created",
        alice.id,
        "api",
        None,
    )
    assert [row["action"] for row in by_agent] == ["task.claimed", "task.completed"]
    for row in by_agent:
        assert (row["actor_id"], row["actor_type"], row["owner_id"], row["via"], row["client_id"]) == (
            agent.client_id,
            "agent",
            alice.id,
            "mcp",
            agent.client_id,
        ), row
    assert {row["id"] for row in by_agent} <= {row["id"] for row in owned}


# ---------------------------------------------------------------- 4. refusals with real tokens


def test_tokens_not_for_the_mcp_resource_are_refused_with_401(
    oauth_server: BetterAuthServer, taskflow_at_public_url: ServedTaskFlow, resource: str, db: Engine
) -> None:
    alice = oauth_server.sign_up("Alice")
    agent = create_agent_client(oauth_server, [READ])
    # Asked for without a resource, the server issues an opaque token, for no resource at all;
    # one for another resource it refuses to issue (test_oauth_tokens.py).
    opaque = client_credentials(oauth_server, agent, None, READ).access_token
    mcp_token = sign_in_with_pkce(oauth_server, alice, resource)

    with taskflow_at_public_url(oauth_server, mcp_accept_api_tokens=False) as url:
        for token in (opaque, alice.token):  # alice.token: the REST API's own (jwt plugin)
            refused = httpx.post(
                f"{url}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_tasks"}},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
                timeout=10,
            )
            assert refused.status_code == 401, refused.text
            assert 'error="invalid_token"' in challenge(refused)
            assert f'resource_metadata="{url}/.well-known/oauth-protected-resource/mcp"' in challenge(refused)

        # The access token for /mcp is no token for the REST API.
        on_rest = httpx.get(f"{url}/api/tasks", headers={"Authorization": f"Bearer {mcp_token}"}, timeout=10)
        assert on_rest.status_code == 401, on_rest.text
        # While the REST API's own token is.
        assert rest(url, "GET", "/api/tasks", alice) == []
    assert counts(db)[0] == 0


def test_the_rest_api_token_works_at_mcp_when_api_tokens_are_accepted(
    oauth_server: BetterAuthServer, taskflow_at_public_url: ServedTaskFlow
) -> None:
    alice = oauth_server.sign_up("Alice")
    with taskflow_at_public_url(oauth_server) as url:

        async def scenario() -> dict[str, Any]:
            async with mcp_client(url, alice.token) as mcp:
                created = await call(mcp, "create_task", title="With the API token")
                assert created["created_by"] == alice.id
                return created

        created = run(scenario)
        (row,) = rest(url, "GET", f"/api/tasks/{created['id']}/audit", alice)
    assert (row["actor_id"], row["actor_type"], row["via"], row["client_id"]) == (alice.id, "human", "mcp", None)


def test_a_read_only_token_may_read_but_a_write_is_refused_with_403_insufficient_scope(
    oauth_server: BetterAuthServer, taskflow_at_public_url: ServedTaskFlow, resource: str, db: Engine
) -> None:
    alice = oauth_server.sign_up("Alice")
    reader = sign_in_with_pkce(oauth_server, alice, resource, scope=READ)

    with taskflow_at_public_url(oauth_server) as url:
        task = rest(url, "POST", "/api/tasks", alice, json={"title": "Read me"})
        before = counts(db)
        seen: list[httpx2.Response] = []

        async def scenario() -> None:
            async with mcp_client(url, reader, seen) as mcp:
                listed = await call(mcp, "list_tasks")
                assert (listed["total"], listed["tasks"][0]["id"]) == (1, task["id"])
                assert (await call(mcp, "get_task", task_id=task["id"]))["title"] == "Read me"
                seen.clear()
                for tool, arguments in [
                    ("create_task", {"title": "Not allowed"}),
                    ("claim_next_task", {}),
                    ("complete_task", {"task_id": task["id"]}),
                ]:
                    with pytest.raises(MCPError):
                        await mcp.call_tool(tool, arguments)
                # Still connected, and still allowed to read.
                assert (await call(mcp, "get_task_history", task_id=task["id"]))["total"] == 1

        run(scenario)
        refusals = [response for response in seen if response.status_code == 403]
        assert len(refusals) == 3, [(response.status_code, response.headers) for response in seen]
        for response in refusals:
            assert challenge(response).startswith("Bearer ")
            assert 'error="insufficient_scope"' in challenge(response)
            # What to ask for next: the scope the token has, and the one the call needs.
            assert f'scope="{READ} {WRITE}"' in challenge(response)
            assert f'resource_metadata="{url}/.well-known/oauth-protected-resource/mcp"' in challenge(response)

        # The same refusal to a JSON-RPC message posted by hand.
        by_hand = httpx.post(
            f"{url}/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "update_task", "arguments": {"task_id": task["id"], "title": "Renamed"}},
            },
            headers={"Authorization": f"Bearer {reader}", "Accept": "application/json, text/event-stream"},
            timeout=10,
        )
        assert by_hand.status_code == 403, by_hand.text
        assert 'error="insufficient_scope"' in challenge(by_hand)
        assert by_hand.json()["code"] == "insufficient_scope"
        assert rest(url, "GET", f"/api/tasks/{task['id']}", alice)["title"] == "Read me"
    assert counts(db) == before


# ---------------------------------------------------------------- 5. two people at once


def test_two_people_on_the_same_endpoint_at_once_each_see_only_their_own(
    oauth_server: BetterAuthServer, taskflow_at_public_url: ServedTaskFlow, resource: str
) -> None:
    alice, bob = oauth_server.sign_up("Alice"), oauth_server.sign_up("Bob")
    # One MCP client application, two people who signed in with it.
    client = registered_client(oauth_server)
    tokens = {alice.id: authorize_with_pkce(oauth_server, alice.email, client, resource, SCOPE).access_token}
    # Bob's token also names the userinfo endpoint as an audience (openid), and is a refreshed one.
    bobs = authorize_with_pkce(oauth_server, bob.email, client, resource, f"openid offline_access {SCOPE}")
    assert bobs.refresh_token is not None
    tokens[bob.id] = refresh(oauth_server, client, bobs.refresh_token, resource).access_token
    projects = {alice.id: "alices", bob.id: "bobs"}
    rounds = 5

    with taskflow_at_public_url(oauth_server) as url:
        for person in (alice, bob):
            rest(url, "POST", "/api/projects", person, json={"slug": projects[person.id], "name": person.name})

        async def work(person: BetterAuthUser, mcp: Client, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
            created = await call(mcp, "create_task", title=f"{person.name} #{step}", project=projects[person.id])
            assert (created["created_by"], created["project_slug"]) == (person.id, projects[person.id])
            return created, await call(mcp, "list_tasks", limit=100)

        async def scenario() -> dict[str, Any]:
            async with mcp_client(url, tokens[alice.id]) as as_alice, mcp_client(url, tokens[bob.id]) as as_bob:
                both = [(alice, as_alice), (bob, as_bob)]
                # Each one's creations and listings, interleaved with the other's, all in flight at once.
                steps = await asyncio.gather(
                    *(work(person, mcp, step) for step in range(rounds) for person, mcp in both)
                )
                listings = await asyncio.gather(
                    call(as_alice, "list_tasks", limit=100), call(as_bob, "list_tasks", limit=100)
                )
                mine = {
                    person.id: [created["id"] for created, _ in steps if created["created_by"] == person.id]
                    for person in (alice, bob)
                }
                crossed = await asyncio.gather(
                    as_alice.call_tool("get_task", {"task_id": mine[bob.id][0]}),
                    as_bob.call_tool("get_task", {"task_id": mine[alice.id][0]}),
                    call(as_alice, "get_task", task_id=mine[alice.id][0]),
                    call(as_bob, "get_task", task_id=mine[bob.id][0]),
                )
                return {"steps": steps, "listings": listings, "mine": mine, "crossed": crossed}

        outcome = run(scenario)

    mine = outcome["mine"]
    assert len(outcome["steps"]) == 2 * rounds
    assert len(mine[alice.id]) == len(mine[bob.id]) == rounds
    for index, (created, listing) in enumerate(outcome["steps"]):
        person = (alice, bob)[index % 2]
        # Whatever the other had made by then, a listing in between holds only one's own.
        assert {task["project_slug"] for task in listing["tasks"]} == {projects[person.id]}
        assert created["id"] in {task["id"] for task in listing["tasks"]}
        # Not `total == len(tasks)` here: on PostgreSQL a read's count and page are two statements
        # without a common snapshot (database.mark_read_only), so a creation committed between them
        # can make them differ. Once all creations are done (below) they agree.
        assert 1 <= len(listing["tasks"]) <= rounds
        assert 1 <= listing["total"] <= rounds
    for person, listing in zip((alice, bob), outcome["listings"], strict=True):
        assert listing["total"] == len(listing["tasks"]) == rounds
        assert sorted(task["id"] for task in listing["tasks"]) == sorted(mine[person.id])
        assert {task["title"].split(" #")[0] for task in listing["tasks"]} == {person.name}
    for refused in outcome["crossed"][:2]:
        assert refused.is_error
        assert refused.structured_content is not None
        assert refused.structured_content["code"] == "not_found", json.dumps(refused.structured_content)
    assert outcome["crossed"][2]["created_by"] == alice.id
    assert outcome["crossed"][3]["created_by"] == bob.id
