"""retrain requests written by the monitor

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 04:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrain_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("monitor_report_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.ForeignKeyConstraint(["monitor_report_id"], ["monitor_reports.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retrain_requests_model_id"), ["model_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_retrain_requests_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_requests_status"))
        batch_op.drop_index(batch_op.f("ix_retrain_requests_model_id"))
    op.drop_table("retrain_requests")
