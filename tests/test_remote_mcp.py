"""The remote MCP endpoint `/mcp`, tested as a hostile caller would.

Most requests are raw JSON-RPC posts through the TestClient (whose Host, `testserver`, the module's
settings allow), so that every HTTP detail can be asserted; the waits, the concurrent callers and
the tool list go through the MCP SDK's own client to a live server over real HTTP.

An OAuth access token for /mcp names the resource (`{PUBLIC_URL}/mcp`) as `aud`, Better Auth's
`{AUTH_SERVER_URL}/api/auth` as `iss`, its `client_id` and its `scope`: `oauth_token` makes one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import httpx
import httpx2
import jwt
import pytest
from conftest import AppPool, AuthHeaders, LiveServer, SigningKey, TokenFactory, serving
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi.testclient import TestClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlmodel import col
from support import AnyResponse, audit_rows, bearer, count, task_row

from config import Settings
from main import create_app
from models import AuditLog, Comment, Task, Worker
from taskflow_client import TaskFlowClient
from taskflow_mcp import create_server
from wakeups import Topic

BOTH = "taskflow:read taskflow:write"
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CLIENT_ID = "claude"

OAuthToken = Callable[..., str]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The TestClient's Host (`testserver`) and a live server's (127.0.0.1:port) are allowed at /mcp."""
    return settings.model_copy(update={"mcp_allowed_hosts": ["testserver", "127.0.0.1:*"]})


@pytest.fixture
def oauth_token(make_token: TokenFactory, settings: Settings) -> OAuthToken:
    """`oauth_token("alice", scope=..., client_id=..., **claims)`: an access token issued for /mcp."""

    def make(sub: str = "alice", *, scope: str | None = BOTH, client_id: str | None = CLIENT_ID, **claims: Any) -> str:
        given = {"scope": scope, "client_id": client_id}
        claims = (
            {"aud": settings.mcp_resource, "iss": settings.mcp_issuer}
            | {name: value for name, value in given.items() if value is not None}
            | claims
        )
        return make_token(sub, **claims)

    return make


def metadata_url(settings: Settings) -> str:
    return f"{settings.public_url}/.well-known/oauth-protected-resource/mcp"


# ---------------------------------------------------------------- JSON-RPC over HTTP


def rpc(
    client: TestClient, token: str | None, method: str, params: dict[str, Any] | None = None, **headers: str
) -> AnyResponse:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        message["params"] = params
    sent = MCP_HEADERS | (bearer(token) if token else {}) | headers
    return client.post("/mcp", json=message, headers=sent)


def call(
    client: TestClient, token: str | None, tool: str, *, headers: dict[str, str] | None = None, **arguments: Any
) -> AnyResponse:
    return rpc(client, token, "tools/call", {"name": tool, "arguments": arguments}, **(headers or {}))


def result_of(response: AnyResponse) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "result" in body, body
    found: dict[str, Any] = body["result"]
    return found


def data(response: AnyResponse) -> Any:
    """A tool call's structured result, asserting it succeeded."""
    found = result_of(response)
    assert found["isError"] is False, found
    return found["structuredContent"]


def tool_error(response: AnyResponse) -> tuple[str, dict[str, Any] | None]:
    """A failed tool call's text and structured content (None for an argument the SDK refused)."""
    found = result_of(response)
    assert found["isError"] is True, found
    return found["content"][0]["text"], found.get("structuredContent")


def error_code(response: AnyResponse) -> str:
    _, body = tool_error(response)
    assert body is not None
    code: str = body["code"]
    return code


