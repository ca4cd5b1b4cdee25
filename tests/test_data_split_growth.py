"""A carved split is stable as its source grows: images added to an image folder (or rows
appended to an HDF5 file) and `pomlia data add` run again moved former val and test images
into train, so a model trained on the new version had seen the old version's held-out
images. Every image the parent version held keeps its split; only new images are carved."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.carry import held_splits
from pomlia_hpc.data.explicit_fingerprint import image_hashes
from pomlia_hpc.data.sources.intensity import PixelConverter
from pomlia_hpc.data.store import DatasetStore, open_version
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import data_add_line

pytestmark = pytest.mark.usefixtures("wide_console")


def _images(root: Path, lo: int, hi: int) -> None:
    """Random 8x8 gray PNGs ``lo .. hi-1`` in class folders ``a`` and ``b``."""
    for c in "ab":
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(lo, hi):
            rng = np.random.default_rng([ord(c), i])
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )


def _split_of(store: DatasetStore) -> dict[int, str]:
    """The split of each image of ``store``, by the hash of its pixels."""
    hashes = image_hashes(store.read_rows(0, store.n_images))
    return {
        int(h): split
        for split, (lo, hi) in store.meta["splits"].items()
        for h in hashes[lo:hi].tolist()
    }


def _moves(old: DatasetStore, new: DatasetStore) -> Counter[tuple[str, str]]:
    a, b = _split_of(old), _split_of(new)
    return Counter((a[h], b[h]) for h in a if a[h] != b[h])


def test_images_added_to_a_folder_leave_the_old_images_in_their_split(
    workspace: Workspace, tmp_path: Path
) -> None:
    _images(tmp_path / "imgs", 0, 20)
    data_add_line("grow", str(tmp_path / "imgs"))
    old = open_version(workspace, "grow")
    _images(tmp_path / "imgs", 20, 40)
    out = data_add_line("grow", str(tmp_path / "imgs"))
    new = open_version(workspace, "grow")
    assert new.version != old.version and new.n_images == 80
    # Before: 3 of v1's 4 val images (and a test image) moved, most of them into train.
    assert _moves(old, new) == Counter(), out
    assert f"40 image(s) kept their split of {old.ref}, 40 new image(s) carved" in out
    sizes = new.meta["split_sizes"]
    assert sizes["val"] >= 8 and sizes["test"] >= 8 and sizes["train"] >= 56  # about 10% each


def test_other_fractions_split_afresh_and_warn_of_the_images_now_in_train(
    workspace: Workspace, tmp_path: Path
) -> None:
    _images(tmp_path / "imgs", 0, 40)
    data_add_line("refrac", str(tmp_path / "imgs"), "--test-fraction", "0.3")
    old = open_version(workspace, "refrac")
    out = data_add_line("refrac", str(tmp_path / "imgs"), "--test-fraction", "0.1")
    new = open_version(workspace, "refrac")
    into_train = sum(n for (a, b), n in _moves(old, new).items() if b == "train")
    assert into_train > 0
    assert (
        f"warning: {into_train} val/test image(s) of {old.ref} are in train now (the split "
        "was carved afresh for the other --val-fraction / --test-fraction)"
    ) in out


def test_a_fraction_of_zero_is_a_fraction_and_other_ones_carve_afresh(
    workspace: Workspace, tmp_path: Path
) -> None:
    """0.0 was read as "not carved": a version carved with no val and test kept that split
    whatever fractions came later (the warning asking for a larger --val-fraction could not be
    followed), and a test fraction lowered to 0 was carried with a folder's reason."""
    _images(tmp_path / "imgs", 0, 20)
    empty = ("--val-fraction", "0", "--test-fraction", "0")
    data_add_line("zero", str(tmp_path / "imgs"), *empty)
    none_held = open_version(workspace, "zero")
    assert none_held.meta["splits"]["val"] == none_held.meta["splits"]["test"]  # both empty
    data_add_line("zero", str(tmp_path / "imgs"), "--val-fraction", "0.2", "--test-fraction", "0.2")
    carved = open_version(workspace, "zero")
    assert carved.ref != none_held.ref
    sizes = {k: hi - lo for k, (lo, hi) in carved.meta["splits"].items()}
    assert sizes["val"] > 0 and sizes["test"] > 0, sizes
    out = data_add_line(
        "zero", str(tmp_path / "imgs"), "--val-fraction", "0.2", "--test-fraction", "0"
    )
    into_train = sum(
        n for (a, b), n in _moves(carved, open_version(workspace, "zero")).items() if b == "train"
    )
    assert into_train >= sizes["test"]
    assert (
        f"warning: {into_train} val/test image(s) of {carved.ref} are in train now (the split "
        "was carved afresh for the other --val-fraction / --test-fraction)"
    ) in out, out


