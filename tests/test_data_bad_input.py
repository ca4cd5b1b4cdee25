"""Every bad-input case of `pomlia data add`: one message naming the file, the field and what
was expected; exit 2; no version registered; nothing half-written visible."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.cli.app import err_console
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import data_add_line
from tests.fixtures.factories import tiny_arrays, write_npz


@pytest.fixture(autouse=True)
def wide_errors() -> Iterator[None]:
    old = err_console.width
    err_console.width = 500  # one message = one line, whatever the terminal
    yield
    err_console.width = old


Run = Callable[..., str]


@pytest.fixture
def add(data_add: Run) -> Run:
    """`pomlia data add` that must fail (see :func:`tests.fixtures.cli.data_add`)."""
    return data_add


def _arrays() -> dict[str, np.ndarray]:
    return tiny_arrays("bloodmnist", (40, 7, 13))


def test_truncated_npz(add: Run, tmp_path: Path) -> None:
    p = write_npz(tmp_path / "t.npz", _arrays())
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    err = add(p)
    assert str(p) in err and "truncated" in err and "expected a zip archive" in err


def test_damaged_npz_member_found_while_streaming(add: Run, tmp_path: Path) -> None:
    arrays = tiny_arrays("tissuemnist", (9000, 10, 10))  # > 1 chunk: some chunks get written
    p = write_npz(tmp_path / "d.npz", arrays)
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("train_images.npy")
    data = bytearray(p.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    mid = start + info.compress_size * 3 // 4
    data[mid : mid + 64] = bytes(64)
    p.write_bytes(bytes(data))
    err = add(p)
    assert str(p) in err and "'train_images'" in err and "damaged" in err and "expected" in err


def test_missing_key(add: Run, tmp_path: Path) -> None:
    a = _arrays()
    del a["val_labels"]
    err = add(write_npz(tmp_path / "m.npz", a))
    assert "m.npz" in err and "no key 'val_labels'" in err and "expected MedMNIST's keys" in err


def test_image_label_count_mismatch(add: Run, tmp_path: Path) -> None:
    a = _arrays()
    a["test_labels"] = a["test_labels"][:-2]
    err = add(write_npz(tmp_path / "c.npz", a))
    assert "c.npz" in err and "'test_labels'" in err and "11 labels but the images have 13" in err


def test_wrong_image_dtype(add: Run, tmp_path: Path) -> None:
    a = _arrays()
    a["train_images"] = a["train_images"].astype(np.int32)
    err = add(write_npz(tmp_path / "w.npz", a))
    assert "'train_images' has dtype int32: expected uint8, uint16 or float in [0, 1]" in err


def test_wrong_label_dtype(add: Run, tmp_path: Path) -> None:
    a = _arrays()
    a["train_labels"] = a["train_labels"].astype(str)
    err = add(write_npz(tmp_path / "w.npz", a))
    assert "'train_labels'" in err and "expected integer class labels" in err


def test_float_images_with_nan(add: Run, tmp_path: Path) -> None:
    a = _arrays()
    for split in ("train", "val", "test"):  # one pixel type in every split
        a[f"{split}_images"] = a[f"{split}_images"].astype(np.float32) / 255
    a["train_images"][25, 3, 3, 1] = np.nan
    err = add(write_npz(tmp_path / "n.npz", a))
    assert "n.npz" in err and "'train_images'" in err and "NaN" in err and "row 25" in err
    assert "expected finite floats in [0, 1]" in err


def test_zero_images(add: Run, tmp_path: Path) -> None:
    a = {
        "train_images": np.zeros((0, 28, 28), np.uint8),
        "train_labels": np.zeros((0, 1), np.uint8),
    }
    err = add(write_npz(tmp_path / "z.npz", a))
    assert "z.npz" in err and "'train_images' has zero images: expected at least one" in err


def test_empty_folder_has_zero_images(add: Run, tmp_path: Path) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    err = add(tmp_path / "empty")
    assert "zero images" in err and "expected" in err


def _folder(root: Path, n: int = 3) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16), 10 * i, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_mixed_sizes_in_folder(add: Run, tmp_path: Path) -> None:
    root = _folder(tmp_path / "f")
    Image.fromarray(np.zeros((20, 16), np.uint8)).save(root / "b" / "odd.png")
    err = add(root)
    assert str(root / "b" / "odd.png") in err and "is 20x16 px: expected 16x16" in err


def test_unreadable_image_in_folder(add: Run, tmp_path: Path) -> None:
    root = _folder(tmp_path / "f")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    err = add(root)
    assert str(root / "a" / "broken.png") in err and "cannot be read" in err
    assert "expected a valid PNG, JPEG or TIFF image" in err


def test_truncated_image_found_while_decoding(add: Run, tmp_path: Path) -> None:
    root = _folder(tmp_path / "f")
    rng = np.random.default_rng(0)
    p = root / "b" / "cut.png"
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:80])  # header intact, pixel data cut
    err = add(root)
    assert str(p) in err and "cannot be read" in err


def test_image_of_a_format_not_read_in_folder(add: Run, tmp_path: Path) -> None:
    # notes.txt is skipped (tests/test_data_folder_files.py); an image we cannot read is not
    root = _folder(tmp_path / "f")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "a" / "scan.bmp")
    err = add(root)
    assert str(root / "a" / "scan.bmp") in err and "is a .bmp image, which image folders" in err
    assert "expected one of .png" in err


def test_hdf5_path_missing(add: Run, tmp_path: Path) -> None:
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["imgs"] = np.zeros((4, 8, 8), np.uint8)
        f["meta/labels"] = np.zeros(4, np.int64)
    err = add(p, "--images", "imgs", "--labels", "labels")
    assert str(p) in err and "no dataset at path 'labels' (--labels labels)" in err
    assert "expected one of: imgs, meta/labels" in err


def test_hdf5_without_its_dataset_paths_names_the_command_line_flags(
    add: Run, tmp_path: Path
) -> None:
    """The message asked for "the options images=PATH and labels=PATH", which the command line
    does not take: it names --images/--labels and the datasets the file has."""
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["imgs"] = np.zeros((4, 8, 8), np.uint8)
        f["meta/labels"] = np.zeros(4, np.int64)
    err = add(p, "--images", "imgs")
    assert err == (
        f"error: HDF5 file '{p}' needs --images PATH and --labels PATH, the paths of its image "
        "and label datasets; --labels not given (datasets in the file: imgs, meta/labels)"
    )
    assert "--images and --labels not given" in add(p)


def test_labels_out_of_declared_range(add: Run, tmp_path: Path) -> None:
    a = _arrays()
    a["val_labels"] = a["val_labels"].copy()
    a["val_labels"][4] = 9
    err = add(write_npz(tmp_path / "r.npz", a), "--n-classes", "8")
    assert (
        "r.npz" in err
        and "'val_labels' has label 9 (row 4) out of the declared class range" in err
        and "expected 0 .. 7" in err
    )


def test_medmnist_labels_out_of_info_range(add: Run, tmp_path: Path) -> None:
    a = tiny_arrays("breastmnist", (10, 2, 2))
    a["train_labels"] = np.full_like(a["train_labels"], 2)
    root = tmp_path / "root"
    root.mkdir()
    write_npz(root / "breastmnist.npz", a)
    err = add("medmnist:breastmnist", "--root", str(root))
    assert "breastmnist.npz" in err and "'train_labels' has label 2" in err
    assert "expected 0 .. 1" in err


@pytest.mark.parametrize("name", ["has space", "a/b", "", ".hidden", "a:b", "123"])
def test_name_not_valid(add: Run, tmp_path: Path, name: str) -> None:
    err = add(write_npz(tmp_path / "ok.npz", _arrays()), name=name)
    assert f"dataset name '{name}' is not valid: expected letters, digits" in err


def test_store_path_not_writable(add: Run, tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    (home / "stores").write_text("a file where the stores folder should be")
    Registry.open(f"sqlite:///{home / 'registry.db'}").dispose()  # as `pomlia init` would
    err = add(write_npz(tmp_path / "ok.npz", _arrays()), home=home)
    assert f"store path '{home / 'stores'}' is not writable" in err
    assert "expected a writable directory" in err
    assert not (home / "tmp").exists() or not list((home / "tmp").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_store_path_read_only(add: Run, tmp_path: Path, workspace: Workspace) -> None:
    workspace.stores.chmod(0o500)
    try:
        err = add(write_npz(tmp_path / "ok.npz", _arrays()))
    finally:
        workspace.stores.chmod(0o700)
    assert "is not writable" in err


def test_exit_code_and_message_from_the_real_command(tmp_path: Path) -> None:
    """The console script itself (not just in-process): exit 2, one 'error:' message."""
    a = _arrays()
    del a["train_images"]
    p = write_npz(tmp_path / "x.npz", a)
    Registry.open(f"sqlite:///{tmp_path / 'ws' / 'registry.db'}").dispose()  # `pomlia init`
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pomlia_hpc",
            "--home",
            str(tmp_path / "ws"),
            "data",
            "add",
            "x",
            str(p),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "no key 'train_images'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_option_the_source_does_not_take_is_named_as_typed(add: Run, tmp_path: Path) -> None:
    """The message named the options as Python keywords (``class_names``), not as typed."""
    npz = write_npz(tmp_path / "a.npz", _arrays())
    err = add(npz, "--val-fraction", "0.2", "--images", "x")
    assert err == (
        "error: options do not apply to an npz source: --images, --val-fraction; it takes "
        "--class-names, --n-classes, --task-type"
    )
    folder = tmp_path / "imgs"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        Image.new("L", (8, 8)).save(folder / label / "0.png")
    err = add(folder, "--n-classes", "2")
    assert err.startswith("error: option does not apply to a folder source: --n-classes;")
    err = add(npz, "--no-download")
    assert err.startswith("error: option does not apply to an npz source: --no-download;")
    err = add(npz, "--task-type", "regression")
    assert err.startswith("error: --task-type 'regression' is not known: expected one of ")
    assert add(npz, "--max-classes", "0") == "error: --max-classes 0: expected a whole number >= 1"


@pytest.mark.parametrize("kind", ["external", "soft"])
def test_hdf5_broken_link_is_named_as_a_link(add: Run, tmp_path: Path, kind: str) -> None:
    """A link whose target is missing read as "has no dataset at path 'x' ... expected one
    of: s, y", as if the name were not in the file."""
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["y"] = np.zeros(4, np.int64)
        if kind == "external":
            f["x"] = h5py.ExternalLink("missing.h5", "/x")
        else:
            f["x"] = h5py.SoftLink("/nothere")
    err = add(p, "--images", "x", "--labels", "y")
    if kind == "external":  # refused as external, whether or not its file exists
        assert "'x' (--images x) is an external link to '/x' in file 'missing.h5'" in err, err
    else:
        assert "'x' (--images x) is a link to '/nothere', which does not exist" in err, err
    assert "no dataset at path" not in err


@pytest.mark.parametrize("other", ["uint16", "float32"])
def test_splits_of_different_pixel_types(add: Run, tmp_path: Path, other: str) -> None:
    # Each split was scaled by its own rule (12-bit val stretched by its maximum, uint8 train
    # as it is) and the card recorded the train split's: the server squashed a val upload.
    a = _arrays()
    val = a["val_images"]
    a["val_images"] = val.astype(np.uint16) * 16 if other == "uint16" else val / np.float32(255)
    err = add(write_npz(tmp_path / "s.npz", a))
    assert (
        f"s.npz', key 'val_images' has dtype {other} but key 'train_images' has uint8: "
        "expected one pixel type in every split"
    ) in err


def test_an_empty_split_of_another_pixel_type_is_not_refused(
    workspace: Workspace, tmp_path: Path
) -> None:
    # np.zeros((0, H, W)) is float64: a split without images has no pixels to scale.
    a = _arrays()
    a["test_images"] = np.zeros((0, *a["test_images"].shape[1:]))
    a["test_labels"] = a["test_labels"][:0]
    out = data_add_line("hollow", str(write_npz(tmp_path / "e.npz", a)))
    assert "splits: train 40, val 7, test 0" in out, out
