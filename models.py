"""SQLModel tables, the request/response schemas built on them, and their enums.

No queries, sessions or FastAPI imports here: this module is the shape of the data.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator, BeforeValidator, HttpUrl, StringConstraints, field_validator, model_validator
from pydantic import Field as PydanticField
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel
from sqlmodel._compat import SQLModelConfig

# Named constraints, so later migrations (batch mode on SQLite) can find and alter them.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so the value is stored
    as naive UTC and given its offset back when read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken to be UTC already; aware ones are converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def string_enum(enum_class: type[enum.Enum]) -> sa.Enum:
    # A VARCHAR holding the value, not a native PostgreSQL enum, so a new member
    # needs no migration of the type.
    return sa.Enum(
        enum_class,
        native_enum=False,
        length=20,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class TaskStatus(enum.StrEnum):
    pending = "pending"
    in_progress = "in_progress"
    review = "review"
    completed = "completed"
    blocked = "blocked"


class TaskPriority(enum.StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


PRIORITY_RANK = {TaskPriority.low: 1, TaskPriority.medium: 2, TaskPriority.high: 3, TaskPriority.critical: 4}
# The database computes the rank into `task.priority_rank`, so that an index can serve "most urgent first".
PRIORITY_RANK_SQL = (
    "CASE priority " + " ".join(f"WHEN '{p.value}' THEN {rank}" for p, rank in PRIORITY_RANK.items()) + " ELSE 0 END"
)


class WorkerType(enum.StrEnum):
    human = "human"
    agent = "agent"
    # TaskFlow itself, e.g. when a lease runs out; never a registered worker.
    system = "system"


class ProjectRole(enum.StrEnum):
    owner = "owner"
    member = "member"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refusing it here keeps it a 422 instead of a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _zero_is_none(value: Any) -> Any:
    # Swagger UI fills empty integer fields with 0; no row ever has id 0.
    return None if value in (0, "0") else value


def _not_null(value: Any) -> Any:
    # Runs only for fields a client sent: an explicit null for a field that cannot be empty.
    if value is None:
        raise ValueError("may not be null")
    return value


def _lowercase(value: Any) -> Any:
    # Only strings: anything else is left for the type check to refuse.
    return value.lower() if isinstance(value, str) else value


def _label_set(labels: list[str]) -> list[str]:
    # A set, stored and returned in one order, so that equal sets are equal values (and audit no change).
    return sorted(set(labels))


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return as_utc(value)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


MAX_ID = 2_147_483_647  # ids are 32-bit integers on PostgreSQL
# Skipping rows costs reading them: past this, page with `after=` (the Link header's next page).
MAX_OFFSET = 10_000
SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
WORKER_ID_PATTERN = r"^[A-Za-z0-9@._:|+-]+$"  # auth.SUBJECT_PATTERN accepts the same ids

Text = Annotated[str, AfterValidator(_no_nul)]
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_nul),
    AfterValidator(_not_blank),
]
Description = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(_no_nul)]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_nul),
    AfterValidator(_not_blank),
]
# What a progress report says was done: optional, so it may be empty, but never NUL (PostgreSQL refuses it).
ProgressNote = Annotated[str, StringConstraints(max_length=2_000, pattern=r"^[^\x00]*$")]
Note = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2_000),
    AfterValidator(_no_nul),
    AfterValidator(_not_blank),
]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=SLUG_PATTERN)]
WorkerId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=WORKER_ID_PATTERN)]
MAX_LABELS = 20
LABEL_PATTERN = r"^[a-z0-9][a-z0-9._:-]*$"
Label = Annotated[
    str, BeforeValidator(_lowercase), StringConstraints(min_length=1, max_length=50, pattern=LABEL_PATTERN)
]
Labels = Annotated[list[Label], PydanticField(max_length=MAX_LABELS), AfterValidator(_label_set)]
Id = Annotated[int, PydanticField(ge=1, le=MAX_ID)]
ParentId = Annotated[Id | None, BeforeValidator(_zero_is_none)]
DueDate = Annotated[datetime | None, AfterValidator(_aware)]
MAX_LEASE_SECONDS = 7 * 24 * 3600
LeaseSeconds = Annotated[int, PydanticField(ge=1, le=MAX_LEASE_SECONDS)]
MAX_WAIT_SECONDS = 60
WaitSeconds = Annotated[
    int,
    PydanticField(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="When there is nothing yet, wait up to this many seconds for it instead of answering at once",
    ),
]


Offset = Annotated[
    int, PydanticField(ge=0, le=MAX_OFFSET, description=f"Rows to skip (at most {MAX_OFFSET:,}; then use `after`)")
]
Cursor = Annotated[
    str,
    StringConstraints(max_length=500, pattern=r"^[A-Za-z0-9_-]+$"),
    PydanticField(description="Where the page starts: the `after` of the Link header's next page"),
]


def _offset_or_after(query: Any) -> Any:
    if query.after is not None and query.offset:
        raise ValueError("send either offset or after, not both")
    return query


# Request bodies refuse unknown fields, so a typo is a 422 instead of a silent no-op.
STRICT_BODY = SQLModelConfig(extra="forbid")


# ---------------------------------------------------------------- workers


class TaskSort(enum.StrEnum):
    created_at = "created_at"
    created_at_desc = "-created_at"
    updated_at = "updated_at"
    updated_at_desc = "-updated_at"
    priority = "priority"
    priority_desc = "-priority"
    due_date = "due_date"
    due_date_desc = "-due_date"


class Worker(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=128)
    type: WorkerType = Field(sa_type=string_enum(WorkerType))
    name: str = Field(max_length=200)
    # The human accountable for an agent.
    owner_id: str | None = Field(default=None, foreign_key="worker.id", max_length=128)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class WorkerCreate(SQLModel):
    model_config = STRICT_BODY

    id: WorkerId
    type: WorkerType = WorkerType.human
    name: Name
    owner_id: WorkerId | None = None


class WorkerUpdate(SQLModel):
    model_config = STRICT_BODY

    type: WorkerType | None = None
    name: Name | None = None
    owner_id: WorkerId | None = None

    _required = field_validator("type", "name")(_not_null)


class WorkerRead(SQLModel):
    id: str
    type: WorkerType
    name: str
    owner_id: str | None
    created_at: datetime


# ---------------------------------------------------------------- projects


class Project(SQLModel, table=True):
    slug: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_type=sa.Text)
    created_by: str = Field(foreign_key="worker.id", max_length=128)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class ProjectCreate(SQLModel):
    model_config = STRICT_BODY

    slug: Slug
    name: Name
    description: Description | None = None


class ProjectUpdate(SQLModel):
    model_config = STRICT_BODY

    name: Name | None = None
    description: Description | None = None

    _required = field_validator("name")(_not_null)


class ProjectRead(SQLModel):
    slug: str
    name: str
    description: str | None
    created_by: str
    created_at: datetime


class ProjectMember(SQLModel, table=True):
    __tablename__ = "project_member"

    project_slug: str = Field(foreign_key="project.slug", primary_key=True, max_length=64, ondelete="CASCADE")
    worker_id: str = Field(foreign_key="worker.id", primary_key=True, max_length=128, index=True)
    role: ProjectRole = Field(default=ProjectRole.member, sa_type=string_enum(ProjectRole))
    added_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class MemberCreate(SQLModel):
    model_config = STRICT_BODY

    worker_id: WorkerId
    role: ProjectRole = ProjectRole.member


class MemberUpdate(SQLModel):
    model_config = STRICT_BODY

    role: ProjectRole


class MemberRead(SQLModel):
    project_slug: str
    worker_id: str
    role: ProjectRole
    added_at: datetime


# ---------------------------------------------------------------- tasks

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")
# None is SQL NULL, not the JSON value `null`: "no result" is one state, found by IS NULL.
JSON_OR_NULL = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Task(SQLModel, table=True):
    # History is kept by task id, so an id is never reused (SQLite would reuse the highest one).
    # Each list order has an index that leads with the project filter, so a page is a range scan
    # at any size; the claim order has a partial index over pending tasks only.
    __table_args__ = (
        sa.Index("ix_task_created_at_id", "created_at", "id"),
        sa.Index("ix_task_project_slug_created_at_id", "project_slug", "created_at", "id"),
        sa.Index("ix_task_project_slug_updated_at_id", "project_slug", "updated_at", "id"),
        sa.Index("ix_task_project_slug_due_date_id", "project_slug", "due_date", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_type=sa.Text)
    status: TaskStatus = Field(default=TaskStatus.pending, sa_type=string_enum(TaskStatus), index=True)
    priority: TaskPriority = Field(default=TaskPriority.medium, sa_type=string_enum(TaskPriority))
    progress_percent: int = Field(
        default=0, sa_column_args=[sa.CheckConstraint("progress_percent BETWEEN 0 AND 100", name="progress_range")]
    )
    assigned_to: str | None = Field(default=None, foreign_key="worker.id", max_length=128, index=True)
    project_slug: str | None = Field(default=None, foreign_key="project.slug", max_length=64)
    parent_id: int | None = Field(default=None, foreign_key="task.id", index=True)
    due_date: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: str = Field(foreign_key="worker.id", max_length=128, index=True)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    # Bumped by every audited change; the ETag that If-Match is checked against.
    version: int = Field(default=1)
    # A claim that is not renewed by then is lost; null means it never expires.
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    lease_seconds: int | None = Field(default=None)
    # A sorted set of routing labels; `labels @> '["a"]'` is served by a GIN index on PostgreSQL.
    labels: list[str] = Field(default_factory=list, sa_type=JSON_TYPE, sa_column_kwargs={"server_default": "[]"})
    # What the last completion delivered (`TaskResult` as JSON); emptied when the task is reopened.
    result: dict[str, Any] | None = Field(default=None, sa_type=JSON_OR_NULL)


# Written by the database, read only by ORDER BY: a column of the table that the ORM does not
# map, so no insert or update has to fetch it back.
TASK_TABLE: sa.Table = Task.__table__  # type: ignore[attr-defined]
TASK_TABLE.append_column(
    sa.Column("priority_rank", sa.SmallInteger(), sa.Computed(PRIORITY_RANK_SQL, persisted=True), nullable=False)
)
sa.Index(
    "ix_task_project_slug_priority_rank_id", TASK_TABLE.c.project_slug, TASK_TABLE.c.priority_rank, TASK_TABLE.c.id
)
sa.Index(
    "ix_task_claim_order",
    TASK_TABLE.c.priority_rank.desc(),
    TASK_TABLE.c.due_date,
    TASK_TABLE.c.created_at,
    TASK_TABLE.c.id,
    postgresql_where=TASK_TABLE.c.status == "pending",
    sqlite_where=TASK_TABLE.c.status == "pending",
)
# Containment (`@>`) of labels. SQLite has no index that could serve it: there, only PostgreSQL has it.
sa.Index("ix_task_labels", TASK_TABLE.c.labels, postgresql_using="gin").ddl_if(dialect="postgresql")


class TaskDependency(SQLModel, table=True):
    """`task_id` cannot start before `depends_on_id` is completed."""

    __tablename__ = "task_dependency"

    task_id: int = Field(foreign_key="task.id", primary_key=True, ondelete="CASCADE")
    depends_on_id: int = Field(foreign_key="task.id", primary_key=True, index=True)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class LostLease(SQLModel, table=True):
    """Who lost a claim on a task by letting its lease run out, so they hear `lease_lost`, not `forbidden`."""

    __tablename__ = "lost_lease"

    task_id: int = Field(foreign_key="task.id", primary_key=True, ondelete="CASCADE")
    worker_id: str = Field(primary_key=True, max_length=128)
    lost_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class IdempotencyKey(SQLModel, table=True):
    """The first response to a POST sent with an `Idempotency-Key`, saved with the change it made."""

    __tablename__ = "idempotency_key"

    actor_id: str = Field(primary_key=True, max_length=128)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    status_code: int
    headers: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON)
    body: str = Field(sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, index=True)


class Artifact(SQLModel):
    """Something a completed task delivered, by name and http(s) link."""

    model_config = STRICT_BODY

    name: Name
    url: HttpUrl


class TaskResult(SQLModel):
    """What completing a task delivered: a summary and links to its artifacts."""

    model_config = STRICT_BODY

    summary: Description | None = None
    artifacts: list[Artifact] = PydanticField(default_factory=list, max_length=20)


class TaskCreate(SQLModel):
    """A new task always starts `pending`; status changes go through the workflow."""

    model_config = STRICT_BODY

    title: Title
    description: Description | None = None
    priority: TaskPriority = TaskPriority.medium
    assigned_to: WorkerId | None = None
    project_slug: Slug | None = None
    parent_id: ParentId = None
    due_date: DueDate = None
    labels: Labels = PydanticField(default_factory=list)


class TaskUpdate(SQLModel):
    """Only the fields sent are changed; `null` clears a nullable field."""

    model_config = STRICT_BODY

    title: Title | None = None
    description: Description | None = None
    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    assigned_to: WorkerId | None = None
    project_slug: Slug | None = None
    parent_id: ParentId = None
    due_date: DueDate = None
    # Replaces the whole set; [] empties it.
    labels: Labels | None = None

    _required = field_validator("title", "status", "priority", "labels")(_not_null)


class TaskRead(SQLModel):
    id: int
    title: str
    description: str | None
    status: TaskStatus
    priority: TaskPriority
    progress_percent: int
    assigned_to: str | None
    project_slug: str | None
    parent_id: int | None
    due_date: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int
    lease_expires_at: datetime | None
    labels: list[str]
    result: TaskResult | None


class ClaimRequest(SQLModel):
    """What `POST /api/tasks/claim` may narrow the choice to."""

    model_config = STRICT_BODY

    project: Slug | None = None
    min_priority: TaskPriority | None = None
    lease_seconds: LeaseSeconds | None = None
    labels: Labels = PydanticField(default_factory=list, description="Only tasks carrying every one of these labels")
    wait_seconds: WaitSeconds = 0


class DependencyCreate(SQLModel):
    model_config = STRICT_BODY

    depends_on: Id


class TaskQuery(SQLModel):
    """The filters of `GET /api/tasks`; `parent_id=0` (Swagger's empty value) means no filter."""

    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    assigned_to: WorkerId | None = None
    project: Slug | None = None
    parent_id: ParentId = None
    q: Annotated[Text, StringConstraints(max_length=200)] | None = None
    ready: bool | None = None
    label: Labels = PydanticField(default_factory=list, description="Only tasks carrying every label given (repeat it)")
    sort: TaskSort = TaskSort.created_at
    limit: int = PydanticField(default=50, ge=1, le=100)
    offset: Offset = 0
    after: Cursor | None = None

    _one_way_to_page = model_validator(mode="after")(_offset_or_after)


# ---------------------------------------------------------------- comments

MAX_COMMENT_LENGTH = 10_000
# Stored exactly as written (Markdown by convention): nothing is stripped, but a blank one says nothing.
CommentBody = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_COMMENT_LENGTH),
    AfterValidator(_no_nul),
    AfterValidator(_not_blank),
]


