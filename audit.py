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

from sqlmodel import Session

from models import AuditLog, WorkerType

# Set per request by the request-id middleware, so rows can be traced to a request
# without threading the id through every service call.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


class Actor(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def type(self) -> WorkerType: ...
    @property
    def owner_id(self) -> str | None: ...


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
    row = AuditLog(
        task_id=task_id,
        project_slug=project_slug,
        actor_id=actor.id,
        actor_type=actor.type,
        owner_id=actor.owner_id,
        action=action,
        context={key: json_value(value) for key, value in (context or {}).items()},
        request_id=current_request_id.get(),
    )
    session.add(row)
    return row
