"""One process at a time runs the stages of a pipeline: the pipeline folder's ``lock`` file
(``flock``), taken by in-process runs, stage jobs and driver jobs, and probed by ``pipeline
status`` and ``pipeline run`` before they plan; and one ``pipeline run`` at a time submits
the pipeline's jobs (``submit.lock``, :func:`submission_lock`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pomlia_hpc.errors import BusyError
from pomlia_hpc.files import poll_lock

#: How long (seconds) :func:`pipeline_lock` waits for a held lock before refusing: a probe
#: (:func:`pipeline_held`, :func:`check_not_locked`) holds it for an instant, which must not
#: make a stage or driver job starting then fail as "being run by another process".
LOCK_WAIT_S = 2.0


def _took(fh: IO[Any]) -> bool:
    """Whether the exclusive lock of open file ``fh`` was taken now (without waiting)."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def pipeline_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/lock`` so two processes never run stages of one pipeline at once; a lock
    held by another process is waited for up to :data:`LOCK_WAIT_S` seconds, then refused."""
    # flock has no "test": probes take the lock for an instant, hence the wait.
    words = (f"pipeline '{folder.name}' is being run by another process", "")
    with _exclusive(folder / "lock", words, LOCK_WAIT_S):
        yield


#: The lock file a submission holds (:func:`submission_lock`), beside the pipeline's ``lock``.
SUBMIT_LOCK = "submit.lock"
#: How long (seconds) a submission waits for another one of the same pipeline to finish
#: submitting (its ``sacct`` check and one ``sbatch`` per stage) before refusing.
SUBMIT_WAIT_S = 60.0


@contextmanager
def submission_lock(folder: Path, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``folder/submit.lock`` while one ``pipeline run`` checks that no job of its last
    submission is queued or running, replaces the spec snapshot and submits: two started at
    once each found no job and submitted a chain of their own (every stage twice, the second
    refused by the pipeline's lock, and the run file naming one chain). A second submission
    waits up to :data:`SUBMIT_WAIT_S` seconds, then finds the first one's jobs; refused after
    that. Held for the submission only, not while the stages run (they hold ``lock``).

    ``say``: where a submission that has to wait says so at once, naming the holder (host,
    pid, since when: written into the lock file by the holder), rather than keeping silent
    for up to a minute."""
    waiting = f"pipeline '{folder.name}' is being submitted by another `pipeline run`"
    refusal = "; run the command again once it has returned"
    with _exclusive(folder / SUBMIT_LOCK, (waiting, refusal), SUBMIT_WAIT_S, say):
        yield


def _write_holder(fh: IO[str]) -> None:
    """Who holds the lock (the lock file's only content), for a waiting or refused one. A
    note only: a file that does not take it (a full disk or quota) leaves the lock held, and
    the run goes on (a waiting one says "a process that is starting")."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    text = json.dumps({**me, "slurm_job": os.environ.get("SLURM_JOB_ID", "")})
    with contextlib.suppress(OSError):  # unbuffered: nothing left to fail again at close
        os.ftruncate(fh.fileno(), 0)
        os.write(fh.fileno(), text.encode())  # appended (a+): at 0, the file being empty


def _forget_holder(fh: IO[str]) -> None:
    """Empty the lock file before the lock is let go (it names a holder only while held)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fh.fileno(), 0)


def _holder(path: Path) -> str:
    """The holder of the lock at ``path`` in words, from what it wrote there."""
    try:
        h = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h["since"])))
        job = f", Slurm job {h['slurm_job']}" if h.get("slurm_job") else ""
        return f"pid {int(h['pid'])} on {h['host']}{job}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is starting"  # it holds the lock but has not written yet


def _held_by(path: Path, what: str) -> str:
    """``what`` (the lock's use) with the holder of the lock at ``path`` now, and the file."""
    return f"{what} ({_holder(path)}; lock {path})"


@contextmanager
def _exclusive(
    path: Path,
    words: tuple[str, str],
    wait_s: float,
    say: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the ``flock`` of ``path`` (created, with its folder), waiting at most ``wait_s``
    seconds for another holder, then raising :class:`~pomlia_hpc.errors.BusyError`: ``words``
    (what holds it, what to do) with the holder (host, pid, since when; each holder writes
    itself into the file). ``say``: told at once when the lock is held, that this one waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        if not _took(fh):
            if say is not None:
                say(f"{_held_by(path, words[0])}; waiting for it, at most {wait_s:.0f} s ...")
            try:
                poll_lock(lambda: _took(fh), words[0], wait_s)
            except BusyError:  # named now: the first holder may have gone, another taken it
                raise BusyError(_held_by(path, words[0]) + words[1]) from None
        try:
            _write_holder(fh)
            yield
        finally:
            _forget_holder(fh)
            fcntl.flock(fh, fcntl.LOCK_UN)


def pipeline_held(folder: Path) -> bool:
    """Whether a process holds ``folder/lock`` now (runs stages of this pipeline: in-process,
    a stage job or a driver job). The kernel frees the lock when its holder dies, even by
    SIGKILL, so a free lock means nothing runs there any more. Probed without blocking and
    let go at once."""
    try:
        fh = (folder / "lock").open("rb")
    except OSError:
        return False  # no lock file: no process ever ran a stage here
    with fh:
        if not _took(fh):
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def check_not_locked(folder: Path) -> None:
    """Refuse now, before a plan is printed, when another process runs stages of the pipeline
    of ``folder`` (its lock is held); the run takes the lock itself later."""
    if (folder / "lock").exists():
        with pipeline_lock(folder):
            pass
