"""Classes that no model can learn: a dataset with one class is refused by `task add` (every
AutoML trial crashed in scikit-learn), HDF5 labels that leave classes empty are named by
`data add`, and a new version whose classes, channels or task type differ is warned about."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner

pytestmark = pytest.mark.usefixtures("wide_console")


def _h5(path: Path, labels: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["x"] = rng.integers(0, 255, (len(labels), 8, 8), dtype=np.uint8)
        f["y"] = labels
    return path


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_one_class_is_warned_at_add_and_refused_by_task_add(
    workspace: Workspace, tmp_path: Path
) -> None:
    src = _h5(tmp_path / "one.h5", np.zeros(60, np.int64))
    text = _flat(cli_ok("data", "add", "one", str(src), "--images", "x", "--labels", "y"))
    assert "warning: fewer than 2 classes have training images" in text
    with pytest.raises(InputError) as exc:
        runner.invoke(
            app,
            ["task", "add", "t1", "--dataset", "one", "--metric", "acc"],
            catch_exceptions=False,
        )
    err = str(exc.value)
    assert "has 1 class(es) with training images ('0'; 1 class(es) in all)" in err
    assert "expected at least 2 for a classification task" in err
    # two classes are fine
    two = _h5(tmp_path / "two.h5", np.arange(60) % 2)
    text = _flat(cli_ok("data", "add", "two", str(two), "--images", "x", "--labels", "y"))
    assert "fewer than 2 classes" not in text
    cli_ok("task", "add", "t2", "--dataset", "two", "--metric", "acc")


def test_one_class_with_small_splits_is_refused_for_its_class_not_its_splits(
    workspace: Workspace, tmp_path: Path
) -> None:
    # 10 images of one class split 8 / 1 / 1: the one-image val and test splits were named
    # first, and adding images of that class only led to the class error
    src = _h5(tmp_path / "one10.h5", np.zeros(10, np.int64))
    text = _flat(cli_ok("data", "add", "one10", str(src), "--images", "x", "--labels", "y"))
    assert "splits: train 8, val 1, test 1" in text
    with pytest.raises(InputError) as exc:
        runner.invoke(
            app,
            ["task", "add", "t1", "--dataset", "one10", "--metric", "acc"],
            catch_exceptions=False,
        )
    err = str(exc.value)
    assert "has 1 class(es) with training images ('0'; 1 class(es) in all)" in err
    assert "image(s) in val" not in err and "val has 1" not in err


def test_labels_that_skip_classes_are_named(workspace: Workspace, tmp_path: Path) -> None:
    src = _h5(tmp_path / "gap.h5", np.array([0, 1, 2, 7] * 30))
    text = _flat(cli_ok("data", "add", "gap", str(src), "--images", "x", "--labels", "y"))
    assert "warning: class(es) without images in a split: '3' (any split), '4' (any split)" in text
    assert "else 0 .. the largest label" in text


def _folder(root: Path, classes: tuple[str, ...], rgb: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(10):
            shape = (8, 8, 3) if rgb else (8, 8)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_a_new_version_with_other_classes_channels_or_task_is_warned(
    workspace: Workspace, tmp_path: Path
) -> None:
    text = _flat(cli_ok("data", "add", "f", str(_folder(tmp_path / "a", ("n", "p")))))
    old = text.split("new version f@")[1].split()[0]
    assert "differs from the previous one" not in text
    text = _flat(cli_ok("data", "add", "f", str(_folder(tmp_path / "b", ("x", "y", "z"), True))))
    assert f"warning: this version of 'f' differs from the previous one (f@{old}):" in text
    assert "classes n, p -> x, y, z; channels 1 -> 3; task type binary-class -> multi-class" in text
    assert "Tasks already registered keep the version they were made with" in text
    # Same classes, channels and task: no warning.
    text = _flat(cli_ok("data", "add", "f", str(_folder(tmp_path / "c", ("x", "y", "z"), True, 1))))
    assert "new version" in text and "differs from the previous one" not in text
