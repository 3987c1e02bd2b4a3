"""The task state machine, leases and readiness: how a task moves, and who may move it.

`TRANSITIONS` is the one statement of which status changes exist; every status change (an
action's, a claim's or a PATCH of `status`) goes through `move`, which asks who may (`_WHO_MAY`)
and then does what happens. The actions the API offers are one shape, `Action`: where each may
start from is derived from the table (progress and heartbeat, which change no status, work on a
task in progress). A task is read and changed as a `TaskRecord`; `save` writes a change with its
audit row.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, and_, bindparam, delete, or_
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

import audit
import telemetry
from access import (
    SYSTEM,
    Actor,
    check_assignee,
    require_assignee,
    require_assignee_or_owner,
    require_unassigned_or_mine,
)
from database import connection_of
from errors import BadRequest, InvalidTransition, LeaseLost, PreconditionFailed, UnfinishedDependencies
from models import TASK_TABLE, AuditAction, LostLease, Task, TaskDependency, TaskRead, TaskStatus, UTCDateTime, utc_now

# ---------------------------------------------------------------- the task as the workflow changes it

# Every column the ORM maps: what the workflow loads, changes and writes back.
TASK_FIELDS = tuple(Task.model_fields)
TASK_COLUMNS = [TASK_TABLE.c[name] for name in TASK_FIELDS]
READ_FIELDS = list(TaskRead.model_fields)
# Bookkeeping fields are left out of the audit row: leases are renewed too often to be history.
UNAUDITED_FIELDS = {"updated_at", "version", "lease_expires_at"}


class TaskRecord(TaskRead):
    """A task as the workflow reads and changes it: plain attributes, no ORM unit of work.

    `write` sends one UPDATE of the columns that changed; a request that changes a task pays
    for one statement, not for the ORM's bookkeeping.
    """

    lease_seconds: int | None
    # As stored: the JSON of a `TaskResult`, which is what is written back and audited.
    result: dict[str, Any] | None  # type: ignore[assignment]

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | RowMapping) -> TaskRecord:
        return cls.model_construct(**{name: row[name] for name in TASK_FIELDS})

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TASK_FIELDS}


@functools.lru_cache(maxsize=64)
def _update_task(columns: tuple[str, ...]) -> Any:
    return (
        TASK_TABLE.update()
        .where(TASK_TABLE.c.id == bindparam("task_id", type_=Integer()))
        .values({name: bindparam(name, type_=TASK_TABLE.c[name].type) for name in columns})
        .returning(TASK_TABLE.c.id)
    )


def _update(task: TaskRecord, before: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """The UPDATE of what changed in `task` since it was as `before` (as loaded), and its parameters."""
    changed = {name: value for name, value in task.values().items() if value != before[name]}
    if not changed:
        return None
    return _update_task(tuple(sorted(changed))), {"task_id": task.id, **changed}


def write(session: Session, task: TaskRecord, before: dict[str, Any]) -> None:
    """Send what changed in `task` since it was as `before`: one UPDATE, or nothing. Not audited."""
    update = _update(task, before)
    if update is not None:
        session.connection().execute(*update)


def save(
    session: Session,
    actor: Actor,
    task: TaskRecord,
    before: dict[str, Any],
    action: AuditAction,
    extra: dict[str, Any],
    *,
    touch: bool = True,
) -> TaskRecord:
    """Record an audited change of `task`: a new version, a new `updated_at` (unless `touch` is off), one audit row."""
    if touch:
        task.updated_at = utc_now()
    task.version += 1
    update = _update(task, before)
    assert update is not None  # the version changed
    after = {name: value for name, value in task.values().items() if name not in UNAUDITED_FIELDS}
    context = audit.changed(before, after) | extra
    audit.record_change(session, actor, action, *update, project_slug=task.project_slug, context=context)
    return task


def check_version(task: TaskRecord, expected: frozenset[int] | None) -> None:
    """Refuse to change a task that changed since the caller read it (`If-Match`); None: any version."""
    if expected is not None and task.version not in expected:
        raise PreconditionFailed(f'Task {task.id} has changed since you read it: its ETag is now "{task.version}"')


# ---------------------------------------------------------------- the state machine


class Transition(enum.StrEnum):
    start = "start"
    release = "release"
    review = "review"
    request_changes = "request_changes"
    complete = "complete"
    block = "block"
    unblock = "unblock"
    reopen = "reopen"


# Every allowed status change and its name. Actions and PATCH go through the same table.
TRANSITIONS: dict[tuple[TaskStatus, TaskStatus], Transition] = {
    (TaskStatus.pending, TaskStatus.in_progress): Transition.start,
    (TaskStatus.in_progress, TaskStatus.pending): Transition.release,
    (TaskStatus.in_progress, TaskStatus.review): Transition.review,
    (TaskStatus.review, TaskStatus.in_progress): Transition.request_changes,
    (TaskStatus.in_progress, TaskStatus.completed): Transition.complete,
    (TaskStatus.review, TaskStatus.completed): Transition.complete,
    (TaskStatus.pending, TaskStatus.blocked): Transition.block,
    (TaskStatus.in_progress, TaskStatus.blocked): Transition.block,
    (TaskStatus.review, TaskStatus.blocked): Transition.block,
    (TaskStatus.blocked, TaskStatus.in_progress): Transition.unblock,
    (TaskStatus.blocked, TaskStatus.pending): Transition.unblock,
    (TaskStatus.completed, TaskStatus.in_progress): Transition.reopen,
}
# Where each transition may start from, in the table's order (messages list them so).
ALLOWED_FROM: dict[Transition, tuple[TaskStatus, ...]] = {
    transition: tuple(dict.fromkeys(source for (source, _), named in TRANSITIONS.items() if named == transition))
    for transition in Transition
}
# Work under way is held by someone: a task in these states always has an assignee.
WORK_UNDER_WAY = frozenset({TaskStatus.in_progress, TaskStatus.review})


def require_worker(task: TaskRecord) -> None:
    """Work under way needs an assignee."""
    if task.assigned_to is None and task.status in WORK_UNDER_WAY:
        raise BadRequest(f"Task {task.id} would be {task.status.value} with no assignee: assign it first")


@dataclass(frozen=True)
class Move:
    """A requested status change: to where, how the request names it, and what it brings along."""

    target: TaskStatus
    verb: str
    reason: str | None = None
    # A claim has already picked a task with no unfinished dependency, and knows whether the
    # caller had lost a lease on it.
    claiming: bool = False
    lost_lease: bool = False


def unblock_target(task: TaskRecord) -> TaskStatus:
    """An unblocked task goes back to its assignee's hands, or to the pool when it has none."""
    return TaskStatus.in_progress if task.assigned_to else TaskStatus.pending


