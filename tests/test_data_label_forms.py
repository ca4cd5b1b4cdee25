"""`data add`'s reading of labels: one-hot rows and a declared task type, missing-label
markers (255) and long class lists, split names in HDF5 files, and a warning for images that
are not square."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.data.sources import open_source
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import data_add_line, data_show_json
from tests.fixtures.factories import tiny_arrays, write_npz

Run = Callable[..., str]

pytestmark = pytest.mark.usefixtures("workspace")


def _h5(path: Path, **labels: np.ndarray) -> Path:
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        f["x"] = rng.integers(0, 256, (40, 16, 16), dtype=np.uint8)
        for key, value in labels.items():
            f[key] = value
    return path


Y = np.random.default_rng(5).integers(0, 3, 40)


def test_one_hot_labels_with_a_single_label_task_type_are_class_indices(tmp_path: Path) -> None:
    # `--task-type multi-class` was ignored: 3 one-hot columns became a multi-label task
    # whose split was not stratified by class.
    h5 = _h5(tmp_path / "oh.h5", y=np.eye(3, dtype=np.uint8)[Y])
    out = data_add_line(
        "oh", str(h5), "--images", "x", "--labels", "y", "--task-type", "multi-class"
    )
    assert "note: labels are one-hot (3 columns, exactly one 1 per row): read as class " in out
    meta = data_show_json("oh")["meta"]
    assert meta["task_type"] == "multi-class" and meta["label_width"] == 1
    assert meta["class_names"] == ["0", "1", "2"]
    dist = meta["label_distribution"]
    assert isinstance(dist, dict) and all(n > 0 for s in ("val", "test") for n in dist[s])
    src = open_source(h5, images="x", labels="y", task_type="multi-class")
    assert sorted(src.labels()[:, 0].tolist()) == sorted(Y.tolist())
    src.close()


def test_one_hot_npz_reads_as_classes_and_names_must_match_columns(tmp_path: Path) -> None:
    arrays = tiny_arrays("bloodmnist", (30, 9, 9))
    for split in ("train", "val", "test"):
        n = len(arrays[f"{split}_labels"])
        arrays[f"{split}_labels"] = np.eye(4, dtype=np.uint8)[np.arange(n) % 4]
    npz = write_npz(tmp_path / "a.npz", arrays)
    src = open_source(npz, task_type="ordinal")
    assert src.label_info.task_type == "ordinal-regression"
    assert src.label_info.n_classes == 4 and src.labels().shape[1] == 1
    names = open_source(npz, task_type="multi-class", class_names="a,b,c,d").label_info
    assert names.class_names == ["a", "b", "c", "d"]
    from pomlia_hpc.errors import InputError

    with pytest.raises(InputError, match="--class-names gives 3 but the one-hot labels have 4"):
        open_source(npz, task_type="multi-class", class_names="a,b,c")
    plain = open_source(npz).label_info  # without a task type: today's reading, with a note
    assert plain.task_type == "multi-label, binary-class"
    assert "pass --task-type multi-class" in plain.notes[0]["text"]


def test_a_task_type_that_conflicts_with_the_labels_is_refused(
    data_add: Run, tmp_path: Path
) -> None:
    multi = np.random.default_rng(1).integers(0, 2, (40, 4))
    multi[0] = [1, 0, 1, 1]
    h5 = _h5(tmp_path / "m.h5", m=multi)
    for task in ("binary", "ordinal", "multi-class"):
        err = data_add(h5, "--images", "x", "--labels", "m", "--task-type", task)
        assert "has 4 label columns and row 0 is [1, 0, 1, 1], not one-hot" in err, err
        assert "expected --task-type multi-label" in err
    err = data_add(
        _h5(tmp_path / "o.h5", y=np.eye(3)[Y]),
        "--images",
        "x",
        "--labels",
        "y",
        "--task-type",
        "binary",
    )
    assert "needs exactly 2 classes, but the one-hot labels have 3 columns" in err


def test_without_a_task_type_one_hot_rows_get_a_note(tmp_path: Path) -> None:
    h5 = _h5(tmp_path / "oh.h5", y=np.eye(3, dtype=np.uint8)[Y])
    out = data_add_line("oh", str(h5), "--images", "x", "--labels", "y")
    assert (
        "note: every label row has exactly one 1 (3 columns): read as multi-label (each column "
        "a yes/no label, and the split is not stratified by class); if these are one-hot "
        "classes, pass --task-type multi-class (or binary / ordinal)"
    ) in out
    assert out.count("every label row has exactly one 1") == 1
    assert data_show_json("oh")["meta"]["task_type"] == "multi-label, binary-class"


def test_a_label_far_above_the_others_is_named_as_a_marker(tmp_path: Path) -> None:
    # One 4,877-character warning listed '3' (any split) ... '254'.
    y = np.where(np.arange(40) % 10 == 0, 255, Y)
    out = data_add_line("ign", str(_h5(tmp_path / "i.h5", y=y)), "--images", "x", "--labels", "y")
    assert "'3' (any split), '4' (any split), '5' (any split), '6' (any split), '7' (any " in out
    assert "'7' (any split) and 247 more" in out and "'254'" not in out
    assert (
        "warning: label 255 (4 row(s)) is far above the others (0 .. 2): it looks like a "
        "missing-label ('ignore') marker, and made 256 classes"
    ) in out
    assert "give --n-classes 3 to have such labels refused" in out
    plain = data_add_line(
        "fine", str(_h5(tmp_path / "f.h5", y=Y)), "--images", "x", "--labels", "y"
    )
    assert "marker" not in plain


def test_minus_one_labels_are_refused_with_a_hint(data_add: Run, tmp_path: Path) -> None:
    y = np.where(np.arange(40) % 10 == 0, -1, Y)
    err = data_add(_h5(tmp_path / "n.h5", y=y), "--images", "x", "--labels", "y")
    assert "has label -1: expected class indices >= 0 (-1 often marks a missing label" in err


@pytest.mark.parametrize("names", [["train", "valid", "TEST"], ["Training", "dev", "testing"]])
def test_hdf5_split_names_are_those_split_folders_take(tmp_path: Path, names: list[str]) -> None:
    # `valid` and `TEST` were refused ("expected train, val or test") while split folders of
    # those names were read.
    split = np.asarray([names[i % 3] for i in range(40)], dtype="S")
    h5 = _h5(tmp_path / "s.h5", y=Y, s=split)
    data_add_line("sp", str(h5), "--images", "x", "--labels", "y", "--split", "s")
    sizes = data_show_json("sp")["meta"]["split_sizes"]
    assert sizes == {"train": 14, "val": 13, "test": 13}


def test_an_unknown_hdf5_split_name_lists_the_names(data_add: Run, tmp_path: Path) -> None:
    split = np.asarray(["train", "holdout"] * 20, dtype="S")
    err = data_add(
        _h5(tmp_path / "s.h5", y=Y, s=split), "--images", "x", "--labels", "y", "--split", "s"
    )
    assert "has value 'holdout' (row 1): expected a split name, train (train/training)" in err


def test_images_that_are_not_square_get_a_warning_at_data_add(
    workspace: Workspace, tmp_path: Path
) -> None:
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 10), 30 * i + (c == "b"), np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png"
            )
    out = data_add_line("wide", str(tmp_path / "imgs"))
    assert (
        "warning: the images are 8 px high and 10 px wide: `pomlia task add` refuses this "
        "version (the model card, `model export` and the server take square images only"
    ) in out
    assert "crop or pad them to a square and add the data set again" in out
