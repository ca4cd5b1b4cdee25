"""`data add`'s label options: task types spelt as `task add` spells them, binary only with 2
classes, and class names / counts that contradict each other refused instead of resolved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.data.sources import open_source
from pomlia_hpc.errors import InputError
from pomlia_hpc.vocab import TASK_TYPE_SPELLINGS, medmnist_task, task_type_choices
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok
from tests.fixtures.factories import tiny_arrays, write_npz

Run = Callable[..., str]


def _npz(path: Path, n_classes: int = 3) -> Path:
    """bloodmnist look-alike arrays with labels 0 .. n_classes-1."""
    arrays = tiny_arrays("bloodmnist", (30, 9, 9))
    for split in ("train", "val", "test"):
        y = arrays[f"{split}_labels"]
        arrays[f"{split}_labels"] = np.arange(len(y))[:, None] % n_classes
    return write_npz(path, arrays)


def _folder(path: Path, classes: tuple[str, ...]) -> Path:
    for c in classes:
        (path / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(path / c / f"{i}.png")
    return path


@pytest.mark.parametrize("spelling", TASK_TYPE_SPELLINGS)
def test_data_add_takes_every_task_type_spelling_task_add_takes(
    spelling: str, tmp_path: Path
) -> None:
    # `binary`, `multi-label`, `ordinal` were refused ("not known: expected one of
    # 'multi-class', 'binary-class', ...") though --help offered them and task add took them.
    src = open_source(_npz(tmp_path / "a.npz", n_classes=2), task_type=spelling.upper())
    assert src.label_info.task_type == medmnist_task(spelling)  # MedMNIST's, as stores keep


@pytest.mark.usefixtures("wide_console")
def test_help_lists_exactly_the_accepted_task_types(workspace: Workspace, tmp_path: Path) -> None:
    for command in (["data", "add"], ["task", "add"]):
        out = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"}).output
        assert task_type_choices() in " ".join(out.replace("│", " ").split()), out
    for spelling in TASK_TYPE_SPELLINGS:
        assert spelling in task_type_choices()
    text = cli_ok("data", "add", "b", str(_npz(tmp_path / "b.npz", 2)), "--task-type", "binary")
    assert "new version b@" in text
    assert "binary-class" in cli_ok("data", "list")


def test_an_unknown_task_type_lists_the_accepted_ones(data_add: Run, tmp_path: Path) -> None:
    err = data_add(_npz(tmp_path / "a.npz"), "--task-type", "regression")
    want = f"error: --task-type 'regression' is not known: expected one of {task_type_choices()}"
    assert err == want


def test_binary_needs_exactly_two_classes(data_add: Run, tmp_path: Path) -> None:
    # 0..2 labels were stored as "binary-class, 3 classes"; AutoML then failed with
    # "validation auc is undefined".
    npz = _npz(tmp_path / "a.npz", n_classes=3)
    err = data_add(npz, "--task-type", "binary-class")
    assert err == (
        "error: a binary task (--task-type binary) needs exactly 2 classes, but the labels "
        "have 3 classes (0 .. 2): expected 2 (or --task-type multi-class)"
    )
    err = data_add(_npz(tmp_path / "b.npz", 2), "--task-type", "binary", "--n-classes", "3")
    assert "needs exactly 2 classes, but --n-classes is 3" in err
    err = data_add(npz, "--task-type", "binary", "--class-names", "a,b,c")
    assert "needs exactly 2 classes, but --class-names gives 3 names" in err
    err = data_add(_folder(tmp_path / "one", ("a",)), "--task-type", "binary")
    assert "needs exactly 2 classes, but image folder" in err and "has 1 class folder(s)" in err


def test_a_folder_is_never_multi_label(data_add: Run, tmp_path: Path) -> None:
    err = data_add(_folder(tmp_path / "f", ("a", "b")), "--task-type", "multi-label")
    assert "--task-type multi-label does not apply (each image has one class" in err


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (
            ("--class-names", "a,b,c,d", "--n-classes", "3"),
            "error: --class-names gives 4 names but --n-classes is 3: expected the same number "
            "(or only one of the two)",
        ),
        (
            ("--class-names", "a,a,b"),
            "error: --class-names 'a,a,b' names 'a' more than once: expected one name per class",
        ),
        (
            ("--class-names", ",,"),
            "error: --class-names ',,' has an empty name (name 1 of 3): expected "
            "comma-separated, non-empty names",
        ),
        (("--class-names", "a, ,c"), "has an empty name (name 2 of 3)"),
    ],
)
def test_contradicting_class_options_are_refused(
    data_add: Run, tmp_path: Path, opts: tuple[str, ...], message: str
) -> None:
    # They were resolved silently: 4 classes, a duplicate name, the option ignored.
    err = data_add(_npz(tmp_path / "a.npz"), *opts)
    assert err == message if message.startswith("error:") else message in err


def test_a_class_count_against_the_multi_label_columns_is_refused(
    data_add: Run, tmp_path: Path
) -> None:
    npz = write_npz(tmp_path / "c.npz", tiny_arrays("chestmnist", (20, 5, 5)))
    err = data_add(npz, "--n-classes", "3")
    assert "--n-classes is 3 but the labels have 14 columns: expected 14" in err


def test_class_options_from_the_library_or_a_pipeline_file_are_checked_too(
    tmp_path: Path,
) -> None:
    npz = _npz(tmp_path / "a.npz")
    with pytest.raises(InputError, match="names 'x' more than once"):
        open_source(npz, class_names=["x", "x", "y"])
    with pytest.raises(InputError, match="--class-names is an empty list"):
        open_source(npz, class_names=[])
    for bad in ("three", 2.5, True, 0):  # int("three") was a ValueError traceback
        with pytest.raises(InputError, match=r"--n-classes .*: expected a whole number >= 1"):
            open_source(npz, n_classes=bad)
    assert open_source(npz, n_classes="4").label_info.n_classes == 4


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_class_count_below_one_is_one_error_line(
    data_add: Run, tmp_path: Path, value: str
) -> None:
    """`--n-classes 0` printed typer's boxed "Invalid value" error, unlike every other
    option's one line."""
    err = data_add(_npz(tmp_path / "a.npz"), "--n-classes", value)
    assert err == f"error: --n-classes {value}: expected a whole number >= 1"
