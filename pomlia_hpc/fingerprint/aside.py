"""Embeddings that an extraction replaces are set aside, not removed, until its array job has
been submitted: a refused submission (a GPU the cluster does not have, too much memory) puts
them back with their registry record, so ``extract --force`` never loses finished vectors to
a job that never ran.

For one embeddings group ``<version>.zarr`` the set-aside paths are the group, its
``.shards`` marker folder and its ``.summary.npz``, each renamed to ``<name>.aside``
(markers first, so no marker of the old vectors ever sits next to a new, empty group).

Whatever stops an extraction between the set-aside and the submission (a full disk while the
new arrays are created, a refused or interrupted ``sbatch``, Ctrl-C) puts them back
(:func:`restoring`). Set-aside copies that a killed process left are put back by the next run
(:func:`recover`) unless a complete group sits in their place: only then are they removed.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.errors import ArrayNotWithdrawnError
from pomlia_hpc.files import move_path
from pomlia_hpc.fingerprint.io import group_meta
from pomlia_hpc.fingerprint.markers import done_record, marker_dir
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
    #: Every path was moved aside: what sits at ``out`` now is this run's (removed on restore).
    cleared: bool = False


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


def _backup(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def complete(out: Path) -> bool:
    """Whether the embeddings group at ``out`` exists and every shard of its plan is done."""
    if not (out / "zarr.json").exists():
        return False
    shards = group_meta(out).get("shards") or []
    return all(done_record(out, i, (int(a), int(b))) is not None for i, (a, b) in enumerate(shards))


def recover(out: Path) -> bool:
    """Put back set-aside embeddings of ``out`` that an interrupted run left (``.aside``
    copies) when no complete group sits in their place; True if so. Beside a complete group
    they are stale (the run that replaced them finished) and stay for :func:`move_aside`."""
    left = [p for p in _paths(out) if _backup(p).exists()]
    if not left or complete(out):
        return False
    whole = _backup(out).exists()  # the group went last: all of ``out`` is the new run's
    for path in _paths(out) if whole else left:
        _remove(path)
    for path in reversed(_paths(out)):
        if _backup(path).exists():
            move_path(_backup(path), path)
    return True


def move_aside(kept: SetAside) -> None:
    """Move the embeddings at ``kept.out`` aside. Leftovers of an earlier set-aside, which a
    killed process may have left, are put back first when nothing complete replaced them
    (:func:`recover`), else removed."""
    recover(kept.out)
    for path in _paths(kept.out):
        backup = _backup(path)
        _remove(backup)
        if path.exists():
            move_path(path, backup)
            kept.moved.append((path, backup))
    kept.cleared = True


def restore(registry: Registry, kept: list[SetAside], encoder_id: int) -> None:
    """Put every set-aside group back in place of the new (empty) one, with its registry
    record as it was (a version without a record before keeps none of this run's)."""
    for k in kept:
        for path in _paths(k.out) if k.cleared else []:  # else: the originals, still in place
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


@contextlib.contextmanager
def restoring(registry: Registry, kept: list[SetAside], encoder_id: int) -> Iterator[None]:
    """Whatever ends the block early (an error, Ctrl-C) first puts back every group in
    ``kept`` (:func:`restore`; a list the block may still be filling), then goes on; except an
    :class:`~pomlia_hpc.errors.ArrayNotWithdrawnError`: jobs may still write there."""
    try:
        yield
    except ArrayNotWithdrawnError:
        # Parts of the array may still run and write into the outputs: putting the old
        # vectors back there would mix them. They stay aside; the set stays as recorded.
        raise
    except BaseException:
        restore(registry, kept, encoder_id)
        raise


def drop(kept: list[SetAside]) -> None:
    """Remove the set-aside groups (the new array job is submitted: they are replaced)."""
    for k in kept:
        for _path, backup in k.moved:
            _remove(backup)
