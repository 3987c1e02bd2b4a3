"""Labels for routing work, and the result a completion delivered.

- `task.labels`: a JSON array of strings (JSONB on PostgreSQL), `[]` for existing tasks, with a
  GIN index on PostgreSQL so "carries every one of these labels" (`labels @> '[...]'`) is indexed.
- `task.result`: the completion's summary and artifacts as JSON, NULL until a task is completed
  with one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASK_TABLE_KWARGS: dict[str, Any] = {"sqlite_autoincrement": True}
JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


# Plain ALTER TABLE on SQLite too: a rebuild of the table would copy into its generated column
# `priority_rank`, which SQLite refuses, and ADD/DROP COLUMN need none.
def upgrade() -> None:
    with op.batch_alter_table("task", table_kwargs=TASK_TABLE_KWARGS, recreate="never") as batch:
        batch.add_column(sa.Column("labels", JSON_TYPE, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("result", JSON_TYPE, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_task_labels", "task", ["labels"], postgresql_using="gin")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_task_labels", table_name="task")
    with op.batch_alter_table("task", table_kwargs=TASK_TABLE_KWARGS, recreate="never") as batch:
        batch.drop_column("result")
        batch.drop_column("labels")
