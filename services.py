"""The board's operations: workers, projects and members, task CRUD, lists, claims, dependencies, the audit log.

Plain functions `verb_noun(session, actor, ...)`. They read and write through the
session they are given and may `flush`, but never commit: the request's transaction
does that once. Who may see and change what is `access`; how a task moves is `workflow`,
and the workflow's actions here are one line each over it. Values arrive typed (an
expected version, a lease in seconds): nothing here knows HTTP.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Enum,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    true,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

import audit
import workflow
from access import (
    CALLER,
    SYSTEM,
    VISIBLE_TO_CALLER,
    Actor,
    check_assignee,
    check_worker_change,
    is_member,
    member_role,
    my_loose_task,
    my_project_slugs,
    require_creator_or_owner,
    require_holder_or_owner,
    require_owner_unless_leaving,
    require_project_owner,
    require_self_or_admin,
    visible_audit,
    visible_project,
    visible_task,
)
from database import advisory_lock, connection_of
from errors import BadRequest, Conflict, Forbidden, NotFound
from models import (
    JSON_TYPE,
    MAX_ID,
    PRIORITY_RANK,
    TASK_TABLE,
    AuditAction,
    AuditLog,
    AuditQuery,
    ClaimRequest,
    DependencyCreate,
    IdPage,
    LostLease,
    MemberCreate,
    MemberUpdate,
    Project,
    ProjectCreate,
    ProjectMember,
    ProjectRole,
    ProjectUpdate,
    Task,
    TaskCreate,
    TaskDependency,
    TaskPriority,
    TaskQuery,
    TaskResult,
    TaskSort,
    TaskStatus,
    TaskUpdate,
    UTCDateTime,
    Worker,
    WorkerCreate,
    WorkerType,
    WorkerUpdate,
    as_utc,
    utc_now,
)
from workflow import (
    READ_FIELDS,
    TASK_COLUMNS,
    TASK_FIELDS,
    TaskRecord,
    as_read,
    expire_lease,
    expire_leases,
    free_for,
    has_run_out,
    lease_ran_out,
    ready,
    save,
    status_is,
    waits_for_nothing,
)

Statement = TypeVar("Statement", Select[Any], SelectOfScalar[Any])
# How deep a chain of subtasks may go; it also bounds the cycle check.
MAX_TASK_DEPTH = 100


# An exact count costs a scan of every matching row. Up to this many it costs what the page
# costs at any table size; past it, X-Total-Count says this and that it is not exact.
COUNT_CAP = 1_000


@dataclass(frozen=True)
class Page:
    """One page of rows, how many rows match in all (exact up to `COUNT_CAP`), and where the next page starts."""

    rows: list[Any]
    total: int
    exact: bool
    next_cursor: str | None = None


def count_capped(
    session: Session, query: Select[Any] | SelectOfScalar[Any], params: Mapping[str, Any] | None = None
) -> tuple[int, bool]:
    """How many rows `query` matches, counting no further than `COUNT_CAP`."""
    return _count_rows(session, query.order_by(None).limit(COUNT_CAP + 1).subquery(), params or {})


def paginate(session: Session, query: SelectOfScalar[Any], limit: int, offset: int, *order_by: Any) -> Page:
    """One page of `query` and the count of its rows: two statements, whatever the page size."""
    total, exact = count_capped(session, query)
    rows = session.exec(query.order_by(*order_by).limit(limit).offset(offset)).all()
    return Page(list(rows), total, exact)


# ---------------------------------------------------------------- workers


def register_human(session: Session, actor: Actor) -> str:
    """Give a caller seen for the first time its worker row, as a human, named from its token; its type.

    An OAuth client acting as itself is refused instead: only an admin may say what it is and who answers for it.
    """
    name = actor.name or actor.id
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    # Two first requests at once must not collide on the primary key.
    result = session.execute(
        dialect.insert(Worker)
        .values(id=actor.id, type=WorkerType.human, name=name, created_at=utc_now())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        if actor.is_client:
            # A program with no person behind the token: it must not pass for a human. The insert
            # is rolled back with the request.
            raise Forbidden(
                f"The OAuth client '{actor.id}' acts as itself: an admin must first register it as an agent "
                "worker with its accountable owner (POST /api/workers)"
            )
        audit.record(
            session, actor, AuditAction.worker_registered, context=audit.created({"type": "human", "name": name})
        )
        return WorkerType.human.value
    return str(session.execute(select(Worker.type).where(Worker.id == actor.id)).scalar_one().value)


def list_workers(session: Session, _actor: Actor, limit: int, offset: int, type: WorkerType | None = None) -> Page:
    # The worker directory is the board's roster: every signed-in caller may read it,
    # so that tasks can be assigned and members added by id.
    query = select(Worker)
    if type is not None:
        query = query.where(Worker.type == type)
    return paginate(session, query, limit, offset, Worker.id)


def get_worker(session: Session, _actor: Actor, worker_id: str) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise NotFound(f"Worker '{worker_id}' not found")
    return worker


def register_worker(session: Session, actor: Actor, data: WorkerCreate) -> Worker:
    require_self_or_admin(actor, data.id)
    if data.id == SYSTEM.id or session.get(Worker, data.id) is not None:
        raise Conflict(f"Worker '{data.id}' is already registered")
    if data.type == WorkerType.system:
        raise BadRequest("The system worker is TaskFlow itself and cannot be registered")
    _check_owner(session, data.type, data.owner_id)
    worker = Worker(**data.model_dump())
    session.add(worker)
    _flush_or_conflict(session, f"Worker '{data.id}' is already registered")
    audit.record(session, actor, AuditAction.worker_registered, context=audit.created(data.model_dump()))
    return worker


def update_worker(session: Session, actor: Actor, worker_id: str, data: WorkerUpdate) -> Worker:
    worker = get_worker(session, actor, worker_id)
    fields = data.model_dump(exclude_unset=True)
    check_worker_change(actor, worker, fields)
    if fields.get("type") == WorkerType.system:
        raise BadRequest("No worker can become the system")
    if fields.get("type", worker.type) != WorkerType.human and worker.type == WorkerType.human:
        owned = session.exec(select(Worker.id).where(Worker.owner_id == worker.id).limit(1)).first()
        if owned is not None:
            raise Conflict(f"'{worker.id}' is accountable for agent '{owned}', so it must stay a human")
    _check_owner(session, fields.get("type", worker.type), fields.get("owner_id", worker.owner_id))
    diff = audit.changed(worker.model_dump(), fields)
    if diff:
        for field, value in fields.items():
            setattr(worker, field, value)
        session.add(worker)
        audit.record(session, actor, AuditAction.worker_updated, context={"worker_id": worker.id, **diff})
    return worker


def _check_owner(session: Session, worker_type: WorkerType, owner_id: str | None) -> None:
    """An agent may name the human accountable for it; nobody else has an owner."""
    if owner_id is None:
        return
    if worker_type != WorkerType.agent:
        raise BadRequest("Only an agent has an owner")
    owner = session.get(Worker, owner_id)
    if owner is None:
        raise NotFound(f"Worker '{owner_id}' not found")
    if owner.type != WorkerType.human:
        raise BadRequest(f"An agent's owner must be a human, and '{owner_id}' is a {owner.type.value}")


# ---------------------------------------------------------------- projects


def list_projects(session: Session, actor: Actor, limit: int, offset: int) -> Page:
    return paginate(session, select(Project).where(visible_project(actor)), limit, offset, Project.slug)


def get_project(session: Session, actor: Actor, slug: str, *, for_update: bool = False) -> Project:
    statement: SelectOfScalar[Project] = _GET_PROJECT[actor.is_admin, for_update]
    project = session.exec(statement, params={"slug": slug, "caller": actor.id}).first()
    if project is None:
        raise NotFound(f"Project '{slug}' not found")
    return project


def create_project(session: Session, actor: Actor, data: ProjectCreate) -> Project:
    # A slug is a global name: a taken one is a conflict even when its project is not yours.
    if session.get(Project, data.slug) is not None:
        raise Conflict(f"Project '{data.slug}' already exists")
    # History is kept by slug, so a slug names one project forever: a new project under a
    # deleted one's slug would inherit, and reveal, the old project's audit trail.
    if session.exec(select(AuditLog.id).where(AuditLog.project_slug == data.slug).limit(1)).first() is not None:
        raise Conflict(f"Project slug '{data.slug}' belonged to a deleted project and cannot be reused")
    project = Project(**data.model_dump(), created_by=actor.id)
    session.add(project)
    _flush_or_conflict(session, f"Project '{data.slug}' already exists")
    session.add(ProjectMember(project_slug=project.slug, worker_id=actor.id, role=ProjectRole.owner))
    audit.record(
        session, actor, AuditAction.project_created, project_slug=project.slug, context=audit.created(data.model_dump())
    )
    return project


def update_project(session: Session, actor: Actor, slug: str, data: ProjectUpdate) -> Project:
    project = get_project(session, actor, slug, for_update=True)
    require_project_owner(session, actor, project.slug)
    fields = data.model_dump(exclude_unset=True)
    diff = audit.changed(project.model_dump(), fields)
    if diff:
        for field, value in fields.items():
            setattr(project, field, value)
        session.add(project)
        audit.record(session, actor, AuditAction.project_updated, project_slug=slug, context=diff)
    return project


def delete_project(session: Session, actor: Actor, slug: str) -> None:
    project = get_project(session, actor, slug, for_update=True)
    require_project_owner(session, actor, project.slug)
    tasks = session.exec(select(func.count()).where(Task.project_slug == slug)).one()
    if tasks:
        raise BadRequest(f"Project '{slug}' still has {tasks} task(s); delete or move them first")
    session.exec(delete(ProjectMember).where(col(ProjectMember.project_slug) == slug))
    session.delete(project)
    audit.record(
        session,
        actor,
        AuditAction.project_deleted,
        project_slug=slug,
        context=audit.removed({"name": project.name}),
    )


def list_members(session: Session, actor: Actor, slug: str, limit: int, offset: int) -> Page:
    get_project(session, actor, slug)
    query = select(ProjectMember).where(ProjectMember.project_slug == slug)
    return paginate(session, query, limit, offset, ProjectMember.worker_id)


def add_member(session: Session, actor: Actor, slug: str, data: MemberCreate) -> ProjectMember:
    project = get_project(session, actor, slug, for_update=True)
    require_project_owner(session, actor, project.slug)
    if session.get(Worker, data.worker_id) is None:
        raise NotFound(f"Worker '{data.worker_id}' not found")
    if member_role(session, slug, data.worker_id) is not None:
        raise Conflict(f"Worker '{data.worker_id}' is already a member of '{slug}'")
    member = ProjectMember(project_slug=slug, worker_id=data.worker_id, role=data.role)
    session.add(member)
    _flush_or_conflict(session, f"Worker '{data.worker_id}' is already a member of '{slug}'")
    audit.record(session, actor, AuditAction.member_added, project_slug=slug, context=audit.created(data.model_dump()))
    return member


def _get_member(session: Session, slug: str, worker_id: str) -> ProjectMember:
    member = session.get(ProjectMember, (slug, worker_id))
    if member is None:
        raise NotFound(f"Worker '{worker_id}' is not a member of '{slug}'")
    return member


def _owner_count(session: Session, slug: str) -> int:
    return session.exec(
        select(func.count()).where(ProjectMember.project_slug == slug, ProjectMember.role == ProjectRole.owner)
    ).one()


def update_member(session: Session, actor: Actor, slug: str, worker_id: str, data: MemberUpdate) -> ProjectMember:
    project = get_project(session, actor, slug, for_update=True)
    require_project_owner(session, actor, project.slug)
    member = _get_member(session, slug, worker_id)
    if member.role == data.role:
        return member
    if member.role == ProjectRole.owner and _owner_count(session, slug) == 1:
        raise Conflict(f"'{worker_id}' is the last owner of '{slug}'; make someone else an owner first")
    diff = {"worker_id": worker_id, **audit.changed({"role": member.role}, {"role": data.role})}
    member.role = data.role
    session.add(member)
    audit.record(session, actor, AuditAction.member_updated, project_slug=slug, context=diff)
    return member


def remove_member(session: Session, actor: Actor, slug: str, worker_id: str) -> None:
    project = get_project(session, actor, slug, for_update=True)
    require_owner_unless_leaving(session, actor, project.slug, worker_id)
    member = _get_member(session, slug, worker_id)
    if member.role == ProjectRole.owner and _owner_count(session, slug) == 1:
        raise Conflict(f"'{worker_id}' is the last owner of '{slug}' and cannot be removed")
    open_tasks = session.exec(
        select(func.count()).where(
            Task.project_slug == slug, Task.assigned_to == worker_id, Task.status != TaskStatus.completed
        )
    ).one()
    if open_tasks:
        raise Conflict(f"'{worker_id}' is assigned {open_tasks} open task(s) in '{slug}'; reassign them first")
    session.delete(member)
    audit.record(
        session,
        actor,
        AuditAction.member_removed,
        project_slug=slug,
        context=audit.removed({"worker_id": worker_id, "role": member.role}),
    )


# ---------------------------------------------------------------- tasks

_SORT_COLUMNS: dict[str, Any] = {
    "created_at": TASK_TABLE.c.created_at,
    "updated_at": TASK_TABLE.c.updated_at,
    "due_date": TASK_TABLE.c.due_date,
    "priority": TASK_TABLE.c.priority_rank,
}
# What a read fetches: the columns of TaskRead, as plain rows rather than ORM objects. The
# statements are built once, with the caller as a parameter: building one costs more than running it.
# Status and priority are read as the strings they are stored as: JSON needs nothing more, and
# making each an enum member would cost more than the query on a page of fifty.
_READ_COLUMNS = [
    type_coerce(column, String()).label(column.name) if isinstance(column.type, Enum) else column
    for column in (TASK_TABLE.c[name] for name in READ_FIELDS)
]
# By whether the caller is an admin, who sees every task.
_READ_TASKS = {False: select(*_READ_COLUMNS).where(VISIBLE_TO_CALLER), True: select(*_READ_COLUMNS)}
_READ_TASK = {admin: query.where(TASK_TABLE.c.id == bindparam("task_id")) for admin, query in _READ_TASKS.items()}


def _by_role_and_lock(mine: Statement, every: Statement) -> dict[tuple[bool, bool], Statement]:
    """A lookup's four statements, by (whether the caller is an admin, whether the row is locked)."""
    return {
        (admin, lock): (query.with_for_update(key_share=True) if lock else query)
        for admin, query in ((False, mine), (True, every))
        for lock in (False, True)
    }


