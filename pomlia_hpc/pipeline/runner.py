"""Plan, run and watch a pipeline.

How stages run depends on the cluster profile's backend:

* ``local`` / ``debug``: in the calling process, one after the other; each stage submits its
  own work (training job, extraction array, trials) through the profile as usual.
* ``slurm``, ``execution.mode: chain`` (default): every stage that has to run becomes one small
  Slurm job (the stage's driver: 1 CPU by default), chained to the previous one with
  ``--dependency=afterok`` and ``--kill-on-invalid-dep=yes``; the command returns at once.
  A stage job submits its heavy work (GPU jobs, arrays) through the same profile and waits.
* ``slurm``, ``execution.mode: driver``: one requeue-safe job runs all stages in order.

Every stage is skipped when its outputs exist for the same inputs (see
:mod:`pomlia_hpc.pipeline.stage`), so running the same file again after a failure resumes at
the failed stage, and a requeued driver job continues where it stopped.

This module plans, runs and submits a pipeline and cancels its jobs; beside it,
:mod:`pomlia_hpc.pipeline.runfiles` keeps the submission's files (``spec.json``, ``run.json``)
and :mod:`pomlia_hpc.pipeline.status` says each stage's state. Their public names are
importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.cluster import Checkpointable, Executor
from pomlia_hpc.cluster.records import own_job_id, refresh_jobs_within
from pomlia_hpc.cluster.terminate import cancel_children_on_stop, quiet_cancellation
from pomlia_hpc.config import ClusterProfile, cluster_profile_ref, load_cluster_profile
from pomlia_hpc.errors import BusyError, ConfigError, NotFoundError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.lock import pipeline_lock, submission_lock
from pomlia_hpc.pipeline.runfiles import (
    RUN_FILE,
    SPEC_SNAPSHOT,
    known_pipelines,
    load_snapshot,
    run_job_ids,
    same_submission,
    snapshot_spec,
)
from pomlia_hpc.pipeline.spec import PipelineSpec
from pomlia_hpc.pipeline.stage import (
    PlannedJob,
    Stage,
    StageContext,
    is_fresh,
    now,
    pipeline_dir,
    resources_of,
    run_stage,
    stage_key,
)
from pomlia_hpc.pipeline.stages import active_stages
from pomlia_hpc.pipeline.status import StageStatus, pipeline_status, status_spec
from pomlia_hpc.progress import say
from pomlia_hpc.registry import Job, Registry, shown_url
from pomlia_hpc.vocab import FINAL_STATES
from pomlia_hpc.workspace import Workspace

__all__ = [
    "FINAL_STATES",
    "REGISTRY_ENV",
    "RUN_FILE",
    "SPEC_SNAPSHOT",
    "DriverJob",
    "Plan",
    "StageContext",
    "StageJob",
    "StagePlan",
    "StageStatus",
    "cancel_pipeline",
    "check_not_running",
    "context_for",
    "job_context",
    "known_pipelines",
    "live_jobs",
    "load_snapshot",
    "make_plan",
    "pipeline_status",
    "run_in_process",
    "same_submission",
    "snapshot_spec",
    "status_spec",
    "submit",
    "submit_file",
]


@dataclass(frozen=True)
class StagePlan:
    """One stage in a plan: ``action`` is ``skip`` (fresh outputs) or ``run``."""

    stage: Stage
    action: str
    key: str | None
    jobs: list[PlannedJob]


@dataclass(frozen=True)
class Plan:
    spec: PipelineSpec
    profile_name: str
    profile: ClusterProfile
    mode: str  # in-process, chain or driver
    stages: list[StagePlan]
    driver: PlannedJob | None = None  # the per-stage (chain) or whole-run (driver) job

    @property
    def gpu_hours(self) -> float:
        return sum(j.gpu_hours for sp in self.stages if sp.action == "run" for j in sp.jobs)

    @property
    def unknown_estimates(self) -> bool:
        return any(j.hours is None for sp in self.stages for j in sp.jobs)


def make_plan(ctx: StageContext, profile_name: str, *, in_process: bool = False) -> Plan:
    """What running ``ctx.spec`` with ``profile_name`` would do, without doing any of it
    (a profile's path made absolute: :func:`~pomlia_hpc.config.cluster_profile_ref`).
    ``in_process``: run the stages in this process even on Slurm (inside a driver job such
    as ``jobs/pipeline.sbatch``); their own jobs still go to the profile's cluster."""
    spec = ctx.spec
    # Recorded in run.json and given to every stage job, which starts in another folder
    profile_name = cluster_profile_ref(profile_name)
    profile = load_cluster_profile(profile_name)
    slurm = profile.backend == "slurm" and not in_process
    mode = spec.execution.mode if slurm else "in-process"
    plans: list[StagePlan] = []
    will_run: set[str] = set()
    for stage in active_stages(spec):
        fresh = not (set(stage.needs) & will_run) and is_fresh(ctx, stage)
        if not fresh:
            stage.check(spec)  # a bad input is said now, not after the stages before it ran
            # The needs that are skipped: their recorded outputs are what the stage will read.
            upstream = {n: ctx.outputs(n) for n in stage.needs if n not in will_run}
            stage.check_upstream(spec, upstream)
            stage.check_workspace(ctx)
            will_run.add(stage.name)
        plans.append(
            StagePlan(
                stage,
                "skip" if fresh else "run",
                stage_key(ctx, stage),
                stage.jobs(spec, profile),
            )
        )
    driver = None
    if mode != "in-process":
        res = resources_of(
            profile.model_copy(update={"gpus_per_node": 0}), spec.execution.resources
        )
        what = "stage job (one per stage, afterok)" if mode == "chain" else "driver job"
        n = len(will_run) if mode == "chain" else 1
        driver = PlannedJob(what, n, res, None)
    return Plan(spec, profile_name, profile, mode, plans, driver)


# -- running --------------------------------------------------------------------------------


def run_in_process(
    ctx: StageContext, plan: Plan, *, data: dict[str, Any] | None = None, source: str = ""
) -> dict[str, str]:
    """Run the plan's stages here, in order; returns stage → skipped/done. ``data``: the
    pipeline file's mapping, kept as the spec snapshot (:func:`snapshot_spec`, naming
    ``source``) once the pipeline's lock is held, so a run refused by the lock replaces
    nothing of the run that holds it."""
    outcome: dict[str, str] = {}
    with pipeline_lock(ctx.folder), cancel_children_on_stop():
        if data is not None:
            snapshot_spec(ctx, data, source)
        _write_run(ctx, plan, {})
        for sp in plan.stages:
            outcome[sp.stage.name] = run_stage(ctx, sp.stage)
    return outcome


#: The variable that carries the registry URL into stage and driver jobs (see :func:`submit`).
REGISTRY_ENV = "POMLIA_DB_URL"


@dataclass
class StageJob:
    """One stage as a cluster job (chain mode): rebuilds its context from the snapshot.
    ``registry``: the registry URL as shown (password hidden), to check the job's
    ``POMLIA_DB_URL`` against; the URL itself is never pickled into the job folder."""

    snapshot: str
    stage: str
    home: str
    registry: str
    profile: str

    def __call__(self) -> str:
        ctx = job_context(self.snapshot, self.home, self.registry, self.profile)
        stage = next(s for s in active_stages(ctx.spec) if s.name == self.stage)
        # scancel of this job: its child jobs (the stage's work) are cancelled with it
        own = own_job_id(ctx.registry)  # recorded with the stage: `pipeline status` shows it
        with quiet_cancellation(), pipeline_lock(ctx.folder), cancel_children_on_stop():
            return run_stage(ctx, stage, job_id=own)


class DriverJob(Checkpointable):
    """All stages in one job (driver mode). Requeue-safe: finished stages are skipped, and each
    stage resumes its own work (training from its checkpoint, extraction from done shards,
    a study from its saved state)."""

    def __init__(self, snapshot: str, home: str, registry: str, profile: str) -> None:
        self.args = (snapshot, home, registry, profile)  # registry: as StageJob's

    def __call__(self) -> dict[str, str]:
        ctx = job_context(*self.args)
        out: dict[str, str] = {}
        own = own_job_id(ctx.registry)
        with quiet_cancellation(), pipeline_lock(ctx.folder), cancel_children_on_stop():
            for stage in active_stages(ctx.spec):
                out[stage.name] = run_stage(ctx, stage, job_id=own)
        return out


def job_context(snapshot: str, home: str, registry: str, profile: str) -> StageContext:
    """The context of a stage job: the spec snapshot, the workspace and registry it ran with.
    The registry URL comes from the job's environment (``POMLIA_DB_URL``, set by
    :func:`submit`); ``registry`` is the submitter's, as shown, which it must match."""
    db_url = os.environ.get(REGISTRY_ENV, "")
    if not db_url:
        raise ConfigError(
            f"this pipeline job has no {REGISTRY_ENV} in its environment; expected the "
            f"registry {registry}, which `pipeline run` passes in the job's environment "
            "(a cluster profile or SBATCH_EXPORT that sets sbatch --export to NONE drops it)"
        )
    if shown_url(db_url) != registry:
        raise ConfigError(
            f"this pipeline job's {REGISTRY_ENV} names the registry {shown_url(db_url)}, "
            f"but the pipeline was submitted on {registry}; nothing was run"
        )
    ws = Workspace(home=Path(home), db_url=db_url, cluster_profile=profile)
    reg = Registry.open(db_url, busy_timeout_s=ws.sqlite_busy_timeout_s)
    return StageContext(load_snapshot(Path(snapshot)), ws, reg, log=say)


def submit(ctx: StageContext, plan: Plan, snapshot: Path) -> dict[str, dict[str, Any]]:
    """Submit the plan's stages as Slurm jobs (chain or driver), their spec the snapshot at
    ``snapshot``; returns stage → job info. Refused while jobs of the pipeline's last
    submission are queued or running; one submission of a pipeline at a time
    (:func:`~pomlia_hpc.pipeline.lock.submission_lock`)."""
    with submission_lock(ctx.folder, ctx.log):
        check_not_running(ctx)
        return _submit_jobs(ctx, plan, snapshot)


def submit_file(
    ctx: StageContext, plan: Plan, data: dict[str, Any], source: str
) -> dict[str, dict[str, Any]]:
    """:func:`submit` of the pipeline file ``source`` whose mapping is ``data``: its snapshot
    is replaced only once no job of the last submission is queued or running, under the
    submission lock (the stage jobs of a chain still queued read the snapshot when they
    start)."""
    with submission_lock(ctx.folder, ctx.log):
        check_not_running(ctx)
        return _submit_jobs(ctx, plan, snapshot_spec(ctx, data, source))


def _submit_jobs(ctx: StageContext, plan: Plan, snapshot: Path) -> dict[str, dict[str, Any]]:
    """The submission itself (the caller holds the submission lock and has checked that
    nothing of the pipeline is queued or running)."""
    submitted = now()  # before the first job: a stage's record of this run is not older
    ws = ctx.workspace
    ex = Executor(plan.profile, ws.jobs, ctx.registry)
    res = ctx.spec.execution.resources.as_overrides() or {}
    res.setdefault("gpus_per_node", 0)
    # The registry URL (its password) travels in the jobs' environment, not in their pickled
    # arguments: those stay in the job folder, readable by whoever can read the workspace.
    args = (str(snapshot), str(ws.home), shown_url(ws.db_url), plan.profile_name)
    env = {REGISTRY_ENV: ws.db_url}
    jobs: dict[str, dict[str, Any]] = {}
    if plan.mode == "driver":
        h = ex.submit(DriverJob(*args), name=f"pipeline-{ctx.spec.name}", resources=res, env=env)
        info = {"job": h.record_id, "scheduler_id": h.job_id}
        jobs = {sp.stage.name: info for sp in plan.stages if sp.action == "run"}
    else:
        previous = None
        for sp in plan.stages:
            if sp.action == "skip":
                continue
            job = StageJob(args[0], sp.stage.name, *args[1:])
            h = ex.submit(
                job,
                name=f"pipeline-{ctx.spec.name}-{sp.stage.name}",
                resources=res,
                after_ok=[previous] if previous is not None else [],
                env=env,
            )
            jobs[sp.stage.name] = {"job": h.record_id, "scheduler_id": h.job_id}
            previous = h
            # Recorded at once: a submission stopped before its last sbatch (one that failed,
            # Ctrl-C) left the jobs it had queued out of the run file, so the next run found
            # nothing queued and submitted a second chain, and `pipeline cancel` missed them.
            _write_run(ctx, plan, jobs, submitted)
    _write_run(ctx, plan, jobs, submitted)
    return jobs


def _write_run(
    ctx: StageContext, plan: Plan, jobs: dict[str, dict[str, Any]], submitted: str | None = None
) -> None:
    write_json_atomic(
        ctx.folder / RUN_FILE,
        {
            "pipeline": ctx.spec.name,
            "mode": plan.mode,
            "profile": plan.profile_name,
            "submitted_at": submitted or now(),
            # The stages in pipeline order (the report lists them so; "stages" is sorted).
            "order": [sp.stage.name for sp in plan.stages],
            "stages": {
                sp.stage.name: {"action": sp.action, **jobs.get(sp.stage.name, {})}
                for sp in plan.stages
            },
        },
        sort_keys=True,
    )


def live_jobs(ctx: StageContext) -> tuple[list[Job], str | None]:
    """The jobs of this pipeline's last submission that are still queued or running (their
    states refreshed from the scheduler first), and None; or, when ``sacct`` did not answer
    within the workspace's ``list_sacct_timeout_s`` seconds, those recorded so and why.
    A Slurm job that neither ``sacct`` nor ``squeue`` knows (accounting purged: ``squeue``
    lists every job queued or running, one just submitted too) is recorded ``LOST`` and
    said on ``ctx.log``: it blocked every later ``pipeline run`` until ``pipeline cancel``."""
    ids = run_job_ids(ctx.folder)
    if not ids:
        return [], None
    with ctx.registry.session() as s:
        q = select(Job.id).where(Job.id.in_(ids), Job.state.not_in(FINAL_STATES))
        unfinished = set(s.scalars(q))
    wait_s = ctx.workspace.list_sacct_timeout_s
    problem = refresh_jobs_within(ctx.registry, ids, timeout_s=wait_s, lost=True)
    with ctx.registry.session() as s:
        rows = list(s.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id)))
    for r in rows:
        if r.id in unfinished and r.state == "LOST":
            ctx.log(
                f"job {r.id} ({r.name}, Slurm {r.scheduler_id}) is known to neither sacct nor "
                "squeue (purged from accounting, or the controller's state was lost): "
                "recorded LOST, no longer counted as queued or running"
            )
    return [r for r in rows if r.state not in FINAL_STATES], problem


