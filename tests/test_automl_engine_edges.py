"""Edge cases of one trial's training (:mod:`pomlia_hpc.automl.engine`, its data and its job):
the batch-norm recalibration of a training set that is not a multiple of the batch, labels
outside the task's classes, the curves of a training that failed, a trial that fails before
it trains."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pomlia_hpc.automl import engine
from pomlia_hpc.automl.batchnorm import recalibrate_batchnorm
from pomlia_hpc.automl.engine import EngineOptions, TrainRequest, train
from pomlia_hpc.automl.space import TrainConfig
from pomlia_hpc.automl.trainset import normalize
from pomlia_hpc.automl.trial import TrialJob, read_failure, read_result
from pomlia_hpc.curves import CURVES_DIR
from pomlia_hpc.data.store import open_version
from pomlia_hpc.errors import InputError
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset


def test_batchnorm_recalibration_weighs_each_image_alike() -> None:
    """10 images in batches of 4: the last batch (2 images) counted as much as each full one
    (torch's cumulative average is per batch), so the recalibrated mean was (-1 - 1 + 1) / 3
    instead of the images' own (8 * -1 + 2 * 1) / 10."""
    images = torch.zeros((10, 1, 4, 4), dtype=torch.uint8)  # normalised to -1
    images[8:] = 255  # normalised to +1
    bn = nn.BatchNorm2d(1)
    model = nn.Sequential(bn)
    recalibrate_batchnorm(model, images, torch.device("cpu"), torch.float32, 4)
    assert bn.running_mean.item() == pytest.approx(-0.6, abs=1e-6)
    assert bn.momentum == 0.1  # put back as it was


def _recalibrated(images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(running means, running variances) of every batch norm of one small CNN (the same
    weights each call) recalibrated over ``images`` in batches of 16."""
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 2, 1)
    recalibrate_batchnorm(model, images, torch.device("cpu"), torch.float32, 16)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return [m.running_mean.clone() for m in bns], [m.running_var.clone() for m in bns]


def test_batchnorm_recalibration_does_not_depend_on_the_stores_order() -> None:
    """A store sorted by class (user npz and HDF5 stores often are) gave class-pure batches:
    averaging each batch's variance lost the variance between the classes, and the running
    variance came out several times too small."""
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 40, (96, 1, 12, 12), generator=gen)
    images = torch.cat([noise[:48] + 10, noise[48:] + 200]).to(torch.uint8)  # dark, then bright
    shuffled = images[torch.randperm(96, generator=gen)]
    sorted_means, sorted_vars = _recalibrated(images)
    shuffled_means, shuffled_vars = _recalibrated(shuffled)
    for a, b in zip(sorted_means + sorted_vars, shuffled_means + shuffled_vars, strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.02)
    # The first layer sees the same values however the batches fall: its statistics are those
    # of all of them (the network in eval mode does not change what its first convolution makes).
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 2, 1)
    first = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    first.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    model.eval()
    with torch.no_grad():
        model(normalize(images))
    values = seen[0].transpose(0, 1).reshape(first.num_features, -1).double()
    torch.testing.assert_close(sorted_means[0].double(), values.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sorted_vars[0].double(), values.var(1), rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("restore_torch_threads")
@pytest.mark.parametrize(
    "task_type,flag,labels,message",
    [
        ("multi-class", "bloodmnist", [[3], [8]], "label 8 of row 1; expected a class index 0..7"),
        (
            "multi-label",
            "chestmnist",
            [[0] * 13 + [2]] * 2,
            "label 2 of row 0, column 13 (and 1 more); expected 0 or 1",
        ),
    ],
)
def test_extra_labels_outside_the_task_are_one_error(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    task_type: str,
    flag: str,
    labels: list[list[int]],
    message: str,
) -> None:
    """Extra images labelled outside the task's classes stopped a multi-class trial in
    cross-entropy (IndexError "Target 8 is out of bounds"; a device-side assert on CUDA), and
    a multi-label one trained on the label value 2 without a word."""
    ref = tiny_dataset(workspace, reg, "d", flag=flag, sizes=(16, 8, 8))
    store = open_version(reg, ref)
    x, _ = store.read_split("train")
    extra = tmp_path / "extra.npz"
    np.savez(extra, images=x[:2], labels=np.asarray(labels, np.int32))
    cfg = TrainConfig(arch="small_cnn", batch_size=8, augmentation="none", extra_n=2)
    req = TrainRequest(
        str(store.path),
        task_type,
        cfg,
        1,
        str(tmp_path / "work"),
        str(tmp_path / "model.pt"),
        extra_data=str(extra),
        options=EngineOptions(threads=1),
    )
    with pytest.raises(InputError, match=re.escape(f"extra data '{extra}': {message}")):
        train(req)


@pytest.mark.usefixtures("restore_torch_threads")
def test_a_training_that_fails_closes_its_curves(
    workspace: Workspace, reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training that raised (a diverged loss, out of memory) left its TensorBoard writer
    open and its thread running: a driver running trials in its
    own process (the debug executor) kept one such thread per failed trial."""
    ref = tiny_dataset(workspace, reg, "blood", sizes=(16, 8, 8))
    store = str(open_version(reg, ref).path)

    def diverged(*args: object) -> torch.Tensor:
        raise FloatingPointError("training loss is nan")

    monkeypatch.setattr(engine, "augment", diverged)
    cfg = TrainConfig(arch="small_cnn", batch_size=8, augmentation="none")
    work = tmp_path / "work"
    req = TrainRequest(
        store,
        "multi-class",
        cfg,
        1,
        str(work),
        str(tmp_path / "model.pt"),
        options=EngineOptions(threads=1),
    )
    before = set(threading.enumerate())
    with pytest.raises(FloatingPointError):
        train(req)
    assert list((work / CURVES_DIR).glob("events.out.tfevents.*"))  # the curves were begun
    assert [t.name for t in set(threading.enumerate()) - before] == []


def test_a_trial_that_fails_before_training_leaves_its_failure(tmp_path: Path) -> None:
    """A trial whose checkpoint record could not be read (written by a newer version, edited
    by hand) raised before its failure file was written: a driver restarted later found
    neither result nor failure and took the job for lost, its reason gone."""
    work = tmp_path / "configs" / "k1"
    (work / "ckpt" / "epoch-2").mkdir(parents=True)
    (work / "state.json").write_text('{"epoch": 2, "tag": "epoch-2", "best": 0.5}')
    req = TrainRequest(
        "x", "multi-class", TrainConfig(), 4, str(work), str(tmp_path / "m.pt"), "k1"
    )
    result = tmp_path / "result.json"
    with pytest.raises(InputError, match="best"):
        TrialJob(req, str(result))()
    failed = read_failure(result)
    assert failed is not None and "state.json" in failed[0] and "best" in failed[0]


@pytest.mark.usefixtures("restore_torch_threads")
def test_a_trials_image_counts_stay_counts(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """A trial's result read its metrics as floats, counts too (``"n": 8.0``), and every
    display that says what a metric was computed on (`runs list`, the study's table, the
    report: ``0.912 (n=8)``) takes only an int: no trial's count was ever shown."""
    ref = tiny_dataset(workspace, reg, "blood", sizes=(16, 8, 8))
    store = str(open_version(reg, ref).path)
    cfg = TrainConfig(arch="small_cnn", batch_size=8, augmentation="none")
    req = TrainRequest(
        store,
        "multi-class",
        cfg,
        1,
        str(tmp_path / "work"),
        str(tmp_path / "model.pt"),
        options=EngineOptions(threads=1),
    )
    result = tmp_path / "result.json"
    returned = TrialJob(req, str(result))()
    for got in (returned, read_result(result)):
        assert got is not None
        test = got["metrics"]["test"]
        assert test["n"] == 8 and test["missing"] == 0
        assert all(type(test[k]) is int for k in ("n", "missing", "auc_classes", "f1_classes"))
        assert type(test["acc"]) is float
