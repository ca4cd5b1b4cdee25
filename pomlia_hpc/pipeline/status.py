"""``pomlia pipeline status``: each stage's state from its record, its freshness and its
jobs' states, and which pipeline file the records are compared with.

Read only: it refreshes job states from the scheduler but runs, submits and cancels nothing
(that is :mod:`pomlia_hpc.pipeline.runner`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.cluster.records import polled_still, recorded_as_of, refresh_jobs_within
from pomlia_hpc.cluster.refusal import pending_words
from pomlia_hpc.errors import ConfigError, InputError, NotFoundError
from pomlia_hpc.pipeline.lock import pipeline_held
from pomlia_hpc.pipeline.runfiles import RUN_FILE, SPEC_SNAPSHOT, known_pipelines, load_snapshot
from pomlia_hpc.pipeline.spec import PipelineSpec, load_pipeline
from pomlia_hpc.pipeline.stage import Stage, StageContext, is_fresh, read_json, run_reason
from pomlia_hpc.pipeline.stages import active_stages
from pomlia_hpc.registry import Job
from pomlia_hpc.vocab import FINAL_STATES
from pomlia_hpc.workspace import Workspace

#: The least time (s) worth giving squeue for the pending reasons after sacct.
MIN_SQUEUE_S = 0.1

__all__ = [
    "INTERRUPTED_DETAIL",
    "StageStatus",
    "children_words",
    "pipeline_status",
    "status_spec",
]


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
    marked ``unsure``. The ``squeue`` for the pending jobs' reasons gets what is left of that
    limit."""
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
    started = time.monotonic()
    if ids:
        # lost: a job Slurm forgot (accounting purged) showed queued or running for good
        problem = refresh_jobs_within(ctx.registry, ids, timeout_s=timeout_s, lost=True)
        with ctx.registry.session() as s:
            rows = {r.id: r for r in s.scalars(select(Job).where(Job.id.in_(ids)))}
    queued = [rows[i] for i in stage_ids if i in rows and rows[i].state == "PENDING"]
    # A Slurm too busy for sacct is too busy for squeue: the reasons are left out then; and
    # squeue gets what sacct left of the one limit (the listing waits list_sacct_timeout_s
    # at most, as `jobs list` does), the reasons left out when nothing is left.
    left = timeout_s - (time.monotonic() - started)
    asked = [r.scheduler_id for r in queued if r.backend == "slurm" and problem is None]
    waiting = pending_words(asked, timeout_s=left) if left >= MIN_SQUEUE_S else {}
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
        # a state the failed poll would have asked about (a NODE_FAIL Slurm may requeue too)
        at_slurm = job is not None and polled_still(job)
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
        # Its job ended badly (not cancelled: that is the branch above) without recording an
        # end: killed mid-run (its record says running) or failed before the stage began (no
        # registry in its environment, the pipeline's lock held). Either way the stage failed,
        # and its job's cause says why (not what an older record or staleness said).
        state, detail = "failed", ""
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
