"""Typed access to the Zarr groups of this package (files are written by
:func:`pomlia_hpc.files.write_atomic`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import zarr

from pomlia_hpc.errors import InputError


def open_array(group_path: str | Path, name: str, mode: Literal["r", "r+"] = "r") -> zarr.Array:
    """The array ``name`` of the Zarr group at ``group_path``."""
    arr = zarr.open_group(str(group_path), mode=mode)[name]
    if not isinstance(arr, zarr.Array):
        raise InputError(f"'{group_path}/{name}' is not a Zarr array: expected embeddings")
    return arr


def group_meta(group_path: str | Path) -> dict[str, Any]:
    """The ``attrs["pomlia"]`` dict of the Zarr group at ``group_path`` (empty if absent)."""
    value = zarr.open_group(str(group_path), mode="r").attrs.get("pomlia", {})
    return dict(value) if isinstance(value, dict) else {}
