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
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.cluster import Checkpointable, Executor
from pomlia_hpc.cluster.records import (
    own_job_id,
    recorded_as_of,
    refresh_jobs,
    refresh_jobs_within,
)
from pomlia_hpc.cluster.refusal import pending_words
from pomlia_hpc.cluster.terminate import cancel_children_on_stop, quiet_cancellation
from pomlia_hpc.config import ClusterProfile, load_cluster_profile
from pomlia_hpc.errors import ConfigError, InputError, NotFoundError, PomliaError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.pipeline.lock import pipeline_held, pipeline_lock
from pomlia_hpc.pipeline.spec import PipelineSpec, load_pipeline, parse_pipeline
from pomlia_hpc.pipeline.stage import (
    PlannedJob,
    Stage,
    StageContext,
    content_key,
    is_fresh,
    now,
    pipeline_dir,
    read_json,
    resources_of,
    run_reason,
    run_stage,
    stage_key,
)
from pomlia_hpc.pipeline.stages import active_stages
from pomlia_hpc.progress import say
from pomlia_hpc.registry import Job, Registry, shown_url
from pomlia_hpc.vocab import FINAL_STATES
from pomlia_hpc.workspace import Workspace

SPEC_SNAPSHOT = "spec.json"
RUN_FILE = "run.json"


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
    """What running ``ctx.spec`` with ``profile_name`` would do, without doing any of it.
    ``in_process``: run the stages in this process even on Slurm (inside a driver job such
    as ``jobs/pipeline.sbatch``); their own jobs still go to the profile's cluster."""
    spec = ctx.spec
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


def snapshot_spec(ctx: StageContext, data: dict[str, Any], source: str) -> Path:
    """Keep the file as validated, so stage jobs read what was submitted even if it changes."""
    path = ctx.folder / SPEC_SNAPSHOT
    write_json_atomic(
        path, {"data": data, "source": source, "base_dir": str(ctx.spec._base_dir)}, sort_keys=True
    )
    return path


def load_snapshot(path: Path) -> PipelineSpec:
    snap = json.loads(path.read_text())
    return parse_pipeline(snap["data"], snap["source"], Path(snap["base_dir"]))


def run_in_process(ctx: StageContext, plan: Plan) -> dict[str, str]:
    """Run the plan's stages here, in order; returns stage → skipped/done."""
    outcome: dict[str, str] = {}
    with pipeline_lock(ctx.folder), cancel_children_on_stop():
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
    """Submit the plan's stages as Slurm jobs (chain or driver); returns stage → job info."""
    check_not_running(ctx)
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


def _run_job_ids(folder: Path) -> list[int]:
    """The registry ids of the stage (or driver) jobs of the pipeline's last submission."""
    run = read_json(folder / RUN_FILE) or {}
    ids = [int(v["job"]) for v in run.get("stages", {}).values() if v.get("job") is not None]
    return sorted(set(ids))


def live_jobs(ctx: StageContext) -> tuple[list[Job], str | None]:
    """The jobs of this pipeline's last submission that are still queued or running (their
    states refreshed from the scheduler first), and None; or, when ``sacct`` did not answer
    within the workspace's ``list_sacct_timeout_s`` seconds, those recorded so and why."""
    ids = _run_job_ids(ctx.folder)
    if not ids:
        return [], None
    problem = refresh_jobs_within(ctx.registry, ids, timeout_s=ctx.workspace.list_sacct_timeout_s)
    with ctx.registry.session() as s:
        rows = s.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id))
        return [r for r in rows if r.state not in FINAL_STATES], problem


def _described(jobs: list[Job]) -> str:
    return ", ".join(f"{r.name} ({r.scheduler_id}, {r.state})" for r in jobs)


def same_submission(ctx: StageContext, data: dict[str, Any], profile_name: str) -> bool:
    """Whether the last submission ran this file's content (``data``, the YAML mapping) with
    the profile ``profile_name``: running the same command again re-attaches to it."""
    run = read_json(ctx.folder / RUN_FILE) or {}
    snap = read_json(ctx.folder / SPEC_SNAPSHOT) or {}
    return run.get("profile") == profile_name and content_key(snap.get("data")) == content_key(data)


