"""One driver per loop run, as one per AutoML study: the driver of a loop run writes
``runs/loop/<slot>-<run>/driver.json`` (host, pid, process start, heartbeat, end) with the
study driver's record and rules (:mod:`pomlia_hpc.automl.liveness`), so a second ``pomlia loop
watch`` (or ``loop run``) that finds the run held by a live driver skips it instead of running
its stages beside the first and recording ``failed`` over the first one's work.

A driver gone without writing its end (SIGKILL, its node lost) is taken over as a study's is:
at once on the same host when its process is gone, from another host when its heartbeat is
older than :data:`~pomlia_hpc.automl.liveness.STALE_AFTER_S` or Slurm reports its job ended. A
thread beats every few seconds while the run is held (its stages may run for hours).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pomlia_hpc.automl.liveness import (
    BEAT_S,
    DRIVER_FILE,
    DriverBeat,
    DriverBusyError,
    DriverRecord,
    driver_gone,
    may_take_over,
    read_driver_file,
    slurm_restarts,
)
from pomlia_hpc.errors import BusyError
from pomlia_hpc.workspace import Workspace

#: Seconds between two looks of the heartbeat thread (it writes every ``BEAT_S`` seconds).
BEAT_LOOK_S = 5.0


class LoopBusyError(BusyError):
    """The loop run is held by another live driver: skipped, nothing recorded."""

    def __init__(self, message: str, *, run_id: int, record: DriverRecord | None) -> None:
        super().__init__(message)
        self.run_id, self.record = run_id, record


def run_dir(workspace: Workspace, slot: str, run_id: int) -> Path:
    """The folder of loop run ``run_id`` of ``slot`` (its harvest, study inputs, driver)."""
    return workspace.path("runs", "loop", f"{slot}-{run_id}")


def holder(workspace: Workspace, slot: str, run_id: int) -> DriverRecord | None:
    """The driver at work on the loop run, or None when none is (never held, ended, gone)."""
    record = read_driver_file(run_dir(workspace, slot, run_id) / DRIVER_FILE)
    if record is None or record.ended is not None:
        return None
    job = os.environ.get("SLURM_JOB_ID") or None
    return None if may_take_over(record, job, slurm_restarts()) else record


def gone_driver(workspace: Workspace, slot: str, run_id: int) -> str | None:
    """Why the driver of a loop run recorded ``running`` is gone (one phrase, e.g. "its driver
    (pid 12 on vm) is not running": killed before it could record an end), or None while one
    is at work or the run has no driver record (a run from before driver records)."""
    record = read_driver_file(run_dir(workspace, slot, run_id) / DRIVER_FILE)
    return driver_gone(record) if record is not None else None


def driver_record(workspace: Workspace, slot: str, run_id: int) -> DriverRecord | None:
    """The record of the loop run's driver (None: never held, or unreadable)."""
    return read_driver_file(run_dir(workspace, slot, run_id) / DRIVER_FILE)


def held_message(slot: str, run_id: int, record: DriverRecord | None) -> str:
    """ "loop run 9 of slot s is held by pid P on host H (since ..., last heartbeat N s ago)"."""
    if record is None:
        return f"loop run {run_id} of slot {slot} is held by another driver"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started))
    beat = max(0.0, time.time() - record.beat)
    return (
        f"loop run {run_id} of slot {slot} is held by pid {record.pid} on host {record.host} "
        f"(since {since}, last heartbeat {beat:.0f} s ago)"
    )


def check_free(workspace: Workspace, slot: str, run_id: int) -> None:
    """A :class:`LoopBusyError` while another live driver holds the run (a quick look before
    saying "resuming"; :func:`holding` is what excludes a second driver)."""
    record = holder(workspace, slot, run_id)
    if record is not None and (record.host, record.pid) != (socket.gethostname(), os.getpid()):
        raise LoopBusyError(held_message(slot, run_id, record), run_id=run_id, record=record)


@contextmanager
def holding(workspace: Workspace, slot: str, run_id: int) -> Iterator[None]:
    """Hold loop run ``run_id`` for the block: claimed under the record's lock (a
    :class:`LoopBusyError` while another live driver holds it), beaten by a thread, and its
    end written however the block ends (an exception, a signal turned into one)."""
    beat = DriverBeat.at(run_dir(workspace, slot, run_id) / DRIVER_FILE)
    try:
        beat.start()
    except DriverBusyError as exc:
        raise LoopBusyError(
            held_message(slot, run_id, exc.record), run_id=run_id, record=exc.record
        ) from None
    stop = threading.Event()
    thread = threading.Thread(target=_beat, args=(beat, stop), daemon=True, name="loop-beat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(BEAT_LOOK_S * 2)
        beat.end()


def _beat(beat: DriverBeat, stop: threading.Event) -> None:
    """Beat until ``stop`` (``beat()`` writes only every ``BEAT_S`` seconds)."""
    while not stop.wait(min(BEAT_LOOK_S, BEAT_S)):
        beat.beat()
