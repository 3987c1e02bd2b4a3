"""What routes receive through `Depends`, and the one trip into the thread pool that runs them.

Every dependency here is `async` and does no blocking I/O, so FastAPI resolves them on the event
loop; the route (a plain `def`), its queries, the response's serialization and the commit then run
together in one thread-pool call (`TaskFlowRoute`). Auth failures become 401 (or 503 when no
signing key can be had) here, so routes never see a token.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

from anyio.to_thread import current_default_thread_limiter
from fastapi import Body, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import ResponseValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic_core import to_json
from sqlalchemy import Connection, Engine
from sqlalchemy.engine.interfaces import CoreExecuteOptionsParameter
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm.session import _BindArguments
from sqlmodel import Session
from starlette.responses import Response as StarletteResponse

import idempotency
import services
import telemetry
from access import SYSTEM, Actor, actor_for
from auth import InvalidToken, JWKSVerifier, KeySetUnavailable, Principal
from database import mark_read_only
from errors import BUSY_RETRY_AFTER_SECONDS, ServiceUnavailable, Unauthorized
from models import MAX_ID, MAX_LEASE_SECONDS, MAX_OFFSET, SLUG_PATTERN, WORKER_ID_PATTERN, ClaimRequest
from ratelimit import RateLimiter
from wakeups import NothingYet, Wakeups

T = TypeVar("T")
READ_METHODS = frozenset({"GET", "HEAD"})
# Worker ids known to have a row. Workers are never deleted, so an id only ever leaves by eviction.
KNOWN_WORKERS_SIZE = 100_000


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


# ---------------------------------------------------------------- the caller

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A JWT from Better Auth's `/api/auth/token` (or the development issuer).",
)


def _verify(verifier: JWKSVerifier, token: str) -> Principal:
    try:
        return verifier.verify(token)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None
    except KeySetUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None


async def principal_of(request: Request, token: str) -> Principal:
    """Whom `token` names: 401 when it cannot be trusted, 503 when no signing key can be had."""
    verifier: JWKSVerifier = request.app.state.verifier
    # A token seen before is answered from memory; only a new one is checked, in a thread,
    # because checking it may mean fetching the key set.
    principal = verifier.cached(token)
    if principal is None:
        principal = await run_in_threadpool(_verify, verifier, token)
    return principal


async def get_current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Actor:
    if credentials is None:
        raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <JWT>'")
    principal = await principal_of(request, credentials.credentials)
    if principal.audience != "api":
        # An OAuth token issued for the MCP endpoint is good there only (RFC 8707).
        raise Unauthorized("Token is not for this audience")
    actor = actor_for(principal)
    state = request.scope["state"]
    state["actor"] = actor  # for the request log
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        # Sent with whatever the response turns out to be (handlers.RequestIdMiddleware).
        state["rate_limit_headers"] = await limiter.check(actor.id, writing=request.method not in READ_METHODS)
    return actor


CurrentUser = Annotated[Actor, Depends(get_current_user)]


async def still_signed_in(request: Request) -> bool:
    """Whether the request's token is still good: a stream outlives the moment it was checked.

    A token seen before is answered from memory until its `exp`; after that it is checked again,
    and an expired one is not. Keys that cannot be fetched right now do not end a stream.
    """
    token = request.headers.get("authorization", "").partition(" ")[2]
    verifier: JWKSVerifier = request.app.state.verifier
    if verifier.cached(token) is not None:
        return True
    try:
        await run_in_threadpool(verifier.verify, token)
    except InvalidToken:
        return False
    except KeySetUnavailable:
        return True
    return True


class KnownWorkers:
    """The ids whose worker row exists, so a request need not read it: bounded, most recent kept.

    With each id its type as this process first read it, for the request log: an admin's change of
    a worker's type shows there once the id is evicted or the process restarts. Audit rows read
    the type afresh.
    """

    def __init__(self, size: int = KNOWN_WORKERS_SIZE) -> None:
        self.size = size
        self._types: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, worker_id: object) -> bool:
        with self._lock:
            if worker_id not in self._types:
                return False
            self._types.move_to_end(worker_id)  # type: ignore[arg-type]
            return True

    def type_of(self, worker_id: str) -> str | None:
        return self._types.get(worker_id)

    def add(self, worker_id: str, worker_type: str) -> None:
        with self._lock:
            self._types[worker_id] = worker_type
            if len(self._types) > self.size:
                self._types.popitem(last=False)


# ---------------------------------------------------------------- the request's session


class RequestSession(Session):
    """The request's one connection and transaction, and what must happen in it before the route runs.

    `TaskFlowRoute` opens it in the route's thread (`begin_for`) and commits it after the response
    is serialized, so a failed commit is an error response, never a 2xx for nothing. Services
    that use Core statements get the connection itself; ORM queries join its transaction, and
    the session's flushes go into it (the ORM never commits: `join_transaction_mode`).
    """

    def __init__(self, engine: Engine, reading: bool, known_workers: KnownWorkers, wakeups: Wakeups) -> None:
        super().__init__(expire_on_commit=False, join_transaction_mode="rollback_only")
        self.engine = engine
        self.wakeups = wakeups
        self.reading = reading
        self.known_workers = known_workers
        self.actor = SYSTEM
        self.register = False
        # The request's Idempotency-Key and fingerprint, when it sent one.
        self.idempotency: tuple[str, str] | None = None
        self.pending: idempotency.Pending | None = None
        self.committing = False
        self._connection: Connection | None = None

    @property
    def read_only(self) -> bool:
        # A first request of a caller writes their worker row, whatever its method.
        return self.reading and not self.register

    def begin_for(self, actor: Actor) -> None:
        """Open the request's connection and transaction for `actor`: autocommit for a read."""
        self.actor = actor
        # A caller seen for the first time gets its worker row in the same transaction.
        self.register = actor.id not in self.known_workers
        with telemetry.waiting_for_connection():
            connection = self.engine.connect()
        if self.read_only:
            mark_read_only(connection)
        connection.begin()
        self._connection = connection
        self.bind = connection

    def connection(
        self, bind_arguments: _BindArguments | None = None, execution_options: CoreExecuteOptionsParameter | None = None
    ) -> Connection:
        # Asking the ORM for the connection it was bound to would cost more than most statements.
        if self._connection is None or bind_arguments is not None or execution_options is not None:
            return super().connection(bind_arguments, execution_options)
        return self._connection

    def finish(self) -> None:
        """Flush what the ORM holds and commit; a read (autocommit, or SQLite's read lock) just ends."""
        assert self._connection is not None
        if not self.read_only:
            self.flush()
        self._connection.commit()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        try:
            super().close()
        finally:
            if connection is not None:
                connection.close()  # an open transaction is rolled back


