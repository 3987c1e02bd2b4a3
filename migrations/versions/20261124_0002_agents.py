"""Agents as first-class workers: task versions and leases, dependencies, lost leases,
idempotency keys, and the human accountable for an agent.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite rebuilds the table here; keep AUTOINCREMENT so ids are never reused.
    task_table_kwargs: dict[str, Any] = {"sqlite_autoincrement": True}
    with op.batch_alter_table("task", table_kwargs=task_table_kwargs) as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_seconds", sa.Integer(), nullable=True))
        batch.create_index(batch.f("ix_task_lease_expires_at"), ["lease_expires_at"])
    with op.batch_alter_table("task", table_kwargs=task_table_kwargs) as batch:
        # The default only filled existing rows; the app always sets it.
        batch.alter_column("version", server_default=None)

    with op.batch_alter_table("worker") as batch:
        batch.add_column(sa.Column("owner_id", sa.String(128), nullable=True))
        batch.create_foreign_key(batch.f("fk_worker_owner_id_worker"), "worker", ["owner_id"], ["id"])

    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("owner_id", sa.String(128), nullable=True))
        batch.create_index(batch.f("ix_audit_log_owner_id"), ["owner_id"])

    op.create_table(
        "task_dependency",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("depends_on_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["task.id"], name=op.f("fk_task_dependency_task_id_task"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["depends_on_id"], ["task.id"], name=op.f("fk_task_dependency_depends_on_id_task")),
        sa.PrimaryKeyConstraint("task_id", "depends_on_id", name=op.f("pk_task_dependency")),
    )
    op.create_index(op.f("ix_task_dependency_depends_on_id"), "task_dependency", ["depends_on_id"])

    op.create_table(
        "lost_lease",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("lost_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], name=op.f("fk_lost_lease_task_id_task"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "worker_id", name=op.f("pk_lost_lease")),
    )

    op.create_table(
        "idempotency_key",
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("actor_id", "key", name=op.f("pk_idempotency_key")),
    )
    op.create_index(op.f("ix_idempotency_key_created_at"), "idempotency_key", ["created_at"])

    # The enums are VARCHAR(20) without a CHECK constraint, so 'system' needs no schema change.


def downgrade() -> None:
    op.drop_table("idempotency_key")
    op.drop_table("lost_lease")
    op.drop_table("task_dependency")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_index(batch.f("ix_audit_log_owner_id"))
        batch.drop_column("owner_id")
    with op.batch_alter_table("worker") as batch:
        batch.drop_constraint(batch.f("fk_worker_owner_id_worker"), type_="foreignkey")
        batch.drop_column("owner_id")
    with op.batch_alter_table("task", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index(batch.f("ix_task_lease_expires_at"))
        batch.drop_column("lease_seconds")
        batch.drop_column("lease_expires_at")
        batch.drop_column("version")
