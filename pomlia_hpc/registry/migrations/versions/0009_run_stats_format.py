"""run stats: the summary format of each row

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 05:00:00

The run summaries (``kb_run_stats``, ``kb_run_seen``) are derived from the runs, and how a run is
counted changed with 0006 and 0008, each of which emptied them to fold the runs in again. An
older pomlia that stayed open across such an upgrade (a `loop watch` daemon, a pipeline driver)
refilled them in its own way afterwards and marked the runs seen, so the newer one ranked with
the old counts for good. Each row now carries the format of the code that wrote it; an older
pomlia does not know the column and leaves it NULL, and a reader that finds a row of another
format builds every summary again (:mod:`pomlia_hpc.strategy.runstats`). The rows already there
have none: they are built again at the next read.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = ("kb_run_stats", "kb_run_seen")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            # nullable, no server default: an older pomlia's rows must come out NULL
            batch_op.add_column(sa.Column("summary_format", sa.Integer(), nullable=True))


def downgrade() -> None:
    # The older code cannot tell these rows from its own: empty them, it folds the runs again.
    op.execute("DELETE FROM kb_run_seen")
    op.execute("DELETE FROM kb_run_stats")
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("summary_format")
