"""Refuse initial weights that have seen the task's val or test images.

``automl run --init-model M`` (and a recommended ``init=model`` strategy, the loop's
fine-tune) starts trials from M's weights. If M trained on images that are the task's val or
test images now (M trained on another version of the dataset whose split put them in train,
on another dataset holding copies, or started from a model that did), every trial is picked
on val and reported on test with images its weights already learnt: inflated metrics. What M
saw is read from the registry (:func:`pomlia_hpc.models.seen.seen_images`: its training
version's train split, its extra images, its own init chain), compared by pixel hashes.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from pomlia_hpc.errors import InputError
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.models.seen import seen_images, split_hashes
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry


def _refs(registry: Registry, ids: list[int]) -> list[str]:
    """``name@version`` of the dataset versions ``ids``."""
    with registry.session() as s:
        rows = s.execute(
            select(Dataset.name, DatasetVersion.version)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(DatasetVersion.id.in_(ids))
        )
        return [f"{n}@{v}" for n, v in rows]


def refuse_seen_init(registry: Registry, model: str, version: DatasetVersion, ref: str) -> None:
    """One :class:`InputError` when model ``model`` (name or id) trained on images of the val
    or test split of ``version`` (the task's data, ``ref``), with the counts per split and
    where it learnt them; nothing when it did not, or the registry does not record what it
    trained on. Images the task's own train split holds (copies of val/test images a given
    split put in train) are not counted: every trial trains on them anyway."""
    row = resolve_model(registry, model)
    # The task's own train split is what every trial trains on: what the model learnt of it
    # adds nothing unseen, also where a given split holds copies of val/test images in train.
    seen = seen_images(registry, row, skip_versions=(version.id,))
    if not len(seen.hashes):
        return
    learnt = np.setdiff1d(seen.hashes, split_hashes(version, "train"), assume_unique=True)
    counts = {s: int(np.isin(split_hashes(version, s), learnt).sum()) for s in ("val", "test")}
    if not any(counts.values()):
        return
    found = " and ".join(f"{n} {s}" for s, n in counts.items() if n)
    sources = ", ".join(_refs(registry, seen.versions)) or "its extra images"
    chain = f" (through its init model(s) {', '.join(seen.models[1:])})" if seen.models[1:] else ""
    raise InputError(
        f"--init-model {row.name} has trained on {found} image(s) of {ref} (learnt from the "
        f"train split of {sources}{chain}): trials started from its weights would be picked "
        f"and scored on images they have seen (inflated val and test metrics); expected a "
        f"model that did not train on this task's val/test images (one trained on {ref}'s "
        "own train split, or on a version this one grew from)"
    )