def check_not_running(ctx: StageContext) -> None:
    """Refuse to submit while jobs of this pipeline's last submission are still queued or
    running (a second chain would run the same stages twice)."""
    live, _ = live_jobs(ctx)  # unconfirmed ones count: a second chain would be worse
    if live:
        raise PomliaError(
            f"pipeline '{ctx.spec.name}' has jobs queued or running: {_described(live)}",
            hint=f"wait for them (pomlia pipeline status {ctx.spec.name}), or cancel them: "
            f"pomlia pipeline cancel {ctx.spec.name}",
        )


def cancel_pipeline(workspace: Workspace, registry: Registry, name: str) -> list[Job]:
    """Cancel the queued and running stage (or driver) jobs of pipeline ``name``'s last
    submission (``scancel``; a running stage job cancels the jobs it submitted) and record
    them CANCELLED; returns the jobs it cancelled (none: nothing was running)."""
    from pomlia_hpc.cluster.cancel import cancel_recorded_job

    if name not in known_pipelines(workspace):
        raise NotFoundError(
            f"pipeline '{name}' has not run in {workspace.home} "
            f"(known: {', '.join(known_pipelines(workspace)) or 'none'})"
        )
    ids = _run_job_ids(pipeline_dir(workspace, name))
    if ids:
        refresh_jobs(registry, ids)
    with registry.session() as s:
        rows = list(s.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id.desc())))
    cancelled = []
    # The waiting ones first: a cancelled running stage would otherwise make Slurm drop its
    # dependants (kill-on-invalid-dep) while this loop still goes through them.
    for row in sorted(rows, key=lambda r: r.state == "PENDING", reverse=True):
        if row.state not in FINAL_STATES and cancel_recorded_job(registry, row.id) is None:
            cancelled.append(row)
    return cancelled


# -- status ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageStatus:
    """One row of ``pomlia pipeline status``."""

    stage: str
    state: str  # done, stale, failed, cancelled, requeued, running, interrupted, pending, not run
    job: int | None = None
    #: Whether ``job`` is the stage's own job (whose log tells the stage's story), not the
    #: last job the stage submitted from a process that ran it here.
    stage_job: bool = False
    #: The jobs the stage submitted, in words: ``array 61 (2 tasks)``, ``jobs 19, 20``.
    children: str = ""
    scheduler_id: str = ""
    job_state: str = ""
    started_at: str = ""
    ended_at: str = ""
    detail: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    #: Why ``job_state`` (so the state) is the recorded one ("sacct did not answer within 15 s"),
    #: confirmed by Slurm at ``as_of`` (UTC); "" and None when it is current.
    unsure: str = ""
    as_of: datetime | None = None


_BAD_END = frozenset({"CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"})

#: The detail of a stage whose record says running while no process runs the pipeline.
INTERRUPTED_DETAIL = (
    "the process that ran it is gone (killed before it could record an end); run the "
    "pipeline again to resume it"
)


