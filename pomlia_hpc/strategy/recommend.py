"""``pomlia recommend TASK``: the top-k strategies for a registered task, with evidence.

Steps: the task's meta-features (its data set version's explicit fingerprint, task type and
metric); the knowledge base for the task's metric (every imported source and the registry's
runs, the task's own included); the ``kernel-regret`` learner (:mod:`.learner`), fitted with a
nested leave-one-out bandwidth; when the task's data set and known tasks share an encoder with
complete embeddings, their fingerprint distance (:mod:`.fpdist`), between the known tasks for
the bandwidth's choice as for the answer, is combined with the meta-feature distance (scaled
to the same median: :mod:`.learner`) when they rank the known tasks' strategies better
than the meta-features alone do; otherwise metadata alone. Each strategy gets an
expected metric (+- spread over similar data sets), an expected cost (:mod:`.cost`), evidence,
and its translation into the AutoML space (:mod:`pomlia_hpc.automl.space`) where one exists;
the warm start's configurations come from :mod:`.warmconfigs`. The answer is recorded in
``recommendations``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from pomlia_hpc.automl.records import json_safe
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.files import (
    atomic_target,
    is_special_file,
    make_dirs,
    probe_writable,
    remove_made_dirs,
    write_json_atomic,
)
from pomlia_hpc.registry import (
    Dataset,
    DatasetVersion,
    Recommendation,
    Registry,
    Task,
)
from pomlia_hpc.registry.lookup import by_name_or_id
from pomlia_hpc.strategy.candidates import (
    NothingFitsError,
    cost_reader,
    differs,
    pareto,
    runs_as,
    within_limits,
)
from pomlia_hpc.strategy.fpdist import fingerprint_distances
from pomlia_hpc.strategy.kb import (
    REGISTRY_SOURCE,
    dimensionality,
    load,
    of_dimensionality,
    run_hparams,
    task_type_note,
    version_meta,
)
from pomlia_hpc.strategy.learner import (
    LEARNER,
    LEARNER_VERSION,
    KernelRegret,
    Matrix,
    build_matrix,
    meta_vector,
    similarity_label,
)
from pomlia_hpc.strategy.translate import available_sources, to_automl
from pomlia_hpc.strategy.warmconfigs import settings_reader, warm_configs

__all__ = ["NothingFitsError", "recommend", "within_limits", "write_initial"]


@dataclass(frozen=True)
class TargetTask:
    id: int
    name: str
    metric: str
    task_type: str
    dataset_version_id: int
    meta: dict[str, Any]
    dataset: str = ""  # the data set's name


def _dataset_name(s: Session, version: DatasetVersion | None) -> str:
    row = s.get(Dataset, version.dataset_id) if version is not None else None
    return row.name if row is not None else ""


def get_target(registry: Registry, ref: str) -> TargetTask:
    """The task named (or numbered) ``ref`` with its meta-features."""
    with registry.session() as s:
        task = by_name_or_id(s, Task, ref, "task")
        version = s.get(DatasetVersion, task.dataset_version_id)
        fp = dict(version.fingerprint or {}) if version is not None else {}
        return TargetTask(
            task.id,
            task.name,
            task.metric,
            task.task_type,
            task.dataset_version_id,
            version_meta(fp, task.task_type),
            _dataset_name(s, version),
        )


def failure_rate(m: Matrix, w: np.ndarray, j: int) -> float | None:
    """The share of strategy ``j``'s registry runs that failed, over the tasks where it ran,
    weighted by their similarity ``w`` (``None`` where it never ran: published tables record
    no failures, and a task where it was not tried says nothing about it)."""
    rows = [i for i in range(len(m.datasets)) if m.sources.get((i, j)) == REGISTRY_SOURCE]
    if not rows:
        return None
    weights = w[rows] if w[rows].sum() > 0 else None
    return float(np.average(m.fail[rows, j], weights=weights))


def _ranges(hparams: list[dict[str, Any]]) -> dict[str, Any]:
    """Hyperparameter ranges over the given runs: [min, max] of numbers, values seen else."""
    out: dict[str, Any] = {}
    for key in sorted({k for h in hparams for k in h}):
        vals = [h[key] for h in hparams if key in h and h[key] is not None]
        if vals and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            out[key] = [min(vals), max(vals)]
        elif vals:
            out[key] = sorted({str(v) for v in vals})
    return out


@dataclass
class Recommended:
    rank: int
    strategy: dict[str, Any]
    expected: float | None
    spread: float | None
    expected_regret: float
    cost: dict[str, Any]
    failure_rate: float | None  # None: no registry runs of it
    evidence: list[dict[str, Any]]
    automl: dict[str, Any] | None
    note: str
    hparam_ranges: dict[str, Any] = field(default_factory=dict)
    # the effective number of data sets behind ``expected`` (Kish's, of their weights) and
    # their summed similarity weight
    n_eff: float = 0.0
    evidence_weight: float = 0.0
    # the strategy as it will run here (its AutoML translation; ``None``: not runnable here)
    # and whether ``expected`` describes the published strategy rather than that run
    runs_as: dict[str, Any] | None = None
    expected_of_published: bool = False


def recommend(
    registry: Registry,
    task: str,
    *,
    k: int = 5,
    max_cost_s: float | None = None,
    max_gpu_hours: float | None = None,
    sources: list[str] | None = None,
    record: bool = True,
    archs: tuple[str, ...] | None = None,
    exclude_own_runs: bool = False,
    initial_file: str | Path | None = None,
) -> dict[str, Any]:
    """The top-``k`` strategies for ``task`` (see the module docstring), as a JSON-able dict.
    ``archs``: the AutoML configurations (``initial``) only use these architectures;
    ``exclude_own_runs``: leave the task's own runs out (to evaluate on a held-out task);
    ``initial_file``: also write the AutoML configurations there (:func:`write_initial`),
    checked before anything is computed and written before the record is committed, so that
    a file that cannot be written leaves no recommendation recorded."""
    t0 = time.perf_counter()
    if initial_file is not None:
        check_initial_target(initial_file)
    if k < 1:
        raise InputError(f"--k {k}: expected an integer >= 1")
    for option, limit in (("--max-cost", max_cost_s), ("--max-gpu-hours", max_gpu_hours)):
        # NaN would allow no strategy; inf cannot be recorded (JSON has no infinity)
        if limit is not None and not (limit > 0 and math.isfinite(limit)):
            raise InputError(
                f"{option} {limit}: expected a positive finite number (leave the option out "
                "for no limit)"
            )
    target = get_target(registry, task)
    kb = load(
        registry,
        target.metric,
        sources,
        exclude_task=target.name if exclude_own_runs else None,
        validate_on=target.dataset,  # its own runs rank strategies by val, never test
    )
    # Only data sets of the task's dimensionality are look-alikes and evidence (a 2D task's
    # similar data sets listed 3D volume sets, whose weight diluted its strategies' regrets).
    dims = dimensionality(target.meta)
    kb, other_dims = of_dimensionality(kb, dims)
    m = build_matrix(kb)
    if len(m.datasets) < 2:
        left = f" ({len(other_dims)} of other dimensionality left out)" if other_dims else ""
        raise NotFoundError(
            f"the knowledge base has results on {len(m.datasets)} {dims}D data set(s) for "
            f"metric '{target.metric}'{left}; expected at least 2 of the task's dimensionality",
            hint="pomlia strategy import FILE --source NAME (see docs/strategy.md)",
        )
    tasks = {i for (i, _), source in m.sources.items() if source == REGISTRY_SOURCE}
    names = [d if i in tasks else None for i, d in enumerate(m.datasets)]
    fp = fingerprint_distances(registry, names, target.dataset_version_id)
    learner = KernelRegret().fit(m, fingerprints=fp.pairs if fp else None)
    ranking = learner.rank(meta_vector(target.meta), fingerprints=fp.target if fp else None)
    similarity = similarity_label(
        fp.encoder if fp else None, learner.fingerprints_offered, learner.uses_fingerprints
    )
    n_train = int(target.meta.get("n_train", 1))
    w = ranking.weights
    by_weight = [int(i) for i in np.argsort(-w, kind="stable")]  # one tie order everywhere
    # a model to start from: of the registry's tasks among the 5 most similar data sets (a
    # published data set named like a task is not that task)
    near = [m.datasets[i] for i in by_weight[:5] if i in tasks]
    src = available_sources(registry, target.id, target.dataset_version_id, near)

    size = int(target.meta.get("image_size") or 0)
    order = [int(j) for j in ranking.order if ranking.supported[j]] or list(ranking.order)
    translated = {j: to_automl(m.strategies[j], src, size) for j in order}
    as_run = {j: runs_as(translated[j][0], size or 28) for j in order}
    cost_of = cost_reader(
        m, by_weight, tasks, lambda i: int(kb.meta[m.datasets[i]].get("n_train", 1)), n_train
    )
    # the cost (and the limits) of what will run: the translation where there is one
    all_costs = {j: cost_of(as_run[j] or m.strategies[j]) for j in order}
    allowed = within_limits(order, all_costs, max_cost_s, max_gpu_hours)
    picked = allowed[:k]
    evidence_runs = [rid for (_, j), ids in m.evidence.items() if j in set(allowed) for rid in ids]
    hp = run_hparams(registry, evidence_runs)
    settings_of = settings_reader(registry, m, w, [i for i in by_weight if i in tasks])
    initial = warm_configs(
        m, ranking.expected_regret, allowed, w, src, hp, k, archs, settings_of=settings_of
    )
    out = []
    for rank, j in enumerate(picked, 1):
        ev = _evidence(m, w, by_weight, j)
        values, note = translated[j]
        runs_hp = [hp[r] for e in ev for r in e["runs"] if r in hp]
        fail = failure_rate(m, w, j)
        changed = differs(m.strategies[j], as_run[j])
        n_eff = float(ranking.n_eff[j])
        notes = [note] if note else []
        if changed:
            notes.append("expected: of the published strategy, not of this run")
        short = kb.short.get((target.name, m.keys[j]))
        if short:
            notes.append(_short_note(short))
        out.append(
            Recommended(
                rank,
                m.strategies[j],
                _num(ranking.expected_value[j]),
                # one data set carrying (nearly) all the weight has no spread to show
                _num(ranking.value_sd[j]) if n_eff >= MIN_N_EFF else None,
                round(float(ranking.expected_regret[j]), 3),
                all_costs[j].to_dict(),
                None if fail is None else round(fail, 3),
                ev,
                values,
                "; ".join(notes),
                _ranges(runs_hp),
                round(n_eff, 2),
                round(float(ranking.evidence_weight[j]), 4),
                as_run[j],
                changed,
            )
        )
    n_same_type, type_note = task_type_note(kb, m.datasets, target.meta["task_type"])
    answer: dict[str, Any] = {
        "task": target.name,
        "metric": target.metric,
        "meta": target.meta,
        "n_same_task_type": n_same_type,  # known data sets of the task's type
        "note": type_note,
        "similar": [
            {
                "dataset": m.datasets[i],
                "weight": round(float(w[i]), 4),
                # the task's own runs (in the registry): not a look-alike of itself
                "own_runs": bool(i in tasks and m.datasets[i] == target.name),
            }
            for i in by_weight[:5]
        ],
        "similarity": similarity,
        "bandwidth": None if math.isinf(learner.h) else learner.h,
        "sources_of_weights": {
            "encoder": src.encoder,
            "model": src.model,
            "imagenet_local": list(src.imagenet),
        },
        "strategies": [r.__dict__ for r in out],
        # the task's own runs far below the budget: not counted (a lower bound each)
        "short_runs": [v for (t, _), v in sorted(kb.short.items()) if t == target.name],
        "pareto": [
            {
                "strategy": m.strategies[j],
                "expected": _num(ranking.expected_value[j]),
                "expected_regret": round(float(ranking.expected_regret[j]), 3),
                "cost": all_costs[j].to_dict(),
            }
            for j in pareto(allowed, ranking.expected_regret, ranking.evidence_weight, all_costs)
        ],
        "initial": initial,
        "n_datasets": len(m.datasets),
        "dims": dims,
        # the known data sets of another dimensionality than the task's: not compared
        "other_dims": other_dims,
        "n_strategies": len(m.keys),
        "learner": LEARNER,
        "learner_version": LEARNER_VERSION,
        "seconds": 0.0,
    }
    if record:
        asked = {
            "k": k,
            "max_cost_s": max_cost_s,
            "max_gpu_hours": max_gpu_hours,
            "sources": sources,
            "archs": list(archs) if archs is not None else None,
            "exclude_own_runs": exclude_own_runs,
        }
        answer["recommendation_id"] = _record(registry, target, answer, asked, initial_file)
    elif initial_file is not None:
        write_initial(answer, initial_file)
    answer["seconds"] = round(time.perf_counter() - t0, 3)
    return answer


def _evidence(m: Matrix, w: np.ndarray, by_weight: list[int], j: int) -> list[dict[str, Any]]:
    """Strategy ``j``'s values on the 3 most similar data sets that have one, with their
    similarity weights and registry runs."""
    rows = [i for i in by_weight if np.isfinite(m.values[i, j])][:3]
    return [
        {
            "dataset": m.datasets[i],
            "source": m.sources.get((i, j), ""),
            "value": float(m.values[i, j]),
            "weight": round(float(w[i]), 4),
            "runs": list(m.evidence.get((i, j), ())),
        }
        for i in rows
    ]


#: Below this effective number of data sets (one carries nearly all the weight), no spread is
#: given: the weighted spread of a single value is 0, which would read as certainty.
MIN_N_EFF = 1.5


def _short_note(short: dict[str, Any]) -> str:
    """What the task's own runs below the budget say (a lower bound, not counted)."""
    value = "" if short["value"] is None else f", best test {short['value']:.3f} (a lower bound)"
    return (
        f"this task's {short['n']} run(s) of it reached at most {short['epochs']:g} of "
        f"{short['full_epochs']} epochs: below the {short['counted_epochs']:g} that count, "
        f"not counted{value}"
    )


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 5)


