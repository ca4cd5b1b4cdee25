"""The knowledge base's view of the registry's own runs: one :class:`Observation` per (task,
strategy) from the run summaries (:mod:`.runstats`), the meta-features of a registered data set
version, the rule by which a run counts (:func:`counted_epochs`) and its cost at the task's full
budget. :mod:`.kb` gathers these with the imported sources' results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from pomlia_hpc.registry import (
    Dataset,
    DatasetVersion,
    KbRunStats,
    Registry,
    Run,
    Task,
)
from pomlia_hpc.strategy import runstats
from pomlia_hpc.strategy.cost import full_epochs
from pomlia_hpc.strategy.longformat import normalize_task_type

#: The pseudo-source of the registry's own runs.
REGISTRY_SOURCE = "registry"


@dataclass(frozen=True)
class Observation:
    """One (data set, strategy, metric) figure of the knowledge base."""

    source: str
    dataset: str
    strategy: dict[str, Any]
    key: str
    value: float | None  # None: every run of this strategy failed
    std: float | None = None
    cost_s: float | None = None
    n_runs: int = 1
    n_failed: int = 0
    evidence: tuple[int, ...] = ()  # registry run ids
    hparams: tuple[dict[str, Any], ...] = ()  # the best runs' hyperparameters
    startup_s: float | None = None  # of ``cost_s``: the start-up (not scaled by epochs or size)


def version_meta(fingerprint: dict[str, Any], task_type: str) -> dict[str, Any]:
    """Meta-features of a registered data set version from its explicit fingerprint."""
    counts = dict(fingerprint.get("counts") or {})
    size = fingerprint.get("image_size") or [0, 0]
    meta: dict[str, Any] = {
        "task_type": normalize_task_type(task_type) or task_type,
        "n_channels": int(fingerprint.get("channels") or 1),
        "n_classes": int(fingerprint.get("n_classes") or 2),
        "n_train": int(counts.get("train") or fingerprint.get("n_images") or 1),
        "image_size": int(size[0] or 28),
        "dims": 2,
    }
    for split in ("val", "test"):
        if counts.get(split):
            meta[f"n_{split}"] = int(counts[split])
    balance = (fingerprint.get("class_balance") or {}).get("all") or {}
    if balance.get("normalized_entropy") is not None:
        meta["balance_entropy"] = float(balance["normalized_entropy"])
    intensity = fingerprint.get("intensity") or []
    if intensity:
        meta["intensity_mean"] = sum(float(c["mean"]) for c in intensity) / len(intensity)
        meta["intensity_std"] = sum(float(c["std"]) for c in intensity) / len(intensity)
    return meta


#: The run configuration keys that are hyperparameters (not strategy fields).
HPARAMS: tuple[str, ...] = (
    "lr",
    "lr_head",
    "optimizer",
    "momentum",
    "weight_decay",
    "batch_size",
    "augmentation",
    "unfreeze_epoch",
    "extra_n",
)


#: A run counts as its strategy's value on a task only when it reached at least this share of
#: the task's full budget (:func:`full_epochs`) or :data:`COUNTED_EPOCHS`, whichever is fewer;
#: shorter runs (a 1-epoch test study) are kept apart as a lower bound.
SHORT_SHARE = 1 / 3
#: Epochs after which a run counts whatever the task's size: the fewest epochs AutoML's default
#: full budget ever gives (:func:`pomlia_hpc.automl.budget.default_budget`), so a study run
#: deliberately at such a budget (a knowledge base of short studies) still gives evidence.
COUNTED_EPOCHS = 9.0


def counted_epochs(full: int) -> float:
    """The fewest epochs a run of a task whose full budget is ``full`` epochs must reach for
    its value to count (see :data:`SHORT_SHARE`)."""
    return min(SHORT_SHARE * full, COUNTED_EPOCHS)


def counted_epochs_by_task(registry: Registry, task_ids: Iterable[int]) -> dict[int, float]:
    """:func:`counted_epochs` of each task's full budget (by task id, for those that exist):
    the rule by which the knowledge base counts a run, for the readers of runs that must
    count them alike (``strategy outcomes``)."""
    with registry.session() as s:
        rows = s.execute(
            select(Task.id, Task.task_type, DatasetVersion.fingerprint)
            .join(DatasetVersion, Task.dataset_version_id == DatasetVersion.id)
            .where(Task.id.in_(sorted(set(task_ids))))
        ).all()
    return {
        tid: counted_epochs(full_epochs(version_meta(dict(fp or {}), ttype)["n_train"]))
        for tid, ttype, fp in rows
    }


def registry_observations(
    registry: Registry,
    metric: str,
    exclude_task: str | None = None,
    short: dict[tuple[str, str], dict[str, Any]] | None = None,
    validate_on: str | None = None,
) -> tuple[list[Observation], dict[str, dict[str, Any]]]:
    """One observation per (task, strategy) over the registry's finished runs of tasks whose
    metric is ``metric`` (failed ones included; see :mod:`.runstats`, refreshed first), and
    the tasks' meta-features by task name. Runs below :func:`counted_epochs` of the task's full
    budget give no value; a strategy with only such runs (and no failure) gives no observation
    but an entry in ``short`` (see :attr:`KnowledgeBase.short`).

    A value is the test metric of the strategy's best run by validation objective, except on
    data set ``validate_on`` (the one a recommendation is for, any version: a harvest's test
    split holds its parent's), where it is that validation objective: a strategy picked for a
    data set by its own test metric would carry test data into the choice of configuration
    (and the loop's gate compares on the parent's test split)."""
    with registry.session() as s:
        tasks = {
            tid: (name, ttype, metric_, dict(fp or {}), ds)
            for tid, name, ttype, metric_, fp, ds in s.execute(
                select(
                    Task.id,
                    Task.name,
                    Task.task_type,
                    Task.metric,
                    DatasetVersion.fingerprint,
                    Dataset.name,
                )
                .join(DatasetVersion, Task.dataset_version_id == DatasetVersion.id)
                .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
            )
        }
    meta_all = {tid: version_meta(fp, ttype) for tid, (_, ttype, _, fp, _) in tasks.items()}
    full = {tid: full_epochs(m["n_train"]) for tid, m in meta_all.items()}
    runstats.refresh(
        registry,
        {tid: int(m["image_size"]) for tid, m in meta_all.items()},
        {tid: counted_epochs(e) for tid, e in full.items()},
    )
    wanted = {
        tid for tid, (name, _, m, _, _) in tasks.items() if m == metric and name != exclude_task
    }
    out = []
    with registry.session() as s:
        for st in s.scalars(select(KbRunStats).where(KbRunStats.task_id.in_(wanted))):
            if st.n_short and short is not None:
                short[(tasks[st.task_id][0], st.strategy_key)] = {
                    "strategy": dict(st.strategy),
                    "n": st.n_short,
                    "value": st.short_value,
                    "epochs": st.short_epochs,
                    "full_epochs": full[st.task_id],
                    "counted_epochs": counted_epochs(full[st.task_id]),
                }
            if st.best_value is None and not st.n_failed:
                continue  # only short runs: no value, and no failure either
            out.append(
                Observation(
                    REGISTRY_SOURCE,
                    tasks[st.task_id][0],
                    dict(st.strategy),
                    st.strategy_key,
                    st.best_objective if tasks[st.task_id][4] == validate_on else st.best_value,
                    None,
                    _run_cost(st, meta_all[st.task_id]),
                    st.n_runs,
                    st.n_failed,
                    (st.best_run_id,) if st.best_run_id is not None else (),
                    startup_s=st.startup_s / st.timed_n if st.timed_n else None,
                )
            )
    return out, {tasks[t][0]: meta_all[t] for t in wanted}


def _run_cost(st: KbRunStats, meta: dict[str, Any]) -> float | None:
    """Wall seconds of one run of the strategy at the task's full budget
    (:func:`full_epochs`): start-up once plus seconds per epoch times the epochs, where the
    runs' histories give each epoch's seconds (a study's runs span 1 to 60 epochs, and a
    promoted one resumes from a checkpoint); else their seconds per epoch trained (start-up
    included), else their mean wall seconds."""
    if st.timed_n and st.epoch_n:
        return st.startup_s / st.timed_n + st.epoch_s / st.epoch_n * full_epochs(meta["n_train"])
    if st.timed_epochs:
        return st.timed_s / st.timed_epochs * full_epochs(meta["n_train"])
    return st.cost_sum / st.n_cost if st.n_cost else None


def run_hparams(registry: Registry, run_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The hyperparameters of the given runs (for the recommendation's ranges)."""
    ids = list(run_ids)
    if not ids:
        return {}
    with registry.session() as s:
        rows = s.execute(select(Run.id, Run.config).where(Run.id.in_(ids))).all()
    return {rid: {k: v for k, v in (cfg or {}).items() if k in HPARAMS} for rid, cfg in rows}