class Comment(SQLModel, table=True):
    """A comment on a task; it goes when its task goes. Its history is kept by the audit log."""

    # A task's comments are read in id order; ids are never reused, as audit rows name them.
    __table_args__ = (sa.Index("ix_comment_task_id_id", "task_id", "id"), {"sqlite_autoincrement": True})

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", ondelete="CASCADE")
    author_id: str = Field(foreign_key="worker.id", max_length=128)
    body: str = Field(sa_type=sa.Text)
    # The worker ids the body mentions who could see the task when it was written, sorted.
    mentions: list[str] = Field(default_factory=list, sa_type=sa.JSON().with_variant(JSONB(), "postgresql"))
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


class CommentCreate(SQLModel):
    model_config = STRICT_BODY

    body: CommentBody


class CommentUpdate(SQLModel):
    model_config = STRICT_BODY

    body: CommentBody


class CommentRead(SQLModel):
    id: int
    task_id: int
    author_id: str
    body: str
    mentions: list[str]
    created_at: datetime
    updated_at: datetime
    # Whether the body was changed after it was posted.
    edited: bool


# ---------------------------------------------------------------- audit


class AuditAction(enum.StrEnum):
    """What an audit row records. The values are stored; they never change."""

    task_created = "task.created"
    task_updated = "task.updated"
    task_deleted = "task.deleted"
    task_started = "task.started"
    task_claimed = "task.claimed"
    task_progress = "task.progress"
    task_review = "task.review"
    task_completed = "task.completed"
    task_blocked = "task.blocked"
    task_unblocked = "task.unblocked"
    task_released = "task.released"
    lease_expired = "lease_expired"
    dependency_added = "dependency.added"
    dependency_removed = "dependency.removed"
    project_created = "project.created"
    project_updated = "project.updated"
    project_deleted = "project.deleted"
    member_added = "member.added"
    member_updated = "member.updated"
    member_removed = "member.removed"
    worker_registered = "worker.registered"
    worker_updated = "worker.updated"
    comment_added = "comment.added"
    comment_edited = "comment.edited"
    comment_deleted = "comment.deleted"


