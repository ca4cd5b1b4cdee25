"""The driver: ask the optimiser for trials, submit up to ``parallel`` at a time, collect, tell,
until the trials or the epoch budget are used up and every trial is back."""

from __future__ import annotations

import shlex
import time

from ConfigSpace import Configuration

from pomlia_hpc.automl import records
from pomlia_hpc.automl.folders import study_finished
from pomlia_hpc.automl.optimizers import Proposal, RandomSearch, SearchOptimizer, SmacHyperband
from pomlia_hpc.automl.space import configs_from_values
from pomlia_hpc.automl.study.outcome import finish
from pomlia_hpc.automl.study.recover import RUN_ONLY_KEYS, recover_trial, recover_untracked
from pomlia_hpc.automl.study.spec import StudySpec
from pomlia_hpc.automl.study.trialjobs import trial_wall_s
from pomlia_hpc.automl.study.trials import TrialRunner, UpdateFn
from pomlia_hpc.automl.study.view import (
    ENDED,
    FINAL_ORIGIN,
    StudyResult,
    TrialView,
    view_of_run,
)
from pomlia_hpc.automl.trial import read_result
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

#: The ``origin`` recorded with the warm start's first training (:meth:`StudyRunner.
#: train_warm_start_first`).
WARM_ORIGIN = "Warm start: the first configuration at the full budget"

#: Repeated proposals answered in a row after which the driver stops asking (the optimiser
#: keeps proposing configurations that were already trained at that budget).
MAX_REPEATS = 50


class Untold:
    """The optimiser of the final full-budget training: the search is over, nothing to tell."""

    def ask(self) -> Proposal:
        raise RuntimeError("the final training asks nothing")

    def tell(self, proposal: Proposal, cost: float, *, crashed: bool, time_s: float) -> None:
        return None

    def running(self) -> list[Proposal]:
        return []


