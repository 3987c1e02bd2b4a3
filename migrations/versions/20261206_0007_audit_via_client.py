"""Audit rows say how a change came (REST or MCP) and through which OAuth client.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, with no default: adding them rewrites nothing, however long the log. Rows from
    # before keep NULL in both; they all came through the REST API, the only way in then.
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("via", sa.String(8), nullable=True))
        batch.add_column(sa.Column("client_id", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("client_id")
        batch.drop_column("via")
