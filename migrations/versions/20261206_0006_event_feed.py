"""The event feed: each audit row's place in commit order, and a wake-up at commit.

- `audit_log.feed_tx`: on PostgreSQL, the id of the transaction that wrote the row (a BEFORE
  INSERT trigger sets it). A row's id is drawn before its transaction commits, so a reader that
  followed `id > cursor` could pass a row whose transaction commits after a later one; the feed
  reads in `(feed_tx, id)` order and serves only rows of transactions older than every one still
  running, which can no longer gain rows. On SQLite writers take turns, so ids are already in
  commit order and the column stays 0.
- The same trigger sends `NOTIFY taskflow_events` (and `taskflow_work` unless the row is about a
  comment); PostgreSQL delivers a notification when its transaction commits, and drops it when
  the transaction rolls back, so a waiter is woken exactly when there is something to see.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration must keep meaning what it meant when it was written.
FEED_TRIGGER = """
CREATE FUNCTION audit_log_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.feed_tx := pg_current_xact_id()::text::bigint;
    PERFORM pg_notify('taskflow_events', '');
    IF NEW.action NOT LIKE 'comment.%' THEN
        PERFORM pg_notify('taskflow_work', '');
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_log_feed
    BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_feed();
"""


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("feed_tx", sa.BigInteger(), server_default="0", nullable=False))
        batch.create_index("ix_audit_log_feed_tx_id", ["feed_tx", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FEED_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_feed ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_feed()")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_index("ix_audit_log_feed_tx_id")
        batch.drop_column("feed_tx")