class AuditLog(SQLModel, table=True):
    """One row per change. No foreign key to tasks: history outlives a deleted task."""

    __tablename__ = "audit_log"
    # A task's trail and a project's feed are read in id order.
    __table_args__ = (
        sa.Index("ix_audit_log_task_id_id", "task_id", "id"),
        sa.Index("ix_audit_log_project_slug_id", "project_slug", "id"),
        sa.Index("ix_audit_log_feed_tx_id", "feed_tx", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    task_id: int | None = Field(default=None)
    project_slug: str | None = Field(default=None, max_length=64)
    actor_id: str = Field(max_length=128, index=True)
    actor_type: WorkerType = Field(sa_type=string_enum(WorkerType))
    # For an agent's rows: the human accountable for it.
    owner_id: str | None = Field(default=None, max_length=128, index=True)
    action: str = Field(max_length=64, index=True)
    context: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON().with_variant(JSONB(), "postgresql"))
    request_id: str | None = Field(default=None, max_length=128)
    # How the change came: "api" (REST), "mcp" (the /mcp endpoint), or null for TaskFlow's own;
    # and the OAuth client the caller acted through, when their token named one.
    via: str | None = Field(default=None, max_length=8)
    client_id: str | None = Field(default=None, max_length=255)
    timestamp: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime, index=True)
    # The row's place in the event feed, set by the database (see the 0006 migration): no default
    # here, so no INSERT ever names it.
    feed_tx: int = Field(default=0, sa_column=sa.Column(sa.BigInteger(), server_default="0", nullable=False))


