"""loop: loop runs, gate decisions, promotions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "loop_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.String(length=128), nullable=False),
        sa.Column("champion_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=True),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.Integer(), sa.ForeignKey("retrain_requests.id"), nullable=True),
        sa.Column("report_id", sa.Integer(), sa.ForeignKey("monitor_reports.id"), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _created(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_runs_slot", "loop_runs", ["slot"])
    op.create_index("ix_loop_runs_status", "loop_runs", ["status"])
    op.create_table(
        "gate_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.String(length=128), nullable=False),
        sa.Column("champion_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=True),
        sa.Column("challenger_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("loop_run_id", sa.Integer(), sa.ForeignKey("loop_runs.id"), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gate_decisions_slot", "gate_decisions", ["slot"])
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("bundle_path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("gate_id", sa.Integer(), sa.ForeignKey("gate_decisions.id"), nullable=True),
        sa.Column("loop_run_id", sa.Integer(), sa.ForeignKey("loop_runs.id"), nullable=True),
        _created(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_promotions_slot", "promotions", ["slot"])


def downgrade() -> None:
    op.drop_index("ix_promotions_slot", table_name="promotions")
    op.drop_table("promotions")
    op.drop_index("ix_gate_decisions_slot", table_name="gate_decisions")
    op.drop_table("gate_decisions")
    op.drop_index("ix_loop_runs_status", table_name="loop_runs")
    op.drop_index("ix_loop_runs_slot", table_name="loop_runs")
    op.drop_table("loop_runs")
