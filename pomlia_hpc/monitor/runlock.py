"""One ``monitor run`` of a model at a time.

Two runs at once (the nightly chain and a person, or two slots with one champion) would test
the same window and record two reports, and an alarm would run ``--on-alarm`` twice. A run
holds ``<home>/reports/.monitor-runs/<model>.lock`` from reading the window to the end of its
``--on-alarm`` command; a second run is refused at once (exit 2, nothing recorded), naming
the holder, rather than waiting: its window would end where the first's did, and a cron
line retried later would test a window that is no longer the one it was scheduled for.

The lock is a POSIX record lock (``lockf``), which the kernel drops when its holder dies,
however it dies (``kill -9`` included), and NFS passes to the server for other nodes. The
holder writes who it is (host, pid, start, what it was asked) into the file for the refusal;
a file system that cannot lock runs the monitor without the lock after one warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from pomlia_hpc.errors import BusyError
from pomlia_hpc.files import NO_LOCKING_ERRNOS
from pomlia_hpc.workspace import Workspace

#: The folder of the models' lock files, beside the models' report folders.
LOCK_DIR = ".monitor-runs"


class MonitorBusyError(BusyError):
    """Another ``monitor run`` of the same model is at work."""


@contextmanager
def monitor_lock(
    workspace: Workspace, model: str, asked: str, warn: Callable[[str], None]
) -> Iterator[None]:
    """Hold model ``model``'s monitor lock for the block; :class:`MonitorBusyError` (before
    anything is read or written) while another run holds it. ``asked``: what this run was
    asked to monitor (a slot, a model), shown to a refused one; ``warn``: where to say that
    the file system does not lock."""
    path = workspace.path("reports", LOCK_DIR, f"{model}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in NO_LOCKING_ERRNOS:
                warn(
                    f"the file system of {path} does not lock: a second monitor run of "
                    f"'{model}' at once is not refused ({exc.strerror})"
                )
                yield
                return
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise MonitorBusyError(_busy_message(model, asked, path.read_text())) from None
        try:
            _write_holder(fh, asked)
            yield
        finally:
            fh.truncate(0)  # a holder's record only while it holds the lock
            fcntl.lockf(fh, fcntl.LOCK_UN)


def _write_holder(fh: IO[str], asked: str) -> None:
    """Who holds the lock, for a refused run's message (the lock file's only content)."""
    fh.seek(0)
    fh.truncate(0)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    fh.write(json.dumps({**holder, "asked": asked}))
    fh.flush()


def _busy_message(model: str, asked: str, text: str) -> str:
    """The refusal: which run is at work (pid, host, since when, what it was asked), what
    this one was asked, and what to do."""
    try:
        holder = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"])))
        who = (
            f"pid {int(holder['pid'])} on {holder['host']} (since {since}, monitoring "
            f"'{holder['asked']}')"
        )
    except (ValueError, KeyError, TypeError):
        who = "a process that is starting"  # it holds the lock but has not written yet
    target = f"'{asked}' (model '{model}')" if asked != model else f"'{model}'"
    return (
        f"monitor run {target}: another monitor run is testing model '{model}' now, {who}; "
        "one run at a time, or the window would be reported twice (and --on-alarm run "
        "twice); its report will be in `pomlia monitor history "
        f"{model}`, or run this one again once it has ended"
    )