def test_rows_appended_to_an_hdf5_file_leave_the_old_rows_in_their_split(
    workspace: Workspace, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 255, (120, 8, 8), dtype=np.uint8)
    y = np.arange(120) % 2
    path = tmp_path / "d.h5"
    for n in (60, 120):
        with h5py.File(path, "w") as f:
            f["x"], f["y"] = x[:n], y[:n]
        data_add_line("rows", str(path), "--images", "x", "--labels", "y")
        if n == 60:
            old = open_version(workspace, "rows")
    assert _moves(old, open_version(workspace, "rows")) == Counter()


def test_a_given_split_is_never_changed(workspace: Workspace, tmp_path: Path) -> None:
    # A folder carved first, then given split folders: the user's split wins.
    _images(tmp_path / "imgs", 0, 10)
    data_add_line("given", str(tmp_path / "imgs"))
    old = open_version(workspace, "given")
    root = tmp_path / "split"
    for c in "ab":
        (root / "train" / c).mkdir(parents=True)
        (root / "test" / c).mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for i, f in enumerate(sorted((tmp_path / "imgs" / c).iterdir())):
            split = "train" if i < 6 else "val" if i < 8 else "test"
            (root / split / c / f.name).write_bytes(f.read_bytes())
    data_add_line("given", str(root))
    new = open_version(workspace, "given")
    assert new.meta["split_sizes"] == {"train": 12, "val": 4, "test": 4}
    assert old.version != new.version


def test_a_carved_val_beside_a_given_test_folder_takes_the_old_test_images(
    workspace: Workspace, tmp_path: Path
) -> None:
    """The parent's test images now in a train folder whose test split is a given folder:
    they go to the carved val (held out), never into the given test folder's split nor train."""
    _images(tmp_path / "imgs", 0, 20)
    data_add_line("mixed", str(tmp_path / "imgs"))
    old = open_version(workspace, "mixed")
    root = tmp_path / "split"
    for c in "ab":
        (root / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / c).rename(root / "train" / c)
    _images(root / "test", 100, 104)
    out = data_add_line("mixed", str(root), "--val-fraction", "0.1")
    new = open_version(workspace, "mixed")
    assert new.meta["split_sizes"]["test"] == 8  # the given folder only
    moves = _moves(old, new)
    assert moves == Counter({("test", "val"): 4}), (moves, out)
    assert "val/test image(s) of" not in out  # none went to train: no warning


def test_a_parent_store_that_cannot_be_read_is_said(workspace: Workspace, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 0, 10)
    data_add_line("lost", str(tmp_path / "imgs"))
    old = open_version(workspace, "lost")
    ref = old.ref
    shutil.rmtree(old.path)
    _images(tmp_path / "imgs", 10, 14)
    out = data_add_line("lost", str(tmp_path / "imgs"))
    assert f"warning: the split of {ref} could not be read (" in out, out
    assert f"so this version was carved afresh: former val/test images of {ref}" in out


def _split_by_file(store: DatasetStore, files: list[Path], channels: int) -> dict[str, str]:
    """The split of each file's image in ``store``, each file made 8-bit as ``store`` made
    its pixels (its recorded 16-bit maximum) with ``channels`` channels."""
    top = (store.meta["source"].get("intensity_scaling") or {}).get("max")
    by_hash = _split_of(store)
    out = {}
    for f in files:
        raw = np.asarray(Image.open(f))
        convert = PixelConverter("test", raw.dtype, scale_max=top)
        px = np.repeat(convert(raw[None, ..., None]), channels, axis=-1)
        out[f.name + f.parent.name] = by_hash[int(image_hashes(px)[0])]
    return out


def test_a_brighter_16_bit_image_leaves_the_old_images_in_their_split(
    workspace: Workspace, tmp_path: Path
) -> None:
    # The data set's maximum scales every stored value: new, brighter images changed every
    # old image's stored pixels, none was found in the parent and all were carved afresh.
    root = tmp_path / "imgs"
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(40):
            rng = np.random.default_rng([ord(c), i])
            top = 4096 if i < 20 else 65536  # 12-bit images, then 16-bit ones
            Image.fromarray(rng.integers(0, top, (8, 8)).astype(np.uint16)).save(
                root / c / f"{i}.png"
            )
    old_files = [root / c / f"{i}.png" for c in "ab" for i in range(20)]
    for f in [root / c / f"{i}.png" for c in "ab" for i in range(20, 40)]:
        f.rename(tmp_path / (f.parent.name + f.name))
    data_add_line("deep", str(root))
    old = open_version(workspace, "deep")
    for c in "ab":
        for i in range(20, 40):
            (tmp_path / f"{c}{i}.png").rename(root / c / f"{i}.png")
    out = data_add_line("deep", str(root))
    new = open_version(workspace, "deep")
    assert new.meta["source"]["intensity_scaling"]["max"] > 4096  # the maximum moved
    assert _split_by_file(new, old_files, 1) == _split_by_file(old, old_files, 1)
    assert f"40 image(s) kept their split of {old.ref}, 40 new image(s) carved" in out, out