_TASK = select(*TASK_COLUMNS).where(TASK_TABLE.c.id == bindparam("task_id", type_=Integer()))
_GET_TASK = _by_role_and_lock(_TASK.where(VISIBLE_TO_CALLER), _TASK)
_PROJECT = select(Project).where(col(Project.slug) == bindparam("slug", type_=String()))
_MY_PROJECT = _PROJECT.where(col(Project.slug).in_(my_project_slugs(CALLER)))
_GET_PROJECT = _by_role_and_lock(_MY_PROJECT, _PROJECT)


def _task_order(sort: TaskSort, columns: Any = TASK_TABLE.c) -> list[Any]:
    """ORDER BY for `sort` over `columns` (the task table's, or a subquery's with the same names)."""
    descending = sort.value.startswith("-")
    key = sort.value.lstrip("-")
    column = columns[_SORT_COLUMNS[key].name]
    primary = column.desc() if descending else column.asc()
    if key == "due_date":
        primary = primary.nulls_last()
    return [primary, columns["id"].desc() if descending else columns["id"].asc()]


def _sort_value(sort: TaskSort, row: Mapping[str, Any]) -> Any:
    key = sort.value.lstrip("-")
    if key == "priority":
        return PRIORITY_RANK[TaskPriority(row["priority"])]
    value = row[key]
    return None if value is None else value.isoformat()


