"""A monitoring chain's names and records (:mod:`pomlia_hpc.monitor.schedule`): its Slurm job
name, its settings file and what they record, its jobs as `pomlia jobs` names them, and what
`pomlia monitor status` says of each chain (:func:`chain_states`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

JOB_PREFIX = "pomlia-monitor-"
#: The chain's copy of jobs/monitor.sbatch in its folder.
SCRIPT = Path("monitor.sbatch")


def job_name(model: str) -> str:
    """The Slurm job name of the chain keyed ``model`` (a model's name, or ``slot:SLOT``;
    also the singleton key)."""
    return f"{JOB_PREFIX}{model}"


def chain_script(workspace: Workspace, key: str) -> Path:
    """The batch script every job of the chain keyed ``key`` runs (its copy in the chain's
    folder): it tells the chain's jobs from those of another workspace's chain of the same
    name (a job name is the user's in every workspace)."""
    return workspace.path("jobs", "monitor", key, "monitor.sbatch")


def chain_kind(workspace: Workspace, key: str) -> str | None:
    """What the chain keyed ``key`` was scheduled for, as its settings record it: ``"slot"``
    or ``"model"``; None when it has no settings, they cannot be read, or they were written
    before the kind was recorded."""
    try:
        text = workspace.path("jobs", "monitor", key, "schedule.env").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith("export CHAIN_KIND="):
            words = shlex.split(line.removeprefix("export CHAIN_KIND="))
            return words[0] if words else None
    return None


def job_labels(registry: Registry, scheduler_ids: list[str]) -> list[str]:
    """Each Slurm id of ``scheduler_ids`` as `runs list` names jobs: ``job 21 (slurm 28)``
    (the registry id, which `pomlia jobs show/cancel` take), or ``slurm job 28`` for a job the
    registry does not hold; in the same order."""
    ids = registry_ids(registry, scheduler_ids)
    return [_label(sid, ids) for sid in scheduler_ids]


def _label(scheduler_id: str, ids: dict[str, int]) -> str:
    """Slurm job ``scheduler_id`` as :func:`job_labels` names it (``ids``: registry ids)."""
    if scheduler_id in ids:
        return f"job {ids[scheduler_id]} (slurm {scheduler_id})"
    return f"slurm job {scheduler_id}"


def registry_ids(registry: Registry, scheduler_ids: list[str]) -> dict[str, int]:
    """The registry id of each Slurm id of ``scheduler_ids`` that the registry holds."""
    from sqlalchemy import select

    from pomlia_hpc.registry import Job

    ids: dict[str, int] = {}
    if scheduler_ids:
        with registry.session() as s:
            q = select(Job.scheduler_id, Job.id).where(
                Job.backend == "slurm", Job.scheduler_id.in_(scheduler_ids)
            )
            for sid, rid in s.execute(q.order_by(Job.id)):
                ids[sid] = rid  # the newest row of an id (a requeue keeps its id)
    return ids


def is_scheduled(workspace: Workspace, model: str) -> bool:
    """Whether ``model`` (its name) has a nightly chain: its settings file, which
    :func:`unschedule` deletes and without which no run of the chain resubmits."""
    return workspace.path("jobs", "monitor", model, "schedule.env").is_file()


def chain_settings(workspace: Workspace, key: str) -> dict[str, str] | None:
    """The values the settings of the chain keyed ``key`` export (``EVERY``, ``AT``, ...), as
    its jobs see them once they source the file; None when it has none (unscheduled). The
    registry URL is left out: it may hold a password."""
    path = workspace.path("jobs", "monitor", key, "schedule.env")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {}
    values = {}
    for line in text.splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and sep and name != "POMLIA_DB_URL":
            words = shlex.split(value) if value else []
            values[name] = words[0] if words else ""
    return values


class QueuedRun(NamedTuple):
    """A job of a chain in Slurm's queue: how `pomlia jobs` names it (``job 2 (slurm 10)``),
    squeue's state and begin time (local wall time, no zone), its registry id (None for a job
    the registry does not hold) and Slurm's id."""

    label: str
    state: str
    begin: str
    job: int | None
    scheduler_id: str


@dataclass(frozen=True)
class ChainState:
    """What `pomlia monitor status` says of one chain: its settings (None: unscheduled), its
    jobs in Slurm's queue, its newest ended run as the registry records it (``last`` in
    words, ``last_job`` its values: :func:`last_job`), and ``state``: ``scheduled`` (a next
    run queued), ``running``, ``ended`` (settings but no job queued: no run will come; the
    chain must be scheduled again) or ``unscheduled`` (jobs queued without settings: they end
    without running the monitor)."""

    key: str
    settings: dict[str, str] | None
    queued: tuple[QueuedRun, ...]
    last: str | None
    state: str
    advice: str
    last_job: dict[str, Any] | None = None


def chain_keys(workspace: Workspace) -> list[str]:
    """The keys of the chains this workspace holds settings or a script for (sorted)."""
    root = workspace.path("jobs", "monitor")
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / "schedule.env").is_file() or (p / SCRIPT).is_file()
    )


