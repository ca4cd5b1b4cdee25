"""Small file helpers: files that appear whole or not at all (temp name + rename), and typed
access to the Zarr groups of this package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import zarr

from pomlia_hpc.errors import InputError


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode())


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