async def get_session(request: Request) -> RequestSession:
    """The request's session; the caller is `CurrentUser`, which `TaskFlowRoute` hands it.

    A leaf of the dependency tree on purpose: FastAPI solves a dependency's whole subtree again
    each time it is named, even when its value is cached, and routes name the caller anyway.
    """
    state = request.app.state
    refuse_when_busy(state.settings.max_queued_requests)
    session = RequestSession(state.engine, request.method in READ_METHODS, state.known_workers, state.wakeups)
    session.idempotency = await idempotency.read_key(request)
    return session


def refuse_when_busy(queue_cap: int) -> None:
    """503 when MAX_QUEUED_REQUESTS requests already wait for a request thread."""
    waiting = current_default_thread_limiter().statistics().tasks_waiting
    telemetry.note_requests_waiting(waiting)
    if queue_cap and waiting >= queue_cap:
        telemetry.count_unavailable("queue_full")
        raise ServiceUnavailable(
            "Too many requests are waiting to run; retry shortly",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
        )


SessionDep = Annotated[RequestSession, Depends(get_session)]

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id")]
OtherTaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The id of the task depended on")]
CommentId = Annotated[int, Path(ge=1, le=MAX_ID, description="The comment's id")]
ProjectSlug = Annotated[str, Path(max_length=64, pattern=SLUG_PATTERN, description="The project's slug")]
WorkerIdPath = Annotated[str, Path(max_length=128, pattern=WORKER_ID_PATTERN, description="The worker's id")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
Offset = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description=f"Rows to skip (at most {MAX_OFFSET:,}; then use `after`)")
]


IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", max_length=1000, description="The task's ETag as you read it: refuse if it changed since"),
]
LeaseSeconds = Annotated[
    int | None, Query(ge=1, le=MAX_LEASE_SECONDS, description="Seconds the claim lasts without a heartbeat")
]


# ---------------------------------------------------------------- versions and leases, from HTTP to typed values

# A task's ETag is its version, quoted: a strong tag, since a version names exactly one representation.
_ETAG = re.compile(r'"(0|[1-9][0-9]{0,17})"')


def etag(version: int) -> str:
    return f'"{version}"'


async def get_expected_version(if_match: IfMatch = None) -> frozenset[int] | None:
    """The versions `If-Match` accepts; None when any will do (no header, or `*`).

    Weak tags (`W/"3"`) are taken as strong ones: a task has no weaker form. A tag that names no
    version of ours matches none, so the change is refused (412) rather than let through.
    """
    if if_match is None:
        return None
    tags = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    if "*" in tags:
        return None
    return frozenset(int(match.group(1)) for tag in tags if (match := _ETAG.fullmatch(tag)))


ExpectedVersion = Annotated[frozenset[int] | None, Depends(get_expected_version)]


def _lease(request: Request, asked: int | None) -> int | None:
    """The lease asked for, else the server's default (LEASE_SECONDS; None: work is not leased)."""
    default: int | None = request.app.state.settings.lease_seconds
    return asked or default


async def get_default_lease(request: Request) -> int | None:
    return _lease(request, None)


async def get_start_lease(request: Request, lease_seconds: LeaseSeconds = None) -> int | None:
    return _lease(request, lease_seconds)


async def get_claim(http_request: Request, request: Annotated[ClaimRequest | None, Body()] = None) -> ClaimRequest:
    """What a claim asks for, its lease made the one it will get."""
    claim = request or ClaimRequest()
    return claim.model_copy(update={"lease_seconds": _lease(http_request, claim.lease_seconds)})


