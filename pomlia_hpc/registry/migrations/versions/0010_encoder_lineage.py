"""encoders: how each one was made (its lineage)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 10:30:00

Which encoder a ``fingerprint refresh`` started from was read back from the name: an encoder
called ``<root>-r<k>`` with the root's settings counted as a refresh of the root, so one named
so by hand did too (it could become the default encoder, or be taken over by the next refresh
as its own). Each encoder now records how it was made: ``origin`` (``trained``: by
``fingerprint train`` or a pipeline; ``refresh``: by a refresh, of the encoder
``refresh_of_id``). The rows already there (written before 0010) are left NULL: for those the
name rule stands (:mod:`pomlia_hpc.fingerprint.lineage`). An older pomlia cannot write new ones
(``Registry.open`` refuses a schema newer than its own).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("encoders", schema=None) as batch_op:
        # nullable, no server default: the rows already there, and an older pomlia's, are NULL
        batch_op.add_column(sa.Column("origin", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("refresh_of_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("encoders", schema=None) as batch_op:
        batch_op.drop_column("refresh_of_id")
        batch_op.drop_column("origin")
