"""An HDF5 file without a split dataset is split stratified by class, by the rule (and with
the fractions) an image folder's split follows; multi-label rows keep the hash split."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from pomlia_hpc.data.api import ingest
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

#: Images per class: a large class, a small one and the smallest split in three.
SIZES = (60, 5, 3)


def _labels() -> np.ndarray:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(SIZES)])
    return np.random.default_rng(3).permutation(y)  # classes interleaved, as in a real file


def _h5(path: Path, labels: np.ndarray) -> Path:
    rng = np.random.default_rng(4)
    with h5py.File(path, "w") as f:
        f["x"] = rng.integers(0, 255, (len(labels), 8, 8), dtype=np.uint8)
        f["y"] = labels
    return path


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for c, n in enumerate(SIZES):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


def test_hdf5_without_split_is_stratified_as_an_image_folder(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    # A hash of the row index alone gave the 3-image class no val or test image (and the
    # 5-image one none in test): classes no configuration could be picked or scored on.
    h5 = _h5(tmp_path / "d.h5", _labels())
    folder = _folder(tmp_path / "f")
    for val, test in ((0.1, 0.1), (0.2, 0.05)):
        opts = {"val_fraction": val, "test_fraction": test}
        rec = ingest(workspace, reg, "h", h5, images="x", labels="y", **opts)
        ref = ingest(workspace, reg, "f", folder, **opts)
        # The same class sizes split alike: the one rule, the same fractions.
        assert rec.meta["label_distribution"] == ref.meta["label_distribution"]
        assert rec.meta["split_sizes"] == ref.meta["split_sizes"]
    dist = rec.meta["label_distribution"]
    assert dist == {"train": [45, 3, 1], "val": [12, 1, 1], "test": [3, 1, 1]}
    # The split is decided by the rows, not chance: the same file gives the same version.
    again = ingest(
        workspace, reg, "h", h5, images="x", labels="y", val_fraction=0.2, test_fraction=0.05
    )
    assert not again.created and again.version == rec.version


def test_multi_label_hdf5_without_split_keeps_the_hash_split(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    n = 400
    y = np.random.default_rng(6).integers(0, 2, (n, 3))
    path = _h5(tmp_path / "m.h5", np.zeros(n, np.int64))
    with h5py.File(path, "a") as f:
        del f["y"]
        f["y"] = y
    rec = ingest(workspace, reg, "m", path, images="x", labels="y", task_type="multi-label")
    sizes = rec.meta["split_sizes"]
    assert sum(sizes.values()) == n and 20 <= sizes["val"] <= 60 and 20 <= sizes["test"] <= 60
