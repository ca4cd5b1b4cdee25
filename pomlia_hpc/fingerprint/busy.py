"""One training per encoder name at a time: ``pomlia fingerprint train -n NAME`` is refused
while a job that trains NAME is queued or running, since both would train into
``models/encoders/NAME/`` (the same checkpoints and log).

The check and the submission that follows it are one step for every process of the workspace
(:func:`one_training` holds a lock beside the encoder folders while the caller submits), so two
starts racing each other cannot both pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.cluster.records import mark_lost, refresh_jobs, this_host
from pomlia_hpc.errors import ClusterError, PomliaError
from pomlia_hpc.files import held_lock
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.vocab import FINAL_STATES


def training_job_name(name: str) -> str:
    """The job name of encoder ``name``'s training (how a second start finds it)."""
    return f"fingerprint-train-{name}"


def live_trainings(registry: Registry, name: str) -> list[Job]:
    """The jobs training encoder ``name`` that are still queued or running, oldest first.
    Their states are asked of the scheduler first (a Slurm job it no longer knows at all is
    recorded ``LOST``, i.e. ended); when it cannot answer (``sacct`` failed) the registry's
    state stands: a job that may be training counts as training."""
    job_name = training_job_name(name)

    def unfinished() -> list[Job]:
        with registry.session() as s:
            q = select(Job).where(Job.name == job_name, Job.state.not_in(FINAL_STATES))
            rows = list(s.scalars(q.order_by(Job.id)))
            s.expunge_all()
        return rows

    rows = unfinished()
    if rows:
        try:
            refresh_jobs(registry, [r.id for r in rows])
            rows = unfinished()
            # A Slurm job neither squeue nor sacct knows any more is not training: without
            # this it blocked the name for good (`jobs cancel` cannot scancel it either).
            if any(r.backend == "slurm" for r in rows) and mark_lost(
                registry, [r.id for r in rows]
            ):
                rows = unfinished()
        except ClusterError:
            return unfinished()
    return rows


@contextmanager
def one_training(registry: Registry, encoders: Path, name: str) -> Iterator[None]:
    """Hold the training claim of encoder ``name`` (``encoders``: the folder of all encoders)
    for the block, in which the caller submits its job; a :class:`PomliaError` naming the live
    job (registry id, state, scheduler id) and how to cancel it while one trains ``name``."""
    with held_lock(encoders / f".{name}.train.lock", f"encoder '{name}'"):
        live = live_trainings(registry, name)
        if live:
            job = live[0]
            host = (job.meta or {}).get("host")
            elsewhere = (
                f"; it runs on host {host}: cancel it there, or if it is gone, `pomlia jobs "
                f"cancel {job.id} --force` marks it cancelled here"
                if job.backend == "local" and host not in (None, this_host())
                else ""
            )
            raise PomliaError(
                f"encoder '{name}' is being trained by job {job.id} ({job.state}, {job.backend} "
                f"{job.scheduler_id}) into {encoders / name}; a second training would write "
                f"the same folder: wait for it (`pomlia jobs show {job.id}`) or cancel it "
                f"(`pomlia jobs cancel {job.id}`{elsewhere}) and run this again, which resumes "
                "from its last epoch"
            )
        yield
