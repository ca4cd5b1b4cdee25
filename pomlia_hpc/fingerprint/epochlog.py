"""The encoder training's epoch log, ``train_log.jsonl``: one JSON line per epoch.

Each line is written before the epoch's checkpoint is committed (``latest.json``), and a
resumed training trims the log to the checkpointed epochs: a job preempted between the two
then neither loses an epoch's line nor repeats it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pomlia_hpc.files import write_atomic

#: The log's file name in the encoder's training folder.
EPOCH_LOG = "train_log.jsonl"


def epoch_line(
    state: dict[str, Any], val: float | None, images: int, seconds: float
) -> dict[str, Any]:
    """The record of the epoch just ended (``state["epoch"]``): its training loss, held-out
    loss ``val``, learning rate and loss parts, and ``seconds`` of wall time for its
    ``images`` training images."""
    return {
        "epoch": state["epoch"],
        "loss": state["loss_curve"][-1],
        "val_loss": val,
        "lr": state["lr_curve"][-1],
        "parts": state["parts"][-1],
        "images": images,
        "seconds": seconds,
    }


def append_epoch_line(path: Path, line: dict[str, Any]) -> None:
    """Append ``line`` to the log ``path``."""
    with path.open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def trim_epoch_log(path: Path, epochs: int) -> None:
    """Keep the lines of the log ``path`` for epochs ``1..epochs`` (the checkpointed ones),
    atomically; a line cut short by a kill is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["epoch"]) <= epochs:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_atomic(path, "".join(kept))