def _record(
    registry: Registry,
    target: TargetTask,
    answer: dict[str, Any],
    asked: dict[str, Any],
    initial_file: str | Path | None = None,
) -> int:
    """Record the answer with everything it was asked with (``asked``: the options), so
    that it can be scored and reproduced later. ``initial_file``: :func:`write_initial` the
    answer under a temporary name beside it before the record is committed (it names the
    record's id), renamed into place after the commit: when the file cannot be written
    nothing is recorded, and when the commit fails only the temporary file is removed (a file
    already at ``initial_file`` is kept as it was)."""
    # The temporary name's block encloses the session's, so the rename follows the commit.
    staged = atomic_target(initial_file) if initial_file is not None else contextlib.nullcontext()
    parents = _parents_of(initial_file) if initial_file is not None else contextlib.nullcontext()
    with parents, staged as tmp, registry.session() as s:
        rid = _add_record(s, target, answer, asked)
        if initial_file is not None and tmp is not None:
            answer["recommendation_id"] = rid
            write_initial(answer, initial_file, staged=tmp)
    return rid


def _add_record(
    s: Session, target: TargetTask, answer: dict[str, Any], asked: dict[str, Any]
) -> int:
    """Add the :class:`Recommendation` row of ``answer`` in session ``s``; its id."""
    row = Recommendation(
        task_id=target.id,
        task=target.name,
        learner=LEARNER,
        learner_version=LEARNER_VERSION,
        inputs=json_safe(
            {
                **asked,
                "meta": target.meta,
                "metric": target.metric,
                "n_datasets": answer["n_datasets"],
            }
        ),
        # No infinity in a JSON column (PostgreSQL refuses it, SQLite stores invalid JSON).
        output=json_safe(
            {k2: answer[k2] for k2 in ("strategies", "pareto", "similar", "similarity", "initial")}
        ),
    )
    s.add(row)
    s.flush()
    return int(row.id)


