"""Study defaults that depend on the task: the epoch budget, and a warm start from the strategy
recommender (``pomlia automl run TASK --from-recommendation``).

Budget. Hyperband's lowest rung must rank configurations, which takes optimizer steps, not
epochs: on 500 images one epoch is 8 steps at batch 64 and validation accuracies after it are
noise. :func:`default_budget` therefore sets the smallest budget to at least
:data:`MIN_STEPS` steps and the largest to about :data:`FULL_STEPS` steps (at least 9 epochs,
at most :data:`MAX_EPOCHS`, and at least ``eta`` times the smallest), so a small data set gets
more epochs than a large one.

Warm start. :func:`from_recommendation` asks :func:`pomlia_hpc.strategy.recommend.recommend`
for the task's top-k strategies and turns them into the study's initial design (with the
hyperparameters of their best runs on similar tasks where known) and a narrower space: only
the recommended architectures, the pretrained sources they use, extra images only if
recommended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.registry import DatasetVersion, Registry, Task

#: Optimizer steps (at :data:`REF_BATCH`) of the smallest and of the largest budget.
MIN_STEPS = 60
FULL_STEPS = 1500
REF_BATCH = 64
MAX_EPOCHS = 60


def default_budget(n_train: int, eta: int = 3) -> tuple[int, int]:
    """(min_epochs, max_epochs) for a training set of ``n_train`` images (see above)."""
    steps_per_epoch = max(1, n_train // REF_BATCH)
    low = max(1, math.ceil(MIN_STEPS / steps_per_epoch))
    high = min(MAX_EPOCHS, max(9, math.ceil(FULL_STEPS / steps_per_epoch)))
    return low, max(high, low * eta)


def task_train_size(registry: Registry, task: str) -> int:
    """Training images of ``task``'s data set version (from its explicit fingerprint)."""
    with registry.session() as s:
        row = s.execute(
            select(DatasetVersion.fingerprint, DatasetVersion.n_images)
            .join(Task, Task.dataset_version_id == DatasetVersion.id)
            .where((Task.name == task) | (Task.id == (int(task) if task.isdigit() else -1)))
        ).first()
    if row is None:
        raise NotFoundError(f"task '{task}' is not registered")
    counts = (row[0] or {}).get("counts") or {}
    return int(counts.get("train") or row[1] or 1)


@dataclass(frozen=True)
class WarmStart:
    """What a recommendation gives a study."""

    configs: list[dict[str, Any]]
    archs: tuple[str, ...]
    encoder: str | None
    init_model: str | None
    extra_data: bool
    recommendation_id: int | None


def from_recommendation(
    registry: Registry,
    task: str,
    k: int = 5,
    *,
    archs: tuple[str, ...] | None = None,
    sources: list[str] | None = None,
    exclude_own_runs: bool = False,
) -> WarmStart:
    """The warm start for ``task`` from its top-``k`` recommended strategies (``archs``: only
    these architectures; ``sources``: knowledge-base sources, default all)."""
    from pomlia_hpc.strategy.recommend import recommend

    answer = recommend(
        registry, task, k=k, archs=archs, sources=sources, exclude_own_runs=exclude_own_runs
    )
    configs = list(answer.get("initial") or [])
    if not configs:
        raise InputError(
            f"the recommendation for task '{task}' has no strategy the AutoML space can "
            "express (architectures or pretrained weights missing here); run without "
            "--from-recommendation"
        )
    weights: dict[str, Any] = answer.get("sources_of_weights") or {}
    uses = {c.get("init", "scratch") for c in configs}
    extra = any(c.get("extra_data") == "nearest" for c in configs)
    encoder = weights.get("encoder") if ("encoder" in uses or extra) else None
    if not (extra and encoder):
        configs = [
            {k: v for k, v in c.items() if k not in ("extra_data", "extra_n")} for c in configs
        ]
    return WarmStart(
        configs=configs,
        archs=tuple(dict.fromkeys(str(c["arch"]) for c in configs)),
        encoder=encoder,
        init_model=weights.get("model") if "model" in uses else None,
        extra_data=extra and encoder is not None,
        recommendation_id=answer.get("recommendation_id"),
    )
