"""What the live table shows of a study, and what a finished study returns."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from pomlia_hpc.automl import records
from pomlia_hpc.cluster.handle import requeue_note
from pomlia_hpc.cluster.records import attempts_run
from pomlia_hpc.registry import Job, Registry, Run
from pomlia_hpc.vocab import RunStatus

#: The statuses of a trial that has ended.
ENDED = (RunStatus.OK, RunStatus.CRASHED, RunStatus.CANCELLED)

#: The ``origin`` recorded with the final training of the best configuration: a job on top of
#: ``--trials``, which the progress shows as its own stage rather than as one more trial.
FINAL_ORIGIN = "Final: the best configuration at the full budget"


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
    #: The registry's job id (what `pomlia jobs show/cancel` take), "" before a job exists.
    job: str
    cause: str = ""
    start_epoch: int = 0
    #: The final training of the best configuration (not one of ``--trials``).
    final: bool = False
    #: The attempt its Slurm job runs (or ran last): 2 and more after a requeue.
    attempt: int = 1
    #: The images its validation and test metrics were computed on (None: not recorded).
    val_n: int | None = None
    test_n: int | None = None


@dataclass(frozen=True)
class StudyView:
    """A snapshot of a running study for the live table."""

    name: str
    metric: str
    trials: list[TrialView]
    best: TrialView | None
    #: Epochs given out to trials (what ``--budget-epochs`` limits).
    spent_epochs: int
    n_trials: int
    budget_epochs: int | None
    #: Epochs the trials actually finished (a trial cancelled early counts what it ran).
    run_epochs: int = 0

    @property
    def search(self) -> list[TrialView]:
        """The trials of the search (``--trials``), without the final training."""
        return [t for t in self.trials if not t.final]

    @property
    def final_trial(self) -> TrialView | None:
        """The final training of the best configuration, once it started, else None."""
        return next((t for t in reversed(self.trials) if t.final), None)

    def final_stage(self) -> str:
        """``final training of run 5 to 27 epochs (run 7)`` (with its status once it ended)
        while or after the best configuration (run 5's) trains on to the full budget, else
        ""."""
        final = self.final_trial
        if final is None:
            return ""
        # The run it continues: the search's longest (then best) training of the configuration.
        same = [t for t in self.search if t.key == final.key]
        source = (
            max(same, key=lambda t: (t.epochs, _value(t.objective))).run_id
            if same
            else final.run_id
        )
        ended = f": {final.status}" if final.status in ENDED else ""
        epochs = f"{final.epochs} epoch{'s' if final.epochs != 1 else ''} (run {final.run_id})"
        return f"final training of run {source} to {epochs}{ended}"


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
    #: Epochs the trials actually finished (not the budget they were given).
    spent_epochs: int
    #: Seconds this driver ran (a resume of a finished study: about 0).
    wall_s: float
    #: Seconds from the study's first trial start to its last trial end, over every driver
    #: that ran it (None: no trial recorded a time).
    elapsed_s: float | None = None
    #: Why the best trial's model was not registered (its name taken by another model), or "".
    model_refused: str = ""
    #: Trials whose job was cancelled (not counted as crashed).
    n_cancelled: int = 0
    #: The model id (and its run) when an earlier driver of this study had registered it
    #: already (a resume of a finished study): kept unchanged, nothing registered now.
    kept_model_id: int | None = None
    kept_model_run_id: int | None = None


def _value(objective: float | None) -> float:
    """An objective for ordering: a missing or undefined one below every value."""
    return -math.inf if objective is None or math.isnan(objective) else objective


def job_name(study: str, run_id: int) -> str:
    """The name of trial run ``run_id``'s job (how a resumed driver finds it)."""
    return f"automl-{study}-{run_id}"


def view_of_run(registry: Registry, run: Run, metric: str) -> TrialView:
    """The view of a trial recorded as ``run`` (by a driver before this one, or this one)."""
    m = dict(run.metrics or {})
    values = {k: v for k, v in (run.config or {}).items()}
    job = records.job_of(registry, run.job_id)
    return TrialView(
        run.id,
        str(values.get("config_key", "")),
        records.config_summary(values),
        int(run.budget or 0),
        run.status,
        m.get("val", {}).get(metric),
        m.get("test", {}).get(metric),
        records.job_run_cost_s(run, job),
        str(job.id) if job else "",
        str(m.get("cause", "")),
        int(m.get("start_epoch", 0)),
        values.get("origin") == FINAL_ORIGIN,
        job_attempt(job),
        **split_counts(m.get("val"), m.get("test")),
    )


def job_attempt(job: Job | None) -> int:
    """The attempt Slurm job row ``job`` runs, or ran last, as recorded (1: no row, or a job of
    another backend)."""
    return attempts_run(job) if job is not None and job.backend == "slurm" else 1


def recorded_attempt(registry: Registry, job_id: int | None) -> int:
    """:func:`job_attempt` of the job row ``job_id``, read from ``registry``."""
    return job_attempt(records.job_of(registry, job_id))


class SplitCounts(TypedDict):
    """The image counts of a trial's view (:class:`TrialView`'s ``val_n``, ``test_n``)."""

    val_n: int | None
    test_n: int | None


def split_counts(val: Any, test: Any) -> SplitCounts:
    """``val_n`` and ``test_n`` of a trial's view: the image counts its recorded validation
    and test metrics hold (None where not recorded)."""
    return SplitCounts(val_n=_count(val), test_n=_count(test))


def _count(split: Any) -> int | None:
    """The image count ``n`` a split's recorded metrics hold, or None."""
    n = split.get("n") if isinstance(split, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def trial_line(trial: TrialView, metric: str) -> str:
    """One trial as a plain log line: ``run 3 small_cnn lr=1.0e-03 adamw bs=64, 9 epochs: ok
    val acc 0.912`` (and the cause of a crash)."""
    value = trial.objective
    val = f" val {metric} {value:.3f}" if value is not None and not math.isnan(value) else ""
    # Whole words: a cut at 120 characters ended the give-up cause in "...; raise ti)".
    status, cause = trial.status, textwrap.shorten(trial.cause, 240, placeholder=" ...")
    if cause.startswith(status):  # "cancelled (scancel or preemption)": said once, not twice
        status, cause = cause, ""
    cause = f" ({cause})" if cause else ""
    epochs = f"{trial.epochs} epoch{'s' if trial.epochs != 1 else ''}"  # not "1 epochs"
    return f"run {trial.run_id} {trial.summary}, {epochs}: {status}{val}{cause}"


class TrialLog:
    """An ``on_update`` for :func:`~pomlia_hpc.automl.study.run_study` that logs one line each
    time a trial changes status (submitted, ok, crashed) through ``log``, with how many trials
    have ended unless ``counts`` is off (a caller that shows them otherwise), so that a study
    run by a pipeline or the loop shows its progress in their output (a Slurm output file)
    rather than nothing until it ends."""

    def __init__(self, log: Callable[[str], None], prefix: str = "", counts: bool = True) -> None:
        self.log, self.prefix, self.counts = log, prefix, counts
        self._seen: dict[int, str] = {}
        self._attempts: dict[int, int] = {}

    def requeues(self, view: StudyView) -> list[str]:
        """A line for each running trial whose Slurm job was requeued since the last view
        (``run 3 small_cnn ..., 9 epochs: job 12 requeued (attempt 2 of 4 ...)``, as
        ``fingerprint train`` says it of its job); the trial's own log says where it resumed."""
        lines = []
        for t in view.trials:
            # A trial seen running before may have been requeued and ended between two views
            # (a short last attempt): its requeue is said before its end, not lost. A trial
            # never seen running (a resumed driver's view of old trials) says none.
            watched = t.status == RunStatus.RUNNING or t.run_id in self._seen
            if watched and t.attempt > self._attempts.get(t.run_id, 1):
                job = f"job {t.job}" if t.job else "its job"
                epochs = f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}"
                note = requeue_note(t.attempt)
                lines.append(f"{self.prefix}run {t.run_id} {t.summary}, {epochs}: {job} {note}")
            self._attempts[t.run_id] = max(t.attempt, self._attempts.get(t.run_id, 1))
        return lines

    def __call__(self, view: StudyView) -> None:
        for line in self.requeues(view):
            self.log(line)
        changed = [t for t in view.trials if self._seen.get(t.run_id) != t.status]
        search = view.search
        ended = sum(x.status in ENDED for x in search)
        # the final training of the best comes on top of --trials: never "5/4 ended"
        tail = f" [{ended}/{max(view.n_trials, len(search))} ended]" if self.counts else ""
        for t in changed:
            self._seen[t.run_id] = t.status
            mark = " [final training]" if t.final and self.counts else tail
            self.log(f"{self.prefix}{trial_line(t, view.metric)}{mark}")
