"""TaskFlow's MCP tools at `/mcp`, in the API itself, each call made as its own caller.

The tools are `taskflow_mcp`'s, with their names, arguments, descriptions and results: here they
run against `Board`, which calls the services in-process in the caller's one transaction, as the
REST route would, with the same audit rows (which also say `via: mcp` and the OAuth client).

The endpoint is an OAuth 2.1 resource server, as the MCP authorization specification asks:
`Gate` checks every request's bearer token with the API's JWKS verifier, answers 401 with a
`resource_metadata` challenge (RFC 9728) or 403 `insufficient_scope`, and counts the call against
the caller's rate limit. The SDK's streamable-HTTP transport runs stateless, so any instance can
answer any request, with its transport security (allowed hosts and origins) switched on.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from fastapi.exceptions import RequestValidationError
from mcp.server import MCPServer
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python
from starlette.requests import ClientDisconnect, Request
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

import comments
import services
import taskflow_mcp
import telemetry
from access import Actor, actor_for
from audit import current_request_id
from auth import Principal
from config import Settings
from dependencies import RequestSession, in_transaction, principal_of, refuse_when_busy
from errors import BadRequest, InsufficientScope, MethodNotAllowed, TaskFlowError, Unauthorized
from events import EventReader
from handlers import answer_for, error_response
from models import (
    AuditRead,
    ClaimRequest,
    CommentCreate,
    CommentRead,
    EventQuery,
    Id,
    IdPage,
    LeaseSeconds,
    Note,
    Offset,
    ProgressNote,
    TaskCreate,
    TaskQuery,
    TaskResult,
    TaskUpdate,
    utc_now,
)
from ratelimit import RateLimiter
from taskflow_client import ApiError, Artifact, ClearableTaskField, EventType, TaskPriority, TaskSort, TaskStatus
from wakeups import NothingYet, Topic
from workflow import TaskRecord, as_read

READ = "taskflow:read"
WRITE = "taskflow:write"
SCOPES = (READ, WRITE)
# An API token (Better Auth's jwt plugin) carries its subject's whole authority.
API_TOKEN_SCOPES = frozenset(SCOPES)
# The tools that wait, when asked to, for what they look for, and what wakes them.
WAITING = {"claim_next_task": Topic.work, "wait_for_events": Topic.events}
STATE_KEY = "mcp_caller"
# What a waiting call whose client hung up returns: no one reads it.
LEFT = CallToolResult(content=[TextContent(type="text", text="The client disconnected")], is_error=True)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Caller:
    """Who a request to /mcp acts as, and what its token allows."""

    actor: Actor
    scopes: frozenset[str]


def needed_scope(hints: ToolAnnotations) -> str:
    return READ if hints.read_only_hint else WRITE


TOOL_SCOPES = {tool.__name__: needed_scope(hints) for tool, hints in taskflow_mcp.TOOLS}


# ---------------------------------------------------------------- the board, in-process


class Answer(NamedTuple):
    data: Any


class Listing(NamedTuple):
    items: list[Any]
    total: int


def _valid(model: type[M], fields: dict[str, Any]) -> M:
    """`fields` as the REST route's model takes them, or the route's 422."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from None


class Bounds(BaseModel):
    """The numbers the REST routes bound in their path and query (`dependencies.TaskId`, `LeaseSeconds`,
    `Offset`), under the tools' names: checked before a tool runs, so a huge one is a 422, never a 500."""

    model_config = ConfigDict(extra="ignore")

    task_id: Id | None = None
    lease_seconds: LeaseSeconds | None = None
    offset: Offset | None = None


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    # As the client sends them: None means "not given", never "set to null".
    return {name: value for name, value in fields.items() if value is not None}


def _valid_value(adapter: TypeAdapter[str], value: str, name: str) -> str:
    """One argument as its REST query parameter takes it, or the route's 422 naming it."""
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        errors = [{**item, "loc": (name, *item["loc"])} for item in error.errors(include_url=False)]
        raise RequestValidationError(errors) from None


_NOTE: TypeAdapter[str] = TypeAdapter(Note)
_PROGRESS_NOTE: TypeAdapter[str] = TypeAdapter(ProgressNote)
_AUDIT_ROWS: TypeAdapter[list[AuditRead]] = TypeAdapter(list[AuditRead])
_COMMENTS: TypeAdapter[list[CommentRead]] = TypeAdapter(list[CommentRead])


