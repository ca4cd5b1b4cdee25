"""datasets: the current version

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 23:10:00

The plain dataset name meant the newest registered version. Adding content identical to an
older version (a restored folder) found that version but left the name meaning the newer one;
the dataset now records which version its name means (None: the newest, as before).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("current_version_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("current_version_id")
