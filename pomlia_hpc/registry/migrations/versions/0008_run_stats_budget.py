"""run stats: budget of the value, start-up of the cost

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 02:20:00

A strategy's value on a task was the test metric of its best run whatever that run's budget (a
1-epoch test study's value stood for the strategy), and its cost scaled seconds per epoch,
start-up included, to the full budget. The summaries now keep the runs far below the task's full
budget apart (their count, best value and most epochs: a lower bound, not the strategy's value)
and the seconds spent in epochs of the timed runs (the rest of their wall time is start-up,
counted once per run). The summaries are derived from the runs: they are emptied here and folded
in again at the next read.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = (
    ("n_short", sa.Integer(), "0"),
    ("short_value", sa.Float(), None),
    ("short_epochs", sa.Float(), None),
    ("timed_n", sa.Integer(), "0"),
    ("epoch_s", sa.Float(), "0"),
    ("epoch_n", sa.Float(), "0"),
    ("startup_s", sa.Float(), "0"),
)


def upgrade() -> None:
    op.execute("DELETE FROM kb_run_seen")
    op.execute("DELETE FROM kb_run_stats")
    with op.batch_alter_table("kb_run_stats", schema=None) as batch_op:
        for name, kind, default in COLUMNS:
            batch_op.add_column(
                sa.Column(name, kind, nullable=default is None, server_default=default)
            )


def downgrade() -> None:
    # The older code would take these summaries for its own (short runs kept apart, never
    # counted): empty them, it folds the runs in again its way.
    op.execute("DELETE FROM kb_run_seen")
    op.execute("DELETE FROM kb_run_stats")
    with op.batch_alter_table("kb_run_stats", schema=None) as batch_op:
        for name, _, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
