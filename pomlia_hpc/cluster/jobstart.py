"""The first Python a Slurm job runs: submitit's job runner, with the checkpoint signal held
back until submitit's handler is in place.

Slurm sends USR2 ``signal_delay_s`` seconds (and up to a minute more) before a job's time limit.
A job with a short limit can get it while it still starts (unpickling its callable imports what
it preloads: seconds for torch), before submitit installs its handler; USR2's default action
then kills the process and the job fails (``srun: error: ...: User defined signal 2``). Here a
handler that only notes the signal is the first thing the job installs; once submitit's own
handler is in place, a noted signal is raised again, so the job checkpoints and is requeued as
if the signal had come a moment later.

Run as ``python -u -m pomlia_hpc.cluster.jobstart -u -m submitit.core._submit FOLDER``
(:data:`SLURM_PYTHON` is what submitit puts before its own ``-u -m ...``): only the last
argument, the job folder, is read.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import traceback
from types import FrameType

#: The command submitit runs instead of plain ``python`` in a Slurm job's ``srun`` line.
SLURM_PYTHON = f"{shlex.quote(sys.executable)} -u -m pomlia_hpc.cluster.jobstart"

_noted: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    # Only note it: the job's callable may be half imported (a C extension's import must not
    # be interrupted by an exit), and submitit's handler does not exist yet.
    _noted.append(signum)


def hold_checkpoint_signal() -> None:
    """Note a USR2 instead of dying of it, until :func:`run_job` has submitit's handler."""
    signal.signal(signal.SIGUSR2, _note)


def run_job(folder: str) -> None:
    """Run submitit's job in ``folder`` (``submitit.core.submission.process_job``); a USR2
    noted before submitit's handler was installed is raised again right after."""
    from submitit.core import job_environment, submission

    install = job_environment.JobEnvironment._handle_signals

    def handle_signals(
        self: job_environment.JobEnvironment,
        paths: job_environment.JobPaths,
        delayed: job_environment.DelayedSubmission,
    ) -> None:
        install(self, paths, delayed)
        if _noted:
            signal.raise_signal(_noted[-1])  # submitit checkpoints and requeues the job

    job_environment.JobEnvironment._handle_signals = handle_signals  # type: ignore[method-assign,assignment]
    try:
        submission.process_job(folder)
    except Exception as exc:  # a BaseException (a signal's exit) is no failure of the job
        traceback.print_exc()  # as Python would have; then the cause, last in the log
        sys.stderr.write(final_line(exc, traceback.format_exc()) + "\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


def final_line(exc: BaseException, text: str) -> str:
    """The last line of a job's log when it gives up with ``exc`` (``text``: its traceback):
    the cause in one line, as ``pomlia jobs show`` words it. A time-limit requeue refused by
    submitit ended the log in 121 lines of traceback through whatever the job was doing
    (a figure's savefig), ``UncompletedJobError: ... timed-out too many times`` last."""
    from pomlia_hpc.cluster.failures import timeout_cause
    from pomlia_hpc.progress import stamped

    attempts = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    cause = timeout_cause(text, attempts, None, None)
    if cause is None:
        lines = str(exc).strip().splitlines()
        cause = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return stamped(f"error: the job gave up: {cause}")


if __name__ == "__main__":
    hold_checkpoint_signal()
    run_job(sys.argv[-1])
