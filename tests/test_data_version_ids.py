"""Existing data sets keep their version ids across releases.

A version id is a hash of the stored content (pixels, labels, split, class names, task type),
and tasks, models, embeddings and lineage name it. A change in how a source is read, split or
hashed (path normalisation, rounding of carved splits, label conversion, the pixel decoder)
that gives an unchanged source a new id silently forks every data set already registered:
re-adding it makes a new version instead of finding the old one. This test pins the ids of
a tiny image folder, npz file and HDF5 file built deterministically here; the literal ids
were computed by ``pomlia data add`` at commit c50f293 on the same inputs. A change that
alters one must be deliberate (and say so in the CHANGELOG), not a side effect."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.data.store import open_version
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok

#: The ids ``pomlia data add`` gave these inputs at c50f293 (each store's folder name).
PINNED = {"f": "19bfc5de02885489", "n": "25bb95d6a97b82b7", "h": "7401b5d7e44af4a2"}


def _make(root: Path) -> None:
    """Two class folders of 6 grey 8x8 PNGs; an npz of 20 grey images in 3 classes
    (train 12, val 4, test 4); an HDF5 file of 20 RGB images in 2 classes, no split."""
    rng = np.random.default_rng(21)
    for c in ("benign", "malignant"):
        (root / "folder" / c).mkdir(parents=True)
        for i in range(6):
            img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(img).save(root / "folder" / c / f"img{i}.png")
    x = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    y = (np.arange(20) % 3)[:, None]
    np.savez(
        root / "arrays.npz",
        train_images=x[:12],
        train_labels=y[:12],
        val_images=x[12:16],
        val_labels=y[12:16],
        test_images=x[16:],
        test_labels=y[16:],
    )
    with h5py.File(root / "table.h5", "w") as f:
        f["x"] = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
        f["y"] = np.arange(20) % 2


@pytest.mark.usefixtures("wide_console")
def test_unchanged_sources_keep_their_version_ids(workspace: Workspace, tmp_path: Path) -> None:
    _make(tmp_path)
    cli_ok("data", "add", "f", str(tmp_path / "folder"))
    cli_ok("data", "add", "n", str(tmp_path / "arrays.npz"))
    cli_ok("data", "add", "h", str(tmp_path / "table.h5"), "--images", "x", "--labels", "y")
    got = {name: open_version(workspace, name).version for name in PINNED}
    assert got == PINNED
