"""Hostile and careless inputs to `pomlia data add` that used to take the machine's memory:
label arrays with millions of columns, label values that invent millions of classes, images
of 30000 px per side. Each is refused from its declared shape, before it is read (tiny files
whose npy headers claim large arrays), with one message and exit 2."""

from __future__ import annotations

import json
import struct
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
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.store import open_store
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import open_registry, tiny_arrays, write_npz

Run = Callable[..., str]


@pytest.fixture(autouse=True)
def wide_errors() -> Iterator[None]:
    old = err_console.width
    err_console.width = 500
    yield
    err_console.width = old


@pytest.fixture
def add(data_add: Run) -> Run:
    """`pomlia data add` that must fail (see :func:`tests.fixtures.cli.data_add`)."""
    return data_add


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """A version 1.0 npy header announcing ``shape`` of ``descr``."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    body = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def npz_with(
    path: Path, arrays: dict[str, np.ndarray], claimed: dict[str, tuple[tuple[int, ...], int]]
) -> Path:
    """An npz of ``arrays`` plus members whose header claims a shape: ``claimed[key] =
    (shape, zero bytes actually written after the header)``. Zeros deflate ~1000:1, so a
    member of tens of MB of real data is a few KB on disk."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for key, arr in arrays.items():
            with z.open(f"{key}.npy", "w") as fh:
                np.lib.format.write_array(fh, arr)
        for key, (shape, n_bytes) in claimed.items():
            with z.open(f"{key}.npy", "w", force_zip64=True) as fh:
                fh.write(npy_header(shape))
                block = bytes(1 << 20)
                while n_bytes > 0:
                    fh.write(block[: min(n_bytes, len(block))])
                    n_bytes -= len(block)
    return path


def small_images(n: int = 20, side: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side), dtype=np.uint8)


# --- 1. label bombs ------------------------------------------------------------------------


def test_label_columns_over_the_cap_are_refused_before_reading(add: Run, tmp_path: Path) -> None:
    # 20 x 3,000,000 real (zero) labels: 60 MB of data in a ~60 KB file. It used to be read,
    # widened to int64 and turned into a dataset of 3,000,000 classes.
    p = npz_with(
        tmp_path / "bomb.npz",
        {"train_images": small_images()},
        {"train_labels": ((20, 3_000_000), 20 * 3_000_000)},
    )
    assert p.stat().st_size < 200_000
    err = add(p)
    assert str(p) in err and "'train_labels' has 3000000 label columns" in err
    assert "expected at most 500" in err and "--max-classes" in err


def test_a_header_that_claims_more_than_the_member_holds(add: Run, tmp_path: Path) -> None:
    # The 1.9 MB file claimed (20, 100,000,000); here the header claims it over 10 bytes.
    p = npz_with(
        tmp_path / "liar.npz",
        {"train_images": small_images()},
        {"train_labels": ((20, 100_000_000), 10)},
    )
    err = add(p)
    assert "'train_labels' declares shape (20, 100000000)" in err and "holds" in err


def test_a_huge_label_value_does_not_invent_classes(add: Run, tmp_path: Path) -> None:
    labels = np.zeros(20, np.int64)
    labels[7] = 2_000_000
    p = write_npz(tmp_path / "v.npz", {"train_images": small_images(), "train_labels": labels})
    err = add(p)
    assert "'train_labels' has 2000001 classes (largest label + 1)" in err
    assert "expected at most 500" in err


def test_label_rows_are_checked_before_reading(add: Run, tmp_path: Path) -> None:
    p = npz_with(
        tmp_path / "rows.npz",
        {"train_images": small_images()},
        {"train_labels": ((5_000_000,), 5_000_000)},
    )
    err = add(p)
    assert "'train_labels' has 5000000 labels but the images have 20" in err


def test_declared_class_counts_are_capped(add: Run, tmp_path: Path) -> None:
    p = write_npz(
        tmp_path / "ok.npz", {"train_images": small_images(), "train_labels": np.zeros(20)}
    )
    err = add(p, "--n-classes", "100000000")
    assert "--n-classes has 100000000 classes: expected at most 500" in err


def test_the_class_cap_is_an_option(add: Run, tmp_path: Path, workspace: Workspace) -> None:
    labels = np.arange(20) % 4
    p = write_npz(tmp_path / "four.npz", {"train_images": small_images(), "train_labels": labels})
    err = add(p, "--max-classes", "3")
    assert "has 4 classes (largest label + 1): expected at most 3" in err
    reg = open_registry(workspace)
    try:
        rec = ingest(workspace, reg, "four", p, max_classes=4)
        assert rec.meta["n_classes"] == 4
    finally:
        reg.dispose()


