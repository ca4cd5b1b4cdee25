"""The fingerprint plug-ins of AutoML: the encoder's weights as ``init=encoder`` and the
nearest images of other datasets as extra training data, with the real index (issue 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ConfigSpace import Configuration

from pomlia_hpc.automl import sources
from pomlia_hpc.automl.engine import train
from pomlia_hpc.automl.optimizers import Proposal
from pomlia_hpc.automl.sources import nearest_extra, read_rows_at
from pomlia_hpc.automl.space import make_configuration
from pomlia_hpc.automl.study import StudyRunner, create_study
from pomlia_hpc.data.store import open_version
from pomlia_hpc.fingerprint.extract import finish_extraction, plan_extraction
from pomlia_hpc.fingerprint.index import build_index
from pomlia_hpc.fingerprint.shards import run_shard
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, make_dataset, make_encoder, tiny_task


@pytest.fixture
def world(workspace: Workspace) -> Registry:
    """Task 'blood' on a bloodmnist look-alike, two other datasets, an encoder and its index."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(40, 16, 16))
    refs = [
        open_version(reg, "blood_data").ref,
        make_dataset(workspace, reg, "blood_b", "bloodmnist", (60, 8, 8), seed=1),
        make_dataset(workspace, reg, "organ", "organamnist", (60, 8, 8), seed=0),
    ]
    make_encoder(workspace, reg, "enc", latent_dim=8)
    plan = plan_extraction(reg, workspace, "enc", refs, shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    build_index(reg, workspace, "enc")
    return reg


def test_nearest_images_become_labelled_extra_data(world: Registry, workspace: Workspace) -> None:
    reg = world
    out = workspace.path("runs", "x", "extra.npz")
    nearest_extra(reg, workspace, "enc", "blood_data", 30, out)
    with np.load(out) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (30, 28, 28, 3) and images.dtype == np.uint8  # organ is gray: RGB now
    train_labels = open_version(reg, "blood_data").read_split("train")[1]
    assert labels.shape == (30, 1) and set(labels[:, 0]) <= set(train_labels[:, 0])


def test_rows_read_chunk_by_chunk_come_back_in_the_order_asked(
    world: Registry, workspace: Workspace
) -> None:
    store = open_version(world, "organ")
    rows = np.array([70, 3, 3, 41, 0, store.n_images - 1])
    one_by_one = np.concatenate([store.read_rows(int(r), int(r) + 1) for r in rows])
    assert store.n_images > store.chunk_rows  # several chunks are involved
    assert np.array_equal(read_rows_at(store, rows), one_by_one.reshape(len(rows), 28, 28, 1))


def test_study_with_encoder_init_and_extra_images(world: Registry, workspace: Workspace) -> None:
    reg = world
    spec = create_study(
        reg, workspace, "blood", name="fp", encoder="enc", extra_data=True, n_trials=1, max_epochs=1
    )
    assert spec.encoder is not None and spec.encoder.arch == "resnet18_imagenet"
    assert spec.space.encoder_arch == "resnet18_imagenet" and spec.space.extra_data
    runner = StudyRunner(reg, workspace, spec)
    values = {
        "arch": "resnet18_imagenet",
        "init": "encoder",
        "mode": "linear_probe",
        "lr_head": 0.05,
        "optimizer": "adamw",
        "weight_decay": 1e-4,
        "batch_size": 32,
        "augmentation": "none",
        "extra_data": "nearest",
        "extra_n": 100,
    }
    proposal = Proposal(Configuration(runner.space, values=values), 1.0)
    request = runner.trial_request(
        proposal,
        workspace.path("runs", "fp", "c"),
        workspace.path("runs", "fp", "c", "m.pt"),
        run_id=1,
    )
    assert request.init_weights == spec.encoder.path and request.extra_data
    result = train(request)
    assert result.n_train == 40 + 100 and result.n_extra == 100
    assert result.init_loaded == 120  # the whole ResNet-18 body came from the encoder


def test_an_extra_pool_smaller_than_asked_is_prepared_once_and_its_size_recorded(
    world: Registry, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = create_study(
        world, workspace, "blood", name="fx", encoder="enc", extra_data=True, max_epochs=1
    )
    runner = StudyRunner(world, workspace, spec)
    calls: list[int] = []
    real = sources.nearest_extra

    def counted(*args: Any, **kw: Any) -> Path:
        calls.append(args[4])
        return real(*args, **kw)

    monkeypatch.setattr(sources, "nearest_extra", counted)
    path = runner.extra_file(100)
    with np.load(path) as z:
        available, requested = int(z["labels"].shape[0]), int(z["requested"])
    assert requested == 2000 and 100 <= available < 2000  # the index holds fewer images
    runner.extra_file(500)
    runner.extra_file(2000)
    assert calls == [2000]  # an exhausted pool is not searched again for every trial
    values = {**FAST, "init": "scratch", "extra_data": "nearest", "extra_n": 500}
    proposal = Proposal(make_configuration(runner.space, values, "test"), 1.0)
    work = workspace.path("runs", "fx", "c")
    result = train(runner.trial_request(proposal, work, work / "m.pt", run_id=1))
    assert result.n_extra == available and result.n_train == 40 + available


def test_extra_images_never_copy_the_tasks_val_or_test_images(workspace: Workspace) -> None:
    """The same images ingested again under another name (all in train there: another content
    hash, so the index search does not skip it) are the nearest neighbours of the task's
    training images; the copies of its val and test images must not become extra training
    rows, or its val and test metrics come out inflated."""
    from pomlia_hpc.data.api import ingest
    from pomlia_hpc.data.explicit_fingerprint import image_hashes
    from pomlia_hpc.data.medmnist_info import flag_info

    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(40, 16, 16))
    task = open_version(reg, "blood_data")
    images, labels = task.read_rows(0, task.n_images), task.read_labels()
    info = flag_info("bloodmnist")
    arrays = {"train_images": images, "train_labels": labels}
    for s in ("val", "test"):  # two training images each: copies of training images are fine
        arrays[f"{s}_images"], arrays[f"{s}_labels"] = images[:2], labels[:2]
    workspace.tmp.mkdir(parents=True, exist_ok=True)
    np.savez(workspace.tmp / "copy.npz", **arrays)
    names = list(info.class_names)
    ingest(workspace, reg, "blood_copy", workspace.tmp / "copy.npz", class_names=names, workers=1)
    refs = [task.ref, open_version(reg, "blood_copy").ref]
    make_encoder(workspace, reg, "enc", latent_dim=8)
    plan = plan_extraction(reg, workspace, "enc", refs, shards=1, threads=1)
    for spec in plan.specs:
        run_shard(spec)
    finish_extraction(reg, plan)
    build_index(reg, workspace, "enc")

    out = workspace.path("runs", "x", "extra.npz")
    nearest_extra(reg, workspace, "enc", task.ref, 50, out)
    lo, hi = task.split_range("val")[0], task.split_range("test")[1]
    held_out = set(image_hashes(task.read_rows(lo, hi)).tolist())
    with np.load(out) as z:
        extra = z["images"]
        assert not held_out & set(image_hashes(extra).tolist())
        copies = int(z["held_out_copies"])
    # blood_copy holds the task's 72 images and 4 more: all but the 32 val/test copies are kept
    assert copies == 32 and len(extra) == 76 - 32
