"""Who the caller is and what they may see and change: the access policy, written once.

Visibility is a SQL predicate, so lists, counts and lookups filter in the database and what a
caller may not see is simply not found. The rules of who may change what (owners, assignees,
admins) are plain checks that raise `Forbidden`; `services` and `workflow` call them and never
spell a rule out again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, String, and_, bindparam, or_, true
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from audit import SYSTEM_ID
from auth import Principal
from errors import BadRequest, Forbidden, NotFound, Unauthorized
from models import TASK_TABLE, AuditLog, Project, ProjectMember, ProjectRole, Task, TaskRead, Worker


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: who, and with which role. Whether a human or an agent is read
    from the worker registry by the audit row itself, so it is never stale."""

    id: str
    role: str = "user"
    # How the caller's token names them: the name of their worker row when first seen.
    name: str | None = field(default=None, compare=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# Who acts when TaskFlow itself changes a task, e.g. when a lease runs out.
SYSTEM = Actor(id=SYSTEM_ID, role="system")


def actor_for(principal: Principal) -> Actor:
    if principal.id == SYSTEM.id:
        raise Unauthorized(f"'{SYSTEM.id}' is reserved for TaskFlow itself")
    name = (principal.name or principal.email or principal.id)[:200]
    return Actor(id=principal.id, role=principal.role, name=name)


# ---------------------------------------------------------------- who may see what

# The caller as a statement parameter: statements are built once, for every caller.
CALLER = bindparam("caller", type_=String())
# A task is visible to the caller when it is in one of their projects, or has no project and
# they created it or are assigned it. Admins see every task.
VISIBLE_TO_CALLER = or_(
    TASK_TABLE.c.project_slug.in_(
        select(ProjectMember.project_slug).where(col(ProjectMember.worker_id) == CALLER).scalar_subquery()
    ),
    and_(
        TASK_TABLE.c.project_slug.is_(None),
        or_(TASK_TABLE.c.created_by == CALLER, TASK_TABLE.c.assigned_to == CALLER),
    ),
)
MY_PROJECT_SLUGS = select(ProjectMember.project_slug).where(col(ProjectMember.worker_id) == CALLER)


def _my_projects(actor: Actor) -> SelectOfScalar[str]:
    return select(ProjectMember.project_slug).where(ProjectMember.worker_id == actor.id)


def visible_task(actor: Actor) -> ColumnElement[bool]:
    """Tasks in my projects, and project-less tasks I created or am assigned."""
    if actor.is_admin:
        return true()
    return or_(
        col(Task.project_slug).in_(_my_projects(actor)),
        (col(Task.project_slug).is_(None)) & ((Task.created_by == actor.id) | (Task.assigned_to == actor.id)),
    )


def visible_project(actor: Actor) -> ColumnElement[bool]:
    return true() if actor.is_admin else col(Project.slug).in_(_my_projects(actor))


def visible_audit(actor: Actor) -> ColumnElement[bool]:
    if actor.is_admin:
        return true()
    my_loose_tasks = select(Task.id).where(
        col(Task.project_slug).is_(None), (Task.created_by == actor.id) | (Task.assigned_to == actor.id)
    )
    return or_(
        col(AuditLog.project_slug).in_(_my_projects(actor)),
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


def require_creator_or_owner(session: Session, actor: Actor, task: TaskRead, what: str) -> None:
    if task.created_by != actor.id and not is_task_owner(session, actor, task):
        raise Forbidden(f"Only the task's creator, a project owner or an admin may {what}")


def require_assignee(actor: Actor, task: TaskRead, what: str) -> None:
    if task.assigned_to != actor.id and not actor.is_admin:
        raise Forbidden(f"Only the task's assignee may {what}")


def require_assignee_or_owner(session: Session, actor: Actor, task: TaskRead, what: str) -> None:
    if task.assigned_to != actor.id and not is_task_owner(session, actor, task):
        raise Forbidden(f"Only the task's assignee or a project owner may {what} task {task.id}")


def check_assignee(session: Session, worker_id: str, project_slug: str | None) -> None:
    """Only a registered worker, and for a project's task only a member of the project, may be assigned it."""
    if session.get(Worker, worker_id) is None:
        raise NotFound(f"Worker '{worker_id}' not found")
    if project_slug is not None and member_role(session, project_slug, worker_id) is None:
        raise BadRequest(f"'{worker_id}' is not a member of project '{project_slug}' and cannot be assigned its tasks")
