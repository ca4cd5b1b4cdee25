"""The strategy recommender's tables: imported published results and recorded recommendations.

``kb_sources``: one imported table (``pomlia strategy import FILE --source NAME``);
``kb_datasets``: the meta-features of each data set that a source names (scoped per source, so
two sources may describe the same data set independently); ``kb_results``: one published
figure, a (data set, strategy, metric) value in [0, 1]; ``recommendations``: what ``pomlia
recommend`` answered, with its inputs and the learner's version, so its quality can be measured
once the task has runs. The registry's own runs are read from ``runs`` directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pomlia_hpc.registry.schema import Base, UTCDateTime, utcnow


class KbSource(Base):
    """One imported table of published results."""

    __tablename__ = "kb_sources"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    file: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(String(64), default="")
    n_results: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KbDataset(Base):
    """A data set named by a source, with its meta-features (task type, sizes, ...)."""

    __tablename__ = "kb_datasets"
    __table_args__ = (UniqueConstraint("source_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("kb_sources.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class KbResult(Base):
    """One published figure: ``value`` (in [0, 1]) of ``metric`` for a strategy on a data set."""

    __tablename__ = "kb_results"
    __table_args__ = (UniqueConstraint("dataset_id", "strategy_key", "metric"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(
        ForeignKey("kb_sources.id", ondelete="CASCADE"), index=True
    )
    dataset_id: Mapped[int] = mapped_column(ForeignKey("kb_datasets.id", ondelete="CASCADE"))
    strategy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    strategy_key: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    n_seeds: Mapped[int | None] = mapped_column(Integer)
    cost_s: Mapped[float | None] = mapped_column(Float)
    gpu_hours: Mapped[float | None] = mapped_column(Float)
    line: Mapped[int] = mapped_column(Integer, default=0)


class Recommendation(Base):
    """One answer of ``pomlia recommend``: inputs, the ranked strategies, the learner."""

    __tablename__ = "recommendations"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    task: Mapped[str] = mapped_column(String(128), default="")
    learner: Mapped[str] = mapped_column(String(64), default="")
    learner_version: Mapped[str] = mapped_column(String(32), default="")
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    output: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KbRunStats(Base):
    """The registry's runs summarised per (task, strategy), folded in incrementally (a run once,
    when it has finished: ``ok`` or ``crashed``), so a recommendation reads a few thousand rows
    instead of every run's JSON."""

    __tablename__ = "kb_run_stats"
    __table_args__ = (UniqueConstraint("task_id", "strategy_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    strategy_key: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    n_runs: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    best_run_id: Mapped[int | None] = mapped_column(Integer)
    best_objective: Mapped[float | None] = mapped_column(Float)
    best_value: Mapped[float | None] = mapped_column(Float)
    cost_sum: Mapped[float] = mapped_column(Float, default=0.0)  # wall seconds per run
    n_cost: Mapped[int] = mapped_column(Integer, default=0)
    # wall seconds and epochs trained of the successful runs whose trained epochs are known
    # (their ratio: seconds per epoch; a promoted run's seconds cover only the epochs it added)
    timed_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    timed_epochs: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # of the successful runs whose seconds per epoch are known (their history): how many, the
    # seconds and number of the epochs they trained, and the rest of their wall time (start-up,
    # once per run whatever the budget)
    timed_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    epoch_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    epoch_n: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    startup_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # successful runs far below the task's full budget: not the strategy's value (a lower
    # bound): their count, best test value (by validation) and most epochs
    n_short: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    short_value: Mapped[float | None] = mapped_column(Float)
    short_epochs: Mapped[float | None] = mapped_column(Float)
    # how the row was counted (pomlia_hpc.strategy.runstats.FORMAT); NULL: by an older pomlia
    summary_format: Mapped[int | None] = mapped_column(Integer)


class KbRunSeen(Base):
    """The runs examined for :class:`KbRunStats`: ``done`` once folded in; not done while the
    run was still pending or running (examined again at the next refresh)."""

    __tablename__ = "kb_run_seen"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    done: Mapped[bool] = mapped_column(default=True, index=True)
    # as KbRunStats.summary_format: a row an older pomlia wrote (NULL) is built again
    summary_format: Mapped[int | None] = mapped_column(Integer)