def _may_start(session: Session, actor: Actor, task: TaskRecord, move: Move) -> None:
    require_unassigned_or_mine(actor, task)
    blockers = [] if move.claiming else unfinished_dependencies(session, task)
    if blockers:
        raise UnfinishedDependencies(f"Task {task.id} depends on unfinished task(s) {', '.join(map(str, blockers))}")


def _may_release(_session: Session, actor: Actor, task: TaskRecord, _move: Move) -> None:
    require_assignee(actor, task, "release it")


def _may_review(_session: Session, actor: Actor, task: TaskRecord, _move: Move) -> None:
    require_assignee(actor, task, "submit it for review")


def _may_decide(what: str) -> Callable[[Session, Actor, TaskRecord, Move], None]:
    def may(session: Session, actor: Actor, task: TaskRecord, _move: Move) -> None:
        require_assignee_or_owner(session, actor, task, what)

    return may


def _may_block(_session: Session, _actor: Actor, task: TaskRecord, move: Move) -> None:
    if move.reason is None:
        raise BadRequest(f"Blocking task {task.id} needs a reason: use POST /api/tasks/{task.id}/block?reason=…")


def _may_unblock(_session: Session, _actor: Actor, task: TaskRecord, move: Move) -> None:
    expected = unblock_target(task)
    if move.target != expected:
        raise InvalidTransition(f"Task {task.id} unblocks to {expected.value}, not {move.target.value}")


