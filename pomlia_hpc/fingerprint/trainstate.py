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

from pomlia_hpc.training import EpochCheckpoints, EpochState

__all__ = ["EncoderState", "encoder_checkpoints", "read_latest", "read_result", "start_state"]


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
        "checkpoint_path": str(out / "encoder.pt"),
        "loss_curve": latest.get("loss_curve", []),
        "val_curve": latest.get("val_curve", []),
        "best_epoch": latest.get("best_epoch"),
        "stopped_early": latest.get("stopped_early", False),
        "epochs": latest.get("epoch", 0),
        "resumed_from": latest.get("resumed_from", 0),
    }


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