def _json(value: Any) -> Any:
    """What the REST response's body would parse to."""
    return to_jsonable_python(value, by_alias=True)


def _task(task: TaskRecord | dict[str, Any]) -> Answer:
    return Answer(_json(task if isinstance(task, dict) else as_read(task, utc_now())))


class Board:
    """`taskflow_mcp.Board` in the API: each method is its REST route's service call, made in the
    transaction `run_request` opened for the caller, so a tool call is one transaction.

    `final` is false while a waiting tool may still wait: a claim or an event read that finds
    nothing then raises `NothingYet`, as the REST routes' attempts do.
    """

    def __init__(self, session: RequestSession, actor: Actor, lease_seconds: int | None) -> None:
        self.session = session
        self.actor = actor
        self.lease_seconds = lease_seconds  # the server's default lease (LEASE_SECONDS)
        self.final = True
        self._feed: EventReader | None = None

    # ------------------------------------------------------------ reading

    def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        priority: TaskPriority | None = None,
        assigned_to: str | None = None,
        project: str | None = None,
        parent_id: int | None = None,
        search: str | None = None,
        ready: bool = False,
        label: Iterable[str] | None = None,
        sort: TaskSort | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Listing:
        fields = {
            "status": status,
            "priority": priority,
            "assigned_to": assigned_to,
            "project": project,
            "parent_id": parent_id,
            "q": search,
            "ready": True if ready else None,
            "label": list(label) if label else None,
            "sort": sort,
            "limit": limit,
            "offset": offset,
        }
        page = services.list_tasks(self.session, self.actor, _valid(TaskQuery, _given(fields)))
        return Listing(_json(page.rows), page.total)

    def get_task(self, task_id: int) -> Answer:
        return _task(services.read_task(self.session, self.actor, task_id))

    def task_history(self, task_id: int, *, limit: int | None = None, offset: int | None = None) -> Listing:
        query = _valid(IdPage, _given({"limit": limit, "offset": offset}))
        page = services.task_history(self.session, self.actor, task_id, query)
        return Listing(_AUDIT_ROWS.dump_python(_AUDIT_ROWS.validate_python(page.rows), mode="json"), page.total)

    def list_comments(self, task_id: int, *, limit: int | None = None, offset: int | None = None) -> Listing:
        page = comments.list_comments(self.session, self.actor, task_id, limit or 50, offset or 0)
        return Listing(_COMMENTS.dump_python(_COMMENTS.validate_python(page.rows), mode="json"), page.total)

    def events(
        self,
        *,
        after: int | None = None,
        limit: int | None = None,
        project: str | None = None,
        task_id: int | None = None,
        type: Iterable[EventType] | None = None,
        mentioning: str | None = None,
        wait_seconds: int | None = None,
    ) -> Answer:
        if self._feed is None:
            # Made once per call: a read that starts "from now" keeps that starting point across its waits.
            fields = {
                "after": after,
                "limit": limit,
                "project": project,
                "task_id": task_id,
                "type": list(type) if type else None,
                "mentioning": mentioning,
            }
            self._feed = EventReader(self.session, self.actor, _valid(EventQuery, _given(fields)))
        page = self._feed.read()
        if not page["events"] and not self.final:
            raise NothingYet(soon=self._feed.held_back)
        return Answer(_json(page))

    # ------------------------------------------------------------ writing

    def create_task(
        self,
        title: str,
        *,
        description: str | None = None,
        priority: TaskPriority | None = None,
        project: str | None = None,
        assigned_to: str | None = None,
        parent_id: int | None = None,
        due_date: str | None = None,
        labels: Iterable[str] | None = None,
    ) -> Answer:
        fields = {
            "title": title,
            "description": description,
            "priority": priority,
            "project_slug": project,
            "assigned_to": assigned_to,
            "parent_id": parent_id,
            "due_date": due_date,
            "labels": None if labels is None else list(labels),
        }
        return _task(services.create_task(self.session, self.actor, _valid(TaskCreate, _given(fields))))

    def update_task(
        self,
        task_id: int,
        *,
        title: str | None = None,
        description: str | None = None,
        priority: TaskPriority | None = None,
        status: TaskStatus | None = None,
        assigned_to: str | None = None,
        project: str | None = None,
        parent_id: int | None = None,
        due_date: str | None = None,
        labels: Iterable[str] | None = None,
        clear: Iterable[ClearableTaskField] = (),
        if_version: int | None = None,
    ) -> Answer:
        fields = {
            "title": title,
            "description": description,
            "priority": priority,
            "status": status,
            "assigned_to": assigned_to,
            "project_slug": project,
            "parent_id": parent_id,
            "due_date": due_date,
            "labels": None if labels is None else list(labels),
        }
        changes = _given(fields) | {"project_slug" if name == "project" else name: None for name in clear}
        task = services.update_task(
            self.session,
            self.actor,
            task_id,
            _valid(TaskUpdate, changes),
            lease_seconds=self.lease_seconds,
            expected_version=None if if_version is None else frozenset({if_version}),
        )
        return _task(task)

    def claim_next(
        self,
        *,
        project: str | None = None,
        min_priority: TaskPriority | None = None,
        lease_seconds: int | None = None,
        labels: Iterable[str] | None = None,
        wait_seconds: int | None = None,  # the tool's wrapper waits (`call`): no thread is held meanwhile
    ) -> Answer:
        fields = {
            "project": project,
            "min_priority": min_priority,
            "lease_seconds": lease_seconds or self.lease_seconds,
            "labels": list(labels) if labels else None,
        }
        task = services.claim_task(self.session, self.actor, _valid(ClaimRequest, _given(fields)))
        if task is None and not self.final:
            raise NothingYet
        telemetry.count_claim(task is not None)
        return Answer(None) if task is None else _task(task)

    def start_task(self, task_id: int, *, lease_seconds: int | None = None) -> Answer:
        lease = lease_seconds or self.lease_seconds
        return _task(services.start_task(self.session, self.actor, task_id, lease_seconds=lease, expected_version=None))

    def heartbeat(self, task_id: int, *, lease_seconds: int | None = None) -> Answer:
        return _task(services.heartbeat(self.session, self.actor, task_id, lease_seconds=lease_seconds))

    def update_progress(self, task_id: int, percent: int, note: str | None = None) -> Answer:
        note = None if note is None else _valid_value(_PROGRESS_NOTE, note, "note")
        task = services.update_progress(self.session, self.actor, task_id, percent, note, expected_version=None)
        return _task(task)

    def submit_for_review(self, task_id: int) -> Answer:
        return _task(services.submit_for_review(self.session, self.actor, task_id, expected_version=None))

    def complete_task(
        self, task_id: int, *, summary: str | None = None, artifacts: Iterable[Artifact] | None = None
    ) -> Answer:
        given = _given({"summary": summary, "artifacts": None if artifacts is None else [dict(a) for a in artifacts]})
        result = _valid(TaskResult, given) if given else None
        return _task(services.complete_task(self.session, self.actor, task_id, result, expected_version=None))

    def block_task(self, task_id: int, reason: str) -> Answer:
        note = _valid_value(_NOTE, reason, "reason")
        return _task(services.block_task(self.session, self.actor, task_id, note, expected_version=None))

    def release_task(self, task_id: int) -> Answer:
        return _task(services.release_task(self.session, self.actor, task_id, expected_version=None))

    def add_comment(self, task_id: int, body: str) -> Answer:
        comment = comments.add_comment(self.session, self.actor, task_id, _valid(CommentCreate, {"body": body}))
        return Answer(_json(CommentRead.model_validate(comment)))


