"""Study budgets that depend on the task's data (the warm start from the strategy recommender
lives in :mod:`pomlia_hpc.strategy.warmstart`, a room above this one).

Hyperband's lowest rung must rank configurations, which takes optimizer steps, not
epochs: on 500 images one epoch is 8 steps at batch 64 and validation accuracies after it are
noise. :func:`default_budget` therefore sets the smallest budget to at least
:data:`MIN_STEPS` steps and the largest to about :data:`FULL_STEPS` steps (at least 9 epochs,
at most :data:`MAX_EPOCHS`, and at least ``eta`` times the smallest), so a small data set gets
more epochs than a large one.
"""

from __future__ import annotations

import math

from sqlalchemy import select

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import DatasetVersion, Registry, Task
from pomlia_hpc.registry.lookup import by_name_or_id

#: Optimizer steps (at :data:`REF_BATCH`) of the smallest and of the largest budget.
MIN_STEPS = 60
FULL_STEPS = 1500
REF_BATCH = 64
MAX_EPOCHS = 60


def default_budget(n_train: int, eta: int = 3) -> tuple[int, int]:
    """(min_epochs, max_epochs) for a training set of ``n_train`` images (see above)."""
    if eta < 2:
        raise InputError(f"--eta {eta}: expected an integer >= 2")
    steps_per_epoch = max(1, n_train // REF_BATCH)
    # On very small sets the lowest rung is capped so that the largest (eta x the lowest)
    # stays within MAX_EPOCHS: 60 images once asked for 60..180 epochs.
    low = max(1, min(math.ceil(MIN_STEPS / steps_per_epoch), MAX_EPOCHS // eta))
    high = min(MAX_EPOCHS, max(9, math.ceil(FULL_STEPS / steps_per_epoch)))
    return low, max(high, low * eta)


def task_train_size(registry: Registry, task: str) -> int:
    """Training images of ``task``'s data set version (from its explicit fingerprint)."""
    with registry.session() as s:
        t = by_name_or_id(s, Task, task, "task")
        row = s.execute(
            select(DatasetVersion.fingerprint, DatasetVersion.n_images).where(
                DatasetVersion.id == t.dataset_version_id
            )
        ).one()
    counts = (row[0] or {}).get("counts") or {}
    return int(counts.get("train") or row[1] or 1)
