"""Idempotency keys, all of it: a retried POST gets the first response back and changes nothing again.

Every POST declares the optional `Idempotency-Key` header (`add_key_check`, used by the route
class). A key's request is fingerprinted on the event loop (`read_key`), before the route's
transaction starts; in it, `begin` finds the key's record (and raises `Replay`, which
`handle_replay` answers) or returns a `Pending` that saves the response. The record is written
in the same transaction as the change it guards, so the two are saved together or not at all:
a request that failed left no record, and its retry simply runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from sqlalchemy import String, bindparam, delete, insert, select
from sqlmodel import Session

from database import advisory_lock
from errors import IdempotencyInProgress, IdempotencyKeyReused
from models import IdempotencyKey, utc_now

RETENTION = timedelta(hours=24)
REPLAYED_HEADERS = {"content-type", "etag", "location"}

# Plain Core statements, built once: a key costs its two statements and nothing of the ORM's.
_TABLE = IdempotencyKey.__table__  # type: ignore[attr-defined]
_THIS_KEY = (_TABLE.c.actor_id == bindparam("actor_id", type_=String())) & (
    _TABLE.c.key == bindparam("key", type_=String())
)
_FIND = select(_TABLE.c.fingerprint, _TABLE.c.status_code, _TABLE.c.headers, _TABLE.c.body, _TABLE.c.created_at).where(
    _THIS_KEY
)
_FORGET = delete(_TABLE).where(_THIS_KEY)
_SAVE = insert(_TABLE)


@dataclass
class Replay(Exception):
    """The saved first response to send again."""

    status_code: int
    body: str
    headers: dict[str, str]


@dataclass
class Pending:
    """A key seen for the first time: its response is saved once the route has produced it."""

    session: Session
    actor_id: str
    key: str
    fingerprint: str

    def save(self, status_code: int, body: bytes, headers: dict[str, str]) -> None:
        record = {
            "actor_id": self.actor_id,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "status_code": status_code,
            "headers": {name: value for name, value in headers.items() if name in REPLAYED_HEADERS},
            "body": body.decode(),
            "created_at": utc_now(),
        }
        self.session.connection().execute(_SAVE, record)


async def check_idempotency_key(
    _idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Send the same key again to retry safely: the first response comes back, nothing is done twice",
        ),
    ] = None,
) -> None:
    """Declare and check the header on every POST; `read_key` reads it (the session's dependency is a leaf)."""


def add_key_check(methods: Any, dependencies: list[Any]) -> list[Any]:
    """A route's dependencies, with the key's check added when it is a POST."""
    if "POST" in (methods or ()) and not any(
        getattr(d, "dependency", None) is check_idempotency_key for d in dependencies
    ):
        return [*dependencies, Depends(check_idempotency_key)]
    return dependencies


async def read_key(request: Request) -> tuple[str, str] | None:
    """A POST's key and the fingerprint of the request it names, or None without one.

    Read on the event loop, before the route's thread starts its transaction: a slow client holds
    no database lock. A malformed key is refused by `check_idempotency_key` before the route runs.
    """
    if request.method != "POST" or (key := request.headers.get("idempotency-key")) is None:
        return None
    body = await request.body()
    return key, fingerprint(request.method, request.url.path, request.url.query, body)


async def handle_replay(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Replay)
    headers = {**exc.headers, "Idempotent-Replayed": "true"}
    return Response(content=exc.body, status_code=exc.status_code, headers=headers)


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def begin(session: Session, actor_id: str, key: str, request_fingerprint: str) -> Pending:
    """Raise `Replay` for a key already answered, or say the key is new."""
    # Held until this transaction ends: a duplicate arriving meanwhile is told so at once
    # instead of waiting for the first to finish.
    if not advisory_lock(session, f"idempotency:{actor_id}\0{key}", wait=False):
        raise IdempotencyInProgress("A request with this Idempotency-Key is still being processed")
    this_key = {"actor_id": actor_id, "key": key}
    record = session.connection().execute(_FIND, this_key).first()
    if record is not None and record.created_at < utc_now() - RETENTION:
        session.connection().execute(_FORGET, this_key)
        record = None
    if record is None:
        return Pending(session, actor_id, key, request_fingerprint)
    if record.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was already used for a different request")
    raise Replay(record.status_code, record.body, record.headers)
