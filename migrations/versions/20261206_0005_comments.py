"""Comments on tasks, with the worker ids they mention; they go when their task goes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "comment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.String(128), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("mentions", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], name=op.f("fk_comment_task_id_task"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["author_id"], ["worker.id"], name=op.f("fk_comment_author_id_worker")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comment")),
        # Audit rows name comments by id: SQLite would otherwise reuse the highest one after a delete.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_comment_task_id_id", "comment", ["task_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_comment_task_id_id", table_name="comment")
    op.drop_table("comment")
