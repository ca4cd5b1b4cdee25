"""Ending a monitoring chain, and the chain under a slot's champion's name.

``unschedule`` removes a chain's settings file (a run that starts later does nothing, and no
run can resubmit) and cancels every queued job of the chain, recording them cancelled at once.
Before slot chains, ``monitor schedule SLOT`` keyed the chain by the slot's champion's name
(:func:`legacy_chain`); ``schedule SLOT`` refuses beside such a chain, ``--replace`` ends it
(:func:`end_legacy`) and ``unschedule SLOT`` ends it too (docs in :mod:`.schedule`).
"""

from __future__ import annotations

import shlex
import time

from sqlalchemy.exc import SQLAlchemyError

from pomlia_hpc.cluster.batch import QueuedJob, cancel_ids, cancel_named, jobs_named
from pomlia_hpc.cluster.records import mark_all_cancelled
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.monitor.chains import chain_kind, chain_script, is_scheduled, job_labels, job_name
from pomlia_hpc.monitor.reference import (
    SLOT_PREFIX,
    named_slot,
    resolve_model_id,
    slot_champion,
)
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace


def chain_key(registry: Registry, ref: str) -> str:
    """The key of the chain that ``ref`` names: ``slot:SLOT`` for a deployment slot (``slot:``
    given, or a slot's name that is no model's), else the model's name (also for
    ``deployment:ID``: the chain monitors the deployment's model)."""
    from pomlia_hpc.models.catalog import resolve_model

    slot = named_slot(registry, ref)
    if slot is not None:
        return f"{SLOT_PREFIX}{slot}"
    model_id, _deployment = resolve_model_id(registry, ref)
    return resolve_model(registry, str(model_id)).name


def unschedule(registry: Registry, workspace: Workspace, model: str) -> list[str]:
    """End the chain of ``model`` (a model, or a deployment slot as :func:`chain_key` reads
    it); returns the cancelled job ids. A slot's also ends the chain under its champion's name
    (:func:`legacy_chain`), as ``monitor schedule SLOT`` made it before slot chains."""
    name = chain_key(registry, model)
    cancelled = end_chain(registry, workspace, name, "cancelled by user")
    if name.startswith(SLOT_PREFIX):
        legacy = legacy_chain(registry, workspace, name.removeprefix(SLOT_PREFIX))
        if legacy is not None:
            cancelled += end_chain(registry, workspace, legacy[0], "cancelled by user")
    return cancelled


def end_chain(registry: Registry, workspace: Workspace, name: str, cause: str) -> list[str]:
    """Remove the settings of the chain keyed ``name`` and cancel its queued jobs. Slurm is
    asked first: out of reach, that is the error and nothing is removed (the settings went
    and then squeue failed: the queued runs stayed, without the settings they need)."""
    jname, script = job_name(name), chain_script(workspace, name)
    queued = [j.job_id for j in jobs_named(jname, script)]
    workspace.path("jobs", "monitor", name, "schedule.env").unlink(missing_ok=True)
    cancel_ids(queued)
    cancelled = queued
    # A run that was resubmitting at this very moment may have queued one more job; the
    # settings file is gone, so it cannot do so again: one more look catches it.
    time.sleep(1.0)
    cancelled += cancel_named(jname, script)
    record_cancelled(registry, cancelled, cause)
    return cancelled


def record_cancelled(
    registry: Registry, scheduler_ids: list[str], cause: str = "cancelled by user"
) -> None:
    """Mark the registry rows of the cancelled chain jobs CANCELLED (at once, not at the next
    sacct poll, which may come after the accounting forgot them)."""
    from sqlalchemy import select

    from pomlia_hpc.registry import Job

    if not scheduler_ids:
        return
    with registry.session() as s:
        q = select(Job.id).where(Job.backend == "slurm", Job.scheduler_id.in_(scheduler_ids))
        ids = list(s.scalars(q))
    mark_all_cancelled(registry, ids, cause)


def legacy_chain(
    registry: Registry, workspace: Workspace, slot: str
) -> tuple[str, list[QueuedJob]] | None:
    """The chain keyed by the name of ``slot``'s champion, as ``monitor schedule SLOT`` made
    it before slot chains (it monitors that model for good, and would report beside the
    slot's chain): (the champion's name, its queued jobs), or None when it has neither
    settings nor queued jobs, or is recorded as the model's own chain (``monitor schedule
    MODEL`` on purpose: not the slot's to end)."""
    from pomlia_hpc.models.catalog import resolve_model

    champion_id = slot_champion(registry, slot)
    if champion_id is None:
        return None
    champion = resolve_model(registry, str(champion_id)).name
    queued = jobs_named(job_name(champion), chain_script(workspace, champion))
    if not queued and not is_scheduled(workspace, champion):
        return None
    if is_scheduled(workspace, champion):
        recorded = chain_kind(workspace, champion)
    else:  # settings gone (unscheduled), jobs still queued: what their rows recorded
        recorded = _recorded_kind(registry, queued)
    # No record: settings written before the kind was recorded. An old slot chain and a model
    # chain of the champion look the same then; the name rule takes it for the slot's.
    return None if recorded == "model" else (champion, queued)


def _recorded_kind(registry: Registry, queued: list[QueuedJob]) -> str | None:
    """The kind the registry rows of the ``queued`` jobs record (``Job.meta["kind"]``), when
    they all agree; else None."""
    from sqlalchemy import select

    from pomlia_hpc.registry import Job

    ids = [j.job_id for j in queued]
    if not ids:
        return None
    with registry.session() as s:
        q = select(Job.meta).where(Job.backend == "slurm", Job.scheduler_id.in_(ids))
        kinds = {(meta or {}).get("kind") for meta in s.scalars(q)}
    return kinds.pop() if len(kinds) == 1 else None


def legacy_refusal(
    registry: Registry, workspace: Workspace, what: str, champion: str, queued: list[QueuedJob]
) -> str:
    jobs = queued_labels(registry, queued) if queued else "no job queued"
    folder = workspace.path("jobs", "monitor", champion)
    return (
        f"{what} is already monitored by a chain under its champion's name '{champion}' "
        f"(job {job_name(champion)}: {jobs}; settings {folder}), scheduled for the model or, "
        "before slot chains, for the slot: it monitors that model even after a promotion. "
        "Pass --replace to end it and schedule the slot's chain, or end it with "
        f"`pomlia monitor unschedule {shlex.quote(champion)}`"
    )


def end_legacy(
    registry: Registry, workspace: Workspace, champion: str
) -> tuple[list[str], list[str]]:
    """End the champion-named chain (:func:`legacy_chain`) after the slot's chain is queued:
    (cancelled ids, warnings); the slot's chain stands either way, so nothing here raises."""
    try:
        return end_chain(registry, workspace, champion, "replaced by the slot's chain"), []
    except (SQLAlchemyError, PomliaError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [], [
            f"could not end the chain under the champion's name ({first}); end it with "
            f"`pomlia monitor unschedule {shlex.quote(champion)}`"
        ]


def queued_labels(registry: Registry, jobs: list[QueuedJob]) -> str:
    labels = job_labels(registry, [j.job_id for j in jobs])
    return ", ".join(f"{label} {j.state.lower()}" for label, j in zip(labels, jobs, strict=True))