def pipeline_status(ctx: StageContext) -> list[StageStatus]:
    """Each stage's record, its current freshness and its job's state (refreshed). The job is
    the stage's own job (Slurm chain or driver), else the last job the stage submitted from
    here (a local run's training, say). ``sacct`` may take the workspace's
    ``list_sacct_timeout_s`` seconds; then unfinished Slurm jobs keep their recorded states,
    marked ``unsure``."""
    run = read_json(ctx.folder / RUN_FILE) or {}
    run_stages = run.get("stages", {})
    stages = active_stages(ctx.spec)
    records = {st.name: ctx.record(st.name) or {} for st in stages}
    stage_ids = [int(v["job"]) for v in run_stages.values() if v.get("job") is not None]
    # The stage job that wrote a record (a stage skipped by the last submission ran in an
    # earlier one's job, which run.json no longer names).
    rec_ids = [int(r["job"]) for r in records.values() if r.get("job") is not None]
    ids = stage_ids + rec_ids + [int(j) for r in records.values() for j in r.get("jobs") or ()]
    rows: dict[int, Job] = {}
    problem = None
    timeout_s = ctx.workspace.list_sacct_timeout_s
    if ids:
        problem = refresh_jobs_within(ctx.registry, ids, timeout_s=timeout_s)
        with ctx.registry.session() as s:
            rows = {r.id: r for r in s.scalars(select(Job).where(Job.id.in_(ids)))}
    queued = [rows[i] for i in stage_ids if i in rows and rows[i].state == "PENDING"]
    # A Slurm too busy for sacct is too busy for squeue: the reasons are left out then.
    asked = [r.scheduler_id for r in queued if r.backend == "slurm" and problem is None]
    waiting = pending_words(asked, timeout_s=timeout_s)
    out = []
    behind: list[str] = []  # stages not done as the file is now: what needs them is stale too
    for stage in stages:
        rec = records[stage.name]
        info = run_stages.get(stage.name, {})
        stage_job = rows.get(int(info["job"])) if info.get("job") is not None else None
        state, detail = _stage_state(ctx, stage, rec, stage_job, run, behind)
        own = [rows[int(j)] for j in rec.get("jobs") or () if int(j) in rows]
        run_job = stage_job
        if stage_job is None and rec.get("job") is not None:
            stage_job = rows.get(int(rec["job"]))
        job = stage_job if stage_job is not None else (own[-1] if own else None)
        if run_job is not None and state not in ("done", "stale") and not _this_run(rec, run):
            # An earlier run's record: its times say nothing about this run's job (queued,
            # running, or cancelled before it started).
            rec = {}
        if state != "done":
            behind.append(stage.name)
        detail = detail or str(
            rec.get("error") or (job.exit_cause if job is not None else "") or ""
        )
        if state == "pending" and job is not None:
            detail = waiting.get(job.scheduler_id, detail)  # held, resources, dependency ...
        at_slurm = job is not None and job.backend == "slurm" and job.state not in FINAL_STATES
        unsure = problem if at_slurm else None  # its recorded state stands, unconfirmed
        out.append(
            StageStatus(
                stage=stage.name,
                state=state,
                job=job.id if job is not None else None,
                stage_job=stage_job is not None,
                children=children_words(own) if rec else "",
                scheduler_id=_scheduler_words(job, stage_job is not None),
                job_state=job.state if job is not None else "",
                started_at=str(rec.get("started_at", "")),
                ended_at=str(rec.get("ended_at", "")),
                detail=detail[:200],
                outputs=dict(rec.get("outputs", {})),
                unsure=unsure or "",
                as_of=recorded_as_of(job) if unsure and job is not None else None,
            )
        )
    return out


def _scheduler_words(job: Job | None, own: bool) -> str:
    """The scheduler's id of a stage's ``job``: an array's, not one task's, for a job the
    stage submitted (``own``: the stage's own job)."""
    if job is None:
        return ""
    return job.array_job_id if not own and job.array_job_id else job.scheduler_id


def children_words(jobs: list[Job]) -> str:
    """The jobs a stage submitted, in words for ``pipeline status``: an array as its Slurm id
    and task count (``array 61 (2 tasks)``), other jobs by registry id (``jobs 19, 20``)."""
    arrays: dict[str, int] = {}
    single: list[str] = []
    for j in jobs:
        if j.array_job_id:
            arrays[j.array_job_id] = arrays.get(j.array_job_id, 0) + 1
        else:
            single.append(str(j.id))
    words = [f"array {a} ({n} task{'s' if n != 1 else ''})" for a, n in arrays.items()]
    if single:
        words.append(f"job{'s' if len(single) != 1 else ''} {', '.join(single)}")
    return "; ".join(words)


