"""A task whose metric is undefined on val (AUC over a split of one class) is refused by `task
add` and `automl run` before any job starts. Before, `task add` took it and every trial of the
study ran, then no model was registered ("validation auc is undefined"). Undefined on test
only, it is taken with a warning (the study picks by val; the test values read n/a)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from pomlia_hpc.data.store import find_version
from pomlia_hpc.registry import Registry, Run, Task
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, refused, task_names

pytestmark = pytest.mark.usefixtures("wide_console")
runner = CliRunner()


def _folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_auc_on_a_1_to_30_folder_is_refused_naming_the_class_with_one_image(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    cli_ok("data", "add", "imb", str(_folder(tmp_path / "imb", {"a": 30, "b": 1})))
    err = refused("task", "add", "ti", "--dataset", "imb", "--metric", "auc")
    assert "dataset 'imb@" in err and "metric auc is undefined on its val split" in err
    assert "val (3 images) holds only class 'a' (3); class 'b' has 1 image in all" in err
    assert "expected images of at least 2 classes in val" in err
    assert "choose --metric acc or f1_macro" in err
    assert task_names(reg) == []
    # accuracy is defined on a split of one class, but a constant model scores 1 there
    text = " ".join(cli_ok("task", "add", "ti-acc", "--dataset", "imb", "--metric", "acc").split())
    assert (
        "warning: dataset imb@" in text
        and "val holds only class 'a' and test holds only class 'a': there acc cannot tell a "
        "model from one that gives that class to every image"
        in text
    ), text
    version = find_version(reg, "imb")
    with reg.session() as s:  # as `task add` registered it before it checked the metric
        s.add(Task(name="old", dataset_version_id=version.id, metric="auc", task_type="binary"))
    err = refused("automl", "run", "old", "--trials", "1")
    assert "metric auc is undefined on its val split: val (3 images) holds only class" in err
    with reg.session() as s:
        assert s.scalar(select(Run.id)) is None  # no trial, no job
    assert not any((workspace.home / "runs").iterdir())


def test_auc_is_taken_where_val_and_test_miss_a_class_but_hold_two(
    reg: Registry, tmp_path: Path
) -> None:
    # class 'a' has one image, which stays in train: AUC is the mean over 'b' and 'c'
    cli_ok("data", "add", "s1", str(_folder(tmp_path / "s1", {"a": 1, "b": 5, "c": 5})))
    cli_ok("task", "add", "ts", "--dataset", "s1", "--metric", "auc")
    assert task_names(reg) == ["ts"]


def _multi_label_npz(path: Path, val_labels: list[list[int]]) -> Path:
    rng = np.random.default_rng(0)
    train = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]] * 3, np.uint8)
    test = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.uint8)
    val = np.array(val_labels, np.uint8)
    arrays = {}
    for split, labels in (("train", train), ("val", val), ("test", test)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (len(labels), 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return path


def test_a_multi_label_val_without_any_label_both_on_and_off_is_refused_for_auc(
    reg: Registry, tmp_path: Path
) -> None:
    # label '0' on every val image, '1' and '2' on none ('2' never occurs at all)
    flat = _multi_label_npz(tmp_path / "flat.npz", [[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    cli_ok("data", "add", "ml", str(flat))
    err = refused("task", "add", "tm", "--dataset", "ml", "--metric", "auc")
    assert "val (3 images): every label is on all of them or on none (on all: '0')" in err
    assert "expected at least one label present on some and absent from other images" in err
    assert task_names(reg) == []
    # one label on some val images and off others is enough (the AUC is over that label)
    mixed = _multi_label_npz(tmp_path / "mixed.npz", [[1, 0, 0], [0, 0, 0], [1, 0, 0]])
    cli_ok("data", "add", "ml2", str(mixed))
    cli_ok("task", "add", "tm2", "--dataset", "ml2", "--metric", "auc")
    assert task_names(reg) == ["tm2"]


def test_auc_undefined_on_test_only_is_taken_with_a_warning(reg: Registry, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in (("train", [0, 1] * 4), ("val", [0, 1, 0]), ("test", [1, 1, 1])):
        arrays[f"{split}_images"] = rng.integers(0, 255, (len(labels), 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array(labels)[:, None]
    np.savez(tmp_path / "t.npz", **arrays)
    cli_ok("data", "add", "t1", str(tmp_path / "t.npz"))
    text = cli_ok("task", "add", "tt", "--dataset", "t1", "--metric", "auc")
    assert "warning: dataset t1@" in text
    assert (
        "metric auc is undefined on the test split: test (3 images) holds only class '1' (3); "
        "expected images of at least 2 classes in test (AutoML picks its trials by val; their "
        "test auc will read n/a)"
    ) in text
    assert task_names(reg) == ["tt"]
    assert "undefined" not in cli_ok("task", "add", "tt-acc", "--dataset", "t1", "--metric", "acc")


def test_classes_that_auc_leaves_out_on_val_and_test_are_named_by_task_add(
    reg: Registry, tmp_path: Path
) -> None:
    # class 'a' has one image, kept in train: val's and test's AUC is the mean over 'b', 'c'
    cli_ok("data", "add", "s1", str(_folder(tmp_path / "s1", {"a": 1, "b": 5, "c": 5})))
    text = " ".join(cli_ok("task", "add", "ts", "--dataset", "s1", "--metric", "auc").split())
    assert (
        "metric auc is the mean on val over 2 of 3 classes, without 'a' (no val image); on test "
        "over 2 of 3 classes, without 'a' (no test image): no trial is picked or judged on them"
    ) in text
    assert "without" not in cli_ok("task", "add", "ts-acc2", "--dataset", "s1", "--metric", "acc")
    # multi-label: a label on every val image, or on none, has no AUC there
    mixed = _multi_label_npz(tmp_path / "mixed.npz", [[1, 0, 0], [0, 0, 0], [1, 0, 0]])
    cli_ok("data", "add", "ml", str(mixed))
    text = " ".join(cli_ok("task", "add", "tm", "--dataset", "ml", "--metric", "auc").split())
    assert (
        "metric auc is the mean on val over 1 of 3 labels, without '1' (on no val image), '2' "
        "(on no val image); on test over 2 of 3 labels, without '2' (on no test image)"
    ) in text