def chain_state(registry: Registry, workspace: Workspace, key: str) -> ChainState:
    """The state of the chain keyed ``key``, from its settings, ``squeue`` and the registry
    (whose job rows the caller refreshes first, as `pomlia jobs list` does)."""
    settings = chain_settings(workspace, key)
    jobs = jobs_named(job_name(key), chain_script(workspace, key))
    ids = registry_ids(registry, [j.job_id for j in jobs])
    queued = tuple(
        QueuedRun(_label(j.job_id, ids), j.state, j.begin, ids.get(j.job_id), j.job_id)
        for j in jobs
    )
    ended = last_job(registry, workspace, key)
    last = _said(ended) if ended is not None else None
    again = f"`{schedule_command(key, settings)}`" if settings else ""
    if settings is None:
        state = "unscheduled"
        advice = (
            f"jobs queued without settings: they end without a run; cancel them with "
            f"`pomlia monitor unschedule {shlex.quote(key)}`"
            if queued
            else ""
        )
    elif not queued:
        state = "ended"
        advice = f"no run is queued and none will come: schedule it again with {again}"
    else:
        running = any(j.state == "RUNNING" for j in jobs)
        state, advice = ("running" if running else "scheduled"), ""
        if sum(j.state == "PENDING" for j in jobs) > 1:
            advice = "more than one next run queued: the first to run submits none"
    return ChainState(key, settings, queued, last, state, advice, ended)


def last_run(registry: Registry, workspace: Workspace, key: str) -> str | None:
    """The newest ended job of this workspace's chain keyed ``key`` (:func:`last_job`) in
    words: ``job 11 (slurm 40) FAILED at 2026-12-05 02:01:13: cause`` (UTC); None when none
    has ended."""
    ended = last_job(registry, workspace, key)
    return _said(ended) if ended is not None else None


def last_job(registry: Registry, workspace: Workspace, key: str) -> dict[str, Any] | None:
    """The newest ended job of this workspace's chain keyed ``key`` as the registry records
    it: ``job`` (its registry id), ``scheduler_id``, ``state``, ``ended_at`` (UTC) and
    ``exit_cause``; None when none has ended. Its rows are told by their folder, the chain's
    own, as its queued jobs are by its script: a registry shared by several workspaces holds
    the rows of their chains of the same name."""
    from sqlalchemy import select

    from pomlia_hpc.registry import Job
    from pomlia_hpc.vocab import FINAL_STATES

    folder = str(chain_script(workspace, key).parent)
    with registry.session() as s:
        q = select(Job).where(
            Job.name == job_name(key), Job.folder == folder, Job.state.in_(FINAL_STATES)
        )
        row = s.scalars(q.order_by(Job.id.desc()).limit(1)).first()
        if row is None:
            return None
        return {
            "job": row.id,
            "scheduler_id": row.scheduler_id,
            "state": row.state,
            "ended_at": row.ended_at,
            "exit_cause": row.exit_cause,
        }


def _said(ended: dict[str, Any]) -> str:
    """A :func:`last_job` record in words (:func:`last_run`)."""
    at: datetime | None = ended["ended_at"]
    when = f" at {at:%Y-%m-%d %H:%M:%S}" if at else ""
    cause = f": {ended['exit_cause']}" if ended["exit_cause"] else ""
    return f"job {ended['job']} (slurm {ended['scheduler_id']}) {ended['state']}{when}{cause}"


def schedule_command(key: str, settings: dict[str, str]) -> str:
    """The `pomlia monitor schedule` command that makes the chain of these settings again."""
    words = ["pomlia", "monitor", "schedule", key]
    for option, name in (("--every", "EVERY"), ("--at", "AT"), ("--window", "WINDOW")):
        if name in settings:
            words += [option, settings[name]]
    if settings.get("ON_ALARM"):
        words += ["--on-alarm", settings["ON_ALARM"]]
    return shlex.join(words)


def chain_alive(workspace: Workspace, key: str) -> bool:
    """Whether the chain keyed ``key`` goes on: it has settings and a job queued or running
    (``ended`` and ``unscheduled`` in :func:`chain_state` are not). When Slurm cannot be asked
    now, its settings alone decide."""
    if not is_scheduled(workspace, key):
        return False
    try:
        return bool(jobs_named(job_name(key), chain_script(workspace, key)))
    except ClusterError:
        return True
