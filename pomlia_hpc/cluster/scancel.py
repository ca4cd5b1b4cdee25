"""Every ``scancel`` of pomlia-hpc, with one time limit.

``scancel`` talks to the controller (slurmctld). One that took the connection and never
answers (overloaded, restarting) held its caller for good: ``jobs cancel`` had a limit, but a
driver stopped with Ctrl-C cancels its Slurm jobs with signals ignored (the cleanup must run to
its end), so a hung ``scancel`` there hung the process beyond another Ctrl-C. All callers go
through :func:`scancel`: past :data:`SCANCEL_TIMEOUT_S` seconds it is the controller's fault,
said in one line (exit 69, :mod:`pomlia_hpc.cluster.reach`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from pomlia_hpc.cluster.reach import slurm_failure, timed_out
from pomlia_hpc.errors import ClusterError

#: Seconds ``scancel`` may take before the controller counts as not answering (exit 69).
SCANCEL_TIMEOUT_S = 60.0


def scancel(ids: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run ``scancel IDS`` for at most :data:`SCANCEL_TIMEOUT_S` seconds and return it, exit
    status and stderr for the caller to judge (an id that has ended is an error to some
    callers, none to others). Raises :class:`~pomlia_hpc.errors.SlurmUnavailableError` when
    the controller did not answer in time, :class:`ClusterError` when ``scancel`` cannot be
    run."""
    try:
        return subprocess.run(
            ["scancel", *ids],
            capture_output=True,
            text=True,
            timeout=SCANCEL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # the controller, not the request: exit 69
        raise timed_out("scancel", SCANCEL_TIMEOUT_S) from exc
    except OSError as exc:  # no scancel on PATH (not a Slurm node), not executable
        raise ClusterError(f"scancel could not be run: {exc}") from exc


def scancel_or_fail(ids: Sequence[str], refused: str) -> None:
    """:func:`scancel` that also fails when ``scancel`` exits non-zero: the error is the
    controller's (out of reach, exit 69) or ``<refused>: <scancel's message>``."""
    proc = scancel(ids)
    if proc.returncode != 0:
        raise slurm_failure("scancel", proc.stderr, refused)