# Who may make each transition (and what it needs); `move` does the rest the same way for all.
_WHO_MAY: dict[Transition, Callable[[Session, Actor, TaskRecord, Move], None]] = {
    Transition.start: _may_start,
    Transition.release: _may_release,
    Transition.review: _may_review,
    Transition.request_changes: _may_decide("request changes"),
    Transition.complete: _may_decide("complete"),
    Transition.reopen: _may_decide("reopen"),
    Transition.block: _may_block,
    Transition.unblock: _may_unblock,
}


def move(session: Session, actor: Actor, task: TaskRecord, requested: Move) -> None:
    """Move `task` to `requested.target` if the state machine and the caller's role allow it."""
    # The checks read other rows; the task must be written once, at the end, not flushed half-changed.
    with session.no_autoflush:
        source = task.status
        transition = TRANSITIONS.get((source, requested.target))
        if transition is None:
            current = task.status.value
            raise InvalidTransition(
                f"Cannot {requested.verb} task {task.id}: it is {current}, and {current} → {requested.target.value} is not allowed"
            )
        _WHO_MAY[transition](session, actor, task, requested)
        if transition == Transition.start:
            task.assigned_to = actor.id
            # Whoever lost an earlier claim on this task has it again.
            if not requested.claiming or requested.lost_lease:
                session.execute(
                    delete(LostLease).where(col(LostLease.task_id) == task.id, col(LostLease.worker_id) == actor.id)
                )
        elif transition == Transition.release:
            task.assigned_to = None
        task.status = requested.target
        require_worker(task)
        if task.status in WORK_UNDER_WAY and transition != Transition.start and not actor.is_admin:
            # The assignee may have left the project since; work must not go back to them.
            assert task.assigned_to is not None  # require_worker
            if task.project_slug is not None:
                check_assignee(session, task.assigned_to, task.project_slug)
        if task.status == TaskStatus.completed:
            task.progress_percent = 100
        elif source == TaskStatus.completed:
            # What was delivered is no longer the task's state; the audit row keeps it as the "before".
            task.result = None
        # Only work in progress is leased; it is renewed whenever a task (re-)enters that state.
        task.lease_expires_at = (
            lease_end(task.lease_seconds) if task.status == TaskStatus.in_progress and task.lease_seconds else None
        )


# ---------------------------------------------------------------- the actions the API offers


@dataclass(frozen=True)
class Asked:
    """What an action's caller sent along with it."""

    lease_seconds: int | None = None
    percent: int | None = None
    note: str | None = None
    reason: str | None = None
    # What a completion delivered, as stored (`TaskResult` as JSON); None: nothing.
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Action:
    """`POST /api/tasks/{id}/<name>`: from which states, what it does, and how the audit log names it."""

    verb: str
    # The transition it makes, whose table says where it may start from; None: work on a task in progress.
    transition: Transition | None
    # What it does once allowed; it returns what the audit row adds to the change.
    apply: Callable[[Session, Actor, TaskRecord, Asked], dict[str, Any]]
    # None: not audited, and no new version (a heartbeat changes nothing about the task).
    audited_as: AuditAction | None
    # Only the lease holder may: one whose lease ran out is told so, not refused in general.
    holder_only: bool = False

    @property
    def allowed_from(self) -> tuple[TaskStatus, ...]:
        return (TaskStatus.in_progress,) if self.transition is None else ALLOWED_FROM[self.transition]


def perform(
    session: Session, actor: Actor, task: TaskRecord, action: Action, asked: Asked, expected: frozenset[int] | None
) -> dict[str, Any]:
    """Check and apply `action` to `task` (locked, as loaded); what the audit row adds."""
    if action.holder_only and task.assigned_to != actor.id and session.get(LostLease, (task.id, actor.id)) is not None:
        raise LeaseLost(f"Your claim on task {task.id} expired and was released; claim it again")
    check_version(task, expected)
    if task.status not in action.allowed_from:
        expected_states = " or ".join(status.value for status in action.allowed_from)
        raise InvalidTransition(
            f"Cannot {action.verb} task {task.id}: it is {task.status.value}, not {expected_states}"
        )
    return action.apply(session, actor, task, asked)