# ---------------------------------------------------------------- the tools


async def error_result(request: Request, error: Exception) -> CallToolResult:
    """What the REST route would have answered to `error`, as the tool error `taskflow_mcp` makes of it."""
    response = await answer_for(request, error)
    text = bytes(response.body).decode()
    body = json.loads(text)
    message = body.get("error", "Request failed")
    return taskflow_mcp.error_result(ApiError(response.status_code, body.get("code", ""), message, body, text))


def remote(tool: Callable[..., Any]) -> Callable[..., Any]:
    """`tool` as the SDK calls it here: with the caller's `Board`, in one transaction per attempt."""
    signature = inspect.signature(tool, eval_str=True)
    _board, *parameters = signature.parameters.values()
    topic = WAITING.get(tool.__name__)

    @functools.wraps(tool)
    async def call(ctx: Context, **arguments: Any) -> Any:
        request = cast(Request, ctx.request_context.request)
        caller: Caller = request.scope["state"][STATE_KEY]
        # The SDK runs the call in its own task, outside the request's context: carry the request id over.
        current_request_id.set(request.scope["state"].get("request_id"))
        app = request.app
        reading = TOOL_SCOPES[tool.__name__] == READ
        session = RequestSession(app.state.engine, reading, app.state.known_workers, app.state.wakeups)
        board = Board(session, caller.actor, app.state.settings.lease_seconds)

        async def attempt(final: bool) -> Any:
            board.final = final
            return await in_transaction(session, caller.actor, lambda: tool(board, **arguments))

        given = signature.bind_partial(board, **arguments)
        given.apply_defaults()
        wait = int(given.arguments.get("wait_seconds") or 0) if topic is not None else 0
        try:
            _valid(Bounds, arguments)
            # Answered as JSON, the call is not cancelled when its client hangs up: a wait asks
            # before each attempt, as the REST routes do, so nothing is claimed for no one.
            result = await app.state.wakeups.wait_for(topic or Topic.work, wait, attempt, request.is_disconnected, LEFT)
        except Exception as error:
            result = await error_result(request, error)
        telemetry.count_tool_call(tool.__name__, failed=isinstance(result, CallToolResult) and result.is_error)
        return result

    # The SDK builds the input schema from this: the board is not the model's to give.
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    call.__signature__ = signature.replace(parameters=[*parameters, context])  # type: ignore[attr-defined]
    annotations = {name: value for name, value in tool.__annotations__.items() if name != _board.name}
    call.__annotations__ = annotations | {"ctx": Context}
    return call


