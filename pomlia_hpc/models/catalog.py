"""The model catalog: registry ``Model`` rows for classifier checkpoints.

:func:`register_model` adds a checkpoint under a name, :func:`resolve_model` finds one by name
or id, :func:`promote_checkpoint` copies a run's checkpoint into the workspace's ``models/``
folder and registers it with its lineage (what AutoML does with a study's best trial), and
:func:`update_card` replaces a model's card (the exporter adds file hashes to it).

Model names follow :func:`pomlia_hpc.names.validate_name`: they become parts of paths.
"""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.errors import NotFoundError, PomliaError
from pomlia_hpc.files import atomic_target, link_or_copy
from pomlia_hpc.models.card import MODEL_NAME_MAX, model_card
from pomlia_hpc.names import validate_name
from pomlia_hpc.registry import DatasetVersion, Model, Registry, Run, Task
from pomlia_hpc.registry.lookup import by_name_or_id
from pomlia_hpc.workspace import Workspace


class ModelNameTakenError(PomliaError):
    """A model name that is registered already, or whose file ``models/NAME.pt`` holds another
    checkpoint: nothing was written under it."""


def register_model(
    registry: Registry,
    name: str,
    path: str | Path,
    task_id: int | None = None,
    run_id: int | None = None,
    card: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> Model:
    """Create the registry ``Model`` row for the checkpoint at ``path`` and return it.

    ``card`` defaults to :func:`~pomlia_hpc.models.card.model_card` of the checkpoint's
    metadata; ``lineage`` is merged over the checkpoint's own lineage, with ``task_id`` and
    ``run_id``. A name already taken is an error (names identify served models and their logs).
    """
    # Imported here, not at the top: reading a checkpoint needs torch, and resolving or
    # updating a model must not (the strategy room and the CPU server import this module).
    from pomlia_hpc.models.checkpoint import read_meta

    validate_name("model", name, max_len=MODEL_NAME_MAX)
    p = Path(path).resolve()
    meta = read_meta(p)
    full_lineage = {**meta.lineage, **dict(lineage or {})}
    if task_id is not None:
        full_lineage["task_id"] = task_id
    if run_id is not None:
        full_lineage["run_id"] = run_id
    if card is None:  # the task's metric too: the gate and the monitor read it here
        card = model_card(meta, name=name, task=_task_fields(registry, task_id))
    card_dict = dict(card)
    card_dict.setdefault("lineage", full_lineage)
    with registry.session() as s:
        existing = s.scalar(select(Model).where(Model.name == name))
        if existing is not None:
            raise ModelNameTakenError(_taken(name, existing.id))
        row = Model(
            name=name,
            task_id=task_id,
            run_id=run_id,
            path=str(p),
            card=card_dict,
            lineage=full_lineage,
        )
        s.add(row)
        s.flush()
        return row


def _task_fields(registry: Registry, task_id: int | None) -> dict[str, Any] | None:
    """The card's task fields of a model of task ``task_id`` (its id and metric), None for a
    model of no task. Without them the registry's card of every AutoML best model named no
    metric, and each gate of the loop warned that the card and the task record differed."""
    if task_id is None:
        return None
    with registry.session() as s:
        row = s.get(Task, task_id)
        return {"id": task_id, "metric": row.metric} if row is not None else {"id": task_id}


def _taken(name: str, model_id: int) -> str:
    return f"model name '{name}' is already registered (id {model_id}); expected a new name"


def check_new_model_name(registry: Registry, name: str) -> None:
    """Refuse ``name`` for a new model before anything is written under it: an invalid name,
    or one already registered (the files of that model must not be overwritten)."""
    validate_name("model", name, max_len=MODEL_NAME_MAX)
    existing = find_model(registry, name)
    if existing is not None:
        raise ModelNameTakenError(_taken(name, existing.id))


def check_model_free(registry: Registry, workspace: Workspace, name: str) -> None:
    """Refuse ``name`` for a model that :func:`promote_checkpoint` will write later (an AutoML
    study's best): an invalid name, one already registered, or one whose file
    ``models/NAME.pt`` exists already (a model of another registry sharing this workspace)."""
    check_new_model_name(registry, name)
    dst = workspace.path("models", f"{name}.pt")
    if dst.exists():
        raise ModelNameTakenError(_unregistered_file(name, dst))


def _unregistered_file(name: str, dst: Path) -> str:
    return (
        f"{dst} exists but no model '{name}' is registered in this registry (a model of "
        "another registry sharing this workspace?); expected a new name, or move that file away"
    )


def find_model(registry: Registry, name: str) -> Model | None:
    """The ``Model`` row named exactly ``name``, or ``None``."""
    with registry.session() as s:
        return s.scalar(select(Model).where(Model.name == name))


def promote_checkpoint(
    registry: Registry,
    workspace: Workspace,
    name: str,
    checkpoint: str | Path,
    *,
    task_id: int | None = None,
    run_id: int | None = None,
    lineage: Mapping[str, Any] | None = None,
    exist_ok: bool = False,
    link: bool = False,
) -> Model:
    """Copy ``checkpoint`` (a run's output, which a later run may overwrite or a clean-up may
    delete) to ``<workspace>/models/<name>.pt`` and register it as model ``name`` with
    ``lineage``.

    The copy is made atomically (temp name, then rename). With ``link`` it is a hard link
    where the file system allows one (:func:`files.link_or_copy`): only for a file that
    pomlia's atomic writers alone replace, and only by rename (a study's trial model); a
    user's file may be rewritten in place (``torch.save`` to its path), which would change
    the registered model too. With ``exist_ok``, a model already registered
    under ``name`` is returned unchanged: a resumed study that had already promoted its best.
    A file already at ``models/NAME.pt`` that differs from ``checkpoint`` is refused, nothing
    written: with no model ``name`` in this registry it belongs to another registry sharing
    the workspace (or to a registration that failed half-way) and must not be overwritten.
    """
    validate_name("model", name, max_len=MODEL_NAME_MAX)
    existing = find_model(registry, name)
    if existing is not None:
        if exist_ok:
            return existing
        raise ModelNameTakenError(_taken(name, existing.id))  # before its checkpoint is overwritten
    task_id = _check_ids(registry, task_id, run_id, Path(checkpoint))
    dst = workspace.path("models", f"{name}.pt")
    if dst.exists() and not filecmp.cmp(checkpoint, dst, shallow=False):
        raise ModelNameTakenError(_unregistered_file(name, dst))
    # The same file already (a link made by a registration that failed after it): a rename
    # of a second link onto it would do nothing and leave the temporary name behind.
    if not (dst.exists() and dst.samefile(checkpoint)):
        with atomic_target(dst) as tmp:
            # A second name, not a second 45 MiB, where the source is only replaced by rename.
            (link_or_copy if link else shutil.copyfile)(Path(checkpoint), tmp)
    try:
        return register_model(registry, name, dst, task_id=task_id, run_id=run_id, lineage=lineage)
    except BaseException:
        _drop_unregistered_copy(registry, name, Path(checkpoint), dst)
        raise


def _drop_unregistered_copy(registry: Registry, name: str, source: Path, copy: Path) -> None:
    """Remove the copy a failed registration made, unless it is the source itself (a
    checkpoint already at ``models/NAME.pt``) or a concurrent registration of ``name`` won and
    owns the file now; when the registry cannot say, the file stays (a stray file, not lost
    data)."""
    if source.resolve() == copy.resolve():
        return
    try:
        if find_model(registry, name) is not None:
            return
    except Exception:  # the registry is what failed: keep the file rather than guess
        return
    copy.unlink(missing_ok=True)


def _check_ids(
    registry: Registry, task_id: int | None, run_id: int | None, checkpoint: Path
) -> int | None:
    """Refuse, before anything is copied, a task or run id that is not in the registry, a run
    of another task than ``task_id``, and a checkpoint whose class count is not its task's (a
    model's lineage, listing and serving would name the wrong task). Returns the model's task
    id: ``task_id``, else the run's (a run id alone names its task; the model was registered
    with none, so listings by task left it out)."""
    with registry.session() as s:
        for kind, table, ref in (("task", Task, task_id), ("run", Run, run_id)):
            if ref is not None and s.get(table, ref) is None:
                raise NotFoundError(f"{kind} id {ref} is not in the registry")
        run = s.get(Run, run_id) if run_id is not None else None
        if run is not None and task_id is not None and run.task_id != task_id:
            raise PomliaError(
                f"run {run_id} belongs to task id {run.task_id}, not to --task-id {task_id}; "
                "expected the task of the run that trained the model"
            )
        # a run id alone still names its task: the checkpoint must fit that one
        tid = task_id if task_id is not None else (run.task_id if run is not None else None)
        task = s.get(Task, tid) if tid is not None else None
        version = s.get(DatasetVersion, task.dataset_version_id) if task is not None else None
        if task is None or version is None or "n_classes" not in version.meta:
            return tid
        want, task_name = int(version.meta["n_classes"]), task.name
    # Imported here: reading a checkpoint needs torch (see register_model).
    from pomlia_hpc.models.checkpoint import read_meta

    got = read_meta(checkpoint).num_classes
    if got != want:
        raise PomliaError(
            f"{checkpoint}: the checkpoint has {got} classes but task '{task_name}' (id {tid}) "
            f"has {want}; expected a checkpoint trained for that task"
        )
    return tid


def resolve_model(registry: Registry, ref: str) -> Model:
    """The ``Model`` row named ``ref`` (or with id ``ref``); :class:`NotFoundError` otherwise."""
    with registry.session() as s:
        return by_name_or_id(s, Model, ref, "model")


def update_card(registry: Registry, model_id: int, card: Mapping[str, Any]) -> None:
    """Replace the card of model ``model_id`` (a new dict, so SQLAlchemy sees the change)."""
    with registry.session() as s:
        row = s.get(Model, model_id)
        if row is None:
            raise NotFoundError(f"model id {model_id} is not in the registry")
        row.card = dict(card)