def test_hdf5_labels_and_images_are_checked_before_reading(add: Run, tmp_path: Path) -> None:
    p = tmp_path / "bomb.h5"
    with h5py.File(p, "w") as f:  # declared, never written: the file stays tiny
        f.create_dataset("x", shape=(20, 8, 8), dtype="u1")
        f.create_dataset("y", shape=(20, 2_000_000), dtype="u1", chunks=(1, 1 << 16))
        f.create_dataset("big", shape=(1, 30_000, 30_000), dtype="u1", chunks=(1, 512, 512))
        f.create_dataset("y1", shape=(1,), dtype="u1")
    assert p.stat().st_size < 100_000
    err = add(p, "--images", "x", "--labels", "y")
    assert "dataset 'y' has 2000000 label columns: expected at most 500" in err
    err = add(p, "--images", "big", "--labels", "y1")
    assert "dataset 'big' has images of 30000x30000 px: expected sides of 1 .. 4096" in err


def test_folder_with_more_class_folders_than_the_cap(add: Run, tmp_path: Path) -> None:
    root = tmp_path / "f"
    for cls in "abc":
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / cls / "0.png")
    err = add(root, "--max-classes", "2")
    assert f"image folder '{root}' has 3 class folders: expected at most 2" in err


# --- 2. huge images -----------------------------------------------------------------------


def test_a_30000_px_image_is_refused_before_reading(add: Run, tmp_path: Path) -> None:
    # 900 MB of real (zero) pixels would be ~900 KB on disk; the header's claim alone must do.
    side = 30_000
    p = npz_with(
        tmp_path / "huge.npz",
        {"train_labels": np.zeros(1, np.int64)},
        {"train_images": ((1, side, side), 4 << 20)},
    )
    err = add(p)
    assert "'train_images'" in err and "holds" in err  # the claim and the content disagree
    p2 = npz_with(
        tmp_path / "huge2.npz",
        {"train_labels": np.zeros(1, np.int64)},
        {"train_images": ((1, 5000, 5000), 5000 * 5000)},  # honest: 25 MB of pixels
    )
    err = add(p2)
    assert "'train_images' has images of 5000x5000 px: expected sides of 1 .. 4096" in err
    assert "--max-side-px" in err


def test_the_side_cap_is_an_option_and_applies_to_folders(add: Run, tmp_path: Path) -> None:
    p = write_npz(tmp_path / "x.npz", tiny_arrays("bloodmnist", (10, 2, 2)))
    err = add(p, "--max-side-px", "16")
    assert "has images of 28x28 px: expected sides of 1 .. 16" in err
    root = tmp_path / "wide"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((1, 4200), np.uint8)).save(root / "a" / "0.png")
    err = add(root)
    assert "0.png' has images of 1x4200 px: expected sides of 1 .. 4096" in err


def test_large_float_images_are_read_in_pieces_and_stored_exactly(
    workspace: Workspace, tmp_path: Path
) -> None:
    from pomlia_hpc.data.sources import npz as npz_source

    rng = np.random.default_rng(3)
    x = rng.random((3, 300, 200, 3)).astype(np.float64)  # 1.4 MB per image in float64
    y = np.array([0, 1, 1])
    p = write_npz(tmp_path / "f.npz", {"train_images": x, "train_labels": y})
    old = npz_source.PIECE_BYTES
    npz_source.PIECE_BYTES = 100_000  # pieces of 41 lines: 8 pieces per image
    reg = Registry.open(workspace.db_url)
    try:
        rec = ingest(workspace, reg, "floats", p)
    finally:
        npz_source.PIECE_BYTES = old
        reg.dispose()
    stored = open_store(rec.store_path).read_rows(0, 3)
    np.testing.assert_array_equal(stored, (x * 255 + 0.5).astype(np.uint8))


def test_peak_memory_of_a_refused_bomb_stays_small(tmp_path: Path) -> None:
    """The label bomb in a fresh process: peak RSS (getrusage) stays near the import cost."""
    p = npz_with(
        tmp_path / "bomb.npz",
        {"train_images": small_images()},
        {"train_labels": ((20, 3_000_000), 20 * 3_000_000)},
    )
    code = (
        "import json, resource, sys\n"
        "from pomlia_hpc.data.sources import open_source\n"
        "from pomlia_hpc.errors import InputError\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    open_source(sys.argv[1])\n"
        "    refused = False\n"
        "except InputError:\n"
        "    refused = True\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'refused': refused, 'grew_kb': peak - base}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refused"] is True
    assert result["grew_kb"] < 50_000, result  # the labels alone would be 60 MB, int64 480 MB
