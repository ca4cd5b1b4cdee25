"""strategy run stats

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:36:40.821188

Summaries of the registry's runs per (task, strategy) for the strategy recommender, folded
in incrementally (kb_run_seen: the runs already examined, done once counted).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_run_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("strategy_key", sa.String(length=16), nullable=False),
        sa.Column("strategy", sa.JSON(), nullable=False),
        sa.Column("n_runs", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("best_run_id", sa.Integer(), nullable=True),
        sa.Column("best_objective", sa.Float(), nullable=True),
        sa.Column("best_value", sa.Float(), nullable=True),
        sa.Column("cost_sum", sa.Float(), nullable=False),
        sa.Column("n_cost", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "strategy_key"),
    )
    with op.batch_alter_table("kb_run_stats", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kb_run_stats_task_id"), ["task_id"], unique=False)

    op.create_table(
        "kb_run_seen",
        sa.Column("run_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("kb_run_seen", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kb_run_seen_done"), ["done"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("kb_run_seen", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kb_run_seen_done"))

    op.drop_table("kb_run_seen")
    with op.batch_alter_table("kb_run_stats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kb_run_stats_task_id"))

    op.drop_table("kb_run_stats")