def _to(target: TaskStatus, verb: str) -> Callable[[Session, Actor, TaskRecord, Asked], dict[str, Any]]:
    def apply(session: Session, actor: Actor, task: TaskRecord, asked: Asked) -> dict[str, Any]:
        move(session, actor, task, Move(target, verb, reason=asked.reason))
        return {}

    return apply


def _start(session: Session, actor: Actor, task: TaskRecord, asked: Asked) -> dict[str, Any]:
    task.lease_seconds = asked.lease_seconds
    move(session, actor, task, Move(TaskStatus.in_progress, "start"))
    return {}


def _report_progress(_session: Session, actor: Actor, task: TaskRecord, asked: Asked) -> dict[str, Any]:
    require_assignee(actor, task, "report its progress")
    assert asked.percent is not None
    task.progress_percent = asked.percent
    renew_lease(task)
    return {"note": asked.note} if asked.note else {}


def _renew(_session: Session, actor: Actor, task: TaskRecord, asked: Asked) -> dict[str, Any]:
    require_assignee(actor, task, "renew its lease")
    if asked.lease_seconds is not None:
        task.lease_seconds = asked.lease_seconds
    renew_lease(task)
    return {}


def _complete(session: Session, actor: Actor, task: TaskRecord, asked: Asked) -> dict[str, Any]:
    move(session, actor, task, Move(TaskStatus.completed, "complete"))
    task.result = asked.result
    return {}


def _block(session: Session, actor: Actor, task: TaskRecord, asked: Asked) -> dict[str, Any]:
    move(session, actor, task, Move(TaskStatus.blocked, "block", reason=asked.reason))
    return {"reason": asked.reason}


def _unblock(session: Session, actor: Actor, task: TaskRecord, _asked: Asked) -> dict[str, Any]:
    move(session, actor, task, Move(unblock_target(task), "unblock"))
    return {}


START = Action("start", Transition.start, _start, AuditAction.task_started)
PROGRESS = Action("report progress on", None, _report_progress, AuditAction.task_progress, holder_only=True)
HEARTBEAT = Action("send a heartbeat for", None, _renew, None, holder_only=True)
REVIEW = Action(
    "submit for review",
    Transition.review,
    _to(TaskStatus.review, "submit for review"),
    AuditAction.task_review,
    holder_only=True,
)
COMPLETE = Action(
    "complete",
    Transition.complete,
    _complete,
    AuditAction.task_completed,
    holder_only=True,
)
BLOCK = Action("block", Transition.block, _block, AuditAction.task_blocked)
UNBLOCK = Action("unblock", Transition.unblock, _unblock, AuditAction.task_unblocked)
RELEASE = Action(
    "release", Transition.release, _to(TaskStatus.pending, "release"), AuditAction.task_released, holder_only=True
)


# ---------------------------------------------------------------- leases


def lease_end(seconds: int) -> datetime:
    return utc_now() + timedelta(seconds=seconds)


def renew_lease(task: TaskRecord) -> None:
    if task.lease_seconds:
        task.lease_expires_at = lease_end(task.lease_seconds)


# A lease has run out when work in progress has a lease that ended: in Python, and in SQL.


def ran_out(status: str, lease_expires_at: datetime | None, now: datetime) -> bool:
    return status == TaskStatus.in_progress and lease_expires_at is not None and lease_expires_at <= now


def has_run_out(task: TaskRecord, now: datetime) -> bool:
    return ran_out(task.status, task.lease_expires_at, now)


def lease_ran_out(now: Any, columns: Any = TASK_TABLE.c) -> ColumnElement[bool]:
    # Never NULL, so that its negation is true for a task without a lease.
    return and_(
        columns.status == TaskStatus.in_progress,
        columns.lease_expires_at.is_not(None),
        columns.lease_expires_at <= now,
    )


def _lease_holds(now: Any) -> ColumnElement[bool]:
    return or_(TASK_TABLE.c.lease_expires_at.is_(None), TASK_TABLE.c.lease_expires_at > now)


def status_is(status: TaskStatus, now: Any) -> ColumnElement[bool]:
    """Tasks whose status, with leases that ran out handed back, is `status`."""
    if status == TaskStatus.pending:
        return or_(TASK_TABLE.c.status == TaskStatus.pending, lease_ran_out(now))
    if status == TaskStatus.in_progress:
        return and_(TASK_TABLE.c.status == TaskStatus.in_progress, _lease_holds(now))
    return TASK_TABLE.c.status == status


