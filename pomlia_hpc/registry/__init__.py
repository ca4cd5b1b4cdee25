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
    Job,
    Model,
    MonitorReport,
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
    "Job",
    "KbDataset",
    "KbResult",
    "KbRunSeen",
    "KbRunStats",
    "KbSource",
    "Model",
    "MonitorReport",
    "Recommendation",
    "Registry",
    "RetrainRequest",
    "Run",
    "Task",
]