def _task_cursor(sort: TaskSort, row: Mapping[str, Any]) -> str:
    """An opaque `after=` value: the sort key and the last row's place in that order."""
    payload = json.dumps([sort.value, _sort_value(sort, row), row["id"]], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _parse_cursor(sort: TaskSort, cursor: str) -> tuple[bool, dict[str, Any]]:
    """Whether the cursor sits among the undated tasks, and the values it holds, checked."""
    try:
        sort_name, value, last_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not _is_int(last_id, 0, MAX_ID):
            raise ValueError("the id is not one a task can have")
        key = sort.value.lstrip("-")
        if key == "priority":
            if not _is_int(value, 0, max(PRIORITY_RANK.values())):
                raise ValueError("the rank is not one a priority has")
        elif value is not None:
            value = as_utc(datetime.fromisoformat(value))
        elif key != "due_date":
            raise ValueError("only due dates are ever empty")
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise BadRequest("Malformed 'after' cursor: pass the one from the Link header unchanged") from None
    if sort_name != sort.value:
        raise BadRequest(f"This 'after' cursor is for sort={sort_name}; ask again with that sort")
    return value is None, {"after_value": value, "after_id": last_id}


def _after_cursor(sort: TaskSort, undated: bool) -> ColumnElement[bool]:
    """The rows after the cursor (`after_value`, `after_id`) in `sort` order, as an index range."""
    key = sort.value.lstrip("-")
    column, task_id = _SORT_COLUMNS[key], TASK_TABLE.c.id
    last_id = bindparam("after_id", type_=Integer())
    descending = sort.value.startswith("-")
    if undated:  # past the last dated task: the undated ones, in id order
        return and_(column.is_(None), task_id < last_id if descending else task_id > last_id)
    value = bindparam("after_value", type_=column.type)
    later = (
        tuple_(column, task_id) < tuple_(value, last_id)
        if descending
        else tuple_(column, task_id) > tuple_(value, last_id)
    )
    return or_(later, column.is_(None)) if key == "due_date" else later


def list_tasks(session: Session, actor: Actor, filters: TaskQuery) -> Page:
    now = utc_now()
    shape, params = _filter_shape(filters)
    undated: bool | None = None
    if filters.after is not None:
        undated, after = _parse_cursor(filters.sort, filters.after)
        params |= after
    spread = _spread_over_projects(session, actor, filters)
    count, page = _list_statements(actor.is_admin, spread, filters.sort, shape, undated)
    wanted = filters.limit + 1  # one more than the page: whether a next page exists
    params |= {
        "caller": actor.id,
        "now": now,
        "cap": COUNT_CAP + 1,
        "page_limit": wanted,
        "page_offset": filters.offset,
        "per_part": filters.offset + wanted,
    }
    connection = connection_of(session)
    counted: int = connection.execute(count, params).scalar_one()
    rows = [as_read(dict(zip(READ_FIELDS, row, strict=True)), now) for row in connection.execute(page, params)]
    more = len(rows) > filters.limit
    rows = rows[: filters.limit]
    cursor = _task_cursor(filters.sort, rows[-1]) if more else None
    return Page(rows, min(counted, COUNT_CAP), counted <= COUNT_CAP, cursor)


_NOW = bindparam("now", type_=UTCDateTime())


class has_every_label(FunctionElement[bool]):
    """`has_every_label(labels_column, wanted)`: the JSON array `labels_column` holds every string of
    the JSON array `wanted`. One parameter whatever the number of labels, so one statement per shape."""

    type = Boolean()
    name = "has_every_label"
    inherit_cache = True


@compiles(has_every_label, "postgresql")
def _has_every_label_postgresql(element: has_every_label, compiler: SQLCompiler, **kw: Any) -> str:
    labels, wanted = element.clauses
    # Containment: what the GIN index on task.labels serves.
    return f"({compiler.process(labels, **kw)} @> {compiler.process(wanted, **kw)})"


@compiles(has_every_label, "sqlite")
def _has_every_label_sqlite(element: has_every_label, compiler: SQLCompiler, **kw: Any) -> str:
    labels, wanted = element.clauses
    return (
        f"NOT EXISTS (SELECT 1 FROM json_each({compiler.process(wanted, **kw)}) AS wanted_label "
        f"WHERE wanted_label.value NOT IN (SELECT value FROM json_each({compiler.process(labels, **kw)})))"
    )


# Only tasks carrying every label of the `labels` parameter (a list).
_HAS_LABELS = has_every_label(TASK_TABLE.c.labels, bindparam("labels", type_=JSON_TYPE))
# The filters of a list as the parts of its statement's shape; their values are parameters.
Shape = tuple[tuple[str, Any], ...]


def _filter_shape(filters: TaskQuery) -> tuple[Shape, dict[str, Any]]:
    shape: list[tuple[str, Any]] = []
    params: dict[str, Any] = {}
    if filters.ready is not None:
        shape.append(("ready", filters.ready))
    if filters.status is not None:
        shape.append(("status", filters.status))
    for name in ("priority", "assigned_to", "project", "parent_id"):
        value = getattr(filters, name)
        if value is not None:
            shape.append((name, None))
            params[name] = value
    if filters.label:
        shape.append(("labels", None))
        params["labels"] = filters.label
    if filters.q:
        shape.append(("q", None))
        escaped = filters.q.replace("/", "//").replace("%", "/%").replace("_", "/_")
        params["q"] = f"%{escaped}%"
    return tuple(shape), params


_FILTER_COLUMNS = {
    "priority": TASK_TABLE.c.priority,
    "project": TASK_TABLE.c.project_slug,
    "parent_id": TASK_TABLE.c.parent_id,
}


def _filter_conditions(shape: Shape) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for name, value in shape:
        if name == "ready":
            conditions.append(ready(CALLER, _NOW) if value else ~ready(CALLER, _NOW))
        elif name == "status":
            conditions.append(status_is(value, _NOW))
        elif name == "assigned_to":
            conditions += [TASK_TABLE.c.assigned_to == bindparam("assigned_to"), ~lease_ran_out(_NOW)]
        elif name == "q":
            conditions.append(TASK_TABLE.c.title.ilike(bindparam("q", type_=String()), escape="/"))
        elif name == "labels":
            conditions.append(_HAS_LABELS)
        else:
            column = _FILTER_COLUMNS[name]
            conditions.append(column == bindparam(name, type_=column.type))
    return conditions


@functools.lru_cache(maxsize=512)
def _list_statements(
    admin: bool, spread: bool, sort: TaskSort, shape: Shape, undated: bool | None
) -> tuple[Select[Any], Select[Any]]:
    """The count and the page of a task list of this shape, built once: building costs more than running."""
    conditions = _filter_conditions(shape)
    after = [] if undated is None else [_after_cursor(sort, undated)]
    order = _task_order(sort)
    cap = bindparam("cap", type_=Integer())
    if spread:
        count = select(func.count()).select_from(_visible_union(conditions, None, cap, count_only=True))
        visible = _visible_union(conditions + after, order, bindparam("per_part", type_=Integer()))
        page: Select[Any] = (
            select(*(_UNION_OUT[name] for name in READ_FIELDS))
            .select_from(visible)
            .order_by(*_task_order(sort, _UNION_OUT))
        )
    else:
        query = _READ_TASKS[admin].where(*conditions)
        count = select(func.count()).select_from(query.limit(cap).subquery())
        page = query.where(*after).order_by(*order)
    page = page.limit(bindparam("page_limit", type_=Integer())).offset(bindparam("page_offset", type_=Integer()))
    return count, page


def _spread_over_projects(session: Session, actor: Actor, filters: TaskQuery) -> bool:
    """Whether the page must be gathered project by project (see `_visible_union`).

    A list across a caller's projects, in a table that also holds every other project's tasks,
    cannot be read off one index in order: the caller's rows are scattered among the others.
    SQLite has no LATERAL join and serves one board; it reads the table in order instead.
    """
    return not actor.is_admin and filters.project is None and session.get_bind().dialect.name == "postgresql"


# The union's columns are named in SQL text rather than taken from its subqueries: SQLAlchemy
# copies every column a subquery exposes (with its foreign keys), which costs more than the query.
_UNION_COLUMNS = [*_READ_COLUMNS, TASK_TABLE.c.priority_rank]
_UNION_OUT = {
    column.name: literal_column(f"visible.{column.name}", type_=column.type).label(column.name)
    for column in _UNION_COLUMNS
}
_ID_ONLY = [TASK_TABLE.c.id]


def _visible_union(
    conditions: list[ColumnElement[bool]], order: list[Any] | None, limit: Any, *, count_only: bool = False
) -> Any:
    """The caller's tasks as a union: the first `limit` of each of their projects, in order, and
    their tasks without a project. Each part is a range scan of a (project, sort key, id) index,
    so the cost is the number of projects times the page, never the size of the table."""
    columns = _ID_ONLY if count_only else _UNION_COLUMNS
    mine = my_project_slugs(CALLER).subquery("mine")
    in_project = select(*columns).where(TASK_TABLE.c.project_slug == mine.c.project_slug, *conditions)
    loose = select(*columns).where(my_loose_task(CALLER), *conditions)
    if order is not None:
        in_project, loose = in_project.order_by(*order), loose.order_by(*order)
    per_project = in_project.limit(limit).lateral("per_project")
    return union_all(
        select(literal_column("per_project.*")).select_from(mine.join(per_project, true())),
        select(literal_column("loose.*")).select_from(loose.limit(limit).subquery("loose")),
    ).subquery("visible")


def _count_rows(session: Session, rows: Any, params: Mapping[str, Any]) -> tuple[int, bool]:
    total: int = connection_of(session).execute(select(func.count()).select_from(rows), params).scalar_one()
    return min(total, COUNT_CAP), total <= COUNT_CAP


# Rows are locked FOR NO KEY UPDATE (`key_share=True`): ids never change, and unlike FOR UPDATE
# it does not block the KEY SHARE locks that foreign-key checks of other transactions take,
# which would deadlock two requests linking two tasks to each other.
def get_task(session: Session, actor: Actor, task_id: int, *, for_update: bool = False) -> TaskRecord:
    """The task, to change it: locked, and with a lease that ran out handed back first."""
    params = {"caller": actor.id, "task_id": task_id}
    row = connection_of(session).execute(_GET_TASK[actor.is_admin, for_update], params).first()
    if row is None:
        raise NotFound(f"Task {task_id} not found")
    task = TaskRecord.from_row(row._mapping)
    if for_update and has_run_out(task, utc_now()):
        expire_lease(session, task)
    return task


def read_task(session: Session, actor: Actor, task_id: int) -> dict[str, Any]:
    """The task as the caller may see it, read without a lock or a write."""
    row = connection_of(session).execute(_READ_TASK[actor.is_admin], {"caller": actor.id, "task_id": task_id}).first()
    if row is None:
        raise NotFound(f"Task {task_id} not found")
    return as_read(row._mapping, utc_now())


def _check_project_for_task(session: Session, actor: Actor, slug: str) -> None:
    # Visible means a member (or an admin): one query answers both.
    get_project(session, actor, slug)


def _lock_task_graph(session: Session, project_slug: str | None) -> None:
    """Serialize changes to a project's subtask and dependency links.

    A cycle check reads links that a concurrent transaction may be adding: two requests
    linking a→b and b→a at once would each pass.
    """
    advisory_lock(session, f"task-graph:{project_slug}")


def _check_parent(
    session: Session, actor: Actor, task_id: int | None, project_slug: str | None, parent_id: int
) -> None:
    """The parent must be visible, in the task's project, and not the task (None: a new one) or one of its descendants."""
    _lock_task_graph(session, project_slug)
    parent = get_task(session, actor, parent_id)
    if parent.project_slug != project_slug:
        raise BadRequest("A subtask must be in the same project as its parent")
    if task_id is None:
        return
    ancestors = select(Task.id, Task.parent_id).where(Task.id == parent_id).cte("ancestors", recursive=True)
    ancestors = ancestors.union_all(
        select(Task.id, Task.parent_id).join(ancestors, col(Task.id) == ancestors.c.parent_id)
    )
    chain = session.exec(select(ancestors.c.id).limit(MAX_TASK_DEPTH + 1)).all()
    if task_id in chain:
        raise BadRequest(f"Task {parent_id} is task {task_id} or one of its subtasks: that would make a cycle")
    if len(chain) > MAX_TASK_DEPTH:
        raise BadRequest(f"Subtasks may nest at most {MAX_TASK_DEPTH} deep")


_NEW_TASK_FIELDS = [name for name in TASK_FIELDS if name != "id"]
# Plain parameters, no casts: PostgreSQL gives an INSERT … SELECT's literals the target columns' types.
_NEW_TASK = sa_select(*(bindparam(name, type_=TASK_TABLE.c[name].type) for name in _NEW_TASK_FIELDS))


def _insert_task(allowed: Select[Any] | SelectOfScalar[Any] | None) -> Any:
    rows = _NEW_TASK if allowed is None else _NEW_TASK.where(exists(allowed))
    return insert(TASK_TABLE).from_select(_NEW_TASK_FIELDS, rows).returning(TASK_TABLE.c.id)


_TASKS_PROJECT = bindparam("project_slug", type_=String())
# By whether the task has a project and the caller is an admin: the INSERT itself checks that
# the project is the caller's (or, for an admin, exists), so a create is one statement.
_INSERT_TASK = {
    (False, False): _insert_task(None),
    (False, True): _insert_task(None),
    (True, False): _insert_task(is_member(_TASKS_PROJECT, CALLER)),
    (True, True): _insert_task(select(Project.slug).where(col(Project.slug) == _TASKS_PROJECT)),
}


def create_task(session: Session, actor: Actor, data: TaskCreate) -> dict[str, Any]:
    fields = data.model_dump()
    if data.assigned_to is not None or data.parent_id is not None:
        # The project is checked first, so that a non-member learns nothing about who is in it.
        if data.project_slug is not None:
            _check_project_for_task(session, actor, data.project_slug)
        if data.assigned_to is not None:
            check_assignee(session, data.assigned_to, data.project_slug)
        if data.parent_id is not None:
            _check_parent(session, actor, None, data.project_slug, data.parent_id)
    now = utc_now()
    values = fields | {
        "status": TaskStatus.pending,
        "progress_percent": 0,
        "created_by": actor.id,
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "lease_expires_at": None,
        "lease_seconds": None,
        "result": None,
    }
    # No labels is no value, as a null field is: the row names only what the task was given.
    context = audit.created(fields if data.labels else {k: v for k, v in fields.items() if k != "labels"})
    task_id = audit.record_change(
        session,
        actor,
        AuditAction.task_created,
        _INSERT_TASK[data.project_slug is not None, actor.is_admin],
        {**values, "caller": actor.id},
        project_slug=data.project_slug,
        context=context,
    )
    if task_id is None:
        raise NotFound(f"Project '{data.project_slug}' not found")
    return {name: values.get(name) for name in READ_FIELDS} | {"id": task_id}


def update_task(
    session: Session,
    actor: Actor,
    task_id: int,
    data: TaskUpdate,
    *,
    lease_seconds: int | None = None,
    expected_version: frozenset[int] | None = None,
) -> TaskRecord:
    task = get_task(session, actor, task_id, for_update=True)
    workflow.check_version(task, expected_version)
    before = task.values()
    fields = data.model_dump(exclude_unset=True)
    target_status = fields.pop("status", task.status)

    if fields.get("assigned_to", task.assigned_to) != task.assigned_to and task.status in workflow.WORK_UNDER_WAY:
        require_holder_or_owner(session, actor, task)
    if "project_slug" in fields and fields["project_slug"] != task.project_slug:
        _check_move(session, actor, task, fields["project_slug"])
    # The checks below query the database: the task must not be flushed with values not yet checked.
    with session.no_autoflush:
        for field, value in fields.items():
            setattr(task, field, value)
        if task.assigned_to is not None and {"assigned_to", "project_slug"} & fields.keys():
            check_assignee(session, task.assigned_to, task.project_slug)
        if task.parent_id is not None and {"parent_id", "project_slug"} & fields.keys():
            _check_parent(session, actor, task.id, task.project_slug, task.parent_id)
        if target_status != task.status:
            if target_status == TaskStatus.in_progress and task.status == TaskStatus.pending:
                task.lease_seconds = lease_seconds
            workflow.move(session, actor, task, workflow.Move(target_status, "move"))
    workflow.require_worker(task)
    if not audit.changed(before, task.values()):
        return task  # nothing changed: no new version, no audit row
    return save(session, actor, task, before, AuditAction.task_updated, {})


def _check_move(session: Session, actor: Actor, task: TaskRecord, project_slug: str | None) -> None:
    """A task moves to another project (or out of one) by its creator or an owner, alone."""
    require_creator_or_owner(session, actor, task, "move it to another project")
    if project_slug is not None:
        _check_project_for_task(session, actor, project_slug)
    if _has_subtasks(session, task):
        raise BadRequest("A task with subtasks cannot change project; move its subtasks first")
    if _has_dependencies(session, task):
        raise BadRequest("A task with dependencies cannot change project; remove them first")


def delete_task(session: Session, actor: Actor, task_id: int) -> None:
    task = get_task(session, actor, task_id, for_update=True)
    require_creator_or_owner(session, actor, task, "delete it")
    if _has_subtasks(session, task):
        raise BadRequest(f"Task {task_id} has subtasks; delete or move them first")
    dependents = session.exec(
        select(TaskDependency.task_id)
        .where(TaskDependency.depends_on_id == task_id)
        .order_by(col(TaskDependency.task_id))
    ).all()
    if dependents:
        raise BadRequest(f"Tasks {', '.join(map(str, dependents))} depend on task {task_id}; remove those first")
    connection_of(session).execute(delete(TASK_TABLE).where(TASK_TABLE.c.id == task_id))
    gone = {"title": task.title, "status": task.status, "assigned_to": task.assigned_to}
    audit.record(
        session,
        actor,
        AuditAction.task_deleted,
        task_id=task_id,
        project_slug=task.project_slug,
        context=audit.removed(gone),
    )


def _has_subtasks(session: Session, task: TaskRecord) -> bool:
    return session.exec(select(Task.id).where(Task.parent_id == task.id).limit(1)).first() is not None


def _has_dependencies(session: Session, task: TaskRecord) -> bool:
    edges = select(TaskDependency.task_id).where(
        or_(col(TaskDependency.task_id) == task.id, col(TaskDependency.depends_on_id) == task.id)
    )
    return session.exec(edges.limit(1)).first() is not None


# ---------------------------------------------------------------- the workflow's actions


def _act(
    session: Session,
    actor: Actor,
    task_id: int,
    action: workflow.Action,
    asked: workflow.Asked,
    expected_version: frozenset[int] | None,
) -> TaskRecord:
    task = get_task(session, actor, task_id, for_update=True)
    before = task.values()
    extra = workflow.perform(session, actor, task, action, asked, expected_version)
    if action.audited_as is None:
        workflow.write(session, task, before)
        return task
    return save(session, actor, task, before, action.audited_as, extra)


def start_task(
    session: Session,
    actor: Actor,
    task_id: int,
    *,
    lease_seconds: int | None = None,
    expected_version: frozenset[int] | None = None,
) -> TaskRecord:
    asked = workflow.Asked(lease_seconds=lease_seconds)
    return _act(session, actor, task_id, workflow.START, asked, expected_version)


def update_progress(
    session: Session,
    actor: Actor,
    task_id: int,
    percent: int,
    note: str | None,
    *,
    expected_version: frozenset[int] | None = None,
) -> TaskRecord:
    asked = workflow.Asked(percent=percent, note=note)
    return _act(session, actor, task_id, workflow.PROGRESS, asked, expected_version)


def heartbeat(session: Session, actor: Actor, task_id: int, *, lease_seconds: int | None = None) -> TaskRecord:
    """Renew the caller's lease. Not audited and no new version: nothing about the task changes."""
    return _act(session, actor, task_id, workflow.HEARTBEAT, workflow.Asked(lease_seconds=lease_seconds), None)


def submit_for_review(
    session: Session, actor: Actor, task_id: int, *, expected_version: frozenset[int] | None = None
) -> TaskRecord:
    return _act(session, actor, task_id, workflow.REVIEW, workflow.Asked(), expected_version)


def complete_task(
    session: Session,
    actor: Actor,
    task_id: int,
    result: TaskResult | None = None,
    *,
    expected_version: frozenset[int] | None = None,
) -> TaskRecord:
    """Complete the task, keeping what it delivered as its `result`; a result with nothing in it is none."""
    stored = result.model_dump(mode="json") if result is not None and (result.summary or result.artifacts) else None
    return _act(session, actor, task_id, workflow.COMPLETE, workflow.Asked(result=stored), expected_version)


def block_task(
    session: Session, actor: Actor, task_id: int, reason: str, *, expected_version: frozenset[int] | None = None
) -> TaskRecord:
    return _act(session, actor, task_id, workflow.BLOCK, workflow.Asked(reason=reason), expected_version)


def unblock_task(
    session: Session, actor: Actor, task_id: int, *, expected_version: frozenset[int] | None = None
) -> TaskRecord:
    return _act(session, actor, task_id, workflow.UNBLOCK, workflow.Asked(), expected_version)


def release_task(
    session: Session, actor: Actor, task_id: int, *, expected_version: frozenset[int] | None = None
) -> TaskRecord:
    return _act(session, actor, task_id, workflow.RELEASE, workflow.Asked(), expected_version)


# ---------------------------------------------------------------- claiming work and leases


# A claim that finds leases run out hands back this many first, so they are claimable at once,
# whether or not the sweeper has been by.
CLAIM_SWEEP_LIMIT = 20
_EXPIRED = TASK_TABLE.alias("expired")
_CLAIMABLE = sa_select(
    *TASK_COLUMNS,
    select(LostLease.task_id)
    .where(col(LostLease.task_id) == Task.id, col(LostLease.worker_id) == CALLER)
    .exists()
    .label("lost_lease"),
    # Whether any lease has run out: then the pick is made again once they are handed back. Asked
    # here rather than by a statement of its own, since it is almost always no.
    sa_select(_EXPIRED.c.id).where(lease_ran_out(_NOW, _EXPIRED.c)).exists().label("leases_ran_out"),
).where(free_for(CALLER), waits_for_nothing())
# By whether the caller is an admin, who may claim any task.
_CLAIMABLE_BY = {False: _CLAIMABLE.where(VISIBLE_TO_CALLER), True: _CLAIMABLE}
_CLAIM_ORDER = (
    TASK_TABLE.c.priority_rank.desc(),
    col(Task.due_date).asc().nulls_last(),
    col(Task.created_at).asc(),
    col(Task.id).asc(),
)


@functools.lru_cache(maxsize=16)
def _claim_statement(admin: bool, in_project: bool, min_priority: bool, labelled: bool) -> Select[Any]:
    """The pick of a claim of this shape, built once."""
    query = _CLAIMABLE_BY[admin]
    if labelled:
        query = query.where(_HAS_LABELS)
    if in_project:
        query = query.where(TASK_TABLE.c.project_slug == bindparam("project", type_=String()))
    if min_priority:
        query = query.where(TASK_TABLE.c.priority_rank >= bindparam("min_rank", type_=Integer()))
    return query.order_by(*_CLAIM_ORDER).limit(1).with_for_update(skip_locked=True, of=TASK_TABLE, key_share=True)


def claim_task(session: Session, actor: Actor, request: ClaimRequest) -> TaskRecord | None:
    """Start the best ready task for `actor`, or None when nothing is ready.

    On PostgreSQL the pick is `FOR UPDATE SKIP LOCKED` down the partial index of pending tasks
    in claim order: concurrent claimers each lock a different row and never see one another's,
    and the cost does not grow with the number of pending tasks. SQLite serializes writers instead.
    """
    params: dict[str, Any] = {"caller": actor.id, "now": utc_now()}
    if request.project is not None:
        get_project(session, actor, request.project)
        params["project"] = request.project
    if request.min_priority is not None:
        params["min_rank"] = PRIORITY_RANK[request.min_priority]
    if request.labels:
        params["labels"] = request.labels
    query = _claim_statement(
        actor.is_admin, request.project is not None, request.min_priority is not None, bool(request.labels)
    )
    connection = connection_of(session)
    picked = connection.execute(query, params).first()
    if (picked is None or picked.leases_ran_out) and expire_leases(session, limit=CLAIM_SWEEP_LIMIT):
        # Work whose lease ran out is claimable at once, whether or not the sweeper has been by.
        picked = connection_of(session).execute(query, params).first()
    if picked is None:
        return None
    task, had_lost_lease = TaskRecord.from_row(picked._mapping), picked.lost_lease
    before = task.values()
    task.lease_seconds = request.lease_seconds
    workflow.move(
        session, actor, task, workflow.Move(TaskStatus.in_progress, "claim", claiming=True, lost_lease=had_lost_lease)
    )
    return save(session, actor, task, before, AuditAction.task_claimed, {})


# ---------------------------------------------------------------- dependencies


def list_dependencies(session: Session, actor: Actor, task_id: int) -> list[dict[str, Any]]:
    get_task(session, actor, task_id)
    query = (
        select(*_READ_COLUMNS)
        .join(TaskDependency, col(TaskDependency.depends_on_id) == Task.id)
        .where(TaskDependency.task_id == task_id, visible_task(actor))
        .order_by(col(Task.id))
    )
    now = utc_now()
    return [as_read(row._mapping, now) for row in session.execute(query)]


def add_dependency(session: Session, actor: Actor, task_id: int, data: DependencyCreate) -> dict[str, Any]:
    task = get_task(session, actor, task_id, for_update=True)
    other = get_task(session, actor, data.depends_on)
    if other.id == task.id:
        raise BadRequest("A task cannot depend on itself")
    if other.project_slug != task.project_slug:
        raise BadRequest("A task can depend only on a task in the same project")
    _lock_task_graph(session, task.project_slug)
    if session.get(TaskDependency, (task_id, data.depends_on)) is not None:
        raise Conflict(f"Task {task_id} already depends on task {data.depends_on}")
    closure = select(TaskDependency.depends_on_id).where(TaskDependency.task_id == data.depends_on)
    closure_cte = closure.cte("closure", recursive=True)
    closure_cte = closure_cte.union(
        select(TaskDependency.depends_on_id).join(
            closure_cte, col(TaskDependency.task_id) == closure_cte.c.depends_on_id
        )
    )
    if task_id in session.exec(select(closure_cte.c.depends_on_id)).all():
        raise BadRequest(f"Task {data.depends_on} already depends on task {task_id}: that would make a cycle")
    session.add(TaskDependency(task_id=task_id, depends_on_id=data.depends_on))
    _flush_or_conflict(session, f"Task {task_id} already depends on task {data.depends_on}")
    audit.record(
        session,
        actor,
        AuditAction.dependency_added,
        task_id=task_id,
        project_slug=task.project_slug,
        context=audit.created({"depends_on": data.depends_on}),
    )
    return as_read(other, utc_now())


def remove_dependency(session: Session, actor: Actor, task_id: int, other_id: int) -> None:
    task = get_task(session, actor, task_id, for_update=True)
    get_task(session, actor, other_id)
    dependency = session.get(TaskDependency, (task_id, other_id))
    if dependency is None:
        raise NotFound(f"Task {task_id} does not depend on task {other_id}")
    session.delete(dependency)
    audit.record(
        session,
        actor,
        AuditAction.dependency_removed,
        task_id=task_id,
        project_slug=task.project_slug,
        context=audit.removed({"depends_on": other_id}),
    )


# ---------------------------------------------------------------- audit


def list_audit(session: Session, actor: Actor, filters: AuditQuery) -> Page:
    query = select(AuditLog).where(visible_audit(actor))
    if filters.task_id is not None:
        query = query.where(AuditLog.task_id == filters.task_id)
    if filters.project is not None:
        query = query.where(AuditLog.project_slug == filters.project)
    if filters.actor_id is not None:
        query = query.where(AuditLog.actor_id == filters.actor_id)
    if filters.owner_id is not None:
        query = query.where(AuditLog.owner_id == filters.owner_id)
    if filters.action is not None:
        query = query.where(AuditLog.action == filters.action)
    if filters.since is not None:
        query = query.where(AuditLog.timestamp >= filters.since)
    if filters.until is not None:
        query = query.where(AuditLog.timestamp < filters.until)
    # Newest first, so the next page holds smaller ids.
    after = col(AuditLog.id) < filters.after if filters.after is not None else None
    return _id_page(session, query, after, filters.limit, filters.offset, col(AuditLog.id).desc())


def task_history(session: Session, actor: Actor, task_id: int, page: IdPage) -> Page:
    get_task(session, actor, task_id)
    query = select(AuditLog).where(AuditLog.task_id == task_id)
    after = col(AuditLog.id) > page.after if page.after is not None else None
    return _id_page(session, query, after, page.limit, page.offset, col(AuditLog.id).asc())


def _id_page(
    session: Session, query: SelectOfScalar[AuditLog], after: Any, limit: int, offset: int, order: Any
) -> Page:
    """A page of audit rows in id order, with the last row's id as the cursor when more follow."""
    total, exact = count_capped(session, query)
    if after is not None:
        query = query.where(after)
    rows = list(session.exec(query.order_by(order).limit(limit + 1).offset(offset)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, total, exact, str(rows[-1].id) if more else None)


# ---------------------------------------------------------------- helpers


def _flush_or_conflict(session: Session, message: str) -> None:
    """Flush now, so a row inserted concurrently by another request is a 409, not a 500."""
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(message) from None
