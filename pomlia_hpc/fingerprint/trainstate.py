"""The epoch record of an encoder training and what a restart continues from.

:class:`EncoderState` is ``latest.json`` in the encoder's folder (or its staging folder): the
last epoch checkpointed under ``checkpoints/`` and the curves and early-stopping state that
go with it. The job (:mod:`pomlia_hpc.fingerprint.trainjob`) writes it after every epoch and
resumes from it; the submitter (:mod:`pomlia_hpc.fingerprint.train`) reads it for progress,
for how far a timed-out job got, and for the job's result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pomlia_hpc.files import remove_counted, sweep_stale_temps
from pomlia_hpc.training import EpochCheckpoints, EpochState

__all__ = [
    "EncoderState",
    "drop_resume_state",
    "encoder_checkpoints",
    "is_finished",
    "read_latest",
    "read_result",
    "start_state",
]

#: The weights a finished training leaves (written last: its presence means "trained").
FINAL_WEIGHTS = "encoder.pt"
#: What only an unfinished training needs to resume: the DeepSpeed epoch checkpoints (weights
#: and Adam's two moments, three times ``encoder.pt``, the last two epochs kept) and the best
#: epoch's weights, which ``encoder.pt`` holds once written.
RESUME_ONLY = ("checkpoints", "best.pt")


class EncoderState(EpochState):
    """``latest.json``: the last complete epoch checkpoint of an encoder training and the
    curves and early-stopping state it carries across a restart."""

    loss_curve: list[float] = []
    val_curve: list[float] = []
    lr_curve: list[float] = []
    parts: list[dict[str, float]] = []
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    resumed_from: int = 0


def encoder_checkpoints(out: Path, rank: int = 0, world: int = 1) -> EpochCheckpoints[EncoderState]:
    """The epoch checkpoints of the training in ``out`` as rank ``rank`` of ``world`` sees them
    (``checkpoints/``, recorded in ``latest.json``)."""
    return EpochCheckpoints(
        out, EncoderState, record="latest.json", subdir="checkpoints", rank=rank, world=world
    )


def read_latest(out: Path) -> dict[str, Any] | None:
    """``latest.json`` of the training in ``out`` as a dict; None before its first epoch."""
    state = encoder_checkpoints(out).read()
    return state.to_dict() if state is not None else None


def read_result(out: Path) -> dict[str, Any]:
    """The job's result as its last checkpointed epoch says it (``encoder.pt``'s path, curves,
    epochs done)."""
    latest = read_latest(out) or {}
    return {
        "checkpoint_path": str(out / FINAL_WEIGHTS),
        "loss_curve": latest.get("loss_curve", []),
        "val_curve": latest.get("val_curve", []),
        "best_epoch": latest.get("best_epoch"),
        "stopped_early": latest.get("stopped_early", False),
        "epochs": latest.get("epoch", 0),
        "resumed_from": latest.get("resumed_from", 0),
    }


def is_finished(out: Path, epochs: int) -> bool:
    """Whether the training in ``out`` is done: ``encoder.pt`` written and ``latest.json`` at
    its end (``epochs`` epochs, or stopped early). A job started again then has nothing to do,
    and its resume checkpoints may be gone (:func:`drop_resume_state`)."""
    latest = read_latest(out)
    if latest is None or not (out / FINAL_WEIGHTS).is_file():
        return False
    return int(latest["epoch"]) >= epochs or bool(latest.get("stopped_early"))


def drop_resume_state(out: Path) -> int:
    """Remove what only resuming the training in ``out`` needs (:data:`RESUME_ONLY`) once
    ``encoder.pt`` is there; returns the bytes freed (0 when unfinished: nothing is removed).

    A finished encoder kept ~3.9 times its weights besides them (45 MB of ResNet18 weights,
    two 134 MB checkpoints and a 45 MB copy of the best epoch), on a cluster's quota. The
    caller removes them once the encoder is registered: a registration that failed reruns the
    job, which then finds the training finished (:func:`is_finished`) without them."""
    if not (out / FINAL_WEIGHTS).is_file():
        return 0
    sweep_stale_temps(out)  # a cut best.pt or encoder.pt of a killed attempt, if any
    return remove_counted([out / name for name in RESUME_ONLY])


def start_state(latest: EncoderState | None) -> dict[str, Any]:
    """The curves and early-stopping state to continue from: the last checkpoint's, or new."""
    state: dict[str, Any] = {
        "epoch": 0,
        "loss_curve": [],
        "val_curve": [],
        "lr_curve": [],
        "parts": [],
        "best": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "stopped_early": False,
    }
    if latest is not None:
        state |= {k: v for k, v in latest.to_dict().items() if k in state}
    return state
