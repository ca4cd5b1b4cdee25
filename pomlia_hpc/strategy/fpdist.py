"""Fingerprint distances between registry tasks, for the learner's similarity.

The fingerprint room's ``mean`` distance: the Euclidean distance of the stored mean embeddings
of two data set versions under one encoder (as :func:`pomlia_hpc.fingerprint.distances.
mean_distance`), over complete fingerprint sets made with the encoder's current weights only
(the rule of every fingerprint reader, :mod:`pomlia_hpc.fingerprint.usable`: an encoder
retrained under its name leaves the records of its earlier weights' sets complete, and the
distance between means of two weights' embedding spaces says nothing). One encoder is used for
all pairs: the one
whose complete sets cover the most of the data sets asked for (the target's version required
when one is given). Names that are not registry tasks (None: a published data set, which may
share a task's name), and tasks whose version has no complete set under that encoder, get
NaN: "unknown", which the learner counts as a typical distance. Raw distances:
:class:`~pomlia_hpc.strategy.learner.KernelRegret` scales them against the meta-feature
distances itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from pomlia_hpc.fingerprint.markers import checkpoint_digest, made_with, stored_meta
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
                FingerprintSet.encoder_id,
                FingerprintSet.dataset_version_id,
                FingerprintSet.mean,
                FingerprintSet.embeddings_path,
            ).where(FingerprintSet.status == "complete")
        ).all()
        task_version = dict(s.execute(select(Task.name, Task.dataset_version_id)).all())
        encoders = {
            e: (n, c)
            for e, n, c in s.execute(select(Encoder.id, Encoder.name, Encoder.checkpoint_path))
        }
    by_enc: dict[int, dict[int, tuple[np.ndarray, str]]] = {}
    for enc, ver, mean, path in sets:
        if mean:
            by_enc.setdefault(enc, {})[ver] = (np.asarray(mean, np.float64), path)
    versions = [task_version.get(n) if n is not None else None for n in names]
    need = 1 if target_version is not None else 2

    def enough(m: Mapping[int, object]) -> bool:
        return (target_version is None or target_version in m) and sum(
            v in m for v in versions
        ) >= need

    def covered(m: Mapping[int, object]) -> int:
        return sum(v in m for v in versions)

    # The encoder that covers the most (the lowest id of equals), by its current sets: each
    # weights file is hashed (~0.1 s for a ResNet-18 autoencoder's 50 MB, on every command)
    # only while its complete sets, an upper bound of its current ones, could still win.
    best: tuple[tuple[int, int], int, dict[int, np.ndarray]] | None = None
    for bound, e in sorted(((covered(m), -e), e) for e, m in by_enc.items() if enough(m))[::-1]:
        if best is not None and bound <= best[0]:
            break
        current = _current(by_enc[e], encoders[e][1])
        key = (covered(current), -e)
        if enough(current) and (best is None or key > best[0]):
            best = (key, e, current)
    if best is None:
        return None
    _, enc, means = best
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
    return FingerprintDistances(str(encoders[enc][0]), pairs, target)


def _current(sets: Mapping[int, tuple[np.ndarray, str]], weights: str) -> dict[int, np.ndarray]:
    """The means of ``sets`` (by version) whose embeddings on disk were made with the
    encoder's weights file ``weights`` as it is now: none when the file is gone."""
    try:
        digest = checkpoint_digest(weights) if weights else None
    except OSError:
        digest = None
    if digest is None:
        return {}
    return {
        ver: mean
        for ver, (mean, path) in sets.items()
        if made_with(stored_meta(path) or {}, digest)
    }
