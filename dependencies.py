"""What routes receive through `Depends`: the request's session, the current user, shared parameters.

Auth failures become 401 (or 503 when no signing key can be had) here, so routes never see a token.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

import idempotency
import services
from auth import InvalidToken, JWKSVerifier, KeySetUnavailable, Principal
from database import transaction
from errors import ServiceUnavailable, Unauthorized
from models import MAX_ID, MAX_LEASE_SECONDS, SLUG_PATTERN, WORKER_ID_PATTERN


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_session(request: Request) -> Iterator[Session]:
    with transaction(get_engine(request)) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a failed
# commit becomes an error response instead of a 2xx for data that was never saved.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A JWT from Better Auth's `/api/auth/token` (or the development issuer).",
)


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Principal:
    if credentials is None:
        raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <JWT>'")
    verifier: JWKSVerifier = request.app.state.verifier
    try:
        return verifier.verify(credentials.credentials)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None
    except KeySetUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None


def get_current_user(session: SessionDep, principal: Annotated[Principal, Depends(get_principal)]) -> services.Actor:
    return services.authenticate(session, principal)


CurrentUser = Annotated[services.Actor, Depends(get_current_user)]

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id")]
OtherTaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The id of the task depended on")]
ProjectSlug = Annotated[str, Path(max_length=64, pattern=SLUG_PATTERN, description="The project's slug")]
WorkerIdPath = Annotated[str, Path(max_length=128, pattern=WORKER_ID_PATTERN, description="The worker's id")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip")]


def get_default_lease(request: Request) -> int | None:
    lease: int | None = request.app.state.settings.lease_seconds
    return lease


DefaultLease = Annotated[int | None, Depends(get_default_lease)]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", max_length=1000, description="The task's ETag as you read it: refuse if it changed since"),
]
LeaseSeconds = Annotated[
    int | None, Query(ge=1, le=MAX_LEASE_SECONDS, description="Seconds the claim lasts without a heartbeat")
]


# ---------------------------------------------------------------- idempotency keys


async def request_fingerprint(request: Request) -> str | None:
    if "idempotency-key" not in request.headers:
        return None
    return idempotency.fingerprint(request.method, request.url.path, request.url.query, await request.body())


def check_idempotency_key(
    request: Request,
    # First: the body is read before a transaction starts, so a slow client holds no database lock.
    fingerprint: Annotated[str | None, Depends(request_fingerprint)],
    session: SessionDep,
    user: CurrentUser,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Send the same key again to retry safely: the first response comes back, nothing is done twice",
        ),
    ] = None,
) -> None:
    if idempotency_key is not None and fingerprint is not None:
        request.state.idempotency = idempotency.begin(session, user.id, idempotency_key, fingerprint)


class IdempotentRoute(APIRoute):
    """A route whose POSTs honour `Idempotency-Key`, saving their response in the request's transaction."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        dependencies = list(kwargs.get("dependencies") or [])
        if "POST" in (kwargs.get("methods") or ()) and not any(
            getattr(d, "dependency", None) is check_idempotency_key for d in dependencies
        ):
            kwargs["dependencies"] = [*dependencies, Depends(check_idempotency_key)]
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def save_response(request: Request) -> Response:
            # This runs before the request's transaction commits, so the saved response
            # and the change it reports are committed together.
            response = await handler(request)
            pending: idempotency.Pending | None = getattr(request.state, "idempotency", None)
            if pending is not None:
                await run_in_threadpool(
                    pending.save, response.status_code, bytes(response.body), dict(response.headers)
                )
            return response

        return save_response
