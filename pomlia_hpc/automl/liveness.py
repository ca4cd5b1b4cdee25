"""Whether a study's driver is still alive: the driver writes ``runs/<study>/driver.json``
(host, pid, start, heartbeat, end) and readers such as ``pomlia runs list`` tell a study whose
runs say ``running`` but whose driver is gone (killed, its node lost) from one at work.

A study has one driver at a time: :meth:`DriverBeat.start` claims the study under a lock
(``runs/<study>/.driver.lock``, held only to read the record again and write the claim; whether
the driver on file is at work, which may ask ``sacct``, is decided before, and decided again
if the record changed meanwhile) and is refused while the driver on file is at work, so two
``--resume`` (or a resume racing a run) never train the same configurations twice.

A driver killed without writing its end is taken over at once when that is certain: on this
host when its process is gone; in the same Slurm job when Slurm restarted the job since
(``SLURM_RESTART_COUNT``); from another Slurm job when accounting reports that job ended
(``sacct``). And a SIGTERM that nothing else in the driver handles writes the end first.

Apart from :mod:`pomlia_hpc.automl.study` (which imports torch) so that registry queries can
use it. Only the driver writes the file; nothing here signals another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType

import psutil

from pomlia_hpc.automl.folders import study_dir, study_finished
from pomlia_hpc.errors import BusyError, ClusterError, PomliaError
from pomlia_hpc.files import held_lock, write_atomic
from pomlia_hpc.processes import pid_alive, process_start_id
from pomlia_hpc.progress import stamped
from pomlia_hpc.workspace import Workspace

#: The driver's record, in the study's folder.
DRIVER_FILE = "driver.json"
#: The lock that makes "no driver at work, so this process is the driver" one step.
CLAIM_FILE = ".driver.lock"
#: How often a claim decides again when the record on file changed while it decided.
CLAIM_TRIES = 5
#: Seconds between two heartbeats of a driver.
BEAT_S = 30.0
#: Seconds a heartbeat or end waits for the claim lock before it is skipped.
BEAT_LOCK_WAIT_S = 5.0
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
    #: Slurm's restart count of that job (``SLURM_RESTART_COUNT``; 0 before a requeue, None
    #: in records from before it): the same job id with the same count is not a requeue but a
    #: second driver in the same allocation (two ``--resume`` in one ``salloc``).
    slurm_restart: int | None = None


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
    """``<boot id>:<start ticks>`` of process ``pid`` (``processes.process_start_id``: unlike
    create_time, a step of the wall clock does not move it), or None without ``/proc`` or
    when it is not running."""
    return process_start_id(pid, PROC)


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
        self._stop_line: Callable[[], str] | None = None

    @classmethod
    def at(cls, path: Path) -> DriverBeat:
        """A driver record kept in ``path`` (its claim lock beside it): for other drivers
        than a study's, e.g. the one driver of a loop run."""
        beat = cls.__new__(cls)
        beat.path, beat.record, beat._stop_line = path, None, None
        return beat

    def start(self) -> None:
        """Record this process (host, pid) as the study's driver; a :class:`DriverBusyError`
        (nothing written) while the driver on file is at work (:func:`driver_gone`)."""
        study = self.path.parent.name
        job = os.environ.get("SLURM_JOB_ID") or None
        for _ in range(CLAIM_TRIES):
            # Decided before the lock is taken: the decision may ask sacct, which a busy
            # controller answers in a minute, and every heartbeat, end and claim of the study
            # would wait for the lock meanwhile (a beat gives up after BEAT_LOCK_WAIT_S).
            seen = read_driver_file(self.path)
            free = seen is None or may_take_over(seen, job, slurm_restarts())
            with held_lock(self.path.with_name(CLAIM_FILE), f"study '{study}'"):
                on_file = read_driver_file(self.path)
                if on_file is not None and on_file != seen:
                    continue  # written since (a beat, another claim): decide again on it
                if on_file is not None and not free:
                    raise DriverBusyError(busy_message(study, on_file), record=on_file)
                self._claim()
                return
        # A record that changes under each decision is a driver at work, beating or claiming.
        last = read_driver_file(self.path)
        if last is None:
            raise DriverBusyError(f"study '{study}' is being claimed by another driver; try again")
        raise DriverBusyError(busy_message(study, last), record=last)

    def _claim(self) -> None:
        """Write this process's record (under the claim lock, which the caller holds)."""
        self.record = this_process()
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

    @contextlib.contextmanager
    def driving(self, stop_line: Callable[[], str] | None = None) -> Iterator[None]:
        """:meth:`start`, the block, then :meth:`end` however the block ends. A SIGTERM
        (``scancel``, Slurm's time limit) kills a Python process without running ``finally``,
        so while no one else handles SIGTERM in this process (a pipeline stage's
        ``cluster.terminate`` handler, submitit's in a job: those end the block by an
        exception), the block's SIGTERM writes the end and then kills the process as before,
        after writing ``stop_line()`` on stderr: a driver job's log ended with a heartbeat
        and slurmstepd's CANCELLED line, nothing of its own."""
        self._stop_line = stop_line
        self.start()
        previous = None
        main = threading.current_thread() is threading.main_thread()  # only it sets handlers
        if main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, self._end_and_die)
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.end()

    def _end_and_die(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM while :meth:`driving`: write the end, then die of the signal as before (the
        exit status still says SIGTERM; trials left running are taken up by a --resume)."""
        if self._stop_line is not None:
            # Whatever goes wrong in saying it, the end is written and the signal obeyed.
            with contextlib.suppress(Exception):
                sys.stderr.write(stamped(self._stop_line()) + "\n")
                sys.stderr.flush()
        self.end()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    def _write(self, *, only_if_mine: bool = False) -> None:
        """Write the record; with ``only_if_mine``, only while the file still names this driver:
        a second driver of the study (a second ``--resume``) took it over, and the first one's
        beat or ``ended`` would hide the driver at work. That read and the write hold the claim
        lock, so a takeover cannot land between them."""
        if self.record is None:
            return
        # Liveness is advice for readers: never stop a study over it (a lock held by a stuck
        # process waits :data:`BEAT_LOCK_WAIT_S`, not a minute). No fsync: a heartbeat lost to
        # a power cut only makes the driver look gone sooner.
        with (
            contextlib.suppress(OSError, PomliaError),
            held_lock(self.path.with_name(CLAIM_FILE), "driver.json", wait_s=BEAT_LOCK_WAIT_S),
        ):
            if only_if_mine:
                on_file = read_driver_file(self.path)
                if on_file is not None and (on_file.host, on_file.pid, on_file.started) != (
                    self.record.host,
                    self.record.pid,
                    self.record.started,
                ):
                    return
            write_atomic(self.path, json.dumps(asdict(self.record)), fsync=False)


class DriverBusyError(BusyError):
    """Another driver is at work on the study; ``record`` is that driver's."""

    def __init__(self, message: str, *, record: DriverRecord | None = None) -> None:
        super().__init__(message)
        self.record = record


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
    job = f"`scancel {record.slurm_job}`" if record.slurm_job else "cancel its job"
    return (
        f"{head}: its process cannot be checked from here; stop it on {record.host} "
        f"(`kill {record.pid}` there, or {job}), or, if that host is gone, retry once "
        f"its heartbeat is {STALE_AFTER_S / 60:.0f} min old (in {wait / 60:.0f} min)"
    )


def refuse_if_driven(workspace: Workspace, study: str) -> None:
    """Raise :class:`DriverBusyError` when ``study``'s driver on file is at work and this
    process could not take it over (:func:`may_take_over`): the check :meth:`DriverBeat.start`
    makes again under its lock, made first so that a refused ``--resume`` prints nothing
    before its refusal (no header, no 0/N trials)."""
    seen = read_driver(workspace, study)
    job = os.environ.get("SLURM_JOB_ID") or None
    if seen is not None and not may_take_over(seen, job, slurm_restarts()):
        raise DriverBusyError(busy_message(study, seen), record=seen)


def read_driver(workspace: Workspace, study: str) -> DriverRecord | None:
    """The record of ``study``'s driver, or None (a study from before records, or unreadable)."""
    return read_driver_file(study_dir(workspace, study) / DRIVER_FILE)


def this_process() -> DriverRecord:
    """The record of this process as a driver starting now (host, pid, its start, its Slurm
    job): what :func:`driver_gone` later tells from a reused pid."""
    now, pid = time.time(), os.getpid()
    job = os.environ.get("SLURM_JOB_ID") or None
    return DriverRecord(
        socket.gethostname(),
        pid,
        now,
        now,
        None,
        _process_start(pid),
        _process_ticks(pid),
        job,
        slurm_restarts() if job is not None else None,
    )


def read_driver_file(path: Path) -> DriverRecord | None:
    """The driver record in ``path``, or None (missing or unreadable)."""
    try:
        return record_from(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def record_from(raw: object) -> DriverRecord | None:
    """The driver record a JSON map holds (``asdict`` of one: a driver file, or a copy kept
    elsewhere, e.g. a retrain request's taker), or None when it is not one."""
    if not isinstance(raw, dict):
        return None
    try:
        return DriverRecord(
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            started=float(raw["started"]),
            beat=float(raw["beat"]),
            ended=None if raw.get("ended") is None else float(raw["ended"]),
            proc_start=None if raw.get("proc_start") is None else float(raw["proc_start"]),
            proc_ticks=None if raw.get("proc_ticks") is None else str(raw["proc_ticks"]),
            slurm_job=None if raw.get("slurm_job") is None else str(raw["slurm_job"]),
            slurm_restart=None if raw.get("slurm_restart") is None else int(raw["slurm_restart"]),
        )
    except (ValueError, KeyError, TypeError):
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


def stopped_unfinished(workspace: Workspace, study: str) -> str | None:
    """Why ``study``'s driver is gone although the study has not finished (no
    ``summary.json``: its best model not registered, its summary not written), or None (it
    finished, its driver is at work, or it never recorded one). A driver stopped by a hang-up,
    Ctrl-C or a kill after its last trial ended leaves no run 'running' to say so."""
    if study_finished(workspace, study):
        return None
    record = read_driver(workspace, study)
    return driver_gone(record) if record is not None else None


def slurm_restarts() -> int:
    """How often Slurm restarted (requeued) this process's job: ``SLURM_RESTART_COUNT``, 0
    when unset (the first attempt, or outside Slurm)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def may_take_over(record: DriverRecord, job: str | None, restarts: int) -> bool:
    """Whether a driver starting in Slurm job ``job`` (None outside Slurm), restarted
    ``restarts`` times, may take the study over from ``record``'s: that driver is gone
    (:func:`driver_gone`); or, on another host (on this one its process decides), it ran in
    this job and Slurm restarted the job since (a requeue killed it; the same restart count
    is a second driver in the same allocation), or it ran in another Slurm job that the
    scheduler reports ended (killed at its time limit or by ``scancel``, it wrote no end,
    and a resubmission usually runs on another node, where its heartbeat decides only after
    :data:`STALE_AFTER_S`)."""
    if driver_gone(record) is not None:
        return True
    if record.host == socket.gethostname():
        # its process was looked at and runs: no Slurm answer overrides that (a shell with a
        # stale SLURM_JOB_ID, left from an ended allocation, would otherwise take over)
        return False
    if record.slurm_job is None:
        return False
    if record.slurm_job == job:
        return restarts > (record.slurm_restart or 0)
    return slurm_job_ended(record.slurm_job) is not None


def slurm_job_ended(job_id: str) -> str | None:
    """The final state (``TIMEOUT``, ``CANCELLED``, ...) Slurm's accounting reports for job
    ``job_id``, or None while it may still run: queued, running, requeued, or its state cannot
    be read (no ``sacct``, accounting down), as a driver that cannot be checked counts as at
    work. A node failure or preemption is final only once the controller does not list the
    job queued again (``sacct_states`` asks it; unasked, ``may_requeue``): a driver Slurm
    requeued runs again."""
    # Imported here: `runs list` reads driver records without the scheduler's modules.
    from pomlia_hpc.cluster.records import sacct_states
    from pomlia_hpc.vocab import FINAL_STATES

    try:
        state = sacct_states([job_id]).get(job_id)
    except (ClusterError, OSError, subprocess.SubprocessError):
        return None
    if state is None or state.may_requeue:
        return None
    return state.state if state.state in FINAL_STATES else None