def _described(jobs: list[Job]) -> str:
    return ", ".join(f"{r.name} ({r.scheduler_id}, {r.state})" for r in jobs)


def check_not_running(ctx: StageContext) -> None:
    """Refuse to submit while jobs of this pipeline's last submission are still queued or
    running (a second chain would run the same stages twice): a :class:`BusyError` (exit 3).
    `pipeline run` answers jobs that were there when it started before its plan; it meets
    this refusal only when another `pipeline run` submitted them meanwhile."""
    live, _ = live_jobs(ctx)  # unconfirmed ones count: a second chain would be worse
    if live:
        raise BusyError(
            f"pipeline '{ctx.spec.name}' has jobs queued or running: {_described(live)}; "
            "nothing was submitted",
            hint=f"wait for them (pomlia pipeline status {ctx.spec.name}), or cancel them: "
            f"pomlia pipeline cancel {ctx.spec.name}",
        )


@dataclass(frozen=True)
class PipelineCancel:
    """What :func:`cancel_pipeline` did: the jobs it ``cancelled``; with ``sacct`` out of
    reach, why (``unconfirmed``: its error; the jobs were cancelled on ``squeue``'s word) and
    the unfinished jobs ``squeue`` no longer lists (``passed_over``: they have ended, their
    end recorded once ``sacct`` answers)."""

    cancelled: list[Job]
    unconfirmed: str | None = None
    passed_over: tuple[Job, ...] = ()


