"""Who the caller is and what they may see and change: the access policy, written once.

Visibility is a SQL predicate, so lists, counts and lookups filter in the database and what a
caller may not see is simply not found. The rules of who may change what (owners, assignees,
admins) are plain checks that raise `Forbidden`; `services` and `workflow` call them and never
spell a rule out again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, String, and_, bindparam, or_, true
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from audit import SYSTEM_ID
from auth import Principal
from errors import BadRequest, Forbidden, NotFound, Unauthorized
from models import TASK_TABLE, AuditLog, Project, ProjectMember, ProjectRole, TaskRead, Worker


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: who, and with which role. Whether a human or an agent is read
    from the worker registry by the audit row itself, so it is never stale."""

    id: str
    role: str = "user"
    # How the caller's token names them: the name of their worker row when first seen.
    name: str | None = field(default=None, compare=False)
    # How the call came, for the audit log: "api" (REST), "mcp" (the /mcp endpoint), or None for
    # TaskFlow itself; and the OAuth client that made it, when its token names one.
    via: str | None = field(default="api", compare=False)
    client_id: str | None = field(default=None, compare=False)

    @property
    def is_client(self) -> bool:
        """Whether the caller is an OAuth client acting as itself (the client_credentials grant): a machine."""
        return self.client_id is not None and self.client_id == self.id

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# Who acts when TaskFlow itself changes a task, e.g. when a lease runs out.
SYSTEM = Actor(id=SYSTEM_ID, role="system", via=None)


def actor_for(principal: Principal, via: str = "api") -> Actor:
    if principal.id == SYSTEM.id:
        raise Unauthorized(f"'{SYSTEM.id}' is reserved for TaskFlow itself")
    name = (principal.name or principal.email or principal.id)[:200]
    return Actor(id=principal.id, role=principal.role, name=name, via=via, client_id=principal.client_id)


# ---------------------------------------------------------------- who may see what
# Each rule is written once, over a caller given as a value (an actor's id) or as the statement
# parameter `CALLER` (statements built once, for every caller).

CALLER = bindparam("caller", type_=String())
# A value, the statement parameter, or a column of another table (`worker.id`: who else can see).
Caller = str | BindParameter[str] | ColumnElement[str]


def my_project_slugs(caller: Caller) -> SelectOfScalar[str]:
    """The slugs of the projects the caller is a member of."""
    return select(ProjectMember.project_slug).where(col(ProjectMember.worker_id) == caller)


def is_member(project_slug: Any, caller: Caller) -> SelectOfScalar[str]:
    """A row when the caller is a member of the project."""
    return my_project_slugs(caller).where(col(ProjectMember.project_slug) == project_slug)


def my_loose_task(caller: Caller, columns: Any = TASK_TABLE.c) -> ColumnElement[bool]:
    """A task without a project is the caller's when they created it or are assigned it."""
    return and_(columns.project_slug.is_(None), or_(columns.created_by == caller, columns.assigned_to == caller))


def _visible(caller: Caller) -> ColumnElement[bool]:
    """Tasks in the caller's projects, and project-less tasks of theirs."""
    return or_(TASK_TABLE.c.project_slug.in_(my_project_slugs(caller).scalar_subquery()), my_loose_task(caller))


# Admins see every task; for anyone else, statements add this, with the caller as a parameter.
VISIBLE_TO_CALLER = _visible(CALLER)


def visible_task(actor: Actor) -> ColumnElement[bool]:
    return true() if actor.is_admin else _visible(actor.id)


def visible_task_to(viewer: ColumnElement[str]) -> ColumnElement[bool]:
    """The same rule for a viewer named by a column (`worker.id`): who besides the caller can see a
    task, such as whom a comment may mention. An admin's role is in their token, not stored, so
    here an admin is a worker like any other."""
    return _visible(viewer)


def visible_project(actor: Actor) -> ColumnElement[bool]:
    return true() if actor.is_admin else col(Project.slug).in_(my_project_slugs(actor.id))


def visible_audit(actor: Actor) -> ColumnElement[bool]:
    """Rows about what the caller can see: their projects, their tasks without one."""
    if actor.is_admin:
        return true()
    my_loose_tasks = select(TASK_TABLE.c.id).where(my_loose_task(actor.id))
    return or_(
        col(AuditLog.project_slug).in_(my_project_slugs(actor.id)),
        col(AuditLog.project_slug).is_(None) & col(AuditLog.task_id).in_(my_loose_tasks),
        # Rows about no task and no project (worker registrations) belong to whoever wrote them.
        col(AuditLog.project_slug).is_(None) & col(AuditLog.task_id).is_(None) & (AuditLog.actor_id == actor.id),
    )


