"""``pomlia data harvest``: labelled production inputs of a served model → a dataset version.

Joins the serving room's labelled inputs (feedback + kept inputs, :mod:`pomlia_hpc.serve.labelled`)
with the data room's version builder (:mod:`pomlia_hpc.data.harvest`). ``MODEL`` is a
deployment slot (its champion's training version is the parent; its log is read) or a model
name (its own log). The window: feedback times in [``since``, ``until``); by default from the
end of the window that built the parent (when the parent is itself a harvest) to now, so
successive harvests never take an image twice.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pomlia_hpc.data.harvest import NewImages, harvest_info, harvest_version
from pomlia_hpc.data.versioning import VersionRecord
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.loop.promote import champion
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import Dataset, DatasetVersion, Model, Registry, Task
from pomlia_hpc.serve.labelled import labelled_inputs, retention_warning
from pomlia_hpc.serve.predlog import log_dir as default_log_dir
from pomlia_hpc.workspace import Workspace


@dataclass(frozen=True)
class HarvestOutcome:
    """The version built (or found again), and what went into it."""

    record: VersionRecord
    model: str
    log_dir: Path
    since: datetime | None
    until: datetime
    counts: dict[str, int]
    #: What log retention deleted from the window, in words (None: nothing).
    retention_warning: str | None = None


def served_model(registry: Registry, ref: str) -> tuple[Model, str]:
    """(the model ``ref`` stands for, the name its log is kept under): a slot's champion and
    the slot, or the model named ``ref`` and its own name."""
    entry = champion(registry, ref)
    if entry is not None:
        return resolve_model(registry, str(entry.model_id)), ref
    model = resolve_model(registry, ref)
    return model, model.name


def training_version(registry: Registry, model: Model) -> tuple[DatasetVersion, str]:
    """The dataset version ``model`` was trained on and its dataset's name."""
    vid = (model.lineage or {}).get("dataset_version_id")
    with registry.session() as s:
        if not isinstance(vid, int) and model.task_id is not None:
            task = s.get(Task, model.task_id)
            vid = task.dataset_version_id if task else None
        row = s.get(DatasetVersion, vid) if isinstance(vid, int) else None
        if row is None:
            raise InputError(
                f"model {model.name}: its lineage names no training dataset version "
                "(lineage.dataset_version_id or its task's); expected a model trained by "
                "`pomlia automl run` or registered with --task-id"
            )
        ds = s.get(Dataset, row.dataset_id)
        assert ds is not None
        return row, ds.name


def default_since(parent: DatasetVersion) -> datetime | None:
    """The end of the window that built ``parent``, if it is a harvest."""
    info = harvest_info(parent.meta)
    until = (info or {}).get("until")
    return datetime.fromisoformat(until) if isinstance(until, str) else None


def nothing_labelled(logs: Path, counts: dict[str, int]) -> str:
    """Why a harvest found no image to add: what the log held, and what a server must do."""
    return (
        f"0 labelled images with kept inputs in {logs} ({counts.get('feedback', 0)} feedback "
        f"label(s), {counts.get('outside_window', 0)} outside the window, "
        f"{counts.get('no_input', 0)} without a kept input); serve with --keep-inputs and "
        "send feedback"
    )


def harvest(
    registry: Registry,
    workspace: Workspace,
    ref: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    log_dir: Path | None = None,
) -> HarvestOutcome:
    """Build the new dataset version from the labelled inputs of ``ref`` (module docstring)."""
    model, log_name = served_model(registry, ref)
    parent, dataset = training_version(registry, model)
    if log_dir is not None and not log_dir.is_dir():
        raise NotFoundError(
            f"--log-dir {log_dir}: no such folder; expected the prediction log folder of a "
            f"server of {log_name} "
            f"(`pomlia serve {shlex.quote(log_name)} --keep-inputs --log-dir DIR`)"
        )
    logs = log_dir or default_log_dir(workspace.path("logs"), log_name)
    if not logs.is_dir():
        raise InputError(
            f"no prediction log for {log_name} at {logs}: expected the folder a server of "
            f"{log_name} logs to (`pomlia serve {shlex.quote(log_name)} --keep-inputs`)"
        )
    since = since if since is not None else default_since(parent)
    until = until or datetime.now(UTC)
    classes = [str(c) for c in parent.meta.get("class_names", [])]
    labels = [str(c) for c in (model.card or {}).get("label_names", classes)]
    if labels != classes:
        raise InputError(
            f"model {model.name} has labels {labels[:10]} but its training data "
            f"{dataset}@{parent.version} has classes {classes[:10]}: expected the same list"
        )
    multi = str(parent.meta.get("task_type", "")).startswith("multi-label")
    got = labelled_inputs(
        logs,
        since=since,
        until=until,
        multi_label_width=len(classes) if multi else None,
        n_classes=len(classes) or None,
    )
    gone = retention_warning(got)
    if len(got) == 0:
        raise InputError(nothing_labelled(logs, got.counts) + (f"; {gone}" if gone else ""))
    provenance = {
        "model": model.name,
        "model_id": model.id,
        "log": log_name,
        "since": since.isoformat() if since else None,
        "until": until.isoformat(),
        "counts": got.counts,
        "answered_by": dict(Counter(got.versions)),
    }
    if got.deleted_through is not None:  # absent otherwise: the content hash stays as it was
        provenance["retention_deleted_through"] = got.deleted_through.isoformat()
    new = NewImages(got.image_array(), got.label_array(), got.ids)
    record = harvest_version(workspace, registry, parent, dataset, new, provenance)
    return HarvestOutcome(record, model.name, logs, since, until, got.counts, gone)
