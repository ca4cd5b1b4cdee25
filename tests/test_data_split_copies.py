"""Splits that ingest carves keep copies of one image together: byte-identical files under
other names (also in another class folder) go to one split, so no val or test image is a
pixel copy of a training image the split itself put there."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.explicit_fingerprint import image_hashes
from pomlia_hpc.data.sources.base import keep_copies_together
from pomlia_hpc.data.sources.folder import FolderSource
from pomlia_hpc.data.store import SPLITS, open_store
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

pytestmark = pytest.mark.usefixtures("wide_console")


def _splits_of_each_image(store_path: str) -> dict[int, set[str]]:
    store = open_store(store_path)
    where: dict[int, set[str]] = defaultdict(set)
    for split in SPLITS:
        lo, hi = store.split_range(split)
        for h in image_hashes(store.read_rows(lo, hi)).tolist():
            where[h].add(split)
    return where


def test_copies_in_a_class_folder_land_in_one_split(workspace: Workspace, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    root = tmp_path / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(20):
            img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    for i in range(20):  # every image of class a twice, and two of them in class b as well
        shutil.copy(root / "a" / f"{i:02d}.png", root / "a" / f"copy-{i:02d}.png")
    for i in range(2):
        shutil.copy(root / "a" / f"{i:02d}.png", root / "b" / f"also-{i:02d}.png")
    out = cli_ok(
        "data", "add", "dups", str(root), "--val-fraction", "0.2", "--test-fraction", "0.2"
    )
    shown = json.loads(cli_ok("data", "show", "dups", "--json"))
    where = _splits_of_each_image(shown["store_path"])
    assert "pixel copies of training images" not in out
    assert not any((shown["fingerprint"]["duplicates"]["across_splits"] or {}).values())
    assert len(where) == 40 and all(len(s) == 1 for s in where.values())
    sizes = shown["meta"]["split_sizes"]
    assert sizes["val"] > 0 and sizes["test"] > 0 and sum(sizes.values()) == 62


def test_each_group_of_copies_takes_the_split_of_its_first_ranked_row() -> None:
    codes = np.array([0, 2, 1, 0, 2, 1], np.int8)
    ranks = np.array([5, 1, 4, 0, 3, 2], np.uint64)
    content = np.array([7, 7, 8, 8, 9, 10])  # rows 0, 1 alike; rows 2, 3 alike
    moved = keep_copies_together(codes, ranks, content)
    assert moved.tolist() == [2, 2, 0, 0, 2, 1]


def test_re_adding_a_folder_with_copies_names_the_new_rule(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pomlia_hpc.data.sources import folder

    rng = np.random.default_rng(4)
    root = tmp_path / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
            shutil.copy(root / name / f"{i}.png", root / name / f"copy-{i}.png")
    with monkeypatch.context() as mp:  # the rule before: copies carved like any other file
        mp.setattr(folder, "keep_copies_together", lambda codes, ranks, content: codes)
        cli_ok("data", "add", "twice", str(root))
    old = json.loads(cli_ok("data", "show", "twice", "--json"))
    out = cli_ok("data", "add", "twice", str(root))
    assert f"note: same images as {old['ref']}; only the split differs (copies of one image" in out


def test_copies_in_an_hdf5_file_land_in_one_split(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
    y = np.arange(40) % 2
    x, y = np.concatenate([x, x[:20]]), np.concatenate([y, y[:20]])  # 20 rows twice
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    rec = ingest(
        workspace,
        reg,
        "h5dups",
        tmp_path / "d.h5",
        images="x",
        labels="y",
        val_fraction=0.2,
        test_fraction=0.2,
        workers=1,
    )
    where = _splits_of_each_image(str(rec.store_path))
    assert len(where) == 40 and all(len(s) == 1 for s in where.values())


def test_copies_are_hashed_a_block_at_a_time(tmp_path: Path) -> None:
    """Two copies of a large file: the carve tells they are copies without holding either
    whole (it read each file into memory: two copies of a 4 GB scan took 4 GB before the
    header check refused them)."""
    rng = np.random.default_rng(9)
    root = tmp_path / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 255, (1500, 1500, 3), dtype=np.uint8)  # ~7 MB, incompressible
            Image.fromarray(img).save(root / name / f"{i}.png", compress_level=0)
    shutil.copy(root / "a" / "0.png", root / "a" / "copy.png")
    size = (root / "a" / "0.png").stat().st_size
    tracemalloc.start()
    try:
        src = FolderSource(root, val_fraction=0.25, test_fraction=0.25)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(src.split_sizes.values()) == 9
    assert peak < size / 2, (peak, size)


def test_an_npz_whose_own_split_moved_a_copy_is_not_said_to_follow_the_carve_rule(
    workspace: Workspace, tmp_path: Path
) -> None:
    """An npz's splits are its own: moving a copy of a training image out of its test split
    by hand is not the carve's new rule (the note said it was)."""
    rng = np.random.default_rng(6)
    x = rng.integers(0, 255, (24, 8, 8, 3), dtype=np.uint8)
    y = np.arange(24) % 2
    parts = {"train": (x[:12], y[:12]), "val": (x[12:18], y[12:18]), "test": (x[18:], y[18:])}

    def write(path: Path, copy_in: str) -> Path:
        out = dict(parts)
        xs, ys = out[copy_in]
        out[copy_in] = (np.concatenate([xs, x[:1]]), np.concatenate([ys, y[:1]]))
        arrays = {f"{s}_images": v[0] for s, v in out.items()}
        np.savez(path, **arrays, **{f"{s}_labels": v[1][:, None] for s, v in out.items()})
        return path

    cli_ok("data", "add", "own", str(write(tmp_path / "a.npz", "test")))
    old = json.loads(cli_ok("data", "show", "own", "--json"))
    assert sum(old["fingerprint"]["duplicates"]["across_splits"].values()) == 1
    out = cli_ok("data", "add", "own", str(write(tmp_path / "b.npz", "train")))
    assert f"note: same images as {old['ref']}; " in out
    assert "copies of one image are now carved" not in out
