"""Edge cases of the fingerprint encoder's training job (:mod:`pomlia_hpc.fingerprint.train`):
a training that raises in an epoch."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from pomlia_hpc.curves import CURVES_DIR
from pomlia_hpc.data.store import open_version
from pomlia_hpc.fingerprint import trainjob
from pomlia_hpc.fingerprint.loader import Source
from pomlia_hpc.fingerprint.train import TrainJob
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset, tiny_encoder_config


@pytest.mark.usefixtures("restore_torch_threads")
def test_an_encoder_training_that_raises_closes_its_curves(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An epoch that raised (a diverged loss, a read error) left the TensorBoard writer's
    thread running in the job's process: the curves were closed only after the last epoch."""
    ref = tiny_dataset(workspace, reg, "blood", sizes=(32, 8, 8))
    # The job sets the rank variables of a one-process run in os.environ: put back after.
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "0")

    def diverged(*args: object, **kwargs: object) -> torch.Tensor:
        raise FloatingPointError("held-out loss is nan")

    monkeypatch.setattr(trainjob, "validation_loss", diverged)
    out = tmp_path / "enc"
    before = set(threading.enumerate())
    with pytest.raises(FloatingPointError):
        TrainJob(
            tiny_encoder_config(1), [Source(str(open_version(reg, ref).path), 0, 32)], str(out)
        )()
    assert list((out / CURVES_DIR).glob("events.out.tfevents.*"))  # the curves were begun
    assert [t.name for t in set(threading.enumerate()) - before] == []
