"""Small helpers about operating-system processes on this machine."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psutil


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine.

    An exited but not yet reaped process (a zombie) counts as gone; a process of another user
    (``PermissionError``) counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state is the first field after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def ignores_signal(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` ignores ``sig`` (Linux ``/proc``; False when unknown).

    A process started from a background job of a non-interactive shell (cron, ``nohup cmd &``)
    inherits SIGINT ignored, and Python then keeps it ignored: such a job never sees a SIGINT."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and all its descendants (a job controller and its tasks).

    Killing only the controller would leave its tasks running on, orphaned."""
    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def cpus_available() -> int:
    """CPUs this process may use (at least 1): Slurm's allocation (``SLURM_CPUS_PER_TASK``) if
    any, else this process's affinity mask. The one CPU count of pomlia-hpc (threads for
    training, extraction and inference)."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return max(1, len(os.sched_getaffinity(0)))
