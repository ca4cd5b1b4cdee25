"""An NPY upload of a training array's row is served exactly as ingest stored that row: float
rows at the 8-bit steps ingest stores them at, an RGBA row without its alpha (as ingest drops
it), for HDF5 and npz sources of every pixel type ingest takes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.store import open_version
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import npy

SIDE = 12
ROWS = 9


def raw_images(kind: str) -> np.ndarray:
    """ROWS training images of ``kind`` (float values off the 8-bit steps, an alpha that is
    not 255 everywhere)."""
    rng = np.random.default_rng(11)
    if kind.startswith("float"):
        return rng.random((ROWS, SIDE, SIDE, 3)).astype(kind)
    if kind == "rgba-uint8":
        return rng.integers(0, 256, (ROWS, SIDE, SIDE, 4), dtype=np.uint8)
    colour = rng.integers(0, 3000, (ROWS, SIDE, SIDE, 3))
    alpha = np.full((ROWS, SIDE, SIDE, 1), 65535)
    return np.concatenate([colour, alpha], axis=-1).astype(np.uint16)  # rgba-uint16


def write_source(path: Path, images: np.ndarray) -> tuple[Path, dict[str, str]]:
    """``images`` with alternating labels as an HDF5 file (float) or npz file (else)."""
    labels = np.arange(ROWS) % 2
    if images.dtype.kind == "f":
        with h5py.File(path.with_suffix(".h5"), "w") as f:
            f["x"], f["y"] = images, labels
        return path.with_suffix(".h5"), {"images": "x", "labels": "y"}
    parts = {"train": slice(0, 5), "val": slice(5, 7), "test": slice(7, ROWS)}
    arrays = {f"{s}_images": images[r] for s, r in parts.items()}
    arrays |= {f"{s}_labels": labels[r, None] for s, r in parts.items()}
    np.savez(path.with_suffix(".npz"), **arrays)  # type: ignore[arg-type]
    return path.with_suffix(".npz"), {}


@pytest.mark.parametrize("kind", ["float16", "float32", "float64", "rgba-uint8", "rgba-uint16"])
def test_an_npy_row_of_a_training_array_is_served_as_its_stored_row(
    workspace: Workspace, reg: Registry, tmp_path: Path, kind: str
) -> None:
    images = raw_images(kind)
    source, options = write_source(tmp_path / "src", images)
    ingest(workspace, reg, "d", source, **options)
    ds = open_version(workspace, "d")
    stored = np.asarray(ds.images[:])
    scaling = ds.meta["source"].get("intensity_scaling") or {}
    top = scaling.get("max") if scaling.get("from") == "uint16" else None
    spec = InputSpec(SIDE, 3, top)  # as the server builds it from the model card
    # One upload per row, and all rows in one (N, H, W, C) upload: each row's pixels must be
    # one of the store's rows exactly (the store orders rows by its own rule).
    served = [decode(npy(row), None, spec, Limits())[0] for row in images]
    served += list(decode(npy(images), None, spec, Limits()))
    as_stored = {r.tobytes() for r in np.multiply(stored, np.float32(1 / 255), dtype=np.float32)}
    assert len(as_stored) == ROWS
    assert all(s.tobytes() in as_stored for s in served), kind


def test_an_rgba_npy_for_a_grey_model_is_refused_as_colour() -> None:
    rgba = np.zeros((1, SIDE, SIDE, 4), np.uint8)
    with pytest.raises(RequestError) as info:
        decode(npy(rgba), None, InputSpec(SIDE, 1), Limits())
    assert info.value.status == 400
    assert "image has 3 channel(s) (colour), the model expects 1 (grey)" in info.value.message
