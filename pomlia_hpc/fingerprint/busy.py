"""One training per encoder name at a time: ``pomlia fingerprint train -n NAME`` is refused
while a job that trains NAME is queued or running, since both would train into
``models/encoders/NAME/`` (the same checkpoints and log).

The check and the submission that follows it are one step for every process of the workspace
(:func:`one_training` holds a lock beside the encoder folders while the caller submits), so two
starts racing each other cannot both pass. The scheduler is asked before that lock is taken
(``sacct``/``squeue`` may take a minute on a busy controller, and every start of the name would
wait for the lock meanwhile); under the lock only the registry, which the answer updated, is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.cluster.records import mark_lost, refresh_jobs, this_host
from pomlia_hpc.errors import BusyError, ClusterError
from pomlia_hpc.files import held_lock
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.vocab import FINAL_STATES


def training_job_name(name: str) -> str:
    """The job name of encoder ``name``'s training (how a second start finds it)."""
    return f"fingerprint-train-{name}"


def recorded_trainings(registry: Registry, name: str) -> list[Job]:
    """The jobs training encoder ``name`` that the registry records as queued or running,
    oldest first (the scheduler is not asked: :func:`live_trainings` does that)."""
    with registry.session() as s:
        q = select(Job).where(Job.name == training_job_name(name), Job.state.not_in(FINAL_STATES))
        rows = list(s.scalars(q.order_by(Job.id)))
        s.expunge_all()
    return rows


def live_trainings(registry: Registry, name: str) -> list[Job]:
    """The jobs training encoder ``name`` that are still queued or running, oldest first.
    Their states are asked of the scheduler first (a Slurm job it no longer knows at all is
    recorded ``LOST``, i.e. ended); when it cannot answer (``sacct`` failed) the registry's
    state stands: a job that may be training counts as training."""
    rows = recorded_trainings(registry, name)
    if rows:
        try:
            refresh_jobs(registry, [r.id for r in rows])
            rows = recorded_trainings(registry, name)
            # A Slurm job neither squeue nor sacct knows any more is not training: without
            # this it blocked the name for good (`jobs cancel` cannot scancel it either).
            if any(r.backend == "slurm" for r in rows) and mark_lost(
                registry, [r.id for r in rows]
            ):
                rows = recorded_trainings(registry, name)
        except ClusterError:
            return recorded_trainings(registry, name)
    return rows


@contextmanager
def one_training(registry: Registry, encoders: Path, name: str) -> Iterator[None]:
    """Hold the training claim of encoder ``name`` (``encoders``: the folder of all encoders)
    for the block, in which the caller submits its job; a :class:`BusyError` naming the live
    job (registry id, state, scheduler id) and how to cancel it while one trains ``name``."""
    # The scheduler's answer is recorded in the registry before the lock is taken. Under the
    # lock the registry decides: a job the answer found ended is recorded so, and a job another
    # start submitted since (under this lock) is recorded unfinished, so it counts as training.
    live_trainings(registry, name)
    with held_lock(encoders / f".{name}.train.lock", f"encoder '{name}'"):
        live = recorded_trainings(registry, name)
        if live:
            job = live[0]
            host = (job.meta or {}).get("host")
            elsewhere = (
                f"; it runs on host {host}: cancel it there, or if it is gone, `pomlia jobs "
                f"cancel {job.id} --force` marks it cancelled here"
                if job.backend == "local" and host not in (None, this_host())
                else ""
            )
            raise BusyError(
                f"encoder '{name}' is being trained by job {job.id} ({job.state}, {job.backend} "
                f"{job.scheduler_id}) into {encoders / name}; a second training would write "
                f"the same folder: wait for it (`pomlia jobs show {job.id}`) or cancel it "
                f"(`pomlia jobs cancel {job.id}`{elsewhere}) and run this again, which resumes "
                "from its last epoch"
            )
        yield
