"""How every failure is answered: the error envelope, the exception handlers, and the middlewares
that give each response its request id, refuse oversized requests and turn a crash into a 500.

The envelope is `models.ErrorBody`; the codes and what they mean are the classes in `errors`.
The handlers are async: Starlette runs a plain `def` handler in the thread pool, so an error
answer would wait for a request thread, behind the very load that may have caused it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import idempotency
import telemetry
from audit import current_request_id
from config import Settings
from database import Outage, driver_detail, outage
from errors import (
    BUSY_RETRY_AFTER_SECONDS,
    MAX_HEADER_BYTES,
    RETRY_AFTER_SECONDS,
    BadRequest,
    Conflict,
    Forbidden,
    HeadersTooLarge,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TaskFlowError,
    Unauthorized,
    ValidationFailed,
)
from models import ErrorBody

logger = logging.getLogger("taskflow")


def envelope(error: type[TaskFlowError] | TaskFlowError, message: str, **extra: Any) -> dict[str, Any]:
    """The body of every error response: an `ErrorBody`, without the fields this error has no use for."""
    body = ErrorBody(error=message, status_code=error.status_code, code=error.code, **extra)
    return body.model_dump(exclude_none=True)


def error_response(error: TaskFlowError, **extra: Any) -> JSONResponse:
    return JSONResponse(envelope(error, error.message, **extra), status_code=error.status_code, headers=error.headers)


async def handle_taskflow_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TaskFlowError)
    return error_response(exc)


async def handle_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in jsonable_encoder(exc.errors())
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"Invalid request: {where}: {first['msg']}" if where else f"Invalid request: {first['msg']}"
    return error_response(ValidationFailed(message), detail=detail)


# Starlette's own HTTP errors (an unknown route, a wrong method, a body too large) in our codes.
_HTTP_ERRORS: dict[int, type[TaskFlowError]] = {
    error.status_code: error for error in (Unauthorized, Forbidden, NotFound, MethodNotAllowed, PayloadTooLarge)
}


async def handle_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_ERRORS.get(exc.status_code, BadRequest if exc.status_code < 500 else InternalError)
    message = exc.detail if isinstance(exc.detail, str) else "Request failed"
    body = envelope(kind, message) | {"status_code": exc.status_code}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def handle_integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # Rules are checked before writing; a constraint that still fails lost a race with a
    # concurrent request (a parent or project deleted meanwhile, say). Nothing was saved.
    assert isinstance(exc, IntegrityError)
    logger.warning("A write lost a race and was answered 409: %s", driver_detail(exc))
    return error_response(
        Conflict("The request conflicts with a change made at the same time; read the current state and retry")
    )


async def handle_data_error(_request: Request, exc: Exception) -> JSONResponse:
    # A value the database refused (out of range, malformed): the client's fault, and no data is saved.
    assert isinstance(exc, DataError)
    logger.warning("The database refused a value, answered 400: %s", driver_detail(exc))
    return error_response(BadRequest("A value was refused by the database"))


def report_outage(request: Request, found: Outage) -> None:
    telemetry.count_unavailable(found.reason)
    request.app.state.outage_log.warn(
        found.reason, "Database unavailable (%s), answering 503: %s", found.reason, found.detail
    )


async def handle_database_error(request: Request, exc: Exception) -> JSONResponse:
    """An outage or overload is a 503 the client should retry; anything else is a bug."""
    found = outage(exc)
    if found is None:
        return handle_unexpected_error(request, exc)
    report_outage(request, found)
    # A server that is away takes a while to come back; one that is busy, a moment.
    wait = RETRY_AFTER_SECONDS if found.reason == "connection" else BUSY_RETRY_AFTER_SECONDS
    return error_response(
        ServiceUnavailable("The database is unavailable or overloaded; retry later", headers={"Retry-After": str(wait)})
    )


def handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    # Handlers run outside the `except` block, so the traceback must be passed explicitly.
    logger.error("Unhandled error in %s %s (request %s)", request.method, request.url.path, request_id, exc_info=exc)
    error = InternalError("Internal server error", headers={"X-Request-ID": request_id} if request_id else None)
    return error_response(error, request_id=request_id)


# Most specific first, as Starlette looks them up (by the exception's class hierarchy).
HANDLERS: list[tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]] = [
    (TaskFlowError, handle_taskflow_error),
    (RequestValidationError, handle_validation_error),
    (HTTPException, handle_http_error),
    (idempotency.Replay, idempotency.handle_replay),
    (DataError, handle_data_error),
    (IntegrityError, handle_integrity_error),
    (SQLAlchemyError, handle_database_error),
]


def install(app: FastAPI) -> None:
    """Answer every failure in the envelope."""
    for kind, handler in HANDLERS:
        app.add_exception_handler(kind, handler)


async def answer_for(request: Request, exc: Exception) -> Response:
    """The response a route raising `exc` gets: for failures caught outside a route (an MCP tool call)."""
    for kind, handler in HANDLERS:
        if isinstance(exc, kind):
            return await handler(request, exc)
    return handle_unexpected_error(request, exc)


# ---------------------------------------------------------------- request ids

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _HTTPMiddleware:
    """An ASGI middleware for HTTP requests; anything else (lifespan) passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestIdMiddleware(_HTTPMiddleware):
    """Give every response an `X-Request-ID`: the caller's, if it sent a sane one, else a new one;
    and the caller's `RateLimit` headers, when it is rate limited."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                # Where the caller stands against its rate limit, whatever the answer (dependencies.get_current_user).
                headers.update(state.get("rate_limit_headers") or {})
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class UnexpectedErrorMiddleware(_HTTPMiddleware):
    """Turn an unhandled exception into the 500 envelope inside the CORS layer.

    Starlette's own handler for `Exception` answers from outside every middleware, so a
    browser would get a 500 without CORS headers and could not read its `request_id`.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking_start)
        except Exception as exc:
            if started:
                raise
            await handle_unexpected_error(Request(scope), exc)(scope, receive, send)