def cancel_pipeline(workspace: Workspace, registry: Registry, name: str) -> PipelineCancel:
    """Cancel the queued and running stage (or driver) jobs of pipeline ``name``'s last
    submission (``scancel``; a running stage job cancels the jobs it submitted) and record
    them CANCELLED (none cancelled: nothing was running). With ``sacct`` down, a job
    ``squeue`` lists is cancelled all the same and one it does not is passed over (it has
    ended; its end is recorded once ``sacct`` answers); ``sacct`` is asked once for all."""
    from pomlia_hpc.cluster.cancel import (
        NotQueuedError,
        cancel_refreshed_row,
        refresh_before_cancel,
    )

    if name not in known_pipelines(workspace):
        raise NotFoundError(
            f"pipeline '{name}' has not run in {workspace.home} "
            f"(known: {', '.join(known_pipelines(workspace)) or 'none'})"
        )
    ids = run_job_ids(pipeline_dir(workspace, name))
    unconfirmed = refresh_before_cancel(registry, ids) if ids else None
    with registry.session() as s:
        rows = list(s.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id.desc())))
    cancelled, passed = [], []
    # The waiting ones first: a cancelled running stage would otherwise make Slurm drop its
    # dependants (kill-on-invalid-dep) while this loop still goes through them.
    for row in sorted(rows, key=lambda r: r.state == "PENDING", reverse=True):
        if row.state in FINAL_STATES:
            continue
        try:
            if cancel_refreshed_row(registry, row.id, unconfirmed).ended is None:
                cancelled.append(row)
        except NotQueuedError:
            passed.append(row)  # it ended while sacct was down: nothing to cancel
    return PipelineCancel(cancelled, unconfirmed, tuple(passed))


def context_for(
    workspace: Workspace,
    registry: Registry,
    spec: PipelineSpec,
    log: Callable[[str], None] = print,
) -> StageContext:
    return StageContext(spec, workspace, registry, log=log)
