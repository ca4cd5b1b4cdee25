"""Running trials: submit a trial job (:class:`~pomlia_hpc.automl.trial.TrialJob`) for a proposal,
collect its result or its failure, record both as registry runs and tell the optimiser.

:class:`TrialRunner` holds what a study's driver knows (the runs, the jobs out, the live view);
:class:`~pomlia_hpc.automl.study.driver.StudyRunner` adds the loop on top.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from pomlia_hpc.automl import records
from pomlia_hpc.automl.engine import TrainRequest, read_state
from pomlia_hpc.automl.folders import study_dir
from pomlia_hpc.automl.liveness import DriverBeat
from pomlia_hpc.automl.metrics import objective_cost
from pomlia_hpc.automl.optimizers import Proposal, SearchOptimizer
from pomlia_hpc.automl.options import EngineOptions
from pomlia_hpc.automl.space import TrainConfig, build_space
from pomlia_hpc.automl.study.seen import trial_lineage
from pomlia_hpc.automl.study.spec import StudySpec
from pomlia_hpc.automl.study.trialjobs import (
    ActiveTrial,
    attached_result,
    job_wall_s,
)
from pomlia_hpc.automl.study.view import (
    FINAL_ORIGIN,
    StudyView,
    TrialView,
    job_name,
    recorded_attempt,
    split_counts,
)
from pomlia_hpc.automl.trial import (
    TrialJob,
    failure_path,
    started_path,
)
from pomlia_hpc.cluster import Executor, JobFailedError
from pomlia_hpc.cluster.attach import AttachedJob, poll_attached
from pomlia_hpc.cluster.handle import REQUEUE_POLL_S, job_attempts
from pomlia_hpc.cluster.reach import failure_kind
from pomlia_hpc.errors import InputError, PomliaError, integrity_failure
from pomlia_hpc.registry import Registry, Run
from pomlia_hpc.workspace import Workspace

#: Seconds between two scheduler polls for the jobs of a previous driver (one ``sacct`` for all).
ORPHAN_POLL_S = 5.0


UpdateFn = Callable[[StudyView], None]


class TrialRunner:
    """Submit, collect and record the trials of one study. ``on_update`` receives a
    :class:`StudyView` after every change (the CLI draws its live table from it);
    ``executor``: where the trial jobs go (default: the study's cluster profile)."""

    def __init__(
        self,
        registry: Registry,
        workspace: Workspace,
        spec: StudySpec,
        *,
        on_update: UpdateFn | None = None,
        poll_s: float = 1.0,
        executor: Executor | None = None,
    ) -> None:
        self.registry, self.workspace, self.spec = registry, workspace, spec
        self.folder = study_dir(workspace, spec.name)
        self.on_update = on_update
        self.poll_s = poll_s
        self.space = build_space(spec.space, seed=spec.options.seed)
        self.engine = spec.engine
        self.active: dict[int, ActiveTrial] = {}
        self._orphans_polled = -math.inf  # time.monotonic() of the last poll
        self._requeues_polled = -math.inf  # and of the last look for requeued trial jobs
        #: Runs recorded before this driver started, by (configuration key, epochs).
        self.known: dict[tuple[str, int], Run] = {}
        self._executor = executor
        self.views: dict[int, TrialView] = {}
        #: Repeated proposals of a (configuration key, epochs) still training: told its result.
        #: Each with the optimiser it came from (a trial the optimiser never asked is told none).
        self.waiting: dict[tuple[str, int], list[tuple[SearchOptimizer, Proposal]]] = {}
        self.repeats = 0  # repeated proposals answered in a row (the space may be exhausted)
        #: Runs whose job this driver saw cancelled (a user's cancel while it watched).
        self.cancelled: set[int] = set()
        self.liveness = DriverBeat(workspace, spec.name)  # the driver's heartbeat file

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = Executor.from_profile(
                self.spec.options.executor,
                self.workspace.jobs / "automl" / self.spec.name,
                self.registry,
            )
        return self._executor

    def spent(self) -> int:
        """Epochs trained or being trained by the study's trials (the budget used; a crashed
        trial counts with the epochs it was given)."""
        return sum(max(v.epochs - v.start_epoch, 0) for v in self.views.values())

    def epochs_run(self) -> int:
        """Epochs the study's trials actually finished: an ok trial's span, for any other
        (running, crashed, cancelled) the epochs its configuration's last checkpoint holds
        within its span. A trial cancelled after 9 s counted its whole budget in ``spent``."""
        total = 0
        for v in self.views.values():
            span = max(v.epochs - v.start_epoch, 0)
            if v.status == records.OK:
                total += span
                continue
            if not v.key:
                continue
            state = read_state(self.folder / "configs" / v.key)
            done = int(state.get("epoch", 0)) if state else 0
            total += min(max(done - v.start_epoch, 0), span)
        return total

    def paths(self, key: str, epochs: int, run_id: int) -> tuple[Path, Path, Path]:
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
        encoder_id = self.spec.encoder.id if uses_encoder and self.spec.encoder else None
        if run_id is None:
            config = {
                **values,
                "config_key": key,
                "origin": proposal.origin,
                "smac_budget": proposal.budget,
                "engine": self.trial_engine(key).to_dict(),  # with the trial's own seed
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
        workdir, model_path, result_path = self.paths(key, epochs, run_id)
        failure_path(result_path).unlink(missing_ok=True)  # from an attempt that was lost
        started_path(result_path).unlink(missing_ok=True)
        state = read_state(workdir)
        start = int(state["epoch"]) if state else 0
        self.views[run_id] = TrialView(
            run_id,
            key,
            records.config_summary(values),
            epochs,
            records.PENDING,
            None,
            None,
            None,
            "",
            "",
            start,
            proposal.origin == FINAL_ORIGIN,
        )
        try:
            request = self.trial_request(proposal, workdir, model_path, run_id)
        except PomliaError as exc:
            # The trial could not even start (e.g. extra images unavailable): a crash too.
            self.record_crash(opt, run_id, proposal, str(exc), str(exc), 0.0)
            return
        try:
            handle = self.executor.submit(
                TrialJob(request, str(result_path)),
                name=job_name(self.spec.name, run_id),
                resources=self.spec.options.resources or None,
            )
        except (RuntimeError, OSError, PomliaError) as exc:
            # sbatch failed (submitit's FailedJobError/FailedSubmissionError are RuntimeErrors),
            # often transiently (slurmctld down, a full queue): not the configuration's fault, so
            # SMAC is not told "crashed"; the run is kept for --resume to submit again.
            self._submit_failed(run_id, proposal, exc)
        handle.adoptable = True  # a restarted driver reattaches to it (study/recover.py)
        records.mark_running(self.registry, run_id, handle.record_id, start_epoch=start)
        self.active[run_id] = ActiveTrial(run_id, proposal, handle, time.time(), result_path, opt)
        # The registry's job id: the one `pomlia jobs show/cancel` take (not Slurm's or the pid).
        job = "" if handle.record_id is None else str(handle.record_id)
        self.views[run_id] = replace(self.views[run_id], status=records.RUNNING, job=job)

    def _submit_failed(self, run_id: int, proposal: Proposal, exc: BaseException) -> NoReturn:
        """Record that run ``run_id``'s job could not be submitted and stop the study."""
        message = " ".join(str(exc).split()) or type(exc).__name__
        records.mark_submit_failed(self.registry, run_id, f"submission failed: {message}")
        self.views[run_id] = replace(
            self.views[run_id], status=records.SUBMIT_FAILED, job="", cause=message[:300]
        )
        self.emit()
        out = [str(a.handle.job_id) for a in self.active.values()]
        still = f"; its running jobs ({', '.join(out)}) go on" if out else ""
        raise failure_kind(exc)(  # a scheduler out of reach stays one (exit 69)
            f"study '{self.spec.name}' stopped: the job of trial run {run_id} "
            f"({proposal.epochs} epoch{'s' if proposal.epochs != 1 else ''}) could not be "
            "submitted to executor "
            f"'{self.spec.options.executor}': {message[:500]}{still}",
            hint="once the scheduler accepts jobs again, `pomlia automl run "
            f"{shlex.quote(self.spec.task)} --study {shlex.quote(self.spec.name)} --resume` "
            "submits it and continues the study",
        ) from exc

    def trial_engine(self, key: str) -> EngineOptions:
        """The engine options a trial of configuration ``key`` trains with: the study's, with a
        training seed of its own (from the study's seed and the key, so the same configuration
        gets other initial weights and batch orders under another study seed)."""
        seed = self.spec.options.seed * 7919 + int(key[:6], 16) % 7919
        return self.engine.model_copy(update={"seed": seed})

    def trial_request(
        self, proposal: Proposal, workdir: Path, model_path: Path, run_id: int
    ) -> TrainRequest:
        values = proposal.values
        cfg = TrainConfig.from_values(values)
        init_weights = None
        if cfg.init == "encoder":
            init_weights = self.spec.encoder.path if self.spec.encoder else None
        elif cfg.init == "model":
            init_weights = self.spec.init_model.path if self.spec.init_model else None
        extra = str(self.extra_file(cfg.extra_n)) if cfg.extra_n > 0 else None
        options = self.trial_engine(proposal.key)
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
            recent_rows=self.spec.recent_rows,
            recent_share=self.spec.recent_share,
            lineage=trial_lineage(self.spec, self.folder, run_id, values),
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
            max_n = self.spec.space.max_extra
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

    def poll_orphans(self) -> None:
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

    def note_requeues(self) -> bool:
        """Ask ``sacct`` (one call, at most every :data:`REQUEUE_POLL_S` seconds) which running
        trials' Slurm jobs were requeued, and put each one's new attempt in its view (the
        driver's lines say it: :class:`~pomlia_hpc.automl.study.view.TrialLog`). Returns
        whether a view changed."""
        ids = {
            a.handle.record_id: r
            for r, a in self.active.items()
            if a.handle.backend == "slurm" and a.handle.record_id is not None
        }
        if not ids or time.monotonic() - self._requeues_polled < REQUEUE_POLL_S:
            return False
        self._requeues_polled = time.monotonic()
        changed = False
        for job_id, attempt in job_attempts(self.registry, list(ids)).items():
            view = self.views.get(ids[job_id])
            if view is not None and attempt > view.attempt:
                self.views[view.run_id], changed = replace(view, attempt=attempt), True
        return changed

    def collect(self, opt: SearchOptimizer, act: ActiveTrial) -> None:
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
            self.settle_attempt(act)
            cause = exc.cause
            error = f"{exc.state}: {cause}\n\n{exc.traceback or ''}".rstrip()
            if exc.state == "CANCELLED":  # a user's (or its driver's) cancel: one line
                error = cause
            self.record_crash(
                opt,
                act.run_id,
                act.proposal,
                cause,
                error,
                job_wall_s(self.registry, act),
                state=exc.state,
            )
            damage = integrity_failure(exc.traceback or str(exc))
            if damage is not None:
                # Every trial reads the same data: stop the study (nothing trained on damaged
                # data is registered) rather than let each trial crash on the same chunk.
                self.emit()  # the table's last frame shows this trial crashed, not running
                raise damage from exc
            return
        self.settle_attempt(act)
        self.record_ok(opt, act.run_id, act.proposal, result, job_wall_s(self.registry, act))

    def settle_attempt(self, act: ActiveTrial) -> None:
        """Put the attempt the ended job of ``act`` ran last in its view: a short last attempt
        can start and end between two :meth:`note_requeues` polls (or a poll's ``sacct`` can
        time out under load), and its requeue was then never said."""
        view = self.views.get(act.run_id)
        attempt = recorded_attempt(self.registry, act.handle.record_id)
        if view is not None and attempt > view.attempt:
            self.views[act.run_id] = replace(view, attempt=attempt)

    def record_ok(
        self,
        opt: SearchOptimizer,
        run_id: int,
        proposal: Proposal,
        result: dict[str, Any],
        wall_s: float,
    ) -> None:
        """Record a trial's result; ``wall_s``: its job's wall time (:func:`trial_wall_s`), the
        run's cost; the training call's own seconds go to ``metrics["train_s"]``."""
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
            "train_s": float(result["cost_s"]),  # the training call, without the job's start-up
            "gpu_hours": result.get("gpu_hours", 0.0),
            "device": result.get("device"),
            "model_path": result.get("model_path"),
            "n_train": result.get("n_train"),
            "n_extra": result.get("n_extra", 0),  # may be fewer than the configured extra_n
            "init_loaded": result.get("init_loaded"),
            "history": result.get("history", []),
            "software": result.get("software", {}),  # the versions a repeat of it needs
        }
        records.finish_run(
            self.registry,
            run_id,
            status=records.OK,
            metrics=metrics,
            cost_s=wall_s,
        )
        opt.tell(proposal, cost, crashed=False, time_s=wall_s)
        self.tell_waiting(proposal, cost, crashed=False)
        self.views[run_id] = replace(
            self.views[run_id],
            status=records.OK,
            objective=objective,
            test=test.get(self.spec.metric),
            **split_counts(val, test),
            cost_s=wall_s,
            cause="",
            start_epoch=int(result["start_epoch"]),
        )

    def record_crash(
        self,
        opt: SearchOptimizer,
        run_id: int,
        proposal: Proposal,
        cause: str,
        error: str,
        wall_s: float,
        state: str = "FAILED",
    ) -> None:
        old = self.views.get(run_id)
        start = old.start_epoch if old else 0
        # A cancelled job is no failure of its configuration (the recommender's run stats do
        # not count it); the optimiser is still told it crashed, so that the search moves on.
        status = records.CANCELLED if state == "CANCELLED" else records.CRASHED
        if status == records.CANCELLED:
            self.cancelled.add(run_id)
        records.finish_run(
            self.registry,
            run_id,
            status=status,
            metrics={"cause": cause, "state": state, "start_epoch": start},
            cost_s=wall_s,
            error=error,
        )
        opt.tell(proposal, 1.0, crashed=True, time_s=wall_s)
        self.tell_waiting(proposal, 1.0, crashed=True)
        self.views[run_id] = TrialView(
            run_id,
            proposal.key,
            records.config_summary(proposal.values),
            proposal.epochs,
            status,
            None,
            None,
            wall_s,
            old.job if old else "",
            cause,
            start,
            proposal.origin == FINAL_ORIGIN,
            old.attempt if old else 1,
        )

    # -- repeated proposals ----------------------------------------------------------------
    def answer_repeat(self, opt: SearchOptimizer, proposal: Proposal) -> bool:
        """A (configuration, epochs) this study already trained is not trained again: the
        optimiser is told the recorded result (or, while it still trains, told when it ends).
        Returns whether ``proposal`` was such a repeat."""
        key, epochs = proposal.key, proposal.epochs
        done = [v for v in self.views.values() if v.key == key and v.epochs == epochs]
        if not done:  # trained further already (a warm start's first configuration): its
            # result answers; training it again would clash with its later checkpoint, and
            # so would a second job beside it while it still trains (a resumed driver that
            # reattached to the warm start's job), so that one's outcome answers when it ends
            done = [
                v
                for v in self.views.values()
                if v.key == key
                and v.epochs > epochs
                and (
                    v.status in (records.OK, records.CRASHED, records.CANCELLED)
                    or v.run_id in self.active
                    # out when this (resumed) driver began: settled after the optimiser's
                    # running trials (recover_untracked), its outcome tells this one then
                    or v.status in (records.RUNNING, records.PENDING)
                )
            ]
        if not done:
            self.repeats = 0
            return False
        self.repeats += 1
        view = done[-1]
        if view.status == records.OK:
            cost = objective_cost({self.spec.metric: view.objective}, self.spec.metric)
            opt.tell(proposal, cost, crashed=False, time_s=0.0)
        elif view.status in (records.CRASHED, records.CANCELLED):
            opt.tell(proposal, 1.0, crashed=True, time_s=0.0)
        else:  # told when the trial it repeats ends (tell_waiting: by that trial's epochs)
            self.waiting.setdefault((key, view.epochs), []).append((opt, proposal))
        return True

    def tell_waiting(self, proposal: Proposal, cost: float, crashed: bool) -> None:
        """Tell the repeats of ``proposal`` that waited for it its outcome, each to its own
        optimiser."""
        for opt, repeat in self.waiting.pop((proposal.key, proposal.epochs), []):
            opt.tell(repeat, cost, crashed=crashed, time_s=0.0)

    # -- the view --------------------------------------------------------------------------
    @property
    def trials(self) -> dict[int, TrialView]:
        """The trials this driver knows, by run id (the live dict the driver updates)."""
        return self.views

    def best(self) -> TrialView | None:
        """The finished trial with the best validation metric (ties: more epochs, earlier)."""
        ok = [
            v
            for v in self.views.values()
            if v.status == records.OK and v.objective is not None and math.isfinite(v.objective)
        ]
        if not ok:
            return None
        return max(ok, key=lambda v: (v.objective, v.epochs, -v.run_id))

    def view(self) -> StudyView:
        return StudyView(
            self.spec.name,
            self.spec.metric,
            [self.views[k] for k in sorted(self.views)],
            self.best(),
            self.spent(),
            self.spec.options.n_trials,
            self.spec.options.budget_epochs,
            run_epochs=self.epochs_run(),
        )

    def emit(self) -> None:
        self.liveness.beat()  # the driver loop emits at least every few seconds
        if self.on_update is not None:
            self.on_update(self.view())