# ---------------------------------------------------------------- input limits


class BodyTooLarge(HTTPException):
    """Raised from `receive` while the app reads the body; FastAPI lets HTTP exceptions through
    its body parsing untouched, and `handle_http_error` answers with the envelope."""

    def __init__(self, limit: int) -> None:
        # Closing the connection spares reading whatever else the client goes on sending.
        super().__init__(413, f"The request body is larger than {limit:,} bytes", headers={"Connection": "close"})


class SizeLimitMiddleware(_HTTPMiddleware):
    """Refuse request bodies over `MAX_BODY_BYTES` before they are held in memory, and oversized headers.

    A body announced as too large by `Content-Length` is refused before a byte of it is read; a
    chunked one (or one that sends more than it announced) is refused as soon as the bytes read so
    far pass the limit. Either way the answer is `413 payload_too_large`, and uvicorn closes the
    connection after it instead of reading the rest.

    Headers over `errors.MAX_HEADER_BYTES` in all are refused with `431`. That bounds what the app
    does with them (a megabyte-long bearer token is not parsed and verified), not what uvicorn has
    buffered by then: its httptools parser, the default with `uvicorn[standard]`, sets no limit on
    headers (and refuses a URL over 65,535 bytes only once it has buffered it). Memory is bounded
    before the app by a proxy in front, or by `--http h11`, whose `--h11-max-incomplete-event-size`
    (16 KiB by default) caps the request line and headers together.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            # uvicorn has already refused a Content-Length that is not a number.
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _refuse(PayloadTooLarge(BodyTooLarge(self.max_bytes).detail), scope, receive, send)
                return
        if header_bytes > MAX_HEADER_BYTES:
            message = f"The request headers are larger than {MAX_HEADER_BYTES:,} bytes"
            await _refuse(HeadersTooLarge(message), scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return receive_within_limit


async def _refuse(error: TaskFlowError, scope: Scope, receive: Receive, send: Send) -> None:
    error.headers = {**(error.headers or {}), "Connection": "close"}
    await error_response(error)(scope, receive, send)


# ---------------------------------------------------------------- CORS

API_CORS: dict[str, Any] = {
    "allow_credentials": True,
    "allow_methods": ["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
    "allow_headers": ["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key", "If-Match", "Last-Event-ID"],
    "expose_headers": [
        "X-Total-Count",
        "X-Total-Count-Exact",
        "Link",
        "X-Request-ID",
        "ETag",
        "Idempotent-Replayed",
        "Retry-After",
        "RateLimit",
        "RateLimit-Policy",
    ],
    "max_age": 600,
}
# A browser-based MCP client sends its token in a header, never a cookie: no credentials, and so
# any request header (newer protocol versions add their own, such as Mcp-Method). POST only: the
# endpoint is stateless.
MCP_CORS: dict[str, Any] = {
    "allow_credentials": False,
    "allow_methods": ["POST"],
    "allow_headers": ["*"],
    "expose_headers": [
        "WWW-Authenticate",
        "Mcp-Protocol-Version",
        "X-Request-ID",
        "Retry-After",
        "RateLimit",
        "RateLimit-Policy",
    ],
    "max_age": 600,
}


class CORSByPath(_HTTPMiddleware):
    """CORS for the API (ALLOWED_ORIGINS, with credentials) and for /mcp (MCP_ALLOWED_ORIGINS); the
    OAuth metadata under /.well-known/ is public, and carries its own CORS for any origin."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        super().__init__(app)
        self.api = CORSMiddleware(app, allow_origins=settings.allowed_origins, **API_CORS)
        self.mcp = CORSMiddleware(app, allow_origins=settings.mcp_allowed_origins, **MCP_CORS)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/.well-known/"):
            await self.app(scope, receive, send)
        elif path == "/mcp" or path.startswith("/mcp/"):
            await self.mcp(scope, receive, send)
        else:
            await self.api(scope, receive, send)
