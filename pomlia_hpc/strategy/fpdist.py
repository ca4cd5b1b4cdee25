"""Fingerprint distances between registry tasks, for the learner's similarity.

The fingerprint room's ``mean`` distance: the Euclidean distance of the stored mean embeddings
of two data set versions under one encoder (as :func:`pomlia_hpc.fingerprint.distances.
mean_distance`), over complete fingerprint sets only. One encoder is used for all pairs: the one
whose complete sets cover the most of the data sets asked for (the target's version required
when one is given). Names that are not registry tasks (None: a published data set, which may
share a task's name), and tasks whose version has no complete set under that encoder, get
NaN: "unknown", which the learner counts as a typical distance. Raw distances:
:class:`~pomlia_hpc.strategy.learner.KernelRegret` scales them against the meta-feature
distances itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from pomlia_hpc.registry import Encoder, FingerprintSet, Registry, Task


@dataclass(frozen=True)
class FingerprintDistances:
    """``pairs`` (n, n) between the data sets asked for; ``target`` (n,) from the target's
    version (None without a target); NaN where unknown."""

    encoder: str
    pairs: np.ndarray
    target: np.ndarray | None


def fingerprint_distances(
    registry: Registry, names: Sequence[str | None], target_version: int | None = None
) -> FingerprintDistances | None:
    """The distances of the module docstring, or None when no encoder has complete sets for
    two of ``names`` (or, with ``target_version``, for it and one of ``names``)."""
    with registry.session() as s:
        sets = s.execute(
            select(
                FingerprintSet.encoder_id, FingerprintSet.dataset_version_id, FingerprintSet.mean
            ).where(FingerprintSet.status == "complete")
        ).all()
        task_version = dict(s.execute(select(Task.name, Task.dataset_version_id)).all())
        enc_names = dict(s.execute(select(Encoder.id, Encoder.name)).all())
    by_enc: dict[int, dict[int, np.ndarray]] = {}
    for enc, ver, mean in sets:
        if mean:
            by_enc.setdefault(enc, {})[ver] = np.asarray(mean, np.float64)
    versions = [task_version.get(n) if n is not None else None for n in names]
    need = 1 if target_version is not None else 2
    usable = {
        e: m
        for e, m in by_enc.items()
        if (target_version is None or target_version in m) and sum(v in m for v in versions) >= need
    }
    if not usable:
        return None
    enc = max(usable, key=lambda e: (sum(v in usable[e] for v in versions), -e))
    means = usable[enc]
    vecs = [means.get(v) if v is not None else None for v in versions]

    def row(q: np.ndarray | None) -> np.ndarray:
        return np.array(
            [
                float(np.linalg.norm(x - q)) if x is not None and q is not None else math.nan
                for x in vecs
            ]
        )

    pairs = np.stack([row(q) for q in vecs]) if vecs else np.zeros((0, 0))
    target = row(means[target_version]) if target_version is not None else None
    return FingerprintDistances(str(enc_names.get(enc, enc)), pairs, target)