class AuditRead(SQLModel):
    id: int
    task_id: int | None
    project_slug: str | None
    actor_id: str
    actor_type: WorkerType
    owner_id: str | None
    action: str
    context: dict[str, Any]
    request_id: str | None
    via: str | None = PydanticField(description="How the change came: api (REST), mcp, or null for TaskFlow's own")
    client_id: str | None = PydanticField(description="The OAuth client the actor acted through, if any")
    timestamp: datetime


class IdPage(SQLModel):
    """A page of rows in id order: `offset` for the first few pages, `after` (the Link header's) for any."""

    limit: int = PydanticField(default=50, ge=1, le=100)
    offset: Offset = 0
    after: Id | None = PydanticField(default=None, description="The id of the last row you have: the page after it")

    _one_way_to_page = model_validator(mode="after")(_offset_or_after)


class AuditQuery(IdPage):
    """The filters of `GET /api/audit`: `since` is inclusive, `until` exclusive."""

    task_id: Id | None = None
    project: Slug | None = None
    actor_id: WorkerId | None = None
    owner_id: WorkerId | None = None
    action: Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z_.]+$")] | None = None
    since: DueDate = None
    until: DueDate = None


# ---------------------------------------------------------------- the event feed


class EventQuery(SQLModel):
    """The filters of `GET /api/events` and its stream; every one narrows the feed."""

    after: int | None = PydanticField(
        default=None,
        ge=0,
        le=MAX_ID,
        description="The `id` of the last event you have (0: from the start). Without it, the feed starts now",
    )
    limit: int = PydanticField(default=100, ge=1, le=500)
    project: Slug | None = None
    task_id: Id | None = None
    type: list[AuditAction] | None = PydanticField(default=None, max_length=len(AuditAction))
    mentioning: WorkerId | None = PydanticField(default=None, description="Only comments that mention this worker id")
    wait_seconds: WaitSeconds = 0


class EventComment(SQLModel):
    """The comment an event is about, as it was after the change (`body` is null once deleted)."""

    id: int
    body: str | None
    mentions: list[str] | None


class Event(SQLModel):
    id: int = PydanticField(description="The event's place in the feed: pass it as `after` to continue")
    type: str = PydanticField(description="The audit action")
    at: datetime
    actor_id: str
    actor_type: WorkerType
    owner_id: str | None
    via: str | None = PydanticField(description="How the change came: api (REST), mcp, or null for TaskFlow's own")
    client_id: str | None = PydanticField(description="The OAuth client the actor acted through, if any")
    task_id: int | None
    project_slug: str | None
    changes: dict[str, Any]
    comment: EventComment | None = None


class EventPage(SQLModel):
    events: list[Event]
    next_after: int = PydanticField(
        description="Where to continue: pass it as `after`. It moves past events you may not see, too"
    )


# ---------------------------------------------------------------- plain responses


class ErrorBody(SQLModel):
    error: str
    status_code: int
    code: str
    detail: list[dict[str, Any]] | None = None
    request_id: str | None = None


class Health(SQLModel):
    status: str
    version: str


class DatabaseHealth(SQLModel):
    database: str