def create_server() -> MCPServer:
    """The MCP server with every tool of `taskflow_mcp.TOOLS`, run in-process as each caller."""
    server = MCPServer(
        "taskflow",
        version=taskflow_mcp.package_version(),
        instructions=taskflow_mcp.INSTRUCTIONS,
        log_level="WARNING",
    )
    for tool, hints in taskflow_mcp.TOOLS:
        server.add_tool(remote(tool), description=inspect.getdoc(tool), annotations=hints)
    return server


def transport(server: MCPServer, settings: Settings) -> StreamableHTTPASGIApp:
    """The SDK's streamable-HTTP transport for `server`: stateless, JSON answers, hosts and origins checked.

    Its session manager must run (`server.session_manager.run()`) while requests come in.
    """
    # The Starlette app this returns is not served: its session manager is, behind `Gate` and the
    # app's own middleware (which limits bodies to MAX_BODY_BYTES, as for REST).
    server.streamable_http_app(stateless_http=True, json_response=True, transport_security=transport_security(settings))
    return StreamableHTTPASGIApp(server.session_manager)


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's checks against DNS rebinding: the Host and Origin headers /mcp answers to."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=settings.mcp_allowed_hosts,
        allowed_origins=settings.mcp_allowed_origins,
    )


# ---------------------------------------------------------------- the gate


