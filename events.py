"""The event feed: the audit rows a caller may see, oldest first, with no gaps and no repeats.

An audit row's id is drawn when it is inserted, before its transaction commits, so ids do not
arrive in order: a reader that followed `id > last seen` would step over a row whose transaction
committed after a later one, and never see it. The feed is read in `(feed_tx, id)` order instead,
where `feed_tx` is the id of the transaction that wrote the row (set by the database: migration
0006), and only up to the *horizon*: the oldest transaction still running anywhere on the
server. Every transaction below the horizon has ended, so no row can appear behind a position
once it has been served. A long transaction holds the feed back; it cannot make it skip. On
SQLite writers take turns, so ids are in commit order already and `feed_tx` is 0 throughout.

Access is the audit log's (`access.visible_audit`), applied in SQL on every read, so a member
removed from a project stops receiving its events with the next read, open streams included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Connection, Integer, String, and_, bindparam, exists, func, select, text, tuple_
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session

from access import Actor, visible_audit
from database import connection_of
from errors import BadRequest
from models import AuditLog, EventQuery
from wakeups import SOON_SECONDS, Topic, Wakeups

# A stream sends a comment line when it has sent nothing for this long, so that proxies and
# clients do not take a quiet feed for a dead connection.
KEEPALIVE_SECONDS = 15.0
# How long a browser's EventSource waits before reconnecting (it then sends Last-Event-ID).
RECONNECT_MS = 2_000
# How many feed positions one read looks through, at most, for the caller's events: a reader far
# behind, or one whose filters match little, moves on by this much per read instead of scanning
# to the end of the feed.
SCAN_LIMIT = 2_000
# A place in the feed: (feed_tx, id) of the last row passed.
Position = tuple[int, int]
# Before the first row: where `after=0` starts.
START: Position = (-1, 0)

_FEED = AuditLog.__table__  # type: ignore[attr-defined]
_POSITION = tuple_(_FEED.c.feed_tx, _FEED.c.id)
_AT = tuple_(bindparam("at_tx", type_=Integer()), bindparam("at_id", type_=Integer()))
_HORIZON = bindparam("horizon", type_=Integer())
_SERVABLE = _FEED.c.feed_tx < _HORIZON
_AFTER = and_(_POSITION > _AT, _SERVABLE)
_POSITION_OF = select(_FEED.c.feed_tx).where(_FEED.c.id == bindparam("after", type_=Integer()))
_LAST = select(_FEED.c.feed_tx, _FEED.c.id).where(_SERVABLE).order_by(_FEED.c.feed_tx.desc(), _FEED.c.id.desc())
_NTH_AFTER = (
    select(_FEED.c.feed_tx, _FEED.c.id)
    .where(_AFTER)
    .order_by(_FEED.c.feed_tx, _FEED.c.id)
    .offset(SCAN_LIMIT - 1)
    .limit(1)
)
_LAST_AFTER = _LAST.where(_AFTER).limit(1)
# A committed row the horizon holds back: it will be servable once older transactions end.
_HELD_BACK = select(_FEED.c.id).where(_FEED.c.feed_tx >= _HORIZON).limit(1)
_HORIZON_NOW = {
    # The oldest transaction still running when the statement's snapshot was taken.
    "postgresql": text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"),
}
_MENTIONING = bindparam("mentioning", type_=String())


def _horizon(connection: Connection) -> int:
    statement = _HORIZON_NOW.get(connection.dialect.name)
    if statement is None:
        return 1  # SQLite: every row is 0, and every committed row may be served
    horizon: int = connection.execute(statement).scalar_one()
    return horizon


def _mentions(dialect: str) -> ColumnElement[bool]:
    """Comment rows whose mentions, after the change, include the worker `mentioning`."""
    if dialect == "postgresql":
        return text(
            "(audit_log.context -> 'mentions' -> 1) @> jsonb_build_array(CAST(:mentioning AS text))"
        ).bindparams(_MENTIONING)  # type: ignore[return-value]
    mentioned = func.json_each(_FEED.c.context, "$.mentions[1]").table_valued("value")
    return exists(select(1).select_from(mentioned).where(mentioned.c.value == _MENTIONING))


def _filters(query: EventQuery, dialect: str) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.project is not None:
        conditions.append(_FEED.c.project_slug == query.project)
    if query.task_id is not None:
        conditions.append(_FEED.c.task_id == query.task_id)
    if query.type:
        conditions.append(_FEED.c.action.in_([action.value for action in query.type]))
    if query.mentioning is not None:
        conditions += [_FEED.c.action.like("comment.%"), _mentions(dialect)]
    return conditions


def _event(row: Any) -> dict[str, Any]:
    context: dict[str, Any] = row.context
    event = {
        "id": row.id,
        "type": row.action,
        "at": row.timestamp,
        "actor_id": row.actor_id,
        "actor_type": row.actor_type,
        "owner_id": row.owner_id,
        "via": row.via,
        "client_id": row.client_id,
        "task_id": row.task_id,
        "project_slug": row.project_slug,
        "changes": context,
        "comment": None,
    }
    if row.action.startswith("comment.") and "comment_id" in context:
        body, mentions = context.get("body") or [None, None], context.get("mentions") or [None, None]
        event["comment"] = {"id": context["comment_id"], "body": body[1], "mentions": mentions[1]}
    return event


def start_of(session: Session, after: int | None) -> Position:
    """The feed position of `after`: an event id, 0 for the start, None for now (the last servable row)."""
    connection = connection_of(session)
    if after == 0:
        return START
    if after is None:
        last = connection.execute(_LAST.limit(1), {"horizon": _horizon(connection)}).first()
        return START if last is None else (last.feed_tx, last.id)
    feed_tx = connection.execute(_POSITION_OF, {"after": after}).scalar()
    if feed_tx is None:
        raise BadRequest(f"No event has id {after}: pass the `id` of an event, or `next_after`, unchanged")
    return feed_tx, after


def read_events(
    session: Session, actor: Actor, query: EventQuery, at: Position
) -> tuple[dict[str, Any], Position, bool]:
    """The caller's events after position `at` (see `start_of`), as an `EventPage`; the position
    to read on from; and whether a committed row is held back (so reading again soon may find more)."""
    connection = connection_of(session)
    params: dict[str, Any] = {"horizon": _horizon(connection), "at_tx": at[0], "at_id": at[1]}
    # Where this read stops looking: SCAN_LIMIT positions on, or the end of what may be served.
    end = connection.execute(_NTH_AFTER, params).first() or connection.execute(_LAST_AFTER, params).first()
    if end is None:
        return {"events": [], "next_after": at[1]}, at, _held_back(connection, params)
    rows = connection.execute(
        select(_FEED)
        .where(
            _POSITION > _AT,
            _POSITION <= tuple_(end.feed_tx, end.id),
            visible_audit(actor),
            *_filters(query, connection.dialect.name),
        )
        .order_by(_FEED.c.feed_tx, _FEED.c.id)
        .limit(query.limit),
        params | ({"mentioning": query.mentioning} if query.mentioning is not None else {}),
    ).all()
    # A full page stops at its last row; otherwise everything up to `end` has been looked at.
    full = len(rows) == query.limit
    last = (rows[-1].feed_tx, rows[-1].id) if full else (end.feed_tx, end.id)
    held_back = not full and _held_back(connection, params)
    return {"events": [_event(row) for row in rows], "next_after": last[1]}, last, held_back


def _held_back(connection: Connection, params: dict[str, Any]) -> bool:
    if connection.dialect.name not in _HORIZON_NOW:
        return False
    return connection.execute(_HELD_BACK, params).first() is not None


class EventReader:
    """One caller following the feed: where they are, moved on by each read."""

    def __init__(self, session: Session, actor: Actor, query: EventQuery) -> None:
        self.session = session
        self.actor = actor
        self.query = query
        self.position: Position | None = None
        self.held_back = False  # after a read: an event is committed but not servable yet

    def start(self) -> None:
        if self.position is None:
            self.position = start_of(self.session, self.query.after)

    def read(self) -> dict[str, Any]:
        """The next page (an `EventPage`): one short transaction, called in a thread."""
        self.start()
        assert self.position is not None
        page, self.position, self.held_back = read_events(self.session, self.actor, self.query, self.position)
        return page

    async def stream(
        self,
        wakeups: Wakeups,
        run: Callable[[Callable[[], dict[str, Any]]], Awaitable[dict[str, Any]]],
        signed_in: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[str]:
        """Server-Sent Events until the client leaves, its token expires or the server stops; `run`
        runs a read in a transaction. The client reconnects (with `Last-Event-ID`) and a new
        token.

        Between reads the stream holds no connection and no thread: it waits to be woken by a commit.
        """
        loop = asyncio.get_running_loop()
        assert self.position is not None, "start() first: a bad cursor is a 400, not a broken stream"
        # The cursor goes out with every move, also when no event the caller may see went with it
        # (a block with an `id:` and no data moves a client's Last-Event-ID without an event): a
        # stream that started "now" and was cut before its first event resumes where it was.
        told = self.position[1]
        yield f"retry: {RECONNECT_MS}\nid: {told}\n\n"
        sent = loop.time()
        first = True
        soon = SOON_SECONDS
        while not wakeups.draining and await signed_in():
            with wakeups.waiter(Topic.events) as waiter:
                if first:
                    page = await run(self.read)
                else:
                    async with wakeups.turn():
                        page = await run(self.read)
                first = False
                for event in page["events"]:
                    data = to_json(event).decode()
                    yield f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n"
                    sent = loop.time()
                if page["next_after"] != (page["events"][-1]["id"] if page["events"] else told):
                    yield f"id: {page['next_after']}\n\n"
                told = page["next_after"]
                if len(page["events"]) == self.query.limit:
                    continue  # more is waiting already
                quiet = loop.time() - sent
                pause, soon = wakeups.pause(self.held_back, soon, KEEPALIVE_SECONDS - quiet)
                await waiter.wait(pause)
                if loop.time() - sent >= KEEPALIVE_SECONDS * 0.8:
                    yield ": keep-alive\n\n"
                    sent = loop.time()
