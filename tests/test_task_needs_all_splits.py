"""A dataset version without train, val or test images: `data add` keeps it with a warning,
`task add` and `automl run` refuse it up front (every AutoML trial crashed on it before, with
"cannot reshape tensor of 0 elements")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.automl.tasks import check_trainable
from pomlia_hpc.data.store import find_version
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Registry, Run, Task
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, refused, task_names

pytestmark = pytest.mark.usefixtures("wide_console")
runner = CliRunner()


def _train_only_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train_images=rng.integers(0, 255, (50, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 3, (50, 1)),
    )
    return path


def test_an_npz_without_val_and_test_is_kept_with_a_warning_and_refused_as_a_task(
    reg: Registry, tmp_path: Path
) -> None:
    text = cli_ok("data", "add", "g1", str(_train_only_npz(tmp_path / "t.npz")))
    assert "splits: train 50, val 0, test 0" in text
    assert "warning: no val or test images: `pomlia task add` refuses this version" in text
    err = refused("task", "add", "tg", "--dataset", "g1", "--metric", "auc")
    assert "dataset 'g1@" in err and "has no val or test images (train 50, val 0, test 0)" in err
    assert "add the arrays val_images/val_labels, test_images/test_labels to the npz" in err
    assert task_names(reg) == []


def test_a_small_class_folder_without_test_images_names_the_fraction_option(
    reg: Registry, tmp_path: Path
) -> None:
    folder = tmp_path / "one"
    for c, name in enumerate("ab"):
        (folder / name).mkdir(parents=True)
        for i in range(2):  # a class of 2 images gives one to val, keeps one in train
            pixels = np.full((8, 8), c * 100 + i * 20, np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    text = cli_ok("data", "add", "f1", str(folder))
    assert "splits: train 2, val 2, test 0" in text and "warning: no test images" in text
    err = refused("task", "add", "tf", "--dataset", "f1", "--metric", "acc")
    assert "has no test images (train 2, val 2, test 0)" in err and "--test-fraction" in err
    assert task_names(reg) == []


def test_automl_run_refuses_a_task_registered_before_the_check(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    cli_ok("data", "add", "g1", str(_train_only_npz(tmp_path / "t.npz")))
    version = find_version(reg, "g1")
    with reg.session() as s:  # as `task add` registered it before it checked the splits
        s.add(
            Task(name="old", dataset_version_id=version.id, metric="auc", task_type="multi-class")
        )
    err = refused("automl", "run", "old", "--trials", "1")
    assert "has no val or test images" in err
    with reg.session() as s:
        assert s.scalar(select(Run.id)) is None  # no trial, no job
    assert not any((workspace.home / "runs").iterdir())


def test_a_binary_version_with_three_classes_is_refused_as_a_task() -> None:
    # versions ingested before `data add` refused --task-type binary-class for 3 classes
    sizes = {"train": 5, "val": 2, "test": 2}
    meta = {"task_type": "binary-class", "n_classes": 3, "split_sizes": sizes}
    with pytest.raises(InputError, match=r"'g2@ab' is binary-class but has 3 classes: expected"):
        check_trainable(meta, "g2@ab")
    check_trainable({**meta, "n_classes": 2}, "g2@ab")


def test_a_one_image_val_split_is_refused_by_task_add_and_automl_run(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    # breastmnist at `data synth --scale 0.01`: train 5, val 1, test 2
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 1), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None]
    np.savez(tmp_path / "b.npz", **arrays)
    cli_ok("data", "add", "b1", str(tmp_path / "b.npz"))
    err = refused("task", "add", "tb", "--dataset", "b1", "--metric", "auc")
    assert "dataset 'b1@" in err and "val has 1 image(s) (train 6, val 1, test 2)" in err
    assert "expected at least 2 images in val and in test" in err
    assert task_names(reg) == []
    version = find_version(reg, "b1")
    with reg.session() as s:  # as `task add` registered it before it checked the sizes
        s.add(Task(name="old", dataset_version_id=version.id, metric="auc", task_type="binary"))
    err = refused("automl", "run", "old", "--trials", "1")
    assert "val has 1 image(s)" in err
    with reg.session() as s:
        assert s.scalar(select(Run.id)) is None  # no trial, no job