DefaultLease = Annotated[int | None, Depends(get_default_lease)]
StartLease = Annotated[int | None, Depends(get_start_lease)]
Claim = Annotated[ClaimRequest, Depends(get_claim)]


# ---------------------------------------------------------------- the route class


def run_request(session: RequestSession, actor: Actor, respond: Callable[[], T]) -> T:
    """Run `respond` in the session's one transaction and commit, as every route does: in a thread.

    The caller's worker row is written first when they are new, and an `Idempotency-Key` is
    checked first and saved with the response. Async routes that wait between transactions
    call this once per transaction, through `in_transaction`.
    """
    with session:
        try:
            session.begin_for(actor)
            response = _attempt(session, respond)
        except DBAPIError as error:
            # A connection the server closed since its last use fails on its first statement;
            # SQLAlchemy has already replaced it. Nothing was committed, so run once more.
            if not error.connection_invalidated or session.committing:
                raise
            session.close()
            session.begin_for(actor)
            response = _attempt(session, respond)
    return response


def _attempt(session: RequestSession, respond: Callable[[], T]) -> T:
    session.committing = False
    session.pending = None
    worker_type = None
    try:
        if session.register:
            worker_type = services.register_human(session, session.actor)
        if session.idempotency is not None:
            session.pending = idempotency.begin(session, session.actor.id, *session.idempotency)
        nothing: NothingYet | None = None
        try:
            response: T | None = respond()
        except NothingYet as error:
            # Nothing to answer yet (a waiting claim): what the attempt did, such as a first
            # caller's worker row, is kept, and nothing is saved under the Idempotency-Key.
            nothing, response = error, None
        if session.pending is not None and isinstance(response, Response):
            session.pending.save(response.status_code, bytes(response.body), dict(response.headers))
        session.committing = True
        session.finish()
    except BaseException:
        session.close()
        raise
    if worker_type is not None:
        session.known_workers.add(session.actor.id, worker_type)
        session.register = False
    if nothing is not None:
        # Not a change that others wait for, and waking them (itself among them) would only
        # have every waiter look again at once.
        raise nothing
    if not session.read_only:
        session.wakeups.committed()
    return cast(T, response)


async def in_transaction(session: RequestSession, actor: Actor, respond: Callable[[], T]) -> T:
    """`run_request` from an async route: one transaction in the thread pool, and back."""
    return await run_in_threadpool(run_request, session, actor, respond)


class TaskFlowRoute(APIRoute):
    """A route whose plain `def` endpoint, serialization and commit run in one thread-pool call.

    FastAPI would hop into the pool once per sync dependency, once for the endpoint and once more
    to validate the response; here the dependencies are async and the endpoint is wrapped so that
    everything blocking happens in one call. The response is serialized before the commit, so a
    commit that fails is an error response, and POSTs honour `Idempotency-Key`, saving their
    response in the same transaction as the change.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["dependencies"] = idempotency.add_key_check(
            kwargs.get("methods"), list(kwargs.get("dependencies") or [])
        )
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = self._in_one_thread(endpoint)
        super().__init__(path, endpoint, **kwargs)

    def _in_one_thread(self, endpoint: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(endpoint)
        async def run(**values: Any) -> Response:
            return await run_in_threadpool(self._run, endpoint, values)

        return run

    def _run(self, endpoint: Callable[..., Any], values: dict[str, Any]) -> Response:
        session = next((value for value in values.values() if isinstance(value, RequestSession)), None)
        if session is None:
            return self._render(endpoint(**values), values)
        actor = next((value for value in values.values() if isinstance(value, Actor)), None)
        if actor is None:
            raise TypeError(f"{endpoint.__name__} takes a session but not the caller (CurrentUser)")
        return run_request(session, actor, lambda: self._render(endpoint(**values), values))

    def _render(self, content: Any, values: dict[str, Any]) -> Response:
        """Serialize what the endpoint returned, as FastAPI would, but here in the endpoint's thread."""
        if isinstance(content, StarletteResponse):
            return content
        sub_response: Response | None = (
            values.get(self.dependant.response_param_name) if self.dependant.response_param_name else None
        )
        status_code = (sub_response.status_code if sub_response else None) or self.status_code or 200
        body = b""
        if status_code in {204, 304}:
            pass
        elif isinstance(content, dict) or (isinstance(content, list) and content and isinstance(content[0], dict)):
            # Plain dicts are rows a service read from the database in the response model's shape
            # (workflow.as_read): validating fifty of them would cost more than the query. A test
            # holds their JSON to the model's own (tests/test_request_cost.py).
            body = to_json(content)
        elif self.response_field is not None:
            value, errors = self.response_field.validate(content, {}, loc=("response",))
            if errors:
                raise ResponseValidationError(errors=errors, body=content)
            body = self.response_field.serialize_json(value, by_alias=True)
        else:
            body = bytes(JSONResponse(jsonable_encoder(content)).body)
        response = Response(content=body, status_code=status_code, media_type="application/json")
        if sub_response is not None:
            response.headers.raw.extend(sub_response.headers.raw)
        return response