@contextlib.contextmanager
def _parents_of(path: str | Path) -> Iterator[None]:
    """Make the missing folders above ``path`` for the block and, when the block fails (the
    commit, the write, an interrupt), remove those again while empty: a refused
    ``--write-initial`` leaves no folder it made; folders that existed are never removed."""
    try:
        made = make_dirs(Path(path).absolute().parent)
    except OSError as exc:  # make_dirs removed what it made
        raise InputError(
            f"--write-initial {path} cannot be written ({exc.strerror or exc}): expected a "
            "writable file path"
        ) from exc
    try:
        yield
    except BaseException:
        remove_made_dirs(made)
        raise


def check_initial_target(path: str | Path) -> None:
    """Refuse ``path`` for :func:`write_initial` when it is a folder, a device, pipe or socket,
    or no file can be made where it goes (before a recommendation is made and recorded): a
    probe file is created and removed in its folder, or in the nearest folder that exists (the
    writer makes the rest)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"--write-initial {path} is a folder: expected the path of a JSON file to write"
        )
    if is_special_file(path):  # said here, with the option, before anything is recorded
        raise InputError(
            f"--write-initial {path} is not a regular file (a device, pipe or socket): "
            "expected the path of a JSON file to write"
        )
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        probe_writable(folder)  # a file in the way of a folder fails here too
    except OSError as exc:
        raise InputError(
            f"--write-initial {path} cannot be written ({exc.strerror or exc} in {folder}): "
            "expected a writable file path"
        ) from exc


def write_initial(answer: dict[str, Any], path: str | Path, *, staged: Path | None = None) -> int:
    """Write the recommendation's AutoML configurations (``initial``) as the JSON that
    ``pomlia automl run --initial`` reads; returns how many. Atomic (temporary file, rename).
    ``staged``: write there instead, a temporary name of ``path`` that the caller renames into
    place (messages still name ``path``)."""
    check_initial_target(path)

    configs = answer.get("initial") or []
    if not configs:
        raise InputError(
            "none of the recommended strategies can be expressed in the AutoML space here "
            "(architectures or weights missing); nothing written"
        )
    data = {
        "task": answer["task"],
        "recommendation_id": answer.get("recommendation_id"),
        "learner": f"{answer['learner']} {answer['learner_version']}",
        "configs": configs,
    }
    try:
        if staged is not None:
            write_json_atomic(staged, data)  # the caller made (and cleans up) the folders
        else:
            with _parents_of(path):
                write_json_atomic(path, data)
    except OSError as exc:
        raise InputError(
            f"--write-initial {path} cannot be written ({exc.strerror or exc}): expected a "
            "writable file path"
        ) from exc
    return len(configs)