# ---------------------------------------------------------------- who may change what


def member_role(session: Session, project_slug: str, worker_id: str) -> ProjectRole | None:
    member = session.get(ProjectMember, (project_slug, worker_id))
    return None if member is None else member.role


def is_task_owner(session: Session, actor: Actor, task: TaskRead) -> bool:
    """A project owner for a project's task; its creator for a task without a project."""
    if actor.is_admin:
        return True
    if task.project_slug is None:
        return task.created_by == actor.id
    return member_role(session, task.project_slug, actor.id) == ProjectRole.owner


def require_project_owner(session: Session, actor: Actor, project_slug: str) -> None:
    if not actor.is_admin and member_role(session, project_slug, actor.id) != ProjectRole.owner:
        raise Forbidden(f"Only an owner of project '{project_slug}' may do this")


def require_owner_unless_leaving(session: Session, actor: Actor, project_slug: str, worker_id: str) -> None:
    """Anyone may leave a project; only its owners remove others."""
    if worker_id != actor.id:
        require_project_owner(session, actor, project_slug)


def require_creator_or_owner(session: Session, actor: Actor, task: TaskRead, what: str) -> None:
    if task.created_by != actor.id and not is_task_owner(session, actor, task):
        raise Forbidden(f"Only the task's creator, a project owner or an admin may {what}")


def require_author(actor: Actor, author_id: str, what: str) -> None:
    if author_id != actor.id and not actor.is_admin:
        raise Forbidden(f"Only the comment's author or an admin may {what} it")


def require_assignee(actor: Actor, task: TaskRead, what: str) -> None:
    if task.assigned_to != actor.id and not actor.is_admin:
        raise Forbidden(f"Only the task's assignee may {what}")


def require_unassigned_or_mine(actor: Actor, task: TaskRead) -> None:
    """Work is started by whoever it is assigned to, or by anyone when it is assigned to no one."""
    if task.assigned_to not in {None, actor.id} and not actor.is_admin:
        raise Forbidden(f"Task {task.id} is assigned to '{task.assigned_to}'")


def require_holder_or_owner(session: Session, actor: Actor, task: TaskRead) -> None:
    """Work under way changes hands only by its holder or a project owner, never by a grab."""
    if task.assigned_to not in {None, actor.id} and not is_task_owner(session, actor, task):
        raise Forbidden(f"Task {task.id} is being worked on by '{task.assigned_to}'; only they or an owner reassign it")


def require_assignee_or_owner(session: Session, actor: Actor, task: TaskRead, what: str) -> None:
    if task.assigned_to != actor.id and not is_task_owner(session, actor, task):
        raise Forbidden(f"Only the task's assignee or a project owner may {what} task {task.id}")


def check_assignee(session: Session, worker_id: str, project_slug: str | None) -> None:
    """Only a registered worker, and for a project's task only a member of the project, may be assigned it."""
    if session.get(Worker, worker_id) is None:
        raise NotFound(f"Worker '{worker_id}' not found")
    if project_slug is not None and member_role(session, project_slug, worker_id) is None:
        raise BadRequest(f"'{worker_id}' is not a member of project '{project_slug}' and cannot be assigned its tasks")


def require_self_or_admin(actor: Actor, worker_id: str) -> None:
    """A caller registers their own worker id; an admin registers others, such as agents."""
    if not actor.is_admin and worker_id != actor.id:
        raise Forbidden("You may register only your own worker id; an admin registers others, such as agents")


def check_worker_change(actor: Actor, worker: Worker, fields: dict[str, Any]) -> None:
    """A worker renames itself; only an admin changes another worker, a type, or an agent's owner."""
    if actor.is_admin:
        return
    if worker.id != actor.id:
        raise Forbidden("You may change only your own worker")
    if "type" in fields and fields["type"] != worker.type:
        raise Forbidden("Only an admin may change a worker's type")
    if "owner_id" in fields and fields["owner_id"] != worker.owner_id:
        raise Forbidden("Only an admin may change who is accountable for an agent")