def as_read(task: Mapping[str, Any] | RowMapping | TaskRecord, now: datetime) -> dict[str, Any]:
    """The task's fields as every read reports them: a lease that ran out is already handed back.

    The sweeper (or the next write to the task) makes it so in the database, with the same
    version, so an ETag read here is the one a later If-Match is checked against. `updated_at`
    stays the time of the last change a worker made, so the `updated_at` order does not move.
    Plain values, not a model: the route's response model validates them once. A dict is
    updated in place (a page's rows are made for this); anything else is copied.
    """
    if isinstance(task, TaskRecord):
        read = {name: getattr(task, name) for name in READ_FIELDS}
    elif isinstance(task, dict):
        read = task
    else:
        read = dict(task)
    if ran_out(read["status"], read["lease_expires_at"], now):
        read.update(
            status=TaskStatus.pending,
            assigned_to=None,
            lease_expires_at=None,
            version=read["version"] + 1,
        )
    return read


def expire_lease(session: Session, task: TaskRecord) -> None:
    """Hand a task whose lease ran out back: pending, unassigned, audited as the system's doing.

    It reads back exactly as `as_read` showed it: one version on, and `updated_at` unchanged.
    """
    before = task.values()
    if task.assigned_to is not None and session.get(LostLease, (task.id, task.assigned_to)) is None:
        session.add(LostLease(task_id=task.id, worker_id=task.assigned_to))
    task.status = TaskStatus.pending
    task.assigned_to = None
    task.lease_expires_at = None
    task.lease_seconds = None
    save(session, SYSTEM, task, before, AuditAction.lease_expired, {}, touch=False)


_EXPIRED_LEASES = (
    select(*TASK_COLUMNS)
    .where(lease_ran_out(bindparam("now", type_=UTCDateTime())))
    .order_by(TASK_TABLE.c.lease_expires_at, TASK_TABLE.c.id)
    .limit(bindparam("limit", type_=Integer()))
    .with_for_update(skip_locked=True, key_share=True)
)


def expire_leases(session: Session, *, limit: int) -> int:
    """Hand back up to `limit` tasks whose lease ran out, oldest first; how many there were.

    The index on `lease_expires_at` makes this cost what it finds, not the size of the table.
    SKIP LOCKED: a task being changed right now is left to the next sweep (or to that change).
    """
    rows = connection_of(session).execute(_EXPIRED_LEASES, {"now": utc_now(), "limit": limit}).all()
    for row in rows:
        expire_lease(session, TaskRecord.from_row(row._mapping))
    if rows:
        telemetry.count_lease_expiries(len(rows))
    return len(rows)


# ---------------------------------------------------------------- readiness


def unfinished_dependency(task_id: Any) -> SelectOfScalar[int]:
    """The tasks `task_id` depends on that are not completed."""
    blocker = aliased(Task)
    return (
        select(TaskDependency.depends_on_id)
        .join(blocker, col(blocker.id) == TaskDependency.depends_on_id)
        .where(TaskDependency.task_id == task_id, blocker.status != TaskStatus.completed)
    )


def unfinished_dependencies(session: Session, task: TaskRecord) -> list[int]:
    return list(session.exec(unfinished_dependency(task.id).order_by(col(TaskDependency.depends_on_id))).all())


def free_for(caller: Any) -> ColumnElement[bool]:
    """Pending, and unassigned or assigned to `caller`."""
    return and_(
        col(Task.status) == TaskStatus.pending, or_(col(Task.assigned_to).is_(None), col(Task.assigned_to) == caller)
    )


def waits_for_nothing() -> ColumnElement[bool]:
    """No task the task depends on is unfinished."""
    return ~unfinished_dependency(Task.id).exists()


def ready(caller: Any, now: Any) -> ColumnElement[bool]:
    """Claimable by `caller`: free for them (or its lease ran out), and nothing it waits for is unfinished."""
    return and_(or_(free_for(caller), lease_ran_out(now)), waits_for_nothing())
