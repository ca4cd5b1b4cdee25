"""How many attempts a Slurm job ran, as the drivers' requeue lines count them
(:func:`pomlia_hpc.cluster.records.attempts_run`)."""

from __future__ import annotations

from pomlia_hpc.cluster.records import ATTEMPTS_META, attempts_run
from pomlia_hpc.registry import Job


def test_a_completed_job_ran_its_last_attempt_whatever_the_last_poll_counted() -> None:
    """The last poll counted 1 attempt while the requeued job waited for its second; the short
    second attempt then ran and completed between two polls, and a completed row is not polled
    again: its count stayed 1 and the AutoML driver never said the requeue (CI, the real
    requeue test). A completed job ran attempt requeues + 1; a waiting one has not yet."""
    done = Job(backend="slurm", state="COMPLETED", requeue_count=1, meta={ATTEMPTS_META: 1})
    assert attempts_run(done) == 2
    waiting = Job(backend="slurm", state="PENDING", requeue_count=1, meta={ATTEMPTS_META: 1})
    assert attempts_run(waiting) == 1
    counted = Job(backend="slurm", state="COMPLETED", requeue_count=1, meta={ATTEMPTS_META: 3})
    assert attempts_run(counted) == 3
