"""One AutoML trial as a cluster job: train, then write ``result.json`` next to the checkpoints.

The job never touches the registry (SQLite on a shared file system is fragile): it returns its
result to the submitting process through the cluster layer and also writes it, atomically, to
``result_path``, so a driver that was killed and restarted finds the results of trials that
finished while it was away. When training raises, the job writes ``failure.json`` (the
traceback) beside it before failing, so that a restarted driver can tell a trial that failed from
one that was cancelled or lost. :class:`TrialJob` is checkpointable: when Slurm preempts it or its
time runs out it is requeued and :func:`~pomlia_hpc.automl.engine.train` resumes from the last
epoch's checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pomlia_hpc.automl.engine import CKPT_DIR, TrainRequest, TrainResult, read_state, train
from pomlia_hpc.automl.records import config_summary
from pomlia_hpc.cluster import Checkpointable, requeue_exit
from pomlia_hpc.config import Record, read_record
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.models.archs import WITHOUT_TORCHVISION
from pomlia_hpc.progress import say
from pomlia_hpc.training import resume_note

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


FAILURE_FILE = "failure.json"
#: The job's own start stamp (``{"started": epoch seconds, "start_epoch": n}``), written as
#: each attempt begins: what a trial that never returns a result cost is measured from where
#: the scheduler gives no times, and the epoch its first attempt started from.
STARTED_FILE = "started.json"


class TrialStart(Record):
    """What a trial job writes to ``started.json`` as each attempt begins."""

    started: float  # epoch seconds (time.time() on the job's node), of the latest attempt
    #: The epoch the trial's first attempt started from, kept by every later attempt: an
    #: attempt after a requeue starts at its own checkpoint, and the job object it runs may be
    #: the one first submitted (a requeue without submitit's checkpoint: a node failure,
    #: ``scontrol requeue``, a preemption by SIGTERM), which knows nothing of the attempts
    #: before it. None: a stamp written before this was kept.
    start_epoch: int | None = None


class TrialFailure(Record):
    """What a trial job that raised leaves in ``failure.json``."""

    error: str  # the exception in one line
    traceback: str


def read_result(path: str | Path) -> dict[str, Any] | None:
    """The result a trial job wrote to ``path`` (``None`` if it has not finished), checked as a
    :class:`~pomlia_hpc.automl.engine.TrainResult`: a file that is not one is a single
    :class:`~pomlia_hpc.errors.InputError` naming it and the key."""
    return read_record(TrainResult, path).to_dict() if Path(path).is_file() else None


def failure_path(result_path: str | Path) -> Path:
    """Where the job whose result goes to ``result_path`` writes its traceback if it fails."""
    return Path(result_path).with_name(FAILURE_FILE)


def started_path(result_path: str | Path) -> Path:
    """Where the job whose result goes to ``result_path`` stamps its start."""
    return Path(result_path).with_name(STARTED_FILE)


def read_stamp(result_path: str | Path) -> TrialStart | None:
    """The start stamp of the trial job of ``result_path`` (its latest attempt's); ``None``:
    it has not begun, or the stamp is unreadable."""
    path = started_path(result_path)
    if not path.is_file():
        return None
    try:
        return read_record(TrialStart, path)
    except PomliaError:
        return None


def read_started(result_path: str | Path) -> float | None:
    """When the trial job of ``result_path`` (its latest attempt) began, in epoch seconds;
    ``None``: it has not begun, or the stamp is unreadable (a cost estimate then falls back)."""
    stamp = read_stamp(result_path)
    return stamp.started if stamp is not None else None


def read_failure(result_path: str | Path) -> tuple[str, str] | None:
    """(the exception in one line, the traceback) of a trial job that raised; ``None``: it did
    not, or has not yet."""
    path = failure_path(result_path)
    if not path.is_file():
        return None
    failure = read_record(TrialFailure, path)
    return failure.error, failure.traceback


class TrialJob(Checkpointable):
    """``TrialJob(request, result_path)()`` trains and returns the result dict."""

    # Imported lazily in training's set-up (DeepSpeed, the event writer) and at each epoch's
    # evaluation. torchvision only for the architectures that need it (preload_modules): the
    # small CNN's trials would pay its import (seconds) for nothing.
    preload = ("deepspeed", "torch.utils.tensorboard", "medmnist.evaluator")

    def __init__(self, request: TrainRequest, result_path: str) -> None:
        self.request = request
        self.result_path = result_path

    def preload_modules(self) -> tuple[str, ...]:
        """The class's preload, and torchvision for the architectures built with it."""
        config = getattr(self.__dict__.get("request"), "config", None)
        needs = config is not None and config.arch not in WITHOUT_TORCHVISION
        return (*self.preload, "torchvision") if needs else self.preload

    def _begin(self) -> int:
        """Stamp this attempt's start and say in the job's output which trial it is and where
        it starts (the file is named by the scheduler's id; each epoch then says a line, so
        `tail -f` on it tells what runs and whether it still moves); returns the epoch the
        trial's first attempt started from."""
        req, lineage = self.request, self.request.lineage
        state = read_state(req.workdir) or {}
        epoch = int(state.get("epoch", 0))
        # The trial's first epoch, from the stamp of an earlier attempt (the driver removes
        # the stamp before it submits the trial): not kept on this object, which a requeue
        # without submitit's checkpoint loads as it was first submitted.
        earlier = read_stamp(self.result_path)
        first = earlier.start_epoch if earlier is not None else None
        start_epoch = epoch if first is None else first
        stamp = TrialStart(started=time.time(), start_epoch=start_epoch)
        write_json_atomic(started_path(self.result_path), stamp.to_dict())
        # After a requeue, say where it resumes, as the encoder's training does.
        ckpt = Path(req.workdir) / CKPT_DIR / str(state.get("tag", ""))
        note = resume_note(epoch, ckpt, self.restart_count() + 1)
        say(
            f"trial: run {lineage.get('run_id', '?')} of study {lineage.get('study', '?')} on "
            f"{lineage.get('dataset', '?')}, {config_summary(req.config.to_dict())}, to "
            f"{req.epochs} epochs{'; ' + note if note else ''}"
        )
        return start_epoch

    def __call__(self) -> dict[str, Any]:
        # A trial is one process launched by the cluster layer, never by torchrun: rank/port
        # variables inherited from the submitting process (which may itself have trained with
        # DeepSpeed and still listen on its MASTER_PORT) must not win over this job's own.
        for key in DIST_VARS:
            os.environ.pop(key, None)

        def log(epoch: int, epochs: int, rec: dict[str, float]) -> None:
            say(f"epoch {epoch}/{epochs} loss {rec['train_loss']:.4f} ({rec['seconds']:.1f} s)")

        try:
            # In the try too: a checkpoint record that cannot be read fails the trial with its
            # failure.json, which a restarted driver reads, rather than as a lost job.
            start_epoch = self._begin()
            result = train(self.request, progress=log).to_dict()
        except Exception as exc:
            # Not BaseException: a cancelled local job gets SIGINT (KeyboardInterrupt), and a
            # cancelled trial is not a failed one.
            if requeue_exit(exc) is not None:
                raise  # stopping for a requeue: the next attempt's outcome is the trial's
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            failure = TrialFailure(error=error, traceback=traceback.format_exc())
            write_json_atomic(failure_path(self.result_path), failure.to_dict())
            raise
        # The trial's span: train() of an attempt after a requeue starts at that attempt's
        # checkpoint (epochs_run, the study's epoch count and the run's record would lose
        # the epochs of the attempts before it).
        result["start_epoch"] = min(int(result["start_epoch"]), start_epoch)
        write_json_atomic(Path(self.result_path), result)
        sys.stdout.flush()
        return result
