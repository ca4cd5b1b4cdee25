"""Embeddings that an extraction replaces are set aside, not removed, until its array job has
been submitted: a refused submission (a GPU the cluster does not have, too much memory) puts
them back with their registry record, so ``extract --force`` never loses finished vectors to
a job that never ran.

For one embeddings group ``<version>.zarr`` the set-aside paths are the group, its
``.shards`` marker folder and its ``.summary.npz``, each renamed to ``<name>.aside``
(markers first, so no marker of the old vectors ever sits next to a new, empty group).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.files import move_path
from pomlia_hpc.fingerprint.shards import marker_dir
from pomlia_hpc.fingerprint.summary import summary_path
from pomlia_hpc.registry import FingerprintSet, Registry

SUFFIX = ".aside"


@dataclass
class SetAside:
    """The old embeddings of one dataset version, moved aside, and its registry record's
    fields (``status``, ``n_vectors``, ``mean``) before the extraction marked it running."""

    out: Path
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    record: dict[str, Any] | None = None


def _paths(out: Path) -> list[Path]:
    return [marker_dir(out), summary_path(out), out]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remember(registry: Registry, out: Path, encoder_id: int, version_id: int) -> SetAside:
    """The registry record of (``encoder_id``, ``version_id``) as it is now, to restore with
    the embeddings at ``out`` (:func:`move_aside` moves them)."""
    kept = SetAside(out)
    with registry.session() as s:
        row = s.scalar(
            select(FingerprintSet).where(
                FingerprintSet.encoder_id == encoder_id,
                FingerprintSet.dataset_version_id == version_id,
            )
        )
        if row is not None:
            kept.record = {"status": row.status, "n_vectors": row.n_vectors, "mean": row.mean}
    return kept


def move_aside(kept: SetAside) -> None:
    """Move the embeddings at ``kept.out`` aside (leftovers of an earlier set-aside, which a
    crash may have left, are removed first)."""
    for path in _paths(kept.out):
        backup = path.with_name(path.name + SUFFIX)
        _remove(backup)
        if path.exists():
            move_path(path, backup)
            kept.moved.append((path, backup))


def restore(registry: Registry, kept: list[SetAside], encoder_id: int) -> None:
    """Put every set-aside group back in place of the new (empty) one, with its registry
    record as it was (a version without a record before keeps none of this run's)."""
    for k in kept:
        for path in _paths(k.out):
            _remove(path)
        for path, backup in reversed(k.moved):
            move_path(backup, path)
        with registry.session() as s:
            row = s.scalar(
                select(FingerprintSet).where(
                    FingerprintSet.encoder_id == encoder_id,
                    FingerprintSet.embeddings_path == str(k.out),
                )
            )
            if row is None:
                continue
            if k.record is None:
                s.delete(row)
            else:
                for name, value in k.record.items():
                    setattr(row, name, value)


def drop(kept: list[SetAside]) -> None:
    """Remove the set-aside groups (the new array job is submitted: they are replaced)."""
    for k in kept:
        for _path, backup in k.moved:
            _remove(backup)