def test_a_colour_image_added_to_a_grey_folder_leaves_the_old_images_in_their_split(
    workspace: Workspace, tmp_path: Path
) -> None:
    # One colour file makes the whole folder RGB: every old image's stored pixels changed.
    _images(tmp_path / "imgs", 0, 20)
    data_add_line("tint", str(tmp_path / "imgs"))
    old = open_version(workspace, "tint")
    rng = np.random.default_rng(7)
    for c in "ab":
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / c / "colour.png"
        )
    out = data_add_line("tint", str(tmp_path / "imgs"))
    new = open_version(workspace, "tint")
    assert new.images.shape[-1] == 3
    files = [tmp_path / "imgs" / c / f"{i}.png" for c in "ab" for i in range(20)]
    assert _split_by_file(new, files, 3) == _split_by_file(old, files, 1)
    assert f"40 image(s) kept their split of {old.ref}, 2 new image(s) carved" in out, out


def test_both_reads_of_the_carry_report_progress(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    # The parent's store and every carved image are read once more before the ingest: at
    # 700k files minutes during which a Slurm output file said nothing.
    _images(tmp_path / "imgs", 0, 20)
    data_add_line("told", str(tmp_path / "imgs"))
    _images(tmp_path / "imgs", 20, 30)
    seen: dict[str, list[int]] = {}

    def progress(stage: str, k: int, total: int) -> None:
        done = seen.setdefault(stage, [0, total])
        done[0] += k

    ingest(workspace, reg, "told", tmp_path / "imgs", progress=progress)
    assert seen["read parent split"] == [40, 40] and seen["carry split"] == [60, 60], seen
    assert list(seen)[:2] == ["read parent split", "carry split"]


def test_an_unchanged_folder_with_pixel_copies_across_splits_gives_the_same_version(
    workspace: Workspace, tmp_path: Path
) -> None:
    # Copies under other bytes (PNG compression levels) are not kept together by the carve,
    # so the parent holds some in train and in val/test; they all went to the most held-out
    # split on the next `data add`, a new version of the very same files.
    root = tmp_path / "imgs"
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(20):
            x = np.random.default_rng([ord(c), i]).integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(x).save(root / c / f"{i}.png", compress_level=9)
            Image.fromarray(x).save(root / c / f"{i}_copy.png", compress_level=0)
    first = data_add_line("twins", str(root))
    assert "pixel copies of training images" in first  # the layout this test needs
    old = open_version(workspace, "twins")
    out = data_add_line("twins", str(root))
    assert f"identical content: existing version {old.ref}" in out, out
    _images(root, 20, 30)
    out = data_add_line("twins", str(root))
    new = open_version(workspace, "twins")
    assert f"80 image(s) kept their split of {old.ref}, 20 new image(s) carved" in out, out
    assert "val/test image(s) of" not in out  # no warning: none held out only is in train
    assert new.meta["split_sizes"]["train"] >= old.meta["split_sizes"]["train"]


def test_the_parent_split_is_held_in_nine_bytes_an_image(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    # A dict of Python ints took about 90 bytes an image: gigabytes for a store of tens of
    # millions. An image stored in two splits has both bits set.
    rng = np.random.default_rng(5)
    x = {s: rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) for s, n in
         (("train", 30), ("val", 6), ("test", 6))}  # fmt: skip
    x["train"][0] = x["test"][0]
    arrays = {f"{s}_images": v for s, v in x.items()}
    arrays |= {f"{s}_labels": np.arange(len(v))[:, None] % 2 for s, v in x.items()}
    np.savez(tmp_path / "h.npz", **arrays)
    ingest(workspace, reg, "held", tmp_path / "h.npz", class_names=["a", "b"])
    keys, bits = held_splits(open_version(workspace, "held"))
    assert keys.dtype == np.uint64 and bits.dtype == np.uint8 and len(keys) == 41
    assert (keys[1:] > keys[:-1]).all()  # sorted, distinct
    copy = int(image_hashes(x["test"][:1, ..., None])[0])
    assert bits[np.searchsorted(keys, np.uint64(copy))] == 0b101
    assert Counter(bits.tolist()) == Counter({0b001: 29, 0b010: 6, 0b100: 5, 0b101: 1})
