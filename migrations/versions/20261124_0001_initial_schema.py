"""Initial schema: workers, projects and members, tasks, and the append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def timestamp(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def string_enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=20)


# PostgreSQL refuses to rewrite history even for a client that bypasses the API.
AUDIT_APPEND_ONLY = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
END;
$$;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("type", string_enum("workertype", "human", "agent"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker")),
    )
    op.create_table(
        "project",
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(["created_by"], ["worker.id"], name=op.f("fk_project_created_by_worker")),
        sa.PrimaryKeyConstraint("slug", name=op.f("pk_project")),
    )
    op.create_table(
        "project_member",
        sa.Column("project_slug", sa.String(64), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("role", string_enum("projectrole", "owner", "member"), nullable=False),
        timestamp("added_at"),
        sa.ForeignKeyConstraint(
            ["project_slug"], ["project.slug"], name=op.f("fk_project_member_project_slug_project"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["worker_id"], ["worker.id"], name=op.f("fk_project_member_worker_id_worker")),
        sa.PrimaryKeyConstraint("project_slug", "worker_id", name=op.f("pk_project_member")),
    )
    op.create_index(op.f("ix_project_member_worker_id"), "project_member", ["worker_id"])
    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "status",
            string_enum("taskstatus", "pending", "in_progress", "review", "completed", "blocked"),
            nullable=False,
        ),
        sa.Column("priority", string_enum("taskpriority", "low", "medium", "high", "critical"), nullable=False),
        sa.Column("progress_percent", sa.Integer(), nullable=False),
        sa.Column("assigned_to", sa.String(128), nullable=True),
        sa.Column("project_slug", sa.String(64), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        timestamp("due_date", nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.CheckConstraint("progress_percent BETWEEN 0 AND 100", name=op.f("ck_task_progress_range")),
        sa.ForeignKeyConstraint(["assigned_to"], ["worker.id"], name=op.f("fk_task_assigned_to_worker")),
        sa.ForeignKeyConstraint(["created_by"], ["worker.id"], name=op.f("fk_task_created_by_worker")),
        sa.ForeignKeyConstraint(["parent_id"], ["task.id"], name=op.f("fk_task_parent_id_task")),
        sa.ForeignKeyConstraint(["project_slug"], ["project.slug"], name=op.f("fk_task_project_slug_project")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task")),
        sqlite_autoincrement=True,
    )
    for column in ("assigned_to", "created_by", "parent_id", "project_slug", "status"):
        op.create_index(op.f(f"ix_task_{column}"), "task", [column])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("project_slug", sa.String(64), nullable=True),
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("actor_type", string_enum("workertype", "human", "agent"), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("context", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        timestamp("timestamp"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    for column in ("action", "actor_id", "project_slug", "task_id", "timestamp"):
        op.create_index(op.f(f"ix_audit_log_{column}"), "audit_log", [column])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(AUDIT_APPEND_ONLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table("audit_log")
    op.drop_table("task")
    op.drop_table("project_member")
    op.drop_table("project")
    op.drop_table("worker")
