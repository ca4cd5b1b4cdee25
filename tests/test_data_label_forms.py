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
from tests.fixtures.cli import data_add_line, data_show_json, runner
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
    y = np.where(np.arange(40) == 0, 255, Y)  # one row in 40 (2.5 %): a marker, not a class
    out = data_add_line("ign", str(_h5(tmp_path / "i.h5", y=y)), "--images", "x", "--labels", "y")
    assert "'3' (any split), '4' (any split), '5' (any split), '6' (any split), '7' (any " in out
    assert "'7' (any split) and 248 more" in out and "'254'" not in out
    assert (
        "warning: label 255 (1 row(s)) is far above the others (0 .. 2): it looks like a "
        "missing-label ('ignore') marker, and made 256 classes"
    ) in out
    assert "give --n-classes 3 to have such labels refused" in out
    from pomlia_hpc.cli import app

    # `data show` (the detail view) lists every class without images, not the first five.
    shown = " ".join(runner.invoke(app, ["data", "show", "ign"]).output.split())
    assert "'254'" in shown and "248 more" not in shown, shown
    plain = data_add_line(
        "fine", str(_h5(tmp_path / "f.h5", y=Y)), "--images", "x", "--labels", "y"
    )
    assert "marker" not in plain


@pytest.mark.parametrize("top", [255, 10])
def test_binary_labels_coded_0_top_are_told_to_be_remapped(tmp_path: Path, top: int) -> None:
    # 0/255 masks were told "keep only the rows whose label is not 255 ... (or give
    # --n-classes 1 ...)": that deletes a class, or declares a 1-class task.
    y = (Y > 0) * top
    out = data_add_line(
        f"b{top}", str(_h5(tmp_path / "b.h5", y=y)), "--images", "x", "--labels", "y"
    )
    assert f"warning: label {top} ({int((y == top).sum())} row(s), " in out, out
    assert f"if the labels are 2 classes coded 0/{top}, remap them to 0 .. 1 in the source" in out
    assert "give --n-classes" not in out and "not " + str(top) not in out


def test_a_frequent_far_label_is_told_to_be_remapped_not_dropped(tmp_path: Path) -> None:
    y = np.where(np.arange(40) % 10 == 0, 255, Y)  # 10 % of the rows: likely a class
    out = data_add_line("often", str(_h5(tmp_path / "o.h5", y=y)), "--images", "x", "--labels", "y")
    assert "warning: label 255 (4 row(s), 10 %) is far above the others (0 .. 2)" in out, out
    assert "if the labels are 4 classes coded 0/1/2/255, remap them to 0 .. 3" in out
    assert "keep only the rows" not in out


@pytest.mark.parametrize("marker", [999, 9999, 65535])
def test_a_marker_over_the_class_cap_is_named_in_the_refusal(
    data_add: Run, tmp_path: Path, marker: int
) -> None:
    # "has 1000 classes ... raise the cap with --max-classes": the marker was never named.
    y = np.where(np.arange(40) == 3, marker, Y)
    err = data_add(_h5(tmp_path / "m.h5", y=y), "--images", "x", "--labels", "y")
    assert f"has {marker + 1} classes (largest label + 1): expected at most 500" in err, err
    assert f"label {marker} (1 row(s)) is far above the others (0 .. 2): it looks like a " in err
    assert f"keep only the rows whose label is not {marker} in the source" in err
    many = np.arange(40) * 20  # spread out, no marker: the plain refusal
    err = data_add(_h5(tmp_path / "s.h5", y=many), "--images", "x", "--labels", "y")
    assert "has 781 classes" in err and "missing-label" not in err, err


def test_rows_without_a_label_under_a_single_label_task_are_named_as_such(
    data_add: Run, tmp_path: Path
) -> None:
    # "row 2 is [0, 0, 0], not one-hot ... expected --task-type multi-label for several
    # labels per image": an all-zero row is an unlabelled image, not several labels.
    y = np.eye(3, dtype=np.uint8)[Y]
    y[[2, 7]] = 0
    args = ("--images", "x", "--labels", "y", "--task-type", "multi-class")
    err = data_add(_h5(tmp_path / "z.h5", y=y), *args)
    assert "has 3 label columns and 2 row(s) with no 1 (row " in err, err
    assert "drop those rows in the source (or label them) and add it again" in err
    assert "multi-label" not in err
    y[5] = [1, 1, 0]  # several labels in a row: still the multi-label hint, naming that row
    err = data_add(_h5(tmp_path / "w.h5", y=y), *args)
    assert "is [1, 1, 0], not one-hot" in err and "expected --task-type multi-label" in err


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
