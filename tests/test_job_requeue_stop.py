"""A job that has checkpointed for a requeue is stopping, not failing.

The requeue sends SIGTERM to all of the job's processes; a DataLoader worker dies and its parent
raises while submitit's ``SystemExit`` unwinds. Left alone, submitit records that exception as
the job's result and the job counts as FAILED although its next attempt is queued (seen in the
preempted-training Slurm test). The real requeue is tested there; these check the rule itself.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
from submitit.core.utils import UncompletedJobError

from pomlia_hpc.cluster import Checkpointable, checkpoint


class _Stopping(Checkpointable):
    """Raises ``error``, after checkpointing when ``requeue`` (as submitit's USR2 handler does
    before it requeues and exits)."""

    def __init__(self, error: Exception, requeue: bool) -> None:
        self.error = error
        self.requeue = requeue

    def __call__(self) -> None:
        if self.requeue:
            self.checkpoint()
        raise self.error


@pytest.fixture(autouse=True)
def _fresh_process() -> Iterator[None]:
    checkpoint.requeue_started.clear()
    yield
    checkpoint.requeue_started.clear()


def test_an_exception_after_the_checkpoint_exits_without_a_result() -> None:
    worker_died = RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated.")
    with pytest.raises(SystemExit) as exc:
        _Stopping(worker_died, requeue=True)()
    assert exc.value.code == -1 and exc.value.__cause__ is worker_died


def test_without_a_checkpoint_an_exception_is_the_jobs_failure() -> None:
    with pytest.raises(RuntimeError, match="killed by signal"):
        _Stopping(RuntimeError("DataLoader worker is killed by signal"), requeue=False)()


def test_submitits_refusal_to_requeue_stays_the_result() -> None:
    refused = UncompletedJobError("Job not requeued because: timed-out too many times.")
    with pytest.raises(UncompletedJobError, match="too many times"):
        _Stopping(refused, requeue=True)()


def test_the_requeued_state_does_not_carry_the_stop() -> None:
    job = _Stopping(ValueError("x"), requeue=False)
    delayed = job.checkpoint()
    assert checkpoint.requeue_started.is_set()
    again = pickle.loads(pickle.dumps(delayed.function))
    assert again.__dict__.keys() == {"error", "requeue"}
