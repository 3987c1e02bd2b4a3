"""What routes receive through `Depends`: the request's session, the current user, shared parameters.

Auth failures become 401 (or 503 when no signing key can be had) here, so routes never see a token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

import services
from auth import InvalidToken, JWKSVerifier, KeySetUnavailable, Principal
from database import transaction
from errors import ServiceUnavailable, Unauthorized
from models import MAX_ID, SLUG_PATTERN, WORKER_ID_PATTERN


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
ProjectSlug = Annotated[str, Path(max_length=64, pattern=SLUG_PATTERN, description="The project's slug")]
WorkerIdPath = Annotated[str, Path(max_length=128, pattern=WORKER_ID_PATTERN, description="The worker's id")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip")]
