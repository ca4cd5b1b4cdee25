"""Whether a study's driver is still alive: the driver writes ``runs/<study>/driver.json``
(host, pid, start, heartbeat, end) and readers such as ``pomlia runs list`` tell a study whose
runs say ``running`` but whose driver is gone (killed, its node lost) from one at work.

A study has one driver at a time: :meth:`DriverBeat.start` claims the study under a lock
(``runs/<study>/.driver.lock``, held only for the check and the write) and is refused while the
driver on file is at work, so two ``--resume`` (or a resume racing a run) never train the same
configurations twice.

Apart from :mod:`pomlia_hpc.automl.study` (which imports torch) so that registry queries can
use it. Only the driver writes the file; nothing here touches a process.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from pomlia_hpc.automl.folders import study_dir
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.files import held_lock, write_atomic
from pomlia_hpc.processes import pid_alive
from pomlia_hpc.workspace import Workspace

#: The driver's record, in the study's folder.
DRIVER_FILE = "driver.json"
#: The lock that makes "no driver at work, so this process is the driver" one step.
CLAIM_FILE = ".driver.lock"
#: Seconds between two heartbeats of a driver.
BEAT_S = 30.0
#: Seconds without a heartbeat after which a driver on another host counts as gone (ten
#: missed beats: a busy shared file system delays a write by seconds, not minutes).
STALE_AFTER_S = 300.0


@dataclass(frozen=True)
class DriverRecord:
    """What a study's driver says about itself; times are Unix seconds."""

    host: str
    pid: int
    started: float
    beat: float
    ended: float | None = None
    #: The process's start time (Unix seconds; psutil's create_time): a pid reused after the
    #: driver was killed (kill -9) is another process. None in records from before it.
    proc_start: float | None = None
    #: ``<boot id>:<start ticks>`` of the process (``/proc``, Linux): what tells it from a
    #: reused pid where ``/proc`` exists. None without ``/proc`` and in records from before.
    proc_ticks: str | None = None
    #: The Slurm job the driver ran in (``SLURM_JOB_ID``), None outside one: a requeued
    #: ``jobs/automl.sbatch`` keeps its job id, and its killed previous attempt (which wrote
    #: no end, perhaps on another node) is not a second driver.
    slurm_job: str | None = None


