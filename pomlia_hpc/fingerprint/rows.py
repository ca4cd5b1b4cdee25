"""The rows an encoder trains on, counted without torch.

The trainer (:mod:`pomlia_hpc.fingerprint.train`), its hold-out
(:func:`pomlia_hpc.fingerprint.validation.split_holdout`) and the pipeline's checks before
and after ingest all count from here, so a bound computed before a job agrees with the job.
"""

from __future__ import annotations

from pomlia_hpc.data.store import DatasetStore, find_version, open_store
from pomlia_hpc.registry import Registry


def held_out(n: int, fraction: float) -> int:
    """Rows of a dataset of ``n`` rows that training keeps apart for early stopping: the
    ``fraction`` (0..1) rounded, at least 1 when ``fraction`` > 0 and ``n`` >= 2, never all."""
    return min(n - 1, max(1, round(n * fraction))) if fraction > 0 and n >= 2 else 0


def train_range(store: DatasetStore, split: str, max_images: int | None) -> tuple[int, int]:
    """Rows [lo, hi) of ``store`` the encoder reads: ``split`` (``all`` = every row), the
    first ``max_images`` of them when given (images); empty when the split has none
    (:meth:`~pomlia_hpc.data.store.DatasetStore.first_rows`, which the leakage checks share)."""
    return store.first_rows(split, max_images)


def training_rows(
    registry: Registry, refs: list[str], split: str, max_images: int | None, holdout: float
) -> int:
    """Images the encoder trains on over dataset versions ``refs`` (``name[@version]``), as
    the trainer picks them: :func:`train_range` of each, less its :func:`held_out` rows."""
    rows = 0
    for ref in refs:
        lo, hi = train_range(open_store(find_version(registry, ref).store_path), split, max_images)
        rows += hi - lo - held_out(hi - lo, holdout)
    return rows
