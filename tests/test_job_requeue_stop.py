"""A job that has checkpointed for a requeue is stopping, not failing.

The requeue sends SIGTERM to all of the job's processes; a DataLoader worker dies and its parent
raises while submitit's ``SystemExit`` unwinds. Left alone, submitit records that exception as
the job's result and the job counts as FAILED although its next attempt is queued (seen in the
preempted-training Slurm test). The real requeue is tested there; these check the rule itself.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from submitit.core.utils import UncompletedJobError

from pomlia_hpc.cluster import Checkpointable, checkpoint, requeue_exit

WORKER_DIED = "DataLoader worker (pid 7) is killed by signal: Terminated."


class Stopping(Checkpointable):
    """Raises ``error``: after checkpointing when ``requeue``, and while submitit's exit
    (``SystemExit(-1)``, after ``scontrol requeue``) unwinds when ``exiting``."""

    def __init__(self, error: Exception, *, requeue: bool, exiting: bool) -> None:
        self.error = error
        self.requeue = requeue
        self.exiting = exiting

    def __call__(self) -> None:
        if self.requeue:
            self.checkpoint()
        if not self.exiting:
            raise self.error
        try:
            raise SystemExit(-1)
        finally:
            raise self.error  # what a SIGCHLD handler does mid-unwind


class Inherits(Stopping):
    """No ``__call__`` of its own: the wrapped one is inherited, not wrapped again."""


class CallsSuper(Stopping):
    def __call__(self) -> None:
        super().__call__()


@pytest.fixture(autouse=True)
def _fresh_process() -> Iterator[None]:
    checkpoint.requeue_started.clear()
    yield
    checkpoint.requeue_started.clear()


@pytest.mark.parametrize("cls", [Stopping, Inherits, CallsSuper])
def test_an_exception_while_the_requeue_exits_is_the_exit(cls: type[Stopping]) -> None:
    died = RuntimeError(WORKER_DIED)
    with pytest.raises(SystemExit) as exc:
        cls(died, requeue=True, exiting=True)()
    assert exc.value.code == -1 and exc.value.__cause__ is died


def test_without_a_checkpoint_an_exception_is_the_jobs_failure() -> None:
    with pytest.raises(RuntimeError, match="killed by signal"):
        Stopping(RuntimeError(WORKER_DIED), requeue=False, exiting=True)()


@pytest.mark.parametrize(
    "error",
    [
        UncompletedJobError("Job not requeued because: timed-out too many times."),
        subprocess.CalledProcessError(1, ["scontrol", "requeue", "7"]),
    ],
)
def test_a_refused_or_failed_requeue_stays_the_result(error: Exception) -> None:
    # Raised by submitit's handler after the checkpoint, before any exit.
    with pytest.raises(type(error)):
        Stopping(error, requeue=True, exiting=False)()
    assert requeue_exit(error) is None


def test_the_next_attempt_starts_without_the_stop(tmp_path: Path) -> None:
    """The checkpointed job, run in a fresh process (as the next attempt is), fails as itself."""
    delayed = Stopping(RuntimeError(WORKER_DIED), requeue=False, exiting=True).checkpoint()
    assert checkpoint.requeue_started.is_set()
    path = tmp_path / "job.pkl"
    path.write_bytes(pickle.dumps(delayed.function))
    script = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())()"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1 and "RuntimeError: DataLoader worker" in proc.stderr
