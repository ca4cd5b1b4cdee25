"""An AutoML study: its specification, saved once, and the driver that runs it.

A study lives in ``<home>/runs/<study>/``::

    study.json               the specification (:class:`StudySpec`), written at creation
    smac/smac/<seed>/        SMAC's state (or random_search.json), saved after every ask/tell
    configs/<key>/           one folder per configuration: checkpoints (shared by its budgets),
                             model-e<E>.pt (the classifier trained to E epochs)
    trials/run-<id>/         result.json of each trial job
    init/, extra/            weights and extra images prepared for the jobs
    summary.json             written when the study finishes

The driver (:class:`StudyRunner`) asks the optimiser for trials, submits up to ``parallel`` at a
time through the cluster layer, records each as a registry run (:mod:`.records`), tells the
optimiser the outcome (a failed, cancelled, timed-out or out-of-memory job is ``crashed``, with
its cause and traceback kept) and goes on. A job the scheduler refuses stops the study (the run
is ``submit_failed``) until ``resume``. With ``resume`` it reloads the optimiser, adopts the
results of trials that finished while it was away, records those whose jobs failed (failed,
out of memory, timed out) as crashed, reattaches to jobs still queued or running, and resubmits
the ones cancelled, lost or never submitted (they continue from their last epoch checkpoint), so
no finished trial runs twice. At the end the best configuration's model is registered with its
lineage.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from ConfigSpace import Configuration

from pomlia_hpc.automl import records
from pomlia_hpc.automl.engine import EngineOptions, TrainRequest, read_state
from pomlia_hpc.automl.metrics import check_metric, objective_cost
from pomlia_hpc.automl.optimizers import Proposal, RandomSearch, SearchOptimizer, SmacHyperband
from pomlia_hpc.automl.space import (
    SpaceOptions,
    TrainConfig,
    build_space,
    configs_from_values,
)
from pomlia_hpc.automl.tasks import get_task, task_dataset
from pomlia_hpc.automl.trial import TrialJob, failure_path, read_failure, read_result
from pomlia_hpc.cluster import Executor, JobFailedError, JobHandle
from pomlia_hpc.cluster.attach import AttachedJob, poll_attached
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.data.store import open_store
from pomlia_hpc.errors import (
    ClusterError,
    InputError,
    NotFoundError,
    PomliaError,
    integrity_failure,
)
from pomlia_hpc.models.catalog import promote_checkpoint
from pomlia_hpc.registry import Job, Registry, Run
from pomlia_hpc.workspace import Workspace

SPEC_FILE = "study.json"
SUMMARY_FILE = "summary.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass(frozen=True)
class StudySpec:
    """Everything that defines a study (``study.json``); a resumed study reads it back."""

    name: str
    task: str
    task_id: int
    metric: str
    task_type: str
    dataset_version_id: int
    dataset: str
    store_path: str
    n_trials: int = 20
    max_epochs: int = 9
    min_epochs: int = 1
    eta: int = 3
    parallel: int = 2
    executor: str = "local"
    optimizer: str = "smac"
    seed: int = 0
    budget_epochs: int | None = None
    n_initial: int | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] | None = None
    init_model: dict[str, Any] | None = None
    extra_encoder: str | None = None
    initial_configs: list[dict[str, Any]] = field(default_factory=list)
    final_full_budget: bool = False
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def study_dir(workspace: Workspace, name: str) -> Path:
    return workspace.path("runs", name)


def load_spec(workspace: Workspace, name: str) -> StudySpec:
    """The saved specification of study ``name``."""
    path = study_dir(workspace, name) / SPEC_FILE
    if not path.is_file():
        raise NotFoundError(f"study '{name}' does not exist (no {path})")
    return StudySpec.from_dict(json.loads(path.read_text()))


def latest_study(workspace: Workspace, task: str) -> str:
    """The newest study of ``task`` in this workspace (for ``--resume`` without ``--study``)."""
    best: tuple[str, str] | None = None
    root = workspace.path("runs")
    for spec_file in root.glob(f"*/{SPEC_FILE}") if root.is_dir() else []:
        data = json.loads(spec_file.read_text())
        if data.get("task") == task and (best is None or data.get("created_at", "") > best[0]):
            best = (data.get("created_at", ""), data["name"])
    if best is None:
        raise NotFoundError(f"no study of task '{task}' to resume in {root}")
    return best[1]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def create_study(
    registry: Registry,
    workspace: Workspace,
    task: str,
    *,
    name: str | None = None,
    n_trials: int = 20,
    max_epochs: int = 9,
    min_epochs: int = 1,
    eta: int = 3,
    parallel: int = 2,
    executor: str = "local",
    optimizer: str = "smac",
    seed: int = 0,
    budget_epochs: int | None = None,
    n_initial: int | None = None,
    engine: EngineOptions | None = None,
    space: SpaceOptions | None = None,
    resources: dict[str, Any] | None = None,
    encoder: str | None = None,
    init_model: str | None = None,
    extra_data: bool = False,
    initial_configs: list[dict[str, Any]] | None = None,
    final_full_budget: bool = False,
) -> StudySpec:
    """Validate the arguments, prepare initial weights, and write the study's ``study.json``.

    ``encoder``: a fingerprint encoder (name or id) whose weights become ``init=encoder``;
    ``init_model``: a registered model whose weights become ``init=model``; ``extra_data``:
    offer nearest images from similar datasets (found with ``encoder``'s index).
    ``initial_configs``: warm-start configurations (value mappings), SMAC's initial design.
    ``final_full_budget``: when the best configuration trained fewer than ``max_epochs``, train
    it on to ``max_epochs`` (from its checkpoint) after the search, outside the budget.
    """
    t = get_task(registry, task)
    version, ref = task_dataset(registry, t)
    check_metric(t.metric)
    stamp = datetime.now(UTC)
    name = name or f"{t.name}-{stamp:%Y%m%d-%H%M%S}"
    if not _NAME_RE.match(name):
        raise InputError(
            f"study name '{name}' is not valid: expected letters, digits, '_', "
            "'.', '-' (at most 96)"
        )
    folder = study_dir(workspace, name)
    if (folder / SPEC_FILE).exists():
        raise PomliaError(
            f"study '{name}' already exists; pass --resume to continue it or "
            "choose another --study name"
        )
    _check_numbers(
        n_trials=n_trials,
        max_epochs=max_epochs,
        min_epochs=min_epochs,
        eta=eta,
        parallel=parallel,
        budget_epochs=budget_epochs,
    )
    if optimizer not in ("smac", "random"):
        raise InputError(f"optimizer '{optimizer}' is not known: expected smac or random")
    profile = load_cluster_profile(executor)  # fails early, naming the known profiles
    store = open_store(version.store_path)
    opts = space or SpaceOptions()
    enc = model = None
    if encoder is not None:
        from pomlia_hpc.automl.sources import encoder_weights

        enc = encoder_weights(
            registry, encoder, store.image_shape[2], folder / "init" / "encoder.pt"
        ).to_dict()
    if init_model is not None:
        from pomlia_hpc.automl.sources import model_weights

        model = model_weights(registry, init_model, folder / "init" / "model.pt").to_dict()
    opts = SpaceOptions(
        archs=opts.archs,
        max_extra=opts.max_extra,
        encoder_arch=enc["arch"] if enc else None,
        model_arch=model["arch"] if model else None,
        extra_data=extra_data,
    )
    cs = build_space(opts, seed=seed)
    # Validate the warm start now, with a message naming the entry.
    configs_from_values(initial_configs or [], cs, "initial configurations")
    eng = engine or EngineOptions()
    if eng.threads is None:
        cpus = (resources or {}).get("cpus_per_task") or profile.cpus_per_task
        eng = EngineOptions(**{**eng.to_dict(), "threads": int(cpus)})
    spec = StudySpec(
        name=name,
        task=t.name,
        task_id=t.id,
        metric=t.metric,
        task_type=t.task_type,
        dataset_version_id=version.id,
        dataset=ref,
        store_path=version.store_path,
        n_trials=n_trials,
        max_epochs=max_epochs,
        min_epochs=min_epochs,
        eta=eta,
        parallel=parallel,
        executor=executor,
        optimizer=optimizer,
        seed=seed,
        budget_epochs=budget_epochs,
        n_initial=n_initial,
        engine=eng.to_dict(),
        space=opts.to_dict(),
        resources=dict(resources or {}),
        encoder=enc,
        init_model=model,
        extra_encoder=encoder if extra_data else None,
        initial_configs=list(initial_configs or []),
        final_full_budget=final_full_budget,
        created_at=stamp.isoformat(),
    )
    _write_json(folder / SPEC_FILE, spec.to_dict())
    return spec


def _check_numbers(**values: int | None) -> None:
    for key, value in values.items():
        if value is None:
            continue
        low = 2 if key == "eta" else 1
        if not isinstance(value, int) or value < low:
            raise InputError(f"{key.replace('_', '-')}={value}: expected an integer >= {low}")
    if (values["min_epochs"] or 1) > (values["max_epochs"] or 1):
        raise InputError(
            f"min-epochs={values['min_epochs']} is larger than max-epochs={values['max_epochs']}"
        )


# ----------------------------------------------------------------------------- live view


@dataclass(frozen=True)
class TrialView:
    """One trial as the live table shows it."""

    run_id: int
    key: str
    summary: str
    epochs: int
    status: str
    objective: float | None
    test: float | None
    cost_s: float | None
    job: str
    cause: str = ""
    start_epoch: int = 0


@dataclass(frozen=True)
class StudyView:
    """A snapshot of a running study for the live table."""

    name: str
    metric: str
    trials: list[TrialView]
    best: TrialView | None
    spent_epochs: int
    n_trials: int
    budget_epochs: int | None


@dataclass(frozen=True)
class StudyResult:
    """What :meth:`StudyRunner.run` returns."""

    name: str
    best_run_id: int | None
    best_config: dict[str, Any] | None
    best_metrics: dict[str, Any] | None
    model_name: str | None
    n_ok: int
    n_crashed: int
    spent_epochs: int
    wall_s: float


def _summary(values: dict[str, Any]) -> str:
    parts = [str(values.get("arch", ""))]
    if values.get("init", "scratch") != "scratch":
        parts.append(f"{values['init']}/{values.get('mode', 'full')}")
    lr = values.get("lr", values.get("lr_head"))
    if lr is not None:
        parts.append(f"lr={float(lr):.1e}")
    parts.append(f"{values.get('optimizer', '')} bs={values.get('batch_size', '')}")
    if values.get("extra_data") == "nearest":
        parts.append(f"+{values.get('extra_n')}nn")
    return " ".join(parts)


def _job_name(study: str, run_id: int) -> str:
    """The name of trial run ``run_id``'s job (how a resumed driver finds it)."""
    return f"automl-{study}-{run_id}"


# ----------------------------------------------------------------------------- the driver


#: Repeated proposals answered in a row after which the driver stops asking (the optimiser
#: keeps proposing configurations that were already trained at that budget).
MAX_REPEATS = 50


class _Untold:
    """The optimiser of the final full-budget training: the search is over, nothing to tell."""

    def ask(self) -> Proposal:
        raise RuntimeError("the final training asks nothing")

    def tell(self, proposal: Proposal, cost: float, *, crashed: bool, time_s: float) -> None:
        return None

    def running(self) -> list[Proposal]:
        return []


#: Seconds between two scheduler polls for the jobs of a previous driver (one ``sacct`` for all).
ORPHAN_POLL_S = 5.0


def attach_trial_job(registry: Registry, job: Job, result_path: Path) -> AttachedJob:
    """The trial job of row ``job`` that an earlier driver submitted; its result and failure
    files are at ``result_path`` (and :func:`~pomlia_hpc.automl.trial.failure_path` of it)."""
    return AttachedJob(
        registry,
        job,
        has_result=result_path.is_file,
        failure=lambda: read_failure(result_path),
    )


def attached_result(job: AttachedJob, result_path: Path) -> dict[str, Any]:
    """The trial's result, or :class:`JobFailedError` with the job's state and traceback."""
    res = read_result(result_path)
    if res is not None:
        job.completed()
        return res
    raise job.failed()


@dataclass
class _Active:
    run_id: int
    proposal: Proposal
    handle: JobHandle | AttachedJob
    started: float
    result_path: Path | None = None  # of an attached job


UpdateFn = Callable[[StudyView], None]


class StudyRunner:
    """Run (or resume) one study. ``on_update`` receives a :class:`StudyView` after every
    change and every ``poll_s`` seconds (the CLI draws its live table from it)."""

    def __init__(
        self,
        registry: Registry,
        workspace: Workspace,
        spec: StudySpec,
        *,
        on_update: UpdateFn | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.registry, self.workspace, self.spec = registry, workspace, spec
        self.folder = study_dir(workspace, spec.name)
        self.on_update = on_update
        self.poll_s = poll_s
        self.space = build_space(SpaceOptions.from_dict(spec.space), seed=spec.seed)
        self.engine = EngineOptions.from_dict(spec.engine)
        self.active: dict[int, _Active] = {}
        self._orphans_polled = -math.inf  # time.monotonic() of the last poll
        #: Runs recorded before this driver started, by (configuration key, epochs).
        self._known: dict[tuple[str, int], Run] = {}
        self._executor: Executor | None = None
        self._views: dict[int, TrialView] = {}
        #: Repeated proposals of a (configuration key, epochs) still training: told its result.
        self._waiting: dict[tuple[str, int], list[Proposal]] = {}
        self._repeats = 0  # repeated proposals answered in a row (the space may be exhausted)

    # -- setup ---------------------------------------------------------------------------
    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = Executor.from_profile(
                self.spec.executor,
                self.workspace.jobs / "automl" / self.spec.name,
                self.registry,
            )
        return self._executor

    def optimizer(self, resume: bool, has_runs: bool = False) -> SearchOptimizer:
        """The study's optimiser, new or (``resume``) reloaded; ``has_runs``: the registry
        holds trials of this study."""
        initial: list[Configuration] = configs_from_values(
            self.spec.initial_configs, self.space, "initial configurations"
        )
        s = self.spec
        if s.optimizer == "random":
            return RandomSearch(
                self.space,
                self.folder / "random",
                max_epochs=s.max_epochs,
                seed=s.seed,
                initial=initial,
                resume=resume,
            )
        return SmacHyperband(
            self.space,
            self.folder / "smac",
            n_trials=s.n_trials,
            min_epochs=s.min_epochs,
            max_epochs=s.max_epochs,
            eta=s.eta,
            seed=s.seed,
            initial=initial,
            n_initial=s.n_initial,
            resume=resume,
            # A driver stopped before SMAC's first save left no state and no trial: start SMAC
            # afresh rather than leave a study that can neither resume nor be created again.
            fresh_if_missing=resume and not has_runs,
        )

    # -- the loop --------------------------------------------------------------------------
    def run(self, resume: bool = False) -> StudyResult:
        """Run the study to its end (trials or epoch budget used up, all trials back)."""
        t0 = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        runs = records.study_runs(self.registry, self.spec.name)
        opt = self.optimizer(resume, has_runs=bool(runs))
        for run in runs:  # oldest first: the newest run of a (configuration, epochs) wins
            self._views[run.id] = self._view_of_run(run)
            key = str((run.config or {}).get("config_key", ""))
            self._known[(key, round(run.budget or 0))] = run
        if resume:
            for proposal in opt.running():
                self._recover(opt, proposal)
        self._emit()
        last_emit = time.monotonic()
        while True:
            while len(self.active) < self.spec.parallel and self._may_ask():
                proposal = opt.ask()
                if resume:  # SMAC may ask again for a trial the registry already knows
                    self._recover(opt, proposal)
                elif not self.answer_repeat(opt, proposal):
                    self.start(opt, proposal)
            if not self.active:
                break
            changed = False
            self._poll_orphans()
            for run_id, act in list(self.active.items()):
                if act.handle.done():
                    del self.active[run_id]  # before collecting: a lost orphan is resubmitted
                    self._collect(opt, act)
                    changed = True
            if changed or time.monotonic() - last_emit > 2.0:
                self._emit()
                last_emit = time.monotonic()
            if not changed:
                time.sleep(self.poll_s)
        if self.spec.final_full_budget:
            self._train_best_to_full_budget()
        result = self._finish(time.perf_counter() - t0)
        self._emit()
        return result

    def _spent(self) -> int:
        """Epochs trained or being trained by the study's trials (the budget used; a crashed
        trial counts with the epochs it was given)."""
        return sum(max(v.epochs - v.start_epoch, 0) for v in self._views.values())

    @property
    def trials(self) -> dict[int, TrialView]:
        """The trials this driver knows, by run id (the live dict the driver updates)."""
        return self._views

    def answer_repeat(self, opt: SearchOptimizer, proposal: Proposal) -> bool:
        """A (configuration, epochs) this study already trained is not trained again: the
        optimiser is told the recorded result (or, while it still trains, told when it ends).
        Returns whether ``proposal`` was such a repeat."""
        key, epochs = proposal.key, proposal.epochs
        done = [v for v in self._views.values() if v.key == key and v.epochs == epochs]
        if not done:
            self._repeats = 0
            return False
        self._repeats += 1
        view = done[-1]
        if view.status == records.OK:
            cost = objective_cost({self.spec.metric: view.objective}, self.spec.metric)
            opt.tell(proposal, cost, crashed=False, time_s=0.0)
        elif view.status == records.CRASHED:
            opt.tell(proposal, 1.0, crashed=True, time_s=0.0)
        else:
            self._waiting.setdefault((key, epochs), []).append(proposal)
        return True

    def tell_waiting(
        self, opt: SearchOptimizer, proposal: Proposal, cost: float, crashed: bool
    ) -> None:
        for repeat in self._waiting.pop((proposal.key, proposal.epochs), []):
            opt.tell(repeat, cost, crashed=crashed, time_s=0.0)

    def _train_best_to_full_budget(self) -> None:
        """Train the best configuration on to ``max_epochs`` (from its checkpoint) when it
        stopped earlier; its run competes for "best" by validation metric like any other."""
        best = self.best()
        if best is None or best.epochs >= self.spec.max_epochs:
            return
        if any(
            v.key == best.key and v.epochs >= self.spec.max_epochs for v in self._views.values()
        ):
            return  # trained to the full budget already (and found worse on validation)
        run = next(
            r for r in records.study_runs(self.registry, self.spec.name) if r.id == best.run_id
        )
        values = {
            k: v
            for k, v in (run.config or {}).items()
            if k not in ("config_key", "origin", "smac_budget", "engine")
        }
        config = configs_from_values([values], self.space, f"run {run.id}")[0]
        config.origin = "Final: the best configuration at the full budget"
        opt = _Untold()
        self.start(opt, Proposal(config, float(self.spec.max_epochs)))
        self._emit()
        while self.active:
            for run_id, act in list(self.active.items()):
                if act.handle.done():
                    del self.active[run_id]
                    self._collect(opt, act)
            if self.active:
                time.sleep(self.poll_s)
        self._emit()

    def _may_ask(self) -> bool:
        if self._repeats >= MAX_REPEATS:
            return False  # the optimiser keeps proposing what was already trained
        if len(self._views) >= self.spec.n_trials:
            return False
        return self.spec.budget_epochs is None or self._spent() < self.spec.budget_epochs

    def _paths(self, key: str, epochs: int, run_id: int) -> tuple[Path, Path, Path]:
        workdir = self.folder / "configs" / key
        return (
            workdir,
            workdir / f"model-e{epochs}.pt",
            self.folder / "trials" / f"run-{run_id}" / "result.json",
        )

    def start(self, opt: SearchOptimizer, proposal: Proposal, run_id: int | None = None) -> None:
        """Create the run record (unless given) and submit the trial job."""
        values, key, epochs = proposal.values, proposal.key, proposal.epochs
        uses_encoder = values.get("init") == "encoder" or values.get("extra_data") == "nearest"
        encoder_id = (self.spec.encoder or {}).get("id") if uses_encoder else None
        if run_id is None:
            config = {
                **values,
                "config_key": key,
                "origin": proposal.origin,
                "smac_budget": proposal.budget,
                "engine": self.spec.engine,
            }
            run_id = records.create_run(
                self.registry,
                task_id=self.spec.task_id,
                study=self.spec.name,
                config=config,
                epochs=epochs,
                dataset_version_id=self.spec.dataset_version_id,
                encoder_id=encoder_id,
            )
        workdir, model_path, result_path = self._paths(key, epochs, run_id)
        failure_path(result_path).unlink(missing_ok=True)  # from an attempt that was lost
        state = read_state(workdir)
        start = int(state["epoch"]) if state else 0
        self._views[run_id] = TrialView(
            run_id, key, _summary(values), epochs, records.PENDING, None, None, None, "", "", start
        )
        try:
            request = self.trial_request(proposal, workdir, model_path, run_id)
        except PomliaError as exc:
            # The trial could not even start (e.g. extra images unavailable): a crash too.
            self._record_crash(opt, run_id, proposal, str(exc), str(exc), 0.0)
            return
        try:
            handle = self.executor.submit(
                TrialJob(request, str(result_path)),
                name=_job_name(self.spec.name, run_id),
                resources=self.spec.resources or None,
            )
        except (RuntimeError, OSError, PomliaError) as exc:
            # sbatch failed (submitit's FailedJobError/FailedSubmissionError are RuntimeErrors),
            # often transiently (slurmctld down, a full queue): not the configuration's fault, so
            # SMAC is not told "crashed"; the run is kept for --resume to submit again.
            self._submit_failed(run_id, proposal, exc)
        records.mark_running(self.registry, run_id, handle.record_id, start_epoch=start)
        self.active[run_id] = _Active(run_id, proposal, handle, time.time())
        self._views[run_id] = replace(
            self._views[run_id], status=records.RUNNING, job=handle.job_id
        )

    def _submit_failed(self, run_id: int, proposal: Proposal, exc: BaseException) -> NoReturn:
        """Record that run ``run_id``'s job could not be submitted and stop the study."""
        message = " ".join(str(exc).split()) or type(exc).__name__
        records.mark_submit_failed(self.registry, run_id, f"submission failed: {message}")
        self._views[run_id] = replace(
            self._views[run_id], status=records.SUBMIT_FAILED, job="", cause=message[:300]
        )
        self._emit()
        out = [str(a.handle.job_id) for a in self.active.values()]
        still = f"; its running jobs ({', '.join(out)}) go on" if out else ""
        raise ClusterError(
            f"study '{self.spec.name}' stopped: the job of trial run {run_id} "
            f"({proposal.epochs} epochs) could not be submitted to executor "
            f"'{self.spec.executor}': {message[:500]}{still}",
            hint=f"once the scheduler accepts jobs again, `pomlia automl run {self.spec.task} "
            f"--study {self.spec.name} --resume` submits it and continues the study",
        ) from exc

    def trial_request(
        self, proposal: Proposal, workdir: Path, model_path: Path, run_id: int
    ) -> TrainRequest:
        values = proposal.values
        cfg = TrainConfig.from_values(values)
        init_weights = None
        if cfg.init == "encoder":
            init_weights = (self.spec.encoder or {}).get("path")
        elif cfg.init == "model":
            init_weights = (self.spec.init_model or {}).get("path")
        extra = str(self.extra_file(cfg.extra_n)) if cfg.extra_n > 0 else None
        seed = self.spec.seed * 7919 + int(proposal.key[:6], 16) % 7919
        options = EngineOptions(**{**self.engine.to_dict(), "seed": seed})
        return TrainRequest(
            store_path=self.spec.store_path,
            task_type=self.spec.task_type,
            config=cfg,
            epochs=proposal.epochs,
            workdir=str(workdir),
            model_path=str(model_path),
            config_key=proposal.key,
            init_weights=init_weights,
            extra_data=extra,
            options=options,
            lineage={
                "task": self.spec.task,
                "task_id": self.spec.task_id,
                "dataset": self.spec.dataset,
                "dataset_version_id": self.spec.dataset_version_id,
                "study": self.spec.name,
                "run_id": run_id,
            },
        )

    def extra_file(self, n: int) -> Path:
        """The npz of extra images for this study (the largest N asked so far is prepared
        once; smaller N take its first rows, which are the nearest). Prepared again only for
        an N larger than any asked before: when the index held fewer images than asked, asking
        again cannot give more."""
        from pomlia_hpc.automl.sources import nearest_extra

        path = self.folder / "extra" / "nearest.npz"
        requested = 0
        if path.is_file():
            import numpy as np

            with np.load(path) as z:
                have = int(z["labels"].shape[0])
                requested = int(z["requested"]) if "requested" in z else have
        if requested < n:
            max_n = int(SpaceOptions.from_dict(self.spec.space).max_extra)
            if self.spec.extra_encoder is None:
                raise InputError("extra images need an encoder; this study has none")
            nearest_extra(
                self.registry,
                self.workspace,
                self.spec.extra_encoder,
                self.spec.dataset,
                max(n, max_n),
                path,
            )
        return path

    def _poll_orphans(self) -> None:
        """Ask the scheduler about the previous driver's jobs still out, at most every
        :data:`ORPHAN_POLL_S` seconds."""
        orphans = [
            a.handle
            for a in self.active.values()
            if isinstance(a.handle, AttachedJob) and not a.handle.ended
        ]
        if orphans and time.monotonic() - self._orphans_polled >= ORPHAN_POLL_S:
            self._orphans_polled = time.monotonic()
            poll_attached(orphans)

    def _collect(self, opt: SearchOptimizer, act: _Active) -> None:
        handle = act.handle
        if isinstance(handle, AttachedJob) and handle.lost(cancelled_too=False):
            # The scheduler no longer knows the job and it left no result or failure: nothing
            # was learnt, so it runs again (from its last checkpoint) rather than "crashing".
            handle.forget("trial")
            self.start(opt, act.proposal, run_id=act.run_id)
            return
        try:
            if isinstance(handle, AttachedJob):
                assert act.result_path is not None
                result = attached_result(handle, act.result_path)
            else:
                result = handle.result()
        except JobFailedError as exc:
            cause = exc.cause
            error = f"{exc.state}: {cause}\n\n{exc.traceback or ''}".rstrip()
            self._record_crash(
                opt,
                act.run_id,
                act.proposal,
                cause,
                error,
                time.time() - act.started,
                state=exc.state,
            )
            damage = integrity_failure(exc.traceback or str(exc))
            if damage is not None:
                # Every trial reads the same data: stop the study (nothing trained on damaged
                # data is registered) rather than let each trial crash on the same chunk.
                raise damage from exc
            return
        self._record_ok(opt, act.run_id, act.proposal, result)

    def _record_ok(
        self, opt: SearchOptimizer, run_id: int, proposal: Proposal, result: dict[str, Any]
    ) -> None:
        val, test = result["metrics"]["val"], result["metrics"]["test"]
        cost = objective_cost(val, self.spec.metric)
        objective = val.get(self.spec.metric)
        if objective is not None and not math.isfinite(objective):
            objective = None  # NaN in a result written before undefined metrics became None
        metrics = {
            "val": val,
            "test": test,
            "objective": objective,
            "epochs": result["epochs"],
            "start_epoch": result["start_epoch"],
            "epochs_run": result["epochs"] - result["start_epoch"],
            "gpu_hours": result.get("gpu_hours", 0.0),
            "device": result.get("device"),
            "model_path": result.get("model_path"),
            "n_train": result.get("n_train"),
            "n_extra": result.get("n_extra", 0),  # may be fewer than the configured extra_n
            "init_loaded": result.get("init_loaded"),
            "history": result.get("history", []),
        }
        records.finish_run(
            self.registry,
            run_id,
            status=records.OK,
            metrics=metrics,
            cost_s=float(result["cost_s"]),
        )
        opt.tell(proposal, cost, crashed=False, time_s=float(result["cost_s"]))
        self.tell_waiting(opt, proposal, cost, crashed=False)
        self._views[run_id] = replace(
            self._views[run_id],
            status=records.OK,
            objective=objective,
            test=test.get(self.spec.metric),
            cost_s=float(result["cost_s"]),
            cause="",
            start_epoch=int(result["start_epoch"]),
        )

    def _record_crash(
        self,
        opt: SearchOptimizer,
        run_id: int,
        proposal: Proposal,
        cause: str,
        error: str,
        wall_s: float,
        state: str = "FAILED",
    ) -> None:
        old = self._views.get(run_id)
        start = old.start_epoch if old else 0
        records.finish_run(
            self.registry,
            run_id,
            status=records.CRASHED,
            metrics={"cause": cause, "state": state, "start_epoch": start},
            cost_s=wall_s,
            error=error,
        )
        opt.tell(proposal, 1.0, crashed=True, time_s=wall_s)
        self.tell_waiting(opt, proposal, 1.0, crashed=True)
        self._views[run_id] = TrialView(
            run_id,
            proposal.key,
            _summary(proposal.values),
            proposal.epochs,
            records.CRASHED,
            None,
            None,
            wall_s,
            old.job if old else "",
            cause,
            start,
        )

    # -- resume ----------------------------------------------------------------------------
    def _recover(self, opt: SearchOptimizer, proposal: Proposal) -> None:
        """Settle a trial that was out when the previous driver stopped."""
        run = self._known.pop((proposal.key, proposal.epochs), None)
        if run is None:  # asked, but the driver died before recording it
            self.start(opt, proposal)
            return
        if run.status == records.OK:  # recorded, but not yet told
            m = dict(run.metrics or {})
            opt.tell(
                proposal,
                objective_cost(m["val"], self.spec.metric),
                crashed=False,
                time_s=run.cost_s or 0.0,
            )
            return
        if run.status == records.CRASHED:
            opt.tell(proposal, 1.0, crashed=True, time_s=run.cost_s or 0.0)
            return
        _, _, result_path = self._paths(proposal.key, proposal.epochs, run.id)
        job = records.job_of(self.registry, run.job_id)
        if job is None and run.job_id is None and run.status == records.PENDING:
            # Perhaps submitted, but the driver stopped before linking the job to its run.
            job = records.newest_job_named(
                self.registry, _job_name(self.spec.name, run.id), str(self.executor.folder)
            )
            if job is not None:
                start = int(dict(run.metrics or {}).get("start_epoch", 0))
                records.mark_running(self.registry, run.id, job.id, start_epoch=start)
        if job is None:
            result = read_result(result_path)
            if result is not None:  # finished while the driver was away
                self._record_ok(opt, run.id, proposal, result)
            else:  # never submitted, or refused: submit it now
                self.start(opt, proposal, run_id=run.id)
            return
        orphan = attach_trial_job(self.registry, job, result_path)
        act = _Active(run.id, proposal, orphan, time.time(), result_path)
        self.active[run.id] = act
        self._views[run.id] = replace(
            self._view_of_run(run), status=records.RUNNING, job=job.scheduler_id
        )
        if not result_path.is_file():
            poll_attached([orphan])
        if not orphan.done():
            return  # still queued or training (or the scheduler could not say): wait for it
        del self.active[run.id]
        if orphan.lost(cancelled_too=True):
            # Cancelled or forgotten while nobody watched: the trial never had its chance.
            orphan.forget("trial")
            self.start(opt, proposal, run_id=run.id)  # continues from its last checkpoint
            return
        self._collect(opt, act)  # its result, or a crash (failed, timed out, out of memory)

    def _view_of_run(self, run: Run) -> TrialView:
        m = dict(run.metrics or {})
        values = {k: v for k, v in (run.config or {}).items()}
        job = records.job_of(self.registry, run.job_id)
        return TrialView(
            run.id,
            str(values.get("config_key", "")),
            _summary(values),
            int(run.budget or 0),
            run.status,
            m.get("val", {}).get(self.spec.metric),
            m.get("test", {}).get(self.spec.metric),
            run.cost_s,
            job.scheduler_id if job else "",
            str(m.get("cause", "")),
            int(m.get("start_epoch", 0)),
        )

    # -- results ---------------------------------------------------------------------------
    def best(self) -> TrialView | None:
        """The finished trial with the best validation metric (ties: more epochs, earlier)."""
        ok = [
            v
            for v in self._views.values()
            if v.status == records.OK and v.objective is not None and math.isfinite(v.objective)
        ]
        if not ok:
            return None
        return max(ok, key=lambda v: (v.objective, v.epochs, -v.run_id))

    def view(self) -> StudyView:
        return StudyView(
            self.spec.name,
            self.spec.metric,
            [self._views[k] for k in sorted(self._views)],
            self.best(),
            self._spent(),
            self.spec.n_trials,
            self.spec.budget_epochs,
        )

    def _emit(self) -> None:
        if self.on_update is not None:
            self.on_update(self.view())

    def _finish(self, wall_s: float) -> StudyResult:
        best = self.best()
        n_ok = sum(v.status == records.OK for v in self._views.values())
        n_crashed = sum(v.status == records.CRASHED for v in self._views.values())
        model_name = config = metrics = None
        if best is not None:
            run = next(
                r for r in records.study_runs(self.registry, self.spec.name) if r.id == best.run_id
            )
            config = {
                k: v
                for k, v in run.config.items()
                if k not in ("config_key", "origin", "smac_budget", "engine")
            }
            metrics = {k: run.metrics[k] for k in ("val", "test", "objective", "epochs")}
            model_name = self._register_best(run)
        summary = StudyResult(
            self.spec.name,
            best.run_id if best else None,
            config,
            metrics,
            model_name,
            n_ok,
            n_crashed,
            self._spent(),
            wall_s,
        )
        _write_json(self.folder / SUMMARY_FILE, asdict(summary))
        return summary

    def _register_best(self, run: Run) -> str:
        name = f"{self.spec.name}-best"
        lineage = {
            "task": self.spec.task,
            "task_id": self.spec.task_id,
            "dataset": self.spec.dataset,
            "dataset_version_id": self.spec.dataset_version_id,
            "study": self.spec.name,
            "run_id": run.id,
            "config": run.config,
            "epochs": int(run.budget or 0),
            "metric": self.spec.metric,
            "code_version": records.code_version(),
        }
        if run.encoder_id is not None:
            lineage["encoder_id"] = run.encoder_id
        # exist_ok: a resumed study that had already finished keeps its model.
        promote_checkpoint(
            self.registry,
            self.workspace,
            name,
            run.metrics["model_path"],
            task_id=self.spec.task_id,
            run_id=run.id,
            lineage=lineage,
            exist_ok=True,
        )
        return name


def run_study(
    registry: Registry,
    workspace: Workspace,
    spec: StudySpec,
    *,
    resume: bool = False,
    on_update: UpdateFn | None = None,
    poll_s: float = 1.0,
) -> StudyResult:
    """Run (or with ``resume``, continue) the study ``spec``; see :class:`StudyRunner`."""
    return StudyRunner(registry, workspace, spec, on_update=on_update, poll_s=poll_s).run(resume)