def _stage_state(
    ctx: StageContext,
    stage: Stage,
    rec: dict[str, Any],
    job: Job | None,
    run: dict[str, Any],
    behind: list[str],
) -> tuple[str, str]:
    """A stage's state in ``pipeline status`` and, for a stale one, why (else ""), from its
    record ``rec``, its stage job ``job`` of the last submission ``run`` and the stages before
    it that are not done (``behind``)."""
    state = str(rec.get("status", "not run"))
    detail = ""
    upstream = [n for n in stage.needs if n in behind]
    if state == "done" and upstream:
        state = "stale"  # its inputs will change when the stages it needs run again
        which = "which is" if len(upstream) == 1 else "which are"
        detail = f"needs {', '.join(upstream)}, {which} not up to date"
    elif state == "done" and not is_fresh(ctx, stage):
        state = "stale"  # the file or an upstream output changed since
        why = run_reason(ctx, stage) or "its inputs changed"
        detail = why if why.endswith("gone") else f"{why} since it ran ({rec.get('ended_at')})"
    if job is not None and job.state not in FINAL_STATES and not _this_run(rec, run):
        # Submitted and not ended: never "not run" (nor an old record's state) meanwhile. In
        # driver mode one job runs the stages in turn: one not started yet waits.
        waiting = job.state == "PENDING" or run.get("mode") == "driver"
        state = "pending" if waiting else "running"
    if job is not None and job.state == "CANCELLED" and state != "done":
        # scancel-ed, queued or running (a "failed" record of a cancellation is older)
        state = "cancelled"
        detail = "" if _this_run(rec, run) else "its job was cancelled before it started"
    elif job is not None and job.state in _BAD_END and state not in ("done", "failed"):
        # A stage job killed mid-run never wrote "failed"; one never started was cancelled.
        state = "failed" if rec.get("status") == "running" else "cancelled"
    at_work = job is not None and job.state not in FINAL_STATES
    if state == "running" and not at_work and not pipeline_held(ctx.folder):
        # Recorded running, no job at work and nobody holds the pipeline's lock: its driver
        # was killed (SIGKILL, a lost node) before it could record an end.
        state, detail = "interrupted", INTERRUPTED_DETAIL
    return state, detail


def _this_run(rec: dict[str, Any], run: dict[str, Any]) -> bool:
    """Whether stage record ``rec`` is of the last submission ``run`` (not an earlier one's),
    so that it, not the queued job, says what the stage did."""
    return str(rec.get("started_at", "")) >= str(run.get("submitted_at", "~"))


def status_spec(workspace: Workspace, name_or_file: str | None) -> PipelineSpec:
    """The spec ``pomlia pipeline status`` compares the stage records with, for a pipeline
    name or file (``None``: the only pipeline of ``workspace``).

    Both answer the same: the pipeline file as it is now, so a stage whose part of the file
    changed since it ran is ``stale`` whichever was given; a pipeline that has not run in
    ``workspace`` is a :class:`NotFoundError` either way. A name reads the file its last run
    was started from (kept in the snapshot) when that file is still there and still names
    the pipeline; otherwise the snapshot, the file as it ran."""
    known = known_pipelines(workspace)
    if name_or_file is not None and Path(name_or_file).suffix in (".yaml", ".yml"):
        given = load_pipeline(name_or_file)
        if given.name not in known:  # as for its name: nothing has run to show
            raise NotFoundError(
                f"pipeline '{given.name}' ({name_or_file}) has not run in {workspace.home} "
                f"(known: {', '.join(known) or 'none'}); start it with `pomlia pipeline run "
                f"{name_or_file}`"
            )
        return given
    if name_or_file is None:
        if len(known) != 1:
            raise InputError(
                f"{len(known)} pipelines in {workspace.home} ({', '.join(known) or 'none'}): "
                "name one (pomlia pipeline status NAME or FILE)"
            )
        name_or_file = known[0]
    if name_or_file not in known:
        raise NotFoundError(
            f"pipeline '{name_or_file}' has not run in {workspace.home} "
            f"(known: {', '.join(known) or 'none'}); start it with `pomlia pipeline run FILE`"
        )
    path = workspace.path("pipelines", name_or_file, SPEC_SNAPSHOT)
    snap = json.loads(path.read_text())
    source = Path(snap["base_dir"]) / Path(snap["source"]).name
    if source.is_file():
        try:
            spec = load_pipeline(source)
        except ConfigError:
            spec = None  # the file was edited into something invalid: the snapshot answers
        if spec is not None and spec.name == name_or_file:
            return spec
    return load_snapshot(path)


def known_pipelines(workspace: Workspace) -> list[str]:
    root = workspace.path("pipelines")
    return (
        sorted(p.name for p in root.iterdir() if (p / SPEC_SNAPSHOT).is_file())
        if root.is_dir()
        else []
    )


def context_for(
    workspace: Workspace,
    registry: Registry,
    spec: PipelineSpec,
    log: Callable[[str], None] = print,
) -> StageContext:
    return StageContext(spec, workspace, registry, log=log)
