"""Training curves: TensorBoard event files beside the checkpoints of every training (the
encoder's is checked in test_fingerprint_model.py), with loss, learning rate and validation
metrics per epoch, continued on resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from pomlia_hpc.automl.engine import EngineOptions, TrainRequest, train
from pomlia_hpc.automl.space import TrainConfig
from pomlia_hpc.curves import CURVES_DIR, Curves, read_curves
from pomlia_hpc.data.store import open_version
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset


def test_curves_write_what_tensorboard_reads(tmp_path: Path) -> None:
    with Curves(tmp_path / "run") as c:
        c.epoch(1, {"train/loss": 2.0, "val/acc": 0.25, "val/auc": None})
        c.epoch(2, {"train/loss": 1.5, "val/acc": float("nan")})
    with Curves(tmp_path / "run") as c:  # a resumed run rewrites epoch 2 and goes on
        c.epoch(2, {"train/loss": 1.4})
        c.epoch(3, {"train/loss": 1.0})
    got = read_curves(tmp_path / "run")
    assert got["train/loss"] == [(1, 2.0), (2, pytest.approx(1.4)), (3, 1.0)]
    assert got["val/acc"] == [(1, 0.25)] and "val/auc" not in got
    with Curves(tmp_path / "off", enabled=False) as c:  # ranks other than 0
        c.epoch(1, {"train/loss": 1.0})
    assert not (tmp_path / "off").exists()


def test_an_automl_trial_writes_curves_per_epoch_and_on_resume(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    ref = tiny_dataset(workspace, reg, "blood", sizes=(48, 16, 16))
    store = str(open_version(reg, ref).path)
    cfg = TrainConfig(arch="small_cnn", lr=3e-3, batch_size=16, augmentation="none")

    def request(epochs: int) -> TrainRequest:
        return TrainRequest(
            store,
            "multi-class",
            cfg,
            epochs,
            str(tmp_path / "work"),
            str(tmp_path / f"m{epochs}.pt"),
            "k",
            options=EngineOptions(threads=1),
        )

    train(request(1))
    result = train(request(2))  # resumed from epoch 1
    curves = read_curves(tmp_path / "work" / CURVES_DIR)
    assert [s for s, _ in curves["train/loss"]] == [1, 2]
    losses = [h["train_loss"] for h in result.history]
    assert [v for _, v in curves["train/loss"]] == pytest.approx(losses)
    assert [s for s, _ in curves["val/acc"]] == [1, 2]
    assert all(0.0 <= v <= 1.0 for _, v in curves["val/acc"])
    assert curves["train/lr_body"] == [(1, pytest.approx(3e-3)), (2, pytest.approx(3e-3))]


def test_tensorboard_shows_a_resumed_epoch_once(tmp_path: Path) -> None:
    """A training preempted after it logged epoch 2 but before that epoch's checkpoint trains
    and logs epoch 2 again: TensorBoard, which reads a folder's event files as one run, drew
    both values at step 2 (the module said it showed each epoch once, the newest value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Curves(tmp_path / "run", first_step=1) as c:
        c.epoch(1, {"train/loss": 2.0})
        c.epoch(2, {"train/loss": 1.5})
    with Curves(tmp_path / "run", first_step=2) as c:  # resumed from epoch 1's checkpoint
        c.epoch(2, {"train/loss": 1.25})
        c.epoch(3, {"train/loss": 1.0})
    shown = EventAccumulator(str(tmp_path / "run"))
    shown.Reload()
    assert [(e.step, e.value) for e in shown.Scalars("train/loss")] == [
        (1, 2.0),
        (2, 1.25),
        (3, 1.0),
    ]
    assert read_curves(tmp_path / "run")["train/loss"] == [(1, 2.0), (2, 1.25), (3, 1.0)]