#: Where the kernel tells a process's boot-relative start (Linux); absent elsewhere.
PROC = Path("/proc")
#: Seconds two create_time reads of one process may differ by without /proc: it is wall-clock
#: time, which moves when the clock is stepped (NTP, a VM resumed); a reused pid started at
#: least when the driver died, usually much later.
CREATE_TIME_TOLERANCE_S = 120.0


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (Unix seconds), or None if it is not running."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _process_ticks(pid: int) -> str | None:
    """``<boot id>:<start ticks>`` of process ``pid`` (field 22 of ``/proc/<pid>/stat``, clock
    ticks after boot: unlike create_time, a step of the wall clock does not move it), or None
    without ``/proc`` or when it is not running."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        boot = (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        # The command name (field 2) may hold spaces and ')': count fields after the last ')'.
        ticks = stat[stat.rindex(")") + 1 :].split()[19]  # field 22; field 3 is at index 0
    except (OSError, ValueError, IndexError):
        return None
    return f"{boot}:{ticks}"


def _same_process(record: DriverRecord) -> bool:
    """Whether the driver process of ``record`` (on this host) still runs: its pid, and, when
    recorded, its start (a pid reused after a kill -9 is another process)."""
    if not pid_alive(record.pid):
        return False
    if PROC.is_dir():
        if record.proc_ticks is None:  # a record from before start ticks: the pid decides
            return True
        return _process_ticks(record.pid) == record.proc_ticks
    if record.proc_start is None:
        return True
    started = _process_start(record.pid)
    return started is not None and abs(started - record.proc_start) < CREATE_TIME_TOLERANCE_S


class DriverBeat:
    """The driver's side: :meth:`start` when it starts, :meth:`beat` as it goes (written at
    most every :data:`BEAT_S` seconds), :meth:`end` when it stops, however it stops."""

    def __init__(self, workspace: Workspace, study: str) -> None:
        self.path = study_dir(workspace, study) / DRIVER_FILE
        self.record: DriverRecord | None = None

    def start(self) -> None:
        """Record this process (host, pid) as the study's driver; a :class:`DriverBusyError`
        (nothing written) while the driver on file is at work (:func:`driver_gone`)."""
        study = self.path.parent.name
        with held_lock(self.path.with_name(CLAIM_FILE), f"study '{study}'"):
            on_file = read_driver_file(self.path)
            job = os.environ.get("SLURM_JOB_ID") or None
            requeued = on_file is not None and job is not None and on_file.slurm_job == job
            if on_file is not None and not requeued and driver_gone(on_file) is None:
                raise DriverBusyError(busy_message(study, on_file))
            now, pid = time.time(), os.getpid()
            self.record = DriverRecord(
                socket.gethostname(),
                pid,
                now,
                now,
                None,
                _process_start(pid),
                _process_ticks(pid),
                job,
            )
            # Not through _write: the claim must be on disk before the lock is let go.
            write_atomic(self.path, json.dumps(asdict(self.record)), fsync=False)

    def beat(self) -> None:
        """Say this driver is still at work (written only when :data:`BEAT_S` have passed)."""
        if self.record is not None and time.time() - self.record.beat >= BEAT_S:
            self.record = replace(self.record, beat=time.time())
            self._write(only_if_mine=True)

    def end(self) -> None:
        """Record that this driver stopped (finished, interrupted or failed)."""
        if self.record is not None:
            now = time.time()
            self.record = replace(self.record, beat=now, ended=now)
            self._write(only_if_mine=True)

    def _write(self, *, only_if_mine: bool = False) -> None:
        """Write the record; with ``only_if_mine``, only while the file still names this driver:
        a second driver of the study (a second ``--resume``) took it over, and the first one's
        beat or ``ended`` would hide the driver at work."""
        if self.record is None:
            return
        if only_if_mine:
            on_file = read_driver_file(self.path)
            if on_file is not None and (on_file.host, on_file.pid, on_file.started) != (
                self.record.host,
                self.record.pid,
                self.record.started,
            ):
                return
        # Liveness is advice for readers: never stop a study over it. No fsync: a heartbeat
        # lost to a power cut only makes the driver look gone sooner.
        with contextlib.suppress(OSError):
            write_atomic(self.path, json.dumps(asdict(self.record)), fsync=False)


class DriverBusyError(PomliaError):
    """Another driver is at work on the study."""


def busy_message(study: str, record: DriverRecord, now: float | None = None) -> str:
    """Why study ``study`` cannot get a second driver while ``record``'s is at work, and what
    to do: stop that one (how, on this host) or wait for its heartbeat to go stale (another
    host, whose process cannot be checked from here)."""
    now = time.time() if now is None else now
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started))
    head = (
        f"study '{study}' is being driven by pid {record.pid} on {record.host} (since "
        f"{started}, last heartbeat {max(0.0, now - record.beat):.0f} s ago); one driver at a "
        "time, or the same configurations would be trained twice"
    )
    if record.host == socket.gethostname():
        return (
            f"{head}: wait for it to end, or stop it (`kill {record.pid}`; its unfinished "
            "trials stay for a later --resume)"
        )
    wait = max(0.0, record.beat + STALE_AFTER_S - now)
    return (
        f"{head}: its process cannot be checked from here; stop it on {record.host} "
        f"(`kill {record.pid}` there, or cancel its job), or, if that host is gone, retry once "
        f"its heartbeat is {STALE_AFTER_S / 60:.0f} min old (in {wait / 60:.0f} min)"
    )


def read_driver(workspace: Workspace, study: str) -> DriverRecord | None:
    """The record of ``study``'s driver, or None (a study from before records, or unreadable)."""
    return read_driver_file(study_dir(workspace, study) / DRIVER_FILE)


def read_driver_file(path: Path) -> DriverRecord | None:
    """The driver record in ``path``, or None (missing or unreadable)."""
    try:
        raw = json.loads(path.read_text())
        return DriverRecord(
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            started=float(raw["started"]),
            beat=float(raw["beat"]),
            ended=None if raw.get("ended") is None else float(raw["ended"]),
            proc_start=None if raw.get("proc_start") is None else float(raw["proc_start"]),
            proc_ticks=None if raw.get("proc_ticks") is None else str(raw["proc_ticks"]),
            slurm_job=None if raw.get("slurm_job") is None else str(raw["slurm_job"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def driver_gone(record: DriverRecord, now: float | None = None) -> str | None:
    """Why the driver of ``record`` is gone (one phrase), or None while it seems at work.

    On this host the process decides (a driver running trials in its own process may beat
    late): its pid must run and, when recorded, have started when the driver did (a pid reused
    after a kill -9 is another process; boot-relative start ticks where ``/proc`` exists, else
    the start time within :data:`CREATE_TIME_TOLERANCE_S`); on another host the heartbeat
    does: none for :data:`STALE_AFTER_S` seconds is gone."""
    now = time.time() if now is None else now
    who = f"pid {record.pid} on {record.host}"
    if record.ended is not None:
        at = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.ended))
        return f"its driver ({who}) stopped at {at}"
    if record.host == socket.gethostname():
        return None if _same_process(record) else f"its driver ({who}) is not running"
    silent = now - record.beat
    if silent >= STALE_AFTER_S:
        return f"its driver ({who}) has not reported for {silent / 60:.0f} min"
    return None