def challenge(response: AnyResponse) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer k="v", ...` header, asserting it is exactly that shape."""
    header = response.headers["WWW-Authenticate"]
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer", header
    assert re.fullmatch(r'\w+="[^"]*"(, \w+="[^"]*")*', rest), header
    pairs = re.findall(r'(\w+)="([^"]*)"', rest)
    params = dict(pairs)
    assert len(params) == len(pairs), f"a parameter is repeated: {header}"
    return params


def board_state(db: Engine) -> tuple[int, int, int, int]:
    """What a refused request must leave as it was: tasks, audit rows, workers, comments."""
    return count(db, Task), count(db, AuditLog), count(db, Worker), count(db, Comment)


def rest_task(
    client: TestClient, auth: AuthHeaders, title: str, as_user: str = "alice", **fields: Any
) -> dict[str, Any]:
    response = client.post("/api/tasks", json={"title": title, **fields}, headers=auth(as_user))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------- 401: who is calling


def unknown_key() -> SigningKey:
    return SigningKey("stranger-key", "EdDSA", ed25519.Ed25519PrivateKey.generate())


def unsigned(settings: Settings) -> str:
    now = int(time.time())
    claims = {"sub": "alice", "aud": settings.mcp_resource, "iss": settings.mcp_issuer, "exp": now + 600}
    return jwt.encode(claims | {"scope": BOTH, "client_id": CLIENT_ID}, "", algorithm="none")


# Each case: what the Authorization header says, made from (oauth_token, keys, settings); whether
# a token counts as given (RFC 6750: no error code when the request carried none).
REFUSED: dict[str, tuple[Callable[[OAuthToken, dict[str, SigningKey], Settings], str | None], bool]] = {
    "no token": (lambda token, keys, settings: None, False),
    "another scheme": (lambda token, keys, settings: f"Basic {token()}", False),
    "empty bearer": (lambda token, keys, settings: "Bearer ", False),
    "malformed": (lambda token, keys, settings: "Bearer not.a.jwt", True),
    "expired": (lambda token, keys, settings: f"Bearer {token(exp=int(time.time()) - 3600)}", True),
    "not yet valid": (lambda token, keys, settings: f"Bearer {token(nbf=int(time.time()) + 3600)}", True),
    "unknown key": (lambda token, keys, settings: f"Bearer {token(key=unknown_key())}", True),
    "forged with a known kid": (
        lambda token, keys, settings: (
            f"Bearer {token(key=SigningKey(keys['EdDSA'].kid, 'EdDSA', ed25519.Ed25519PrivateKey.generate()))}"
        ),
        True,
    ),
    "alg none": (lambda token, keys, settings: f"Bearer {unsigned(settings)}", True),
    "another resource": (lambda token, keys, settings: f"Bearer {token(aud='https://elsewhere.example/mcp')}", True),
    "another issuer": (lambda token, keys, settings: f"Bearer {token(iss='https://evil.example/api/auth')}", True),
    "the resource from the API's issuer": (
        lambda token, keys, settings: f"Bearer {token(iss=settings.jwt_issuer)}",
        True,
    ),
    "no client_id": (lambda token, keys, settings: f"Bearer {token(client_id=None)}", True),
    "a client_id with spaces": (lambda token, keys, settings: f"Bearer {token(client_id='my client')}", True),
    "no subject": (lambda token, keys, settings: f"Bearer {token(omit=['sub'])}", True),
    "TaskFlow's own reserved subject": (lambda token, keys, settings: f"Bearer {token('system')}", True),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_caller_without_a_valid_token_gets_401_and_the_challenge_that_leads_to_sign_in(
    case: str,
    client: TestClient,
    oauth_token: OAuthToken,
    keys: dict[str, SigningKey],
    settings: Settings,
    db: Engine,
) -> None:
    make, given = REFUSED[case]
    authorization = make(oauth_token, keys, settings)
    before = board_state(db)
    headers = MCP_HEADERS | ({"Authorization": authorization} if authorization is not None else {})
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    response = client.post(
        "/mcp", json=message | {"params": {"name": "create_task", "arguments": {"title": "x"}}}, headers=headers
    )
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"
    params = challenge(response)
    expected = {"resource_metadata": metadata_url(settings), "scope": BOTH}
    if given:
        assert params.pop("error") == "invalid_token"
        assert params.pop("error_description")
    assert params == expected
    assert board_state(db) == before


def test_a_rest_api_token_is_refused_when_api_tokens_are_not_accepted(
    app_pool: AppPool, settings: Settings, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    strict = settings.model_copy(update={"mcp_accept_api_tokens": False})
    with app_pool.client(strict) as client:
        before = board_state(db)
        response = client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers=MCP_HEADERS | auth("alice"),
        )
        assert response.status_code == 401, response.text
        params = challenge(response)
        assert (params["error"], params["resource_metadata"], params["scope"]) == (
            "invalid_token",
            metadata_url(settings),
            BOTH,
        )
        assert board_state(db) == before
        # An access token issued for /mcp still works there.
        assert data(call(client, oauth_token("alice"), "list_tasks")) == {"tasks": [], "total": 0}


# ---------------------------------------------------------------- 403: what the token allows

WRITE_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("create_task", {"title": "Sneaky"}),
    ("update_task", {"task_id": 1, "title": "Renamed"}),
    ("claim_next_task", {}),
    ("claim_task", {"task_id": 1}),
    ("heartbeat", {"task_id": 1}),
    ("update_progress", {"task_id": 1, "percent": 50}),
    ("submit_for_review", {"task_id": 1}),
    ("complete_task", {"task_id": 1, "summary": "done"}),
    ("block_task", {"task_id": 1, "reason": "no"}),
    ("release_task", {"task_id": 1}),
    ("add_comment", {"task_id": 1, "body": "hi @bob"}),
]
READ_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("list_tasks", {}),
    ("get_task", {"task_id": 1}),
    ("get_task_history", {"task_id": 1}),
    ("list_comments", {"task_id": 1}),
    ("wait_for_events", {"after": 0, "wait_seconds": 0}),
]


def assert_insufficient(response: AnyResponse, scope: str, settings: Settings) -> None:
    """A 403 whose challenge asks for `scope`: what the token has and what the call needs, since
    a client's new token replaces its old one."""
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "insufficient_scope"
    params = challenge(response)
    assert params.pop("error_description")
    assert params == {
        "error": "insufficient_scope",
        "scope": scope,
        "resource_metadata": metadata_url(settings),
    }


def test_a_read_only_token_can_read_but_every_write_tool_is_refused_403(
    client: TestClient, auth: AuthHeaders, oauth_token: OAuthToken, settings: Settings, db: Engine
) -> None:
    task = rest_task(client, auth, "Alice's")
    reader = oauth_token("alice", scope="taskflow:read")
    before = board_state(db)
    for tool, arguments in WRITE_CALLS:
        assert_insufficient(call(client, reader, tool, **arguments), BOTH, settings)
    assert board_state(db) == before
    assert task_row(db, task["id"]).version == task["version"]
    # The same token reads.
    assert data(call(client, reader, "list_tasks"))["total"] == 1
    assert data(call(client, reader, "get_task", task_id=task["id"]))["title"] == "Alice's"
    for tool, arguments in READ_CALLS:
        assert result_of(call(client, reader, tool, **arguments))["isError"] is False, tool
    assert result_of(rpc(client, reader, "tools/list"))["tools"]
    assert count(db, Task) == 1


def test_a_token_with_neither_scope_is_refused_even_the_tool_list(
    client: TestClient, oauth_token: OAuthToken, settings: Settings, db: Engine
) -> None:
    before = board_state(db)
    for scope in ["", "openid profile email", "taskflow:admin taskflow:read:all", "TASKFLOW:READ"]:
        token = oauth_token("alice", scope=scope)
        assert_insufficient(rpc(client, token, "tools/list"), BOTH, settings)
        assert_insufficient(call(client, token, "list_tasks"), BOTH, settings)
        assert_insufficient(call(client, token, "create_task", title="x"), BOTH, settings)
    no_scope_claim = oauth_token("alice", scope=None)
    assert_insufficient(rpc(client, no_scope_claim, "tools/list"), BOTH, settings)
    assert board_state(db) == before


def test_a_write_only_token_can_write_but_not_read(
    client: TestClient, oauth_token: OAuthToken, settings: Settings
) -> None:
    writer = oauth_token("alice", scope="taskflow:write")
    created = data(call(client, writer, "create_task", title="Blind"))
    assert (created["title"], created["created_by"]) == ("Blind", "alice")
    assert data(call(client, writer, "claim_task", task_id=created["id"]))["status"] == "in_progress"
    for tool, arguments in READ_CALLS:
        assert_insufficient(call(client, writer, tool, **arguments), BOTH, settings)
    # Listing the tools reads nothing of the board.
    assert len(result_of(rpc(client, writer, "tools/list"))["tools"]) == 16


def test_scopes_given_as_a_list_claim_count_too(
    client: TestClient, oauth_token: OAuthToken, settings: Settings, db: Engine
) -> None:
    reader = oauth_token("alice", scope=None, scp=["taskflow:read"])
    assert data(call(client, reader, "list_tasks")) == {"tasks": [], "total": 0}
    assert_insufficient(call(client, reader, "create_task", title="x"), BOTH, settings)
    assert count(db, Task) == 0


SMUGGLED = {
    "the write tool's name first, the read's last": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"create_task","name":"get_task","arguments":{"title":"x","task_id":1}}}'
    ),
    "the read tool's name first, the write's last": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"get_task","name":"create_task","arguments":{"title":"x","task_id":1}}}'
    ),
    "tools/list, then tools/call": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
        b'"params":{"name":"create_task","arguments":{"title":"x"}}}'
    ),
    "tools/call, then tools/list": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list",'
        b'"params":{"name":"create_task","arguments":{"title":"x"}}}'
    ),
    "two params": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_task","arguments":{"title":"x"}},'
        b'"params":{"name":"get_task","arguments":{"task_id":1}}}'
    ),
    "an escaped name": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create\\u005ftask","arguments":{"title":"x"}}}'
    ),
    "an escaped method": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"create_task","arguments":{"title":"x"}}}'
    ),
    "a batch": (
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_task","arguments":{"task_id":1}}},'
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"create_task","arguments":{"title":"x"}}}]'
    ),
    "a notification": (
        b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"create_task","arguments":{"title":"x"}}}'
    ),
    "a byte order mark": (
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_task","arguments":{"title":"x"}}}'
    ),
}


@pytest.mark.parametrize("case", list(SMUGGLED))
def test_a_read_only_token_cannot_smuggle_a_write_past_the_gate(
    case: str, client: TestClient, oauth_token: OAuthToken, db: Engine
) -> None:
    reader = oauth_token("alice", scope="taskflow:read")
    response = client.post("/mcp", content=SMUGGLED[case], headers=MCP_HEADERS | bearer(reader))
    assert response.status_code < 500, response.text
    assert count(db, Task) == 0, f"{case}: {response.status_code} {response.text}"


# ---------------------------------------------------------------- which token goes where


def test_an_oauth_token_for_mcp_is_no_key_to_the_rest_api(
    client: TestClient, oauth_token: OAuthToken, db: Engine
) -> None:
    token = oauth_token("alice")
    for response in [
        client.get("/api/tasks", headers=bearer(token)),
        client.post("/api/tasks", json={"title": "x"}, headers=bearer(token)),
    ]:
        assert response.status_code == 401, response.text
    assert board_state(db) == (0, 0, 0, 0)


def test_a_rest_token_works_at_mcp_and_its_rows_say_mcp_without_a_client(
    client: TestClient, auth: AuthHeaders, db: Engine
) -> None:
    token = auth("alice")["Authorization"].removeprefix("Bearer ")
    created = data(call(client, token, "create_task", title="Through MCP"))
    data(call(client, token, "claim_task", task_id=created["id"]))
    rows = audit_rows(db, task_id=created["id"])
    assert [row.action for row in rows] == ["task.created", "task.started"]
    assert {(row.actor_id, row.via, row.client_id) for row in rows} == {("alice", "mcp", None)}
    # And the REST API's own rows still say api.
    patched = client.patch(f"/api/tasks/{created['id']}", json={"priority": "high"}, headers=auth("alice"))
    assert patched.status_code == 200, patched.text
    assert audit_rows(db, task_id=created["id"])[-1].via == "api"


# ---------------------------------------------------------------- the audit log


def test_a_humans_calls_through_an_oauth_client_are_recorded_with_that_client(
    client: TestClient, oauth_token: OAuthToken, db: Engine
) -> None:
    token = oauth_token("alice", client_id="claude-desktop")
    response = call(client, token, "create_task", title="Audited")
    created = data(response)
    task_id = created["id"]
    data(call(client, token, "claim_task", task_id=task_id))
    data(call(client, token, "update_progress", task_id=task_id, percent=40, note="half"))
    comment = data(call(client, token, "add_comment", task_id=task_id, body="Noted"))
    data(call(client, token, "complete_task", task_id=task_id, summary="Done"))
    rows = audit_rows(db, task_id=task_id)
    assert [row.action for row in rows][:2] == ["task.created", "task.started"]
    assert {(row.actor_id, row.actor_type, row.owner_id, row.via, row.client_id) for row in rows} == {
        ("alice", "human", None, "mcp", "claude-desktop")
    }
    assert rows[0].request_id == response.headers["X-Request-ID"]
    assert comment["author_id"] == "alice"
    # The history tool shows the same.
    history = data(call(client, token, "get_task_history", task_id=task_id))
    assert {(entry["via"], entry["client_id"]) for entry in history["entries"]} == {("mcp", "claude-desktop")}


def test_an_agent_acting_through_an_oauth_token_is_recorded_as_an_agent_with_its_owner(
    client: TestClient, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    client.get("/api/tasks", headers=auth("alice"))
    registered = client.post(
        "/api/workers",
        json={"id": "@agent-x", "type": "agent", "name": "Agent X", "owner_id": "alice"},
        headers=auth("root", role="admin"),
    )
    assert registered.status_code == 201, registered.text
    token = oauth_token("@agent-x", client_id="ci-runner")
    created = data(call(client, token, "create_task", title="Agent's"))
    claimed = data(call(client, token, "claim_next_task"))
    assert (claimed["claimed"], claimed["task"]["id"], claimed["task"]["assigned_to"]) == (
        True,
        created["id"],
        "@agent-x",
    )
    rows = audit_rows(db, task_id=created["id"])
    assert [row.action for row in rows] == ["task.created", "task.claimed"]
    assert {(row.actor_id, row.actor_type, row.owner_id, row.via, row.client_id) for row in rows} == {
        ("@agent-x", "agent", "alice", "mcp", "ci-runner")
    }


def test_a_role_claim_in_an_oauth_token_gives_no_admin_reach_at_mcp(
    client: TestClient, auth: AuthHeaders, oauth_token: OAuthToken, make_token: TokenFactory
) -> None:
    created = client.post("/api/projects", json={"slug": "private", "name": "Private"}, headers=auth("bob"))
    assert created.status_code == 201, created.text
    task = rest_task(client, auth, "Bob's secret", as_user="bob", project_slug="private")
    claimed_admin = oauth_token("alice", role="admin")
    assert data(call(client, claimed_admin, "list_tasks"))["total"] == 0
    assert error_code(call(client, claimed_admin, "get_task", task_id=task["id"])) == "not_found"
    # The REST API's own token is the subject's whole authority, a real admin's included.
    api_admin = make_token("alice", role="admin")
    assert data(call(client, api_admin, "get_task", task_id=task["id"]))["title"] == "Bob's secret"


def test_an_oauth_client_acting_as_itself_must_be_registered_as_an_agent_first(
    client: TestClient, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    # The client_credentials grant: the token's subject is the client. Unregistered, it would pass for a human.
    token = oauth_token("nightly-bot", client_id="nightly-bot")
    before = board_state(db)
    refused = call(client, token, "create_task", title="Nightly")
    assert error_code(refused) == "forbidden"
    assert "register it as an agent" in tool_error(refused)[0]
    assert board_state(db) == before  # no worker row either
    client.get("/api/tasks", headers=auth("alice"))
    registered = client.post(
        "/api/workers",
        json={"id": "nightly-bot", "type": "agent", "name": "Nightly", "owner_id": "alice"},
        headers=auth("root", role="admin"),
    )
    assert registered.status_code == 201, registered.text
    created = data(call(client, token, "create_task", title="Nightly"))
    [row] = audit_rows(db, task_id=created["id"])
    assert (row.actor_id, row.actor_type, row.owner_id, row.via, row.client_id) == (
        "nightly-bot",
        "agent",
        "alice",
        "mcp",
        "nightly-bot",
    )


# ---------------------------------------------------------------- metadata and CORS


def test_the_protected_resource_metadata_names_the_resource_issuer_and_scopes_for_any_origin(
    client: TestClient, settings: Settings
) -> None:
    path = "/.well-known/oauth-protected-resource/mcp"
    response = client.get(path, headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "resource": settings.mcp_resource,
        "authorization_servers": [settings.mcp_issuer],
        "scopes_supported": ["taskflow:read", "taskflow:write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "TaskFlow",
    }
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    preflight = client.options(
        path, headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code in {200, 204}, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    # The metadata is what a 401 points to: the same URL, for a client that only has the challenge.
    challenged = call(client, None, "list_tasks")
    assert challenge(challenged)["resource_metadata"].endswith(path)


def test_mcp_cors_lets_an_allowed_origin_send_a_token_and_read_the_challenge(
    client: TestClient, oauth_token: OAuthToken, settings: Settings
) -> None:
    origin = "http://localhost:3000"  # ALLOWED_ORIGINS, and so MCP_ALLOWED_ORIGINS by default
    assert origin in settings.mcp_allowed_origins
    preflight = client.options(
        "/mcp",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    allowed = {name.strip().lower() for name in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "mcp-protocol-version"} <= allowed
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    unauthenticated = client.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=MCP_HEADERS | {"Origin": origin}
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["Access-Control-Allow-Origin"] == origin
    exposed = {name.strip().lower() for name in unauthenticated.headers["Access-Control-Expose-Headers"].split(",")}
    assert "www-authenticate" in exposed
    answered = rpc(client, oauth_token("alice"), "tools/list", Origin=origin)
    assert answered.status_code == 200, answered.text
    assert answered.headers["Access-Control-Allow-Origin"] == origin


def test_mcp_cors_does_not_let_another_origin_in(client: TestClient) -> None:
    preflight = client.options(
        "/mcp",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code >= 400
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_an_origin_allowed_only_at_mcp_is_not_allowed_at_the_rest_api(app_pool: AppPool, settings: Settings) -> None:
    origin = "https://agent.example"
    with app_pool.client(settings.model_copy(update={"mcp_allowed_origins": [origin]})) as client:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        assert client.options("/mcp", headers=headers).headers.get("Access-Control-Allow-Origin") == origin
        assert "Access-Control-Allow-Origin" not in client.options("/api/tasks", headers=headers).headers


# ---------------------------------------------------------------- transport security and malformed requests


def test_a_foreign_host_or_origin_is_refused_and_nothing_is_done(
    client: TestClient, oauth_token: OAuthToken, db: Engine
) -> None:
    token = oauth_token("alice")
    before = board_state(db)
    rebound = call(client, token, "create_task", title="Rebound", headers={"Host": "evil.example"})
    assert rebound.status_code == 421, rebound.text
    cross_site = call(client, token, "create_task", title="Cross-site", headers={"Origin": "https://evil.example"})
    assert cross_site.status_code == 403, cross_site.text
    assert "Access-Control-Allow-Origin" not in cross_site.headers
    assert board_state(db) == before


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH"])
def test_only_post_is_served_a_stateless_endpoint_has_no_stream_or_session_for_other_methods(
    method: str, client: TestClient, oauth_token: OAuthToken
) -> None:
    # GET would open a server-to-client stream with nothing ever to send; the specification's answer is 405.
    refused = client.request(method, "/mcp", headers={**MCP_HEADERS, "Authorization": f"Bearer {oauth_token('alice')}"})
    assert refused.status_code == 405, refused.text
    assert refused.headers["Allow"] == "POST"
    assert refused.json()["code"] == "method_not_allowed"
    anonymous = client.request(method, "/mcp", headers=MCP_HEADERS)
    assert anonymous.status_code == 401  # the challenge first: it is how a client learns where to sign in


def test_a_body_over_the_limit_is_refused_413_announced_or_chunked(
    client: TestClient, oauth_token: OAuthToken, settings: Settings, db: Engine
) -> None:
    headers = MCP_HEADERS | bearer(oauth_token("alice"))
    title = "x" * settings.max_body_bytes
    body = f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"create_task","arguments":{{"title":"{title}"}}}}}}'
    announced = client.post("/mcp", content=body.encode(), headers=headers)
    assert announced.status_code == 413, announced.text
    assert announced.json()["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        encoded = body.encode()
        for start in range(0, len(encoded), 65536):
            yield encoded[start : start + 65536]

    chunked = client.post("/mcp", content=chunks(), headers=headers)
    assert chunked.status_code == 413, chunked.text
    assert board_state(db) == (0, 0, 0, 0)


MALFORMED: dict[str, tuple[bytes, dict[str, str]]] = {
    "not JSON": (b"{nope", {}),
    "empty": (b"", {}),
    "an empty object": (b"{}", {}),
    "an empty batch": (b"[]", {}),
    "a string": (b'"tools/call"', {}),
    "no jsonrpc version": (b'{"id":1,"method":"tools/list"}', {}),
    "JSON-RPC 1.0": (b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}', {}),
    "params not an object": (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"create_task"}', {}),
    "a tool name that is a number": (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}', {}),
    "no tool name": (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"title":"x"}}}', {}),
    "arguments not an object": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_task","arguments":["x"]}}',
        {},
    ),
    "an unknown method": (b'{"jsonrpc":"2.0","id":1,"method":"tasks/delete_all"}', {}),
    "a nested depth bomb": (b"[" * 5000 + b"]" * 5000, {}),
    "text/plain": (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', {"Content-Type": "text/plain"}),
    "not UTF-8": (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xff\xfe"}}', {}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_refused_never_a_500_and_nothing_is_done(
    case: str, client: TestClient, oauth_token: OAuthToken, db: Engine
) -> None:
    body, headers = MALFORMED[case]
    response = client.post("/mcp", content=body, headers=MCP_HEADERS | bearer(oauth_token("alice")) | headers)
    assert response.status_code < 500, response.text
    if response.status_code == 200:  # a JSON-RPC error, in a JSON-RPC response
        assert "error" in response.json(), response.text
    else:
        assert 400 <= response.status_code < 500, response.text
    assert count(db, Task) == 0
    assert count(db, AuditLog, col(AuditLog.action) != "worker.registered") == 0


def test_tool_arguments_of_the_wrong_shape_are_an_error_result_and_change_nothing(
    client: TestClient, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    task = rest_task(client, auth, "Alice's")
    token = oauth_token("alice")
    data(call(client, token, "claim_task", task_id=task["id"]))
    before, version = board_state(db), task_row(db, task["id"]).version
    refused_by_the_schema: list[tuple[str, dict[str, Any]]] = [
        ("get_task", {"task_id": "one"}),
        ("get_task", {}),
        ("get_task", {"task_id": 0}),
        ("create_task", {}),
        ("create_task", {"title": ""}),
        ("create_task", {"title": ["a list"]}),
        ("create_task", {"title": "x", "priority": "urgent-ish"}),
        ("update_task", {"task_id": task["id"], "status": "exploded"}),
        ("update_task", {"task_id": task["id"], "clear": ["title"]}),
        ("update_progress", {"task_id": task["id"], "percent": 101}),
        ("update_progress", {"task_id": task["id"], "percent": "half"}),
        ("complete_task", {"task_id": task["id"], "artifacts": [{"name": "x"}]}),
        ("claim_next_task", {"wait_seconds": 3600}),
        ("block_task", {"task_id": task["id"]}),
        ("wait_for_events", {"types": ["task.exploded"], "wait_seconds": 0}),
    ]
    for tool, arguments in refused_by_the_schema:
        text, _ = tool_error(call(client, token, tool, **arguments))
        assert tool in text, (tool, arguments, text)
    refused_by_the_service: list[tuple[str, dict[str, Any]]] = [
        ("create_task", {"title": "x", "labels": ["NOT A LABEL"]}),
        ("create_task", {"title": "x", "due_date": "next tuesday"}),
        ("update_task", {"task_id": task["id"], "assigned_to": "x" * 500}),
        ("complete_task", {"task_id": task["id"], "artifacts": [{"name": "x", "url": "javascript:alert(1)"}]}),
    ]
    for tool, arguments in refused_by_the_service:
        assert error_code(call(client, token, tool, **arguments)) == "validation_error", (tool, arguments)
    text, _ = tool_error(call(client, token, "drop_tables"))
    assert "drop_tables" in text
    assert board_state(db) == before
    assert task_row(db, task["id"]).version == version


# remote_mcp.Board passes these to the services unchecked, where the REST routes bound them
# (dependencies.TaskId le=MAX_ID, LeaseSeconds le=MAX_LEASE_SECONDS, Offset le=MAX_OFFSET): the
# datetime (a lease) or SQLite (an id, an offset; PostgreSQL finds no such task) overflows, and the
# caller gets internal_error, with a traceback logged. Remove each mark once Board bounds them.
OUT_OF_RANGE = [
    pytest.param("get_task", {"task_id": 2**63}, id="get_task id"),
    pytest.param("update_task", {"task_id": 2**70, "title": "x"}, id="update_task id"),
    pytest.param("add_comment", {"task_id": 2**63, "body": "x"}, id="add_comment id"),
    pytest.param("claim_task", {"lease_seconds": 10**12}, id="claim_task lease"),
    pytest.param("heartbeat", {"lease_seconds": 10**12}, id="heartbeat lease"),
    pytest.param("list_comments", {"offset": 2**70}, id="list_comments offset"),
    pytest.param("list_tasks", {"parent_id": 2**70}, id="list_tasks parent"),
    pytest.param("create_task", {"title": "x", "parent_id": 2**70}, id="create_task parent"),
    pytest.param("wait_for_events", {"after": 2**70, "wait_seconds": 0}, id="wait_for_events after"),
    pytest.param("get_task_history", {"offset": 2**70}, id="get_task_history offset"),
    pytest.param("claim_next_task", {"lease_seconds": 10**12}, id="claim_next_task lease"),
]


@pytest.mark.parametrize(("tool", "arguments"), OUT_OF_RANGE)
def test_a_number_past_what_the_rest_api_accepts_is_a_validation_error_not_an_internal_one(
    tool: str, arguments: dict[str, Any], client: TestClient, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    task = rest_task(client, auth, "Alice's")
    token = oauth_token("alice")
    if tool == "heartbeat":
        data(call(client, token, "claim_task", task_id=task["id"]))
    version, before = task_row(db, task["id"]).version, count(db, Task)
    if tool not in {"list_tasks", "create_task", "wait_for_events", "claim_next_task"}:
        arguments = {"task_id": task["id"]} | arguments
    assert error_code(call(client, token, tool, **arguments)) == "validation_error"
    assert count(db, Task) == before
    assert task_row(db, task["id"]).version == version


# ---------------------------------------------------------------- who sees what


def test_through_mcp_bob_cannot_see_or_touch_alices_project(
    client: TestClient, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    created = client.post("/api/projects", json={"slug": "secret", "name": "Secret"}, headers=auth("alice"))
    assert created.status_code == 201, created.text
    hidden = rest_task(client, auth, "Hidden", project_slug="secret", labels=["gpu"])
    client.post(f"/api/tasks/{hidden['id']}/comments", json={"body": "for alice"}, headers=auth("alice"))
    bob = oauth_token("bob")
    own = data(call(client, bob, "create_task", title="Bob's"))
    before, version = board_state(db), task_row(db, hidden["id"]).version
    hidden_calls: list[tuple[str, dict[str, Any]]] = [
        ("get_task", {}),
        ("get_task_history", {}),
        ("list_comments", {}),
        ("update_task", {"title": "Mine now"}),
        ("claim_task", {}),
        ("add_comment", {"body": "@alice hello"}),
        ("block_task", {"reason": "because"}),
        ("complete_task", {}),
    ]
    for tool, arguments in hidden_calls:
        assert error_code(call(client, bob, tool, task_id=hidden["id"], **arguments)) == "not_found", tool
    listed = data(call(client, bob, "list_tasks"))
    assert ([task["id"] for task in listed["tasks"]], listed["total"]) == ([own["id"]], 1)
    assert data(call(client, bob, "list_tasks", project="secret"))["total"] == 0
    assert data(call(client, bob, "list_tasks", labels=["gpu"]))["total"] == 0
    assert data(call(client, bob, "claim_next_task", labels=["gpu"]))["claimed"] is False
    events = data(call(client, bob, "wait_for_events", after=0, wait_seconds=0))["events"]
    assert events, "bob sees the events of his own task"
    assert all(event["task_id"] != hidden["id"] and event["project_slug"] != "secret" for event in events)
    assert data(call(client, bob, "wait_for_events", after=0, task_id=hidden["id"], wait_seconds=0))["events"] == []
    assert board_state(db)[:2] == before[:2]
    assert task_row(db, hidden["id"]).version == version
    # Alice, through MCP too, sees it all.
    assert data(call(client, oauth_token("alice"), "get_task", task_id=hidden["id"]))["title"] == "Hidden"


# ---------------------------------------------------------------- the SDK's client, over real HTTP


@asynccontextmanager
async def mcp_client(url: str, token: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=bearer(token), timeout=60) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield client


def structured(result: CallToolResult) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def test_the_tools_are_exactly_the_local_servers_with_their_schemas_and_descriptions(
    live_server: LiveServer, oauth_token: OAuthToken
) -> None:
    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None, str | None]:
        with TaskFlowClient("http://127.0.0.1:9", "unused") as local_client:
            async with Client(create_server(local_client)) as local:
                local_tools = (await local.list_tools()).tools
                local_instructions = local.instructions
        async with mcp_client(live_server.url, oauth_token("alice")) as remote:
            remote_tools = (await remote.list_tools()).tools
            remote_instructions = remote.instructions
        dump = [tool.model_dump(exclude_none=True) for tool in local_tools]
        return (
            dump,
            [tool.model_dump(exclude_none=True) for tool in remote_tools],
            local_instructions,
            remote_instructions,
        )

    local, remote, local_instructions, remote_instructions = asyncio.run(run())
    assert [tool["name"] for tool in remote] == [tool["name"] for tool in local]
    assert len(remote) == 16
    for mine, theirs in zip(local, remote, strict=True):
        for key in ("description", "input_schema", "annotations"):
            assert theirs.get(key) == mine.get(key), (mine["name"], key)
    assert remote_instructions == local_instructions


def test_two_callers_at_once_each_get_their_own_results(live_server: LiveServer, oauth_token: OAuthToken) -> None:
    tokens = {"alice": oauth_token("alice"), "bob": oauth_token("bob", client_id="cursor")}

    async def session(who: str) -> list[dict[str, Any]]:
        async with mcp_client(live_server.url, tokens[who]) as client:
            created = [structured(await client.call_tool("create_task", {"title": f"{who} {n}"})) for n in range(5)]
            listed = structured(await client.call_tool("list_tasks", {"limit": 100}))
            assert {task["created_by"] for task in created} == {who}
            assert {task["title"] for task in listed["tasks"]} == {f"{who} {n}" for n in range(5)}
            return created

    async def raw(http: httpx.AsyncClient, who: str, n: int) -> tuple[str, Any]:
        message = {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": "create_task", "arguments": {"title": f"raw {who} {n}"}},
        }
        response = await http.post("/mcp", json=message, headers=MCP_HEADERS | bearer(tokens[who]))
        return who, response.json()["result"]["structuredContent"]

    async def run() -> None:
        alice, bob = await asyncio.gather(session("alice"), session("bob"))
        assert not {task["id"] for task in alice} & {task["id"] for task in bob}
        # One connection pool, requests of both interleaved on it: no answer goes to the other.
        async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as http:
            answers = await asyncio.gather(*(raw(http, ["alice", "bob"][n % 2], n) for n in range(30)))
        for who, task in answers:
            assert task["created_by"] == who
            assert task["title"].startswith(f"raw {who} ")

    asyncio.run(run())


# ---------------------------------------------------------------- waiting


async def until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def waiting(server: LiveServer) -> int:
    return int(server.app.state.wakeups.waiting(Topic.work))


def threads_in_use(server: LiveServer) -> int:
    async def borrowed() -> int:
        return int(anyio.to_thread.current_default_thread_limiter().borrowed_tokens)

    loop = server.app.state.wakeups.loop
    assert loop is not None
    return int(asyncio.run_coroutine_threadsafe(borrowed(), loop).result(timeout=10))


def connections_in_use(server: LiveServer) -> int:
    engine: Engine = server.app.state.engine
    return int(engine.pool.checkedout())  # type: ignore[attr-defined]


@pytest.fixture
def quiet_server(settings: Settings) -> Iterator[LiveServer]:
    """A live server with four request threads and connections, whose waiters only a wake-up answers in time."""
    changes = {"db_pool_size": 4, "db_max_overflow": 0, "wait_recheck_seconds": 15.0}
    with serving(create_app(settings.model_copy(update=changes))) as server:
        yield server


def test_a_waiting_claim_takes_a_task_created_meanwhile_through_rest(
    quiet_server: LiveServer, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with (
            mcp_client(quiet_server.url, oauth_token("bob")) as client,
            httpx.AsyncClient(base_url=quiet_server.url, timeout=30) as http,
        ):
            claim = asyncio.ensure_future(client.call_tool("claim_next_task", {"wait_seconds": 40}))
            await until(lambda: waiting(quiet_server) == 1, "the claim to wait")
            assert not claim.done()
            created = (await http.post("/api/tasks", json={"title": "Fresh"}, headers=auth("bob"))).json()
            return created, structured(await claim)

    created, claimed = asyncio.run(run())
    assert claimed["claimed"] is True
    assert (claimed["task"]["id"], claimed["task"]["status"], claimed["task"]["assigned_to"]) == (
        created["id"],
        "in_progress",
        "bob",
    )
    [row] = audit_rows(db, task_id=created["id"], action="task.claimed")
    assert (row.actor_id, row.via, row.client_id) == ("bob", "mcp", CLIENT_ID)


def test_twenty_mcp_waiters_hold_no_connection_and_no_thread_and_each_gets_a_distinct_task_or_nothing(
    quiet_server: LiveServer, auth: AuthHeaders, oauth_token: OAuthToken, make_token: TokenFactory, db: Engine
) -> None:
    # Admins, who may claim any task: the test is about waiting, not about who sees what. An OAuth
    # token carries no role at /mcp, so these are API tokens, which carry their subject's.
    tokens = [make_token(f"agent-{n}", role="admin") for n in range(20)]

    async def claim(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "claim_next_task", "arguments": {"wait_seconds": 60}},
        }
        response = await http.post("/mcp", json=message, headers=MCP_HEADERS | bearer(token))
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()["result"]["structuredContent"]
        return found

    async def run() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(base_url=quiet_server.url, timeout=90, limits=limits) as http:
            claims = [asyncio.ensure_future(claim(http, token)) for token in tokens]
            await until(lambda: waiting(quiet_server) == 20, "twenty claims to wait")
            assert connections_in_use(quiet_server) == 0
            assert threads_in_use(quiet_server) == 0
            # Others are served meanwhile, through REST and through MCP.
            assert (await http.get("/api/tasks", headers=auth("alice"))).status_code == 200
            listed = await http.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_tasks"}},
                headers=MCP_HEADERS | bearer(oauth_token("alice")),
            )
            assert listed.json()["result"]["isError"] is False
            for number in range(12):
                created = await http.post("/api/tasks", json={"title": f"Job {number}"}, headers=auth("alice"))
                assert created.status_code == 201
            await until(
                lambda: count(db, Task, col(Task.status) == "in_progress") == 12 and waiting(quiet_server) == 8,
                "twelve claims to be answered",
            )
            quiet_server.app.state.wakeups.drain()  # what SIGTERM does first: the rest answer now
            return list(await asyncio.gather(*claims))

    answers = asyncio.run(run())
    claimed = [answer["task"]["id"] for answer in answers if answer["claimed"]]
    assert len(claimed) == 12
    assert len(set(claimed)) == 12
    assert [answer["task"] for answer in answers if not answer["claimed"]] == [None] * 8
    assert connections_in_use(quiet_server) == 0
    assert len(audit_rows(db, action="task.claimed")) == 12


def test_a_client_that_hangs_up_mid_wait_gets_nothing_claimed_for_it(
    quiet_server: LiveServer, auth: AuthHeaders, oauth_token: OAuthToken, db: Engine
) -> None:
    bob = oauth_token("bob")

    async def hang_up_raw() -> None:
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "claim_next_task", "arguments": {"wait_seconds": 60}},
        }
        http = httpx.AsyncClient(base_url=quiet_server.url, timeout=90)
        request = asyncio.ensure_future(http.post("/mcp", json=message, headers=MCP_HEADERS | bearer(bob)))
        await until(lambda: waiting(quiet_server) == 1, "the raw claim to wait")
        request.cancel()
        await http.aclose()

    async def hang_up_sdk() -> None:
        async with mcp_client(quiet_server.url, bob) as client:
            request = asyncio.ensure_future(client.call_tool("claim_next_task", {"wait_seconds": 60}))
            await until(lambda: waiting(quiet_server) == 1, "the SDK's claim to wait")
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

    for hang_up in (hang_up_raw, hang_up_sdk):
        asyncio.run(hang_up())
        with httpx.Client(base_url=quiet_server.url, timeout=30) as http:
            # Created at once: a waiter the server still kept for the client that left would be woken by it.
            task = http.post("/api/tasks", json={"title": "For whoever is there"}, headers=auth("bob")).json()
            asyncio.run(
                until(
                    lambda: waiting(quiet_server) == 0 and threads_in_use(quiet_server) == 0,
                    f"{hang_up.__name__}: the server to see its client go",
                )
            )
            after = http.get(f"/api/tasks/{task['id']}", headers=auth("bob")).json()
            assert (after["status"], after["assigned_to"]) == ("pending", None), hang_up.__name__
            assert connections_in_use(quiet_server) == 0
            # Done with it: the next round starts with nothing to claim.
            assert http.delete(f"/api/tasks/{task['id']}", headers=auth("bob")).status_code == 204
    assert audit_rows(db, action="task.started") == []
    assert audit_rows(db, action="task.claimed") == []


# ---------------------------------------------------------------- rate limits


def test_tool_calls_count_against_the_callers_write_limit_and_reads_do_not(
    app_pool: AppPool, settings: Settings, oauth_token: OAuthToken, auth: AuthHeaders, db: Engine
) -> None:
    limited = settings.model_copy(update={"rate_limit_write": "2/minute"})
    with app_pool.client(limited) as client:
        token = oauth_token("alice")
        first = data(call(client, token, "create_task", title="One"))
        data(call(client, token, "update_task", task_id=first["id"], title="One again"))
        third = call(client, token, "create_task", title="Three")
        assert third.status_code == 429, third.text
        assert int(third.headers["Retry-After"]) >= 1
        assert third.json()["code"] == "rate_limited"
        assert count(db, Task) == 1
        # Reads are not writes; and the limit is the caller's, not the endpoint's.
        for _ in range(5):
            assert data(call(client, token, "get_task", task_id=first["id"]))["title"] == "One again"
            assert result_of(rpc(client, token, "tools/list"))["tools"]
        assert data(call(client, oauth_token("bob"), "create_task", title="Bob's"))["created_by"] == "bob"
        # The same budget as the caller's REST writes.
        assert client.post("/api/tasks", json={"title": "REST"}, headers=auth("alice")).status_code == 429


def test_a_request_refused_for_its_host_or_origin_costs_no_rate_limit(
    app_pool: AppPool, settings: Settings, oauth_token: OAuthToken, db: Engine
) -> None:
    limited = settings.model_copy(update={"rate_limit_write": "1/minute"})
    with app_pool.client(limited) as client:
        token = oauth_token("alice")
        for headers in ({"Host": "evil.example"}, {"Origin": "https://evil.example"}):
            assert call(client, token, "create_task", title="Refused", headers=headers).status_code in {421, 403}
        assert data(call(client, token, "create_task", title="Allowed"))["title"] == "Allowed"
        assert count(db, Task) == 1


def test_each_tool_call_is_counted_by_tool_and_outcome(client: TestClient, oauth_token: OAuthToken) -> None:
    def calls(tool: str, outcome: str) -> float:
        return REGISTRY.get_sample_value("taskflow_mcp_tool_calls_total", {"tool": tool, "outcome": outcome}) or 0.0

    before = calls("create_task", "ok"), calls("get_task", "error")
    token = oauth_token("alice")
    data(call(client, token, "create_task", title="Counted"))
    assert error_code(call(client, token, "get_task", task_id=999_999)) == "not_found"
    assert (calls("create_task", "ok"), calls("get_task", "error")) == (before[0] + 1, before[1] + 1)


def test_mcp_cors_lets_a_browser_client_send_the_newer_protocols_headers(client: TestClient) -> None:
    preflight = client.options(
        "/mcp",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, mcp-method, mcp-name, x-request-id",
        },
    )
    assert preflight.status_code == 200, preflight.text
    allowed = {name.strip().lower() for name in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "mcp-method", "mcp-name", "x-request-id"} <= allowed
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
