"""The registry: image DB and model DB (SQLAlchemy; SQLite by default, PostgreSQL by URL)."""

from pomlia_hpc.registry.db import Registry
from pomlia_hpc.registry.knowledge import (
    KbDataset,
    KbResult,
    KbRunSeen,
    KbRunStats,
    KbSource,
    Recommendation,
)
from pomlia_hpc.registry.schema import (
    Base,
    Dataset,
    DatasetVersion,
    Deployment,
    Encoder,
    FingerprintSet,
    GateDecision,
    Job,
    LoopRun,
    Model,
    MonitorReport,
    Promotion,
    RetrainRequest,
    Run,
    Task,
)

__all__ = [
    "Base",
    "Dataset",
    "DatasetVersion",
    "Deployment",
    "Encoder",
    "FingerprintSet",
    "GateDecision",
    "Job",
    "KbDataset",
    "KbResult",
    "KbRunSeen",
    "KbRunStats",
    "KbSource",
    "LoopRun",
    "Model",
    "MonitorReport",
    "Promotion",
    "Recommendation",
    "Registry",
    "RetrainRequest",
    "Run",
    "Task",
]
