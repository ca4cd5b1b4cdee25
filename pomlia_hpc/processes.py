"""Small helpers about operating-system processes on this machine."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

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
        # Bytes: a command name need not be UTF-8 (the kernel cuts it at 15 bytes, also in
        # the middle of a character), and decoding it failed every caller.
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def process_started_s(pid: int) -> float | None:
    """When the process now running as ``pid`` started, in seconds since the epoch (psutil:
    the boot time plus the start in clock ticks, to about a second); None when it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def process_start_id(pid: int, proc: Path = Path("/proc")) -> str | None:
    """``<boot id>:<start ticks>`` of process ``pid``: when it started, in clock ticks after
    boot (field 22 of ``/proc/<pid>/stat``), with the boot's id. A pid is reused once its
    process is gone; this pair names one process of this machine for good. None without
    ``/proc`` (``proc``) or when the process is not running."""
    try:
        stat = (proc / str(pid) / "stat").read_bytes()  # bytes: see pid_alive
        boot = (proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        # The command name (field 2) may hold spaces and ')': count fields after the last ')'.
        ticks = stat[stat.rindex(b")") + 1 :].split()[19].decode()  # field 22; field 3: index 0
    except (OSError, ValueError, IndexError):
        return None
    return f"{boot}:{ticks}"


def ignores_signal(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` ignores ``sig`` (Linux ``/proc``; False when unknown).

    A process started from a background job of a non-interactive shell (cron, ``nohup cmd &``)
    inherits SIGINT ignored, and Python then keeps it ignored: such a job never sees a SIGINT."""
    try:
        # Its Name line is the command name, which need not be UTF-8 (see pid_alive).
        text = Path(f"/proc/{pid}/status").read_text(errors="replace")
        for line in text.splitlines():
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


class Hangup(KeyboardInterrupt):
    """SIGHUP in a :func:`hangup_as_interrupt` block: the terminal (or ssh session) that ran
    the command went away. A KeyboardInterrupt, so that the command stops as on Ctrl-C: its
    clean-up runs (``finally``, records of where it stopped) instead of the process dying."""


@contextlib.contextmanager
def hangup_as_interrupt() -> Iterator[None]:
    """In the block, SIGHUP raises :class:`Hangup` in the main thread instead of killing the
    process at once (the default), so a long command ends like an interrupted one. Where
    SIGHUP is not at its default (``nohup`` ignores it, someone else handles it) or outside
    the main thread (only it may set handlers) the block runs as it is."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGHUP) != signal.SIG_DFL:
        yield
        return

    def hang_up(signum: int, frame: FrameType | None) -> None:
        raise Hangup()

    previous = signal.signal(signal.SIGHUP, hang_up)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
