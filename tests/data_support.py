"""Helpers for the data tests: tiny npz / folder / HDF5 inputs and a workspace + registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pomlia_hpc.data.synth import make_split
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace


def open_registry(ws: Workspace) -> Registry:
    return Registry.open(ws.db_url)


def tiny_arrays(
    flag: str = "bloodmnist",
    sizes: tuple[int, int, int] = (40, 7, 13),
    seed: int = 0,
    size: int = 28,
) -> dict[str, np.ndarray]:
    """MedMNIST-keyed arrays of a look-alike with the given (train, val, test) sizes."""
    out: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        x, y = make_split(flag, n, seed=seed, size=size, split=split)
        out[f"{split}_images"], out[f"{split}_labels"] = x, y
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = True) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def tiny_npz(path: Path, flag: str = "bloodmnist", **kw: object) -> Path:
    return write_npz(path, tiny_arrays(flag, **kw))  # type: ignore[arg-type]


def nothing_visible(ws: Workspace, name: str) -> bool:
    """No published store for ``name`` and no staging folder left in tmp/."""
    stores = ws.stores / name
    published = list(stores.glob("*.zarr")) if stores.exists() else []
    return not published and not list(ws.tmp.glob("ingest-*"))
