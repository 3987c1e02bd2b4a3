"""Indexes for every list order and for the claim, so pages and claims cost the same at any size.

- `task.priority_rank`, computed by the database from `priority`, so "most urgent first" can be
  read off an index instead of sorting every pending task.
- A partial index over pending tasks in claim order.
- `(project_slug, <sort key>, id)` for each list order, and `(created_at, id)` for lists across
  projects; they replace the plain index on `project_slug`.
- `(task_id, id)` and `(project_slug, id)` on the audit log, for a task's trail and a project's feed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration must keep meaning what it meant when it was written.
PRIORITY_RANK_SQL = (
    "CASE priority WHEN 'low' THEN 1 WHEN 'medium' THEN 2 WHEN 'high' THEN 3 WHEN 'critical' THEN 4 ELSE 0 END"
)
TASK_TABLE_KWARGS: dict[str, Any] = {"sqlite_autoincrement": True}
LIST_ORDERS = ["created_at", "updated_at", "priority_rank", "due_date"]


def upgrade() -> None:
    with op.batch_alter_table("task", table_kwargs=TASK_TABLE_KWARGS) as batch:
        batch.add_column(
            sa.Column(
                "priority_rank", sa.SmallInteger(), sa.Computed(PRIORITY_RANK_SQL, persisted=True), nullable=False
            )
        )
        batch.drop_index("ix_task_project_slug")
    op.create_index("ix_task_created_at_id", "task", ["created_at", "id"])
    for key in LIST_ORDERS:
        op.create_index(f"ix_task_project_slug_{key}_id", "task", ["project_slug", key, "id"])
    op.create_index(
        "ix_task_claim_order",
        "task",
        [sa.text("priority_rank DESC"), "due_date", "created_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )

    op.drop_index("ix_audit_log_task_id", table_name="audit_log")
    op.drop_index("ix_audit_log_project_slug", table_name="audit_log")
    op.create_index("ix_audit_log_task_id_id", "audit_log", ["task_id", "id"])
    op.create_index("ix_audit_log_project_slug_id", "audit_log", ["project_slug", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_project_slug_id", table_name="audit_log")
    op.drop_index("ix_audit_log_task_id_id", table_name="audit_log")
    op.create_index("ix_audit_log_project_slug", "audit_log", ["project_slug"])
    op.create_index("ix_audit_log_task_id", "audit_log", ["task_id"])

    op.drop_index("ix_task_claim_order", table_name="task")
    for key in LIST_ORDERS:
        op.drop_index(f"ix_task_project_slug_{key}_id", table_name="task")
    op.drop_index("ix_task_created_at_id", table_name="task")
    with op.batch_alter_table("task", table_kwargs=TASK_TABLE_KWARGS) as batch:
        batch.create_index("ix_task_project_slug", ["project_slug"])
        batch.drop_column("priority_rank")
