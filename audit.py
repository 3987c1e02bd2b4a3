"""Writing the audit log: one row per change, in the caller's transaction.

`record` only adds the row to the session. It never flushes or commits, so the row is
saved together with the change it describes or not at all. Nothing here updates or
deletes audit rows.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session, select

from models import AuditLog, Worker, WorkerType

# TaskFlow itself, when it changes a task on its own (a lease running out); it has no worker row.
SYSTEM_ID = "system"

# Set per request by the request-id middleware, so rows can be traced to a request
# without threading the id through every service call.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


class Actor(Protocol):
    @property
    def id(self) -> str: ...


def json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """`{"field": [old, new]}` for each field whose value differs."""
    return {
        field: [json_value(before.get(field)), json_value(new)]
        for field, new in after.items()
        if before.get(field) != new
    }


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    task_id: int | None = None,
    project_slug: str | None = None,
    context: dict[str, Any] | None = None,
) -> AuditLog:
    if actor.id == SYSTEM_ID:
        actor_type: Any = WorkerType.system
        owner_id: Any = None
    else:
        # Read from the worker row by the INSERT itself, so a change of an agent's type or owner
        # shows in the very next row, in every process, with no cache to invalidate. A missing
        # row makes actor_type NULL, which the table refuses: no change goes unattributed.
        actor_type = select(Worker.type).where(Worker.id == actor.id).scalar_subquery()
        owner_id = select(Worker.owner_id).where(Worker.id == actor.id).scalar_subquery()
    row = AuditLog(
        task_id=task_id,
        project_slug=project_slug,
        actor_id=actor.id,
        actor_type=actor_type,
        owner_id=owner_id,
        action=action,
        context={key: json_value(value) for key, value in (context or {}).items()},
        request_id=current_request_id.get(),
    )
    session.add(row)
    return row
