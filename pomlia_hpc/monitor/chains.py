"""A monitoring chain's names and records (:mod:`pomlia_hpc.monitor.schedule`): its Slurm job
name, its settings file and what they record, its jobs as `pomlia jobs` names them."""

from __future__ import annotations

import shlex

from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

JOB_PREFIX = "pomlia-monitor-"


def job_name(model: str) -> str:
    """The Slurm job name of the chain keyed ``model`` (a model's name, or ``slot:SLOT``;
    also the singleton key)."""
    return f"{JOB_PREFIX}{model}"


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
    return [
        f"job {ids[sid]} (slurm {sid})" if sid in ids else f"slurm job {sid}"
        for sid in scheduler_ids
    ]


def is_scheduled(workspace: Workspace, model: str) -> bool:
    """Whether ``model`` (its name) has a nightly chain: its settings file, which
    :func:`unschedule` deletes and without which no run of the chain resubmits."""
    return workspace.path("jobs", "monitor", model, "schedule.env").is_file()
