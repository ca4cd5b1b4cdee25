"""Registered tasks: a dataset version, a metric and a task type under one name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from pomlia_hpc.automl.defined import require_defined_metric
from pomlia_hpc.data.classes import require_two_train_classes
from pomlia_hpc.data.splits import require_all_splits, require_eval_sizes
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.names import validate_name
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry, Task
from pomlia_hpc.registry.lookup import by_name_or_id
from pomlia_hpc.vocab import check_metric, normalize_task_type


def add_task(
    registry: Registry, name: str, dataset: str, metric: str, task_type: str | None = None
) -> Task:
    """Register task ``name`` on dataset version ``dataset`` (``name`` or ``name@version``)
    with ``metric`` (acc, auc, f1_macro). ``task_type`` defaults to the dataset's own
    (multi-class, binary, multi-label, ordinal); a different one is an error, as is a metric
    undefined on the version's val or test split (AUC where it holds one class)."""
    validate_name("task", name)
    metric = check_metric(metric)
    version = find_version(registry, dataset)
    meta = open_store(version.store_path).meta
    ref = f"{dataset.partition('@')[0]}@{version.version}"
    check_trainable(meta, ref)
    require_defined_metric(meta, metric, ref)
    store_type = normalize_task_type(str(meta.get("task_type", "multi-class")))
    if task_type is not None and normalize_task_type(task_type) != store_type:
        raise InputError(
            f"task type '{task_type}' does not match dataset '{dataset}', whose "
            f"labels are {store_type}"
        )
    with registry.session() as s:
        if s.scalar(select(Task).where(Task.name == name)) is not None:
            raise PomliaError(f"task '{name}' already exists; expected a new name")
        row = Task(name=name, dataset_version_id=version.id, metric=metric, task_type=store_type)
        s.add(row)
        s.flush()
        s.expunge(row)
        return row


def check_trainable(meta: dict[str, Any], ref: str) -> None:
    """Refuse a dataset version (``ref``, its store's ``meta``) that no trial could learn
    from: an empty train, val or test split, a val or test split too small to evaluate on
    (:data:`~pomlia_hpc.data.splits.MIN_EVAL_IMAGES`), fewer than 2 classes with training
    images, a binary task without exactly 2 classes (versions ingested before ``data add``
    refused that), or images that are not square (the model card, export and server take
    square images only); one :class:`InputError` each."""
    require_square_images(meta, ref)
    # Classes first: a version of one class is refused whatever its splits, and naming the
    # splits first sent the user to add images of that class, only to be refused again.
    require_two_train_classes(meta, ref)
    require_all_splits(meta, ref)
    require_eval_sizes(meta, ref)
    n_classes = int(meta.get("n_classes", 0))
    if meta.get("task_type") == "binary-class" and n_classes != 2:
        raise InputError(
            f"dataset '{ref}' is binary-class but has {n_classes} classes: expected exactly 2 "
            "(ingest it again with --task-type multi-class)"
        )


def require_square_images(meta: dict[str, Any], ref: str) -> None:
    """Refuse dataset version ``ref`` (its store's ``meta``, sizes in px) whose images are not
    square: training would run, but the model could not be exported or served."""
    height, width = meta.get("height"), meta.get("width")
    if isinstance(height, int) and isinstance(width, int) and height != width:
        raise InputError(
            f"dataset '{ref}' has images {height} px high and {width} px wide: expected "
            "square images (height = width), which the model card, `model export` and the "
            "server require; crop or pad them to a square and add the data set again"
        )


def get_task(registry: Registry, ref: str | int) -> Task:
    """The task named ``ref`` (or with id ``ref``)."""
    with registry.session() as s:
        row = by_name_or_id(s, Task, ref, "task")
        s.expunge(row)
        return row


def task_dataset(registry: Registry, task: Task) -> tuple[DatasetVersion, str]:
    """The task's dataset version row and its ``name@version`` ref."""
    with registry.session() as s:
        version = s.get(DatasetVersion, task.dataset_version_id)
        if version is None:
            raise NotFoundError(
                f"dataset version {task.dataset_version_id} of task "
                f"'{task.name}' is missing from the registry"
            )
        ds = s.get(Dataset, version.dataset_id)
        s.expunge(version)
        return version, f"{ds.name if ds else '?'}@{version.version}"


def list_tasks(registry: Registry) -> list[tuple[Task, str]]:
    """All tasks with their dataset refs, oldest first."""
    with registry.session() as s:
        rows = list(s.scalars(select(Task).order_by(Task.id)))
        for r in rows:
            s.expunge(r)
    return [(t, task_dataset(registry, t)[1]) for t in rows]
