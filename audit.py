"""Writing the audit log: one row per change, in the caller's transaction.

`record` inserts the row in the caller's transaction (after the session's pending changes),
and never commits, so the row is saved together with the change it describes or not at all.
Nothing here updates or deletes audit rows.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Executable, String, bindparam, insert, literal, null
from sqlmodel import Session, select

from models import AuditAction, AuditLog, Worker, WorkerType, utc_now

# TaskFlow itself, when it changes a task on its own (a lease running out); it has no worker row.
SYSTEM_ID = "system"

# Set per request by the request-id middleware, so rows can be traced to a request
# without threading the id through every service call.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


class Actor(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def via(self) -> str | None: ...

    @property
    def client_id(self) -> str | None: ...


def json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# An audit row's context says what changed as `{"field": [old, new]}`; these three are the only
# ways to write one, so a reader of the log meets one shape for every action.


def changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`{"field": [old, new]}` for each field of `after` whose value differs from `before`'s."""
    return {
        field: [json_value(before.get(field)), json_value(new)]
        for field, new in after.items()
        if before.get(field) != new
    }


def created(fields: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`{"field": [None, value]}` for each field that has a value."""
    return changed({}, fields)


def removed(fields: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`{"field": [value, None]}` for each field that had a value."""
    return changed(fields, dict.fromkeys(fields))


def replaced(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`{"field": [old, new]}` for every field of `after`, changed or not.

    For rows whose reader needs the whole of a small record in each one: an event reader must
    find a comment's body and mentions in every row about it (added, edited, deleted), without
    looking back through earlier rows for the part an edit left alone.
    """
    return {field: [json_value(before.get(field)), json_value(new)] for field, new in after.items()}


_AUDIT = AuditLog.__table__  # type: ignore[attr-defined]
_WORKER = Worker.__table__  # type: ignore[attr-defined]
_AS_WORKER = bindparam("audit_actor", type_=String())
# Built once: the row's actor type and owner are read from the worker row by the INSERT itself,
# so a change of an agent's type or owner shows in the very next row, in every process, with no
# cache to invalidate. A missing worker row makes actor_type NULL, which the table refuses: no
# change goes unattributed.
_INSERT_AS_WORKER = insert(_AUDIT).values(
    actor_type=select(_WORKER.c.type).where(_WORKER.c.id == _AS_WORKER).scalar_subquery(),
    owner_id=select(_WORKER.c.owner_id).where(_WORKER.c.id == _AS_WORKER).scalar_subquery(),
)
_INSERT_AS_SYSTEM = insert(_AUDIT).values(actor_type=WorkerType.system, owner_id=None)


def _values(
    actor: Actor, action: AuditAction, task_id: int | None, project_slug: str | None, context: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "project_slug": project_slug,
        "actor_id": actor.id,
        "action": action.value,
        "context": {key: json_value(value) for key, value in (context or {}).items()},
        "request_id": current_request_id.get(),
        "via": actor.via,
        "client_id": actor.client_id,
        "timestamp": utc_now(),
    }


def record(
    session: Session,
    actor: Actor,
    action: AuditAction,
    *,
    task_id: int | None = None,
    project_slug: str | None = None,
    context: dict[str, Any] | None = None,
) -> None:
    _insert(session.connection(), actor, _values(actor, action, task_id, project_slug, context))


def _insert(connection: Connection, actor: Actor, values: dict[str, Any]) -> None:
    # Straight to the connection: the statement is plain Core, and the session's ORM layer adds nothing.
    if actor.id == SYSTEM_ID:
        connection.execute(_INSERT_AS_SYSTEM, values)
    else:
        connection.execute(_INSERT_AS_WORKER, {**values, "audit_actor": actor.id})


def record_change(
    session: Session,
    actor: Actor,
    action: AuditAction,
    change: Executable,
    change_params: dict[str, Any],
    *,
    project_slug: str | None,
    context: dict[str, Any],
) -> int | None:
    """Run `change`, an INSERT or UPDATE of one task `RETURNING` its id, and record it; the id, or None
    when it wrote no row (and then nothing is recorded).

    On PostgreSQL the two are one statement (the change as a CTE): one round trip, not two.
    """
    values = _values(actor, action, None, project_slug, context)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        params = {f"audit_{name}": value for name, value in values.items()} | {"audit_actor": actor.id}
        statement = _record_change(change, actor.id == SYSTEM_ID)
        written: int | None = connection.execute(statement, {**change_params, **params}).scalar()
        return written
    written = connection.execute(change, change_params).scalar()
    if written is not None:
        _insert(connection, actor, values | {"task_id": written})
    return written


@functools.lru_cache(maxsize=256)
def _record_change(change: Executable, system: bool) -> Executable:
    """`INSERT INTO audit_log … SELECT … FROM (change)`: the audit row in the change's own statement."""
    done = change.cte("change")  # type: ignore[attr-defined]
    row: dict[str, Any] = {"task_id": done.c.id}
    for name in ("project_slug", "actor_id", "action", "context", "request_id", "via", "client_id", "timestamp"):
        row[name] = bindparam(f"audit_{name}", type_=_AUDIT.c[name].type)
    if system:
        row |= {"actor_type": literal(WorkerType.system.value), "owner_id": null()}
    else:
        row |= {
            "actor_type": select(_WORKER.c.type).where(_WORKER.c.id == _AS_WORKER).scalar_subquery(),
            "owner_id": select(_WORKER.c.owner_id).where(_WORKER.c.id == _AS_WORKER).scalar_subquery(),
        }
    rows = select(*row.values()).select_from(done)
    return insert(_AUDIT).from_select(list(row), rows).returning(_AUDIT.c.task_id)
