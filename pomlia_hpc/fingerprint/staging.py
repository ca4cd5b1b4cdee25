"""Who may retrain a trained encoder under its name, and where a retrain runs until it succeeds.

An encoder's training record (``<encoder folder>/config.json``) names the pipeline whose
``encoder`` stage started it (key ``pipeline``; absent for ``fingerprint train``). Only that
pipeline retrains the encoder when its settings change; any other caller asking for other
settings under the same name is refused (:func:`check_replaceable`), so a pipeline never
removes an encoder that ``fingerprint train`` or another pipeline made.

A retrain runs in a staging folder beside the encoder's (:func:`staging_dir`, hidden: no encoder
name starts with a dot, so it cannot be another encoder's folder) while the old folder and its
registry row stay in use. Only after the job has succeeded is the staged folder swapped in
(:func:`swap_in`, renames in one file system) and registered; a failed or cancelled retrain
leaves the old encoder loadable, and the next run resumes the staged training from its last
checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.files import publish_dir, write_atomic, write_json_atomic
from pomlia_hpc.fingerprint.sameness import check_same_training, first_difference, shown

#: File in the encoder folder recording what a training was started with (and by whom).
TRAINING_RECORD = "config.json"
#: Key of the training record naming the pipeline that owns the encoder.
OWNER_KEY = "pipeline"


def staging_dir(out: Path) -> Path:
    """Folder a retrain of the encoder in ``out`` runs in until it has succeeded."""
    return out.with_name(f".{out.name}.next")


def read_record(folder: Path) -> dict[str, Any] | None:
    """The training record in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / TRAINING_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owner_of(record: dict[str, Any] | None) -> str | None:
    """The pipeline named by a training record (None: ``fingerprint train`` or no record)."""
    owner = (record or {}).get(OWNER_KEY)
    return owner if isinstance(owner, str) else None


def settings_of(record: dict[str, Any]) -> dict[str, Any]:
    """A training record without its owner: what is compared between two runs."""
    return {k: v for k, v in record.items() if k != OWNER_KEY}


def check_replaceable(
    name: str,
    state: str,
    old: dict[str, Any],
    new: dict[str, Any],
    pipeline: str | None,
    owner: str | None,
) -> None:
    """Return when the training ``old`` of encoder ``name`` (``state`` "trained" or "started")
    may be replaced by ``new``: the same settings, or ``pipeline`` owns it. Otherwise raise
    :class:`InputError`: the message of ``fingerprint train`` without a pipeline, else one
    naming the pipeline and who made the encoder."""
    diff = first_difference(old, new)
    if diff is None or (pipeline is not None and owner == pipeline):
        return
    if pipeline is None:
        check_same_training(name, state, old, new)
        return
    words, before, now = diff
    # No owner: `fingerprint train`, or a pipeline before records named one; we cannot tell.
    by = f"by pipeline '{owner}'" if owner is not None else f"outside pipeline '{pipeline}'"
    raise InputError(
        f"encoder '{name}' was {state} {by} with {words} {shown(before)} but pipeline "
        f"'{pipeline}' asks for {shown(now)}: a pipeline retrains only an encoder its own "
        "encoder stage trained, and this one is kept",
        hint=f"choose another encoder.name in pipeline '{pipeline}'",
    )


def training_target(
    name: str,
    out: Path,
    registered: dict[str, Any],
    wanted: dict[str, Any],
    pipeline: str | None,
    owned: bool,
    normalise: Callable[[dict[str, Any]], dict[str, Any]],
) -> Path | None:
    """Where the training ``wanted`` of the registered encoder ``name`` (trained ``registered``,
    weights in ``out``) runs: None when the registered encoder is it (nothing to do), ``out``
    when the weights there are it but their registration did not finish (a crash between
    :func:`swap_in` and the registration: the job finds the training done and registers it),
    else the staging folder, once :func:`check_replaceable` allows it.

    The folder's own record is compared, not the registry row: it always describes the
    weights beside it (a staged training's record is swapped in with them), the row only once
    registered. ``owned``: ``pipeline``'s encoder stage knows it trained these weights (its
    own stage record says so) though the record, written before records named their
    pipeline, does not; the record is completed, so a failed retrain does not lose that."""
    record = read_record(out)
    if owned and pipeline is not None and record is not None and owner_of(record) is None:
        record = record | {OWNER_KEY: pipeline}
        write_json_atomic(out / TRAINING_RECORD, record)
    trained = registered
    if record is not None:
        trained = settings_of(record)
        trained["config"] = normalise(trained.get("config", {}))
    if first_difference(trained, wanted) is None:
        return None if first_difference(registered, wanted) is None else out
    check_replaceable(name, "trained", trained, wanted, pipeline, owner_of(record))
    return staging_dir(out)


def start_record(
    name: str,
    folder: Path,
    wanted: dict[str, Any],
    pipeline: str | None,
    resumable: bool,
    normalise: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Write the training record of a start (or resume) of encoder ``name`` in ``folder``.
    Only a finished epoch (``resumable``: a checkpoint) pins datasets and options: a start that
    failed before one (e.g. on a damaged chunk) has nothing to resume, and a new start replaces
    it. A started training under other settings is refused, or, when ``pipeline`` owns it,
    removed (it is not registered: nothing uses it). ``normalise`` completes a stored config."""
    record = read_record(folder)
    owner = pipeline
    if record is not None and resumable:
        owner = owner_of(record)  # a resume keeps who started the training
        started = settings_of(record)
        started["config"] = normalise(started.get("config", {}))
        if first_difference(started, wanted) is not None:
            check_replaceable(name, "started", started, wanted, pipeline, owner)
            shutil.rmtree(folder, ignore_errors=True)
            owner = pipeline
    record = wanted | ({OWNER_KEY: owner} if owner else {})
    write_json_atomic(folder / TRAINING_RECORD, record)


@contextmanager
def undone_if_refused(folder: Path) -> Iterator[None]:
    """Undo :func:`start_record` in the block when the training job is refused (a
    :class:`PomliaError`: sbatch refused it): a ``folder`` that did not exist is removed,
    else its training record is put back as it was."""
    path = folder / TRAINING_RECORD
    existed, record = folder.exists(), (path.read_bytes() if path.exists() else None)
    try:
        yield
    except PomliaError:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        elif record is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, record)
        raise


def swap_in(staged: Path, out: Path) -> None:
    """Make the finished training in ``staged`` the encoder folder ``out``
    (:func:`~pomlia_hpc.files.publish_dir`: the old folder is moved aside, the new one renamed
    in, the old one removed). The caller registers the weights after it: a registration that
    fails then leaves a registry row older than the weights, which the next run retrains,
    never a row naming weights that are gone."""
    if not publish_dir(staged, out, replace=True):
        raise PomliaError(
            f"encoder folder '{out}' was written by another run while this retrain ran; the "
            f"retrain is kept in '{staged}'"
        )