class StudyRunner(TrialRunner):
    """Run (or resume) one study: :class:`TrialRunner` with the ask, submit, collect, tell loop."""

    def optimizer(self, resume: bool, has_runs: bool = False) -> SearchOptimizer:
        """The study's optimiser, new or (``resume``) reloaded; ``has_runs``: the registry
        holds trials of this study."""
        initial: list[Configuration] = configs_from_values(
            self.spec.initial_configs, self.space, "initial configurations"
        )
        s = self.spec.options
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

    def run(self, resume: bool = False) -> StudyResult:
        """Run the study to its end (trials or epoch budget used up, all trials back). The
        study's ``driver.json`` says meanwhile that this process drives it, and when it stopped
        (:mod:`pomlia_hpc.automl.liveness`): ``pomlia runs list`` flags the running trials of a
        study whose driver is gone."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.liveness.driving(self.stop_line):
            return self.search(resume)

    def stop_line(self) -> str:
        """The driver's last line when a SIGTERM (``scancel``, the time limit) kills it: how
        far the study got and how to go on (its trials' jobs run on; a resume adopts them)."""
        search = [v for v in self.views.values() if not v.final]
        done = sum(v.status in ENDED for v in search)
        total = max(self.spec.options.n_trials, len(search))
        task, name = shlex.quote(self.spec.task), shlex.quote(self.spec.name)
        return (
            f"study {self.spec.name} stopped by a signal (SIGTERM: scancel, a time limit or "
            f"kill), {done} of {total} trials done; resume with "
            f"`pomlia automl run {task} --study {name} --resume`"
        )

    def search(self, resume: bool) -> StudyResult:
        """:meth:`run`'s work: ask, submit, collect and tell until the study is done."""
        t0 = time.perf_counter()
        runs = records.study_runs(self.registry, self.spec.name)
        opt = self.optimizer(resume, has_runs=bool(runs))
        for run in runs:  # oldest first: the newest run of a (configuration, epochs) wins
            self.views[run.id] = view_of_run(self.registry, run, self.spec.metric)
            key = str((run.config or {}).get("config_key", ""))
            self.known[(key, round(run.budget or 0))] = run
        if resume:
            running = opt.running()
            self.resume_warm_start(running)  # before the repeats that wait for it
            for proposal in running:
                recover_trial(self, opt, proposal)
            recover_untracked(self, Untold())
        self.emit()
        self.train_warm_start_first()
        last_emit = time.monotonic()
        while True:
            while len(self.active) < self.spec.options.parallel and self.may_ask():
                proposal = opt.ask()
                if resume:  # SMAC may ask again for a trial the registry already knows
                    recover_trial(self, opt, proposal)
                elif not self.answer_repeat(opt, proposal):
                    self.start(opt, proposal)
            if not self.active:
                break
            changed = self.note_requeues()
            self.poll_orphans()
            for run_id, act in list(self.active.items()):
                if act.handle.done():
                    del self.active[run_id]  # before collecting: a lost orphan is resubmitted
                    self.collect(act.optimizer or opt, act)
                    changed = True
            if changed or time.monotonic() - last_emit > 2.0:
                self.emit()
                last_emit = time.monotonic()
            if not changed:
                time.sleep(self.poll_s)
        if self.spec.final_full_budget:
            self.train_best_to_full_budget()
        result = finish(self, time.perf_counter() - t0)
        self.emit()
        return result

    def train_warm_start_first(self) -> None:
        """A SMAC study with a warm start trains its first initial configuration (the top
        recommendation, or the first of ``--initial``) at the full budget before the search.
        It was chosen from results on similar tasks: re-screening it at Hyperband's lowest rung
        would give the first full-budget model only after a whole bracket (15 of 27 epochs
        with budgets 3..9). It counts in the epoch budget; when SMAC later asks for it at a
        lower budget, the recorded result answers (:meth:`answer_repeat`). An epoch budget
        (``budget_epochs``) smaller than the full budget caps it: the first configuration then
        trains for what the budget leaves, and when that is less than Hyperband's lowest rung
        it is left to the search."""
        s, initial = self.spec.options, self.spec.initial_configs
        if s.optimizer != "smac" or not initial or s.min_epochs >= s.max_epochs:
            return
        config = configs_from_values(initial[:1], self.space, "initial configurations")
        key = Proposal(config[0], float(s.max_epochs)).key
        config[0].origin = WARM_ORIGIN
        stopped = self.stopped_warm_start(key)
        if stopped is not None:  # it goes on (from its checkpoint), under its own run
            self.run_untold(Proposal(config[0], float(stopped.epochs)), run_id=stopped.run_id)
            return
        if any(v.key == key and v.epochs >= s.max_epochs for v in self.views.values()):
            return  # trained already (a resumed study)
        epochs = s.max_epochs
        if s.budget_epochs is not None:
            epochs = min(epochs, s.budget_epochs - self.spent())
        if epochs < s.min_epochs or any(
            v.key == key and v.epochs >= epochs for v in self.views.values()
        ):
            return
        self.run_untold(Proposal(config[0], float(epochs)))

    def stopped_warm_start(self, key: str) -> TrialView | None:
        """The warm start's first training (configuration ``key``) when its driver stopped
        before it ended (its job cancelled with the driver, or never submitted) and before
        the search began: the study's only run, not out. Skipped, its configuration's
        lowest rung would be told it crashed, the top recommendation never trained."""
        views = list(self.views.values())
        if len(views) != 1:
            return None
        (view,) = views
        stopped = view.status in (records.CANCELLED, records.SUBMIT_FAILED)
        return view if stopped and view.key == key and view.run_id not in self.active else None

    def resume_warm_start(self, running: list[Proposal]) -> None:
        """The warm start's first training, recorded cancelled (or not submitted) while a
        repeat of its configuration at a lower budget waited for it (among the optimiser's
        ``running`` trials: a user's cancel seen by a driver would have told it): it goes on
        under its own run (or its result is recorded), and the repeat waits for it again.
        Answered from the cancelled run, the repeat was told it crashed."""
        for (key, epochs), run in list(self.known.items()):
            config = run.config or {}
            stopped = run.status in (records.CANCELLED, records.SUBMIT_FAILED)
            if config.get("origin") != WARM_ORIGIN or not stopped:
                continue
            if not any(p.key == key and p.epochs < epochs for p in running):
                continue
            values = {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}
            try:
                (warm,) = configs_from_values([values], self.space, f"run {run.id}")
            except PomliaError:
                continue  # not of this study's space: left as recorded
            warm.origin = WARM_ORIGIN
            proposal = Proposal(warm, float(epochs))
            del self.known[(key, epochs)]
            opt = Untold()
            if not self.adopt_result(opt, proposal, run.id):
                self.start(opt, proposal, run_id=run.id)

    def run_untold(self, proposal: Proposal, run_id: int | None = None) -> None:
        """Train ``proposal`` outside the optimiser's asks and wait for it; ``run_id``: the
        run it continues (a new one when None)."""
        opt = Untold()
        if run_id is not None and self.adopt_result(opt, proposal, run_id):
            self.emit()
            return
        self.start(opt, proposal, run_id=run_id)
        self.emit()
        while self.active:
            for run_id, act in list(self.active.items()):
                if act.handle.done():
                    del self.active[run_id]
                    self.collect(opt, act)
            if self.active:
                if self.note_requeues():
                    self.emit()
                self.liveness.beat()
                time.sleep(self.poll_s)
        self.emit()

    def adopt_result(self, opt: SearchOptimizer, proposal: Proposal, run_id: int) -> bool:
        """Record the result that run ``run_id`` (recorded cancelled or not submitted) left
        all the same, its job having finished just before the cancel, rather than train it
        again; whether there was one."""
        _, _, result_path = self.paths(proposal.key, proposal.epochs, run_id)
        result = read_result(result_path)
        if result is None:
            return False
        view = self.views.get(run_id)
        job_id = int(view.job) if view is not None and view.job else None
        wall = trial_wall_s(self.registry, job_id, result_path, default=float(result["cost_s"]))
        self.record_ok(opt, run_id, proposal, result, wall)
        return True

    def train_best_to_full_budget(self) -> None:
        """Train the best configuration on to ``max_epochs`` (from its checkpoint) when it
        stopped earlier; its run competes for "best" by validation metric like any other."""
        full = self.spec.options.max_epochs
        best = self.best()
        if best is None or best.epochs >= full:
            return
        tried = [v for v in self.views.values() if v.key == best.key and v.epochs >= full]
        if any(
            v.status in (records.OK, records.CRASHED) or not v.final or v.run_id in self.cancelled
            for v in tried
        ):
            # trained to the full budget already (and found worse on validation), a trial of
            # the search at it (told), or a final training a user cancelled while this
            # driver watched it
            return
        # A final training that never ended (cancelled with its driver, or never submitted)
        # never had its chance: it goes on, from its checkpoint, unless the study finished
        # without it (a user cancelled it, and a resume of a finished study only reports).
        again = next((v for v in reversed(tried) if v.epochs == full), None)
        if tried and study_finished(self.workspace, self.spec.name):
            return
        run = next(
            r for r in records.study_runs(self.registry, self.spec.name) if r.id == best.run_id
        )
        values = {
            k: v
            for k, v in (run.config or {}).items()
            if k not in ("config_key", "origin", "smac_budget", "engine")
        }
        config = configs_from_values([values], self.space, f"run {run.id}")[0]
        config.origin = FINAL_ORIGIN
        self.run_untold(Proposal(config, float(full)), run_id=again.run_id if again else None)

    def may_ask(self) -> bool:
        if self.repeats >= MAX_REPEATS:
            return False  # the optimiser keeps proposing what was already trained
        if len(self.views) >= self.spec.options.n_trials:
            return False
        return (
            self.spec.options.budget_epochs is None
            or self.spent() < self.spec.options.budget_epochs
        )


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
