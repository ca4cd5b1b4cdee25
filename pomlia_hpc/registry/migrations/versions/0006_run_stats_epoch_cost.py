"""run stats: seconds per epoch

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 19:00:00

A strategy's measured cost was the mean wall time of its runs, whatever their budgets (3 or 60
epochs alike); the summaries now also keep the seconds and the epochs trained of the runs
whose trained epochs are known (a promoted run resumes from a checkpoint: its seconds cover
only the epochs it added). The summaries are derived from the runs: they are emptied here and
folded in again at the next read.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM kb_run_seen")
    op.execute("DELETE FROM kb_run_stats")
    with op.batch_alter_table("kb_run_stats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timed_s", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("timed_epochs", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("kb_run_stats", schema=None) as batch_op:
        batch_op.drop_column("timed_epochs")
        batch_op.drop_column("timed_s")
