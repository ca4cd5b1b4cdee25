"""The registry's tables: the image DB (datasets, versions, fingerprints) and the model DB
(encoders, runs/trials, models, deployments, monitor reports), plus the job log.

Free-form metadata goes into JSON columns; everything that is queried or joined on is a
column of its own. Times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always gives back aware UTC datetimes.

    SQLite keeps no zone and returns naive values; comparing those with the aware values the
    code computes makes every comparison unequal (and ordering raise). Values are stored in UTC
    (a naive value is taken to be UTC already) and read back as UTC on every backend. The
    column type is unchanged, so the migrations stay as they are.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The version the plain name means (``dataset_versions.id``): the one last added, also
    #: when its content was identical to an older version's; None: the newest registered.
    #: No foreign key, so the two tables do not depend on each other.
    current_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DatasetVersion(Base):
    """One immutable dataset version = one Zarr store; ``version`` is its content hash."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    store_path: Mapped[str] = mapped_column(Text)
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fingerprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Task(Base):
    """A learning problem: a dataset version, a metric and a task type."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    metric: Mapped[str] = mapped_column(String(32))
    task_type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Encoder(Base):
    """A trained fingerprint autoencoder."""

    __tablename__ = "encoders"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset_version_ids: Mapped[list[Any]] = mapped_column(default=list)
    loss_curve: Mapped[list[Any]] = mapped_column(default=list)
    checkpoint_path: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # How it was made (migration 0010): "trained" (fingerprint train, a pipeline) or "refresh"
    # (a refresh of the encoder refresh_of_id). NULL: registered before lineage was recorded
    # (before 0010), for which the refresh rule falls back to the name.
    origin: Mapped[str | None] = mapped_column(String(16), nullable=True, default="trained")
    refresh_of_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class FingerprintSet(Base):
    """The embeddings of one dataset version under one encoder."""

    __tablename__ = "fingerprint_sets"
    __table_args__ = (UniqueConstraint("encoder_id", "dataset_version_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    encoder_id: Mapped[int] = mapped_column(ForeignKey("encoders.id"), index=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    embeddings_path: Mapped[str] = mapped_column(Text)
    n_vectors: Mapped[int] = mapped_column(Integer, default=0)
    mean: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """One cluster job (or one task of an array) submitted through :mod:`pomlia_hpc.cluster`."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    backend: Mapped[str] = mapped_column(String(16))
    scheduler_id: Mapped[str] = mapped_column(String(64), index=True)
    array_job_id: Mapped[str | None] = mapped_column(String(64))
    array_index: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128), default="")
    folder: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(32), default="PENDING", index=True)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    requeue_count: Mapped[int] = mapped_column(Integer, default=0)
    exit_cause: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Run(Base):
    """A training run; an AutoML trial is a run with a study name and a budget."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    study: Mapped[str | None] = mapped_column(String(128), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    budget: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cost_s: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    encoder_id: Mapped[int | None] = mapped_column(ForeignKey("encoders.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Model(Base):
    """A trained classifier with its lineage and (once exported) its model card."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    path: Mapped[str] = mapped_column(Text, default="")
    card: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    bundle_path: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="created")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MonitorReport(Base):
    __tablename__ = "monitor_reports"
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    drift: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    triggered: Mapped[bool] = mapped_column(default=False)
    report_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RetrainRequest(Base):
    """A request to run the loop again for a model: written by the monitor when its alarm
    rings (``reason`` says which tests, ``meta`` holds their p-values); the loop consumes it
    (``status``: open → taken → done, or dismissed)."""

    __tablename__ = "retrain_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    monitor_report_id: Mapped[int | None] = mapped_column(ForeignKey("monitor_reports.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoopRun(Base):
    """One pass of the loop for a deployment slot: harvest → ... → redeploy.

    ``stages`` maps each finished stage to what it produced (ids, paths), so a driver that was
    killed resumes after the last finished stage; ``stage`` is the one running or last run."""

    __tablename__ = "loop_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    slot: Mapped[str] = mapped_column(String(128), index=True)
    champion_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    trigger: Mapped[str] = mapped_column(String(32), default="manual")
    request_id: Mapped[int | None] = mapped_column(ForeignKey("retrain_requests.id"))
    report_id: Mapped[int | None] = mapped_column(ForeignKey("monitor_reports.id"))
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    stage: Mapped[str] = mapped_column(String(32), default="")
    stages: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GateDecision(Base):
    """A champion/challenger comparison for a slot: the decision and its evidence."""

    __tablename__ = "gate_decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    slot: Mapped[str] = mapped_column(String(128), index=True)
    champion_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    challenger_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    loop_run_id: Mapped[int | None] = mapped_column(ForeignKey("loop_runs.id"))
    passed: Mapped[bool] = mapped_column(default=False)
    forced: Mapped[bool] = mapped_column(default=False)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Promotion(Base):
    """One change of the model a slot serves (``kind``: initial, promoted, forced, rollback)."""

    __tablename__ = "promotions"
    id: Mapped[int] = mapped_column(primary_key=True)
    slot: Mapped[str] = mapped_column(String(128), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    bundle_path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    gate_id: Mapped[int | None] = mapped_column(ForeignKey("gate_decisions.id"))
    loop_run_id: Mapped[int | None] = mapped_column(ForeignKey("loop_runs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