class Gate:
    """The OAuth resource server in front of /mcp: who calls, whether their token allows the call,
    and their rate limit, before the SDK reads the request."""

    # The route's name in the request log and metrics, which read it from `scope["route"]`.
    path = "/mcp"

    def __init__(self, settings: Settings) -> None:
        self.metadata_url = str(build_resource_metadata_url(AnyHttpUrl(settings.mcp_resource)))
        # The transport checks these too; checked here first, a refused request costs no rate limit.
        self.security = TransportSecurityMiddleware(transport_security(settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        request = Request(scope, receive)
        try:
            caller = await self.caller(request)
            scope["state"]["actor"] = caller.actor  # for the request log, refusals included
            if request.method != "POST":
                # Stateless: no session to end (DELETE), and nothing to push on a stream of its own
                # (GET), which the specification answers with 405.
                raise MethodNotAllowed("/mcp takes POST: JSON-RPC messages", headers={"Allow": "POST"})
            refused = await self.security.validate_request(request, is_post=True)
            if refused is not None:
                await refused(scope, receive, send)
                return
            body = await request.body()
            await self.admit(request, caller, body)
        except TaskFlowError as error:
            await error_response(error)(scope, receive, send)
            return
        except ClientDisconnect:
            return  # gone before its request was read: nothing was done, no one to answer
        scope["state"][STATE_KEY] = caller
        mcp: StreamableHTTPASGIApp = request.app.state.mcp
        await mcp(scope, _replay(body, receive), send)

    async def caller(self, request: Request) -> Caller:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self.refuse("Missing bearer token: send 'Authorization: Bearer <access token>'", given=False)
        try:
            principal = await principal_of(request, token.strip())
            actor = actor_for(principal, via="mcp")  # refuses a subject reserved for TaskFlow itself
        except Unauthorized as error:
            raise self.refuse(error.message) from None
        scopes = self.scopes_of(principal, request.app.state.settings)
        if not scopes:
            raise self.insufficient(frozenset(), frozenset(SCOPES))
        return Caller(actor, scopes)

    def scopes_of(self, principal: Principal, settings: Settings) -> frozenset[str]:
        if principal.audience == "mcp":
            return principal.scopes & API_TOKEN_SCOPES
        if not settings.mcp_accept_api_tokens:
            raise self.refuse("Token is not for this audience: get an access token for this MCP server")
        return API_TOKEN_SCOPES

    async def admit(self, request: Request, caller: Caller, body: bytes) -> None:
        """Refuse a tool call the token's scopes do not allow; count the request against the caller's rate limit."""
        # A tool not listed needs the most a call can: the SDK refuses it anyway.
        calls = [name for message in _messages(body) if (name := _tool_called(message)) is not None]
        needed = frozenset(TOOL_SCOPES.get(name, WRITE) for name in calls)
        if not needed <= caller.scopes:
            raise self.insufficient(caller.scopes, needed)
        if calls:
            refuse_when_busy(request.app.state.settings.max_queued_requests)
        limiter: RateLimiter | None = request.app.state.rate_limiter
        if limiter is not None:
            request.scope["state"]["rate_limit_headers"] = await limiter.check(caller.actor.id, writing=WRITE in needed)

    def refuse(self, message: str, *, given: bool = True) -> Unauthorized:
        """401 with the challenge that sends an MCP client to the metadata, and from there to sign-in."""
        challenge = f'Bearer resource_metadata="{self.metadata_url}", scope="{" ".join(SCOPES)}"'
        if given:  # RFC 6750: no error code when the request carried no token at all
            challenge += f', error="invalid_token", error_description="{_quotable(message)}"'
        return Unauthorized(message, headers={"WWW-Authenticate": challenge})

    def insufficient(self, granted: frozenset[str], needed: frozenset[str]) -> InsufficientScope:
        """403 naming the scopes to ask for (the MCP specification's step-up authorization): those the
        token has and those the call needs, since a new token replaces the old one rather than adds to it."""
        missing = " and ".join(f"'{scope}'" for scope in sorted(needed - granted))
        message = f"This call needs the {missing} scope, which the token was not granted"
        wanted = " ".join(sorted(granted | needed))
        challenge = (
            f'Bearer error="insufficient_scope", scope="{wanted}", resource_metadata="{self.metadata_url}", '
            f'error_description="{_quotable(message)}"'
        )
        return InsufficientScope(message, headers={"WWW-Authenticate": challenge})


def _quotable(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


def _messages(body: bytes) -> list[dict[str, Any]]:
    """A body's JSON-RPC messages (one, or a batch). What the gate cannot read is refused here, so
    that no scope check ever rests on the SDK refusing it too."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep for the parser
        raise BadRequest("The body is not JSON: send a JSON-RPC message") from None
    messages = parsed if isinstance(parsed, list) else [parsed]
    if not messages or not all(isinstance(message, dict) for message in messages):
        raise BadRequest("The body is not a JSON-RPC message (an object, or a list of them)")
    return messages


def _tool_called(message: dict[str, Any]) -> str | None:
    """The name of the tool a message calls ("" when it names none), or None when it calls no tool."""
    if message.get("method") != "tools/call":
        return None
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return name if isinstance(name, str) else ""


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the SDK, giving it the body the gate has already read."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def routes(settings: Settings) -> list[BaseRoute]:
    """/mcp and its protected resource metadata (RFC 9728), which names the issuer clients sign in with."""
    metadata = create_protected_resource_routes(
        resource_url=AnyHttpUrl(settings.mcp_resource),
        # As configured, not as a URL type spells it: a path-less issuer would gain a "/" that its
        # tokens' `iss` and its own metadata do not have (RFC 8414 compares them as strings).
        authorization_servers=[cast(AnyHttpUrl, settings.mcp_issuer)],
        scopes_supported=list(SCOPES),
        resource_name="TaskFlow",
    )
    return [Route("/mcp", endpoint=Gate(settings)), *metadata]
