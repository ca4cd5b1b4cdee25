"""Where an extraction's embeddings live and how their group is laid out and planned.

``<home>/embeddings/<encoder>/<dataset>/<version>.zarr`` holds ``z`` (float32, one row per
image, chunked as the image store), ``patches`` (only with a patch grid above 1) and the plan
(``attrs["pomlia"]["shards"]``: chunk-aligned row ranges); see :mod:`.extract`.
"""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import zarr

from pomlia_hpc.data.store import DatasetStore
from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.io import group_meta
from pomlia_hpc.fingerprint.markers import made_with, marker_dir
from pomlia_hpc.fingerprint.summary import summary_path
from pomlia_hpc.registry import Encoder
from pomlia_hpc.workspace import Workspace

#: Default images per shard when neither ``shards`` nor ``shard_rows`` is given.
DEFAULT_SHARD_ROWS = 200_000


def embeddings_path(workspace: Workspace, encoder: str, store: DatasetStore) -> Path:
    """Where the embeddings of ``store`` under ``encoder`` live."""
    return workspace.path("embeddings", encoder, store.name, f"{store.version}.zarr")


def check_sharding(n_shards: int | None, shard_rows: int | None) -> None:
    """Refuse a shard count or shard size below 1, or both at once."""
    if n_shards is not None and shard_rows is not None:
        raise InputError(
            f"--shards {n_shards} and --shard-rows {shard_rows}: expected at most one of them "
            "(a number of shards per dataset, or about so many images per shard)"
        )
    for flag, value in (("--shards", n_shards), ("--shard-rows", shard_rows)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: expected an integer >= 1")


#: A patch tile must be at least this many pixels wide and high (smaller tiles are noise
#: once resized to the encoder's input, and a tile of 0 px cannot be embedded at all).
MIN_TILE_PX = 4


def check_patch_grid(patch_grid: int, store: DatasetStore) -> None:
    """Refuse a patch grid below 1, or one whose tiles of ``store``'s images would be smaller
    than :data:`MIN_TILE_PX` pixels."""
    h, w, _ = store.image_shape
    most = max(1, min(h, w) // MIN_TILE_PX)
    if patch_grid < 1 or patch_grid > most:
        raise InputError(
            f"--patch-grid {patch_grid} for '{store.ref}' ({h}x{w} px images): expected an "
            f"integer from 1 (no patches) to {most} (tiles of at least {MIN_TILE_PX} px)"
        )


def plan_shards(
    store: DatasetStore, n_shards: int | None, shard_rows: int | None
) -> list[tuple[int, int]]:
    """Split all rows of ``store`` into at most ``n_shards`` ranges of whole chunks (or ranges
    of about ``shard_rows`` images)."""
    check_sharding(n_shards, shard_rows)
    n, step = store.n_images, store.chunk_rows
    n_chunks = max(1, math.ceil(n / step))
    if n_shards is None:
        n_shards = math.ceil(n / (shard_rows or DEFAULT_SHARD_ROWS))
    n_shards = max(1, min(n_shards, n_chunks))
    bounds = [round(i * n_chunks / n_shards) * step for i in range(n_shards + 1)]
    return [(a, min(b, n)) for a, b in itertools.pairwise(bounds) if a < min(b, n)]


def stored_plan(
    out: Path, store: DatasetStore, latent_dim: int, patch_grid: int, digest: str
) -> list[tuple[int, int]] | None:
    """The shard plan of the embeddings group at ``out`` if it can be reused (same encoder
    weights, latent size, patch grid and image count), else None."""
    if not (out / "zarr.json").exists():
        return None
    meta = group_meta(out)
    fits = (
        made_with(meta, digest)
        and meta.get("latent_dim") == latent_dim
        and meta.get("patch_grid", 1) == patch_grid
        and meta.get("n_images") == store.n_images
    )
    return [(int(a), int(b)) for a, b in meta["shards"]] if fits else None


def create_embeddings(
    out: Path,
    store: DatasetStore,
    encoder: Encoder,
    digest: str,
    latent_dim: int,
    plan: list[tuple[int, int]],
    patch_grid: int,
) -> None:
    """(Re)create the embeddings group at ``out``: NaN-filled, no shard done."""
    # The .done files go first: a crash between the two removals must not leave markers of
    # the old vectors next to a new, empty group.
    shutil.rmtree(marker_dir(out), ignore_errors=True)
    summary_path(out).unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(out), mode="w")
    n, rows = store.n_images, store.chunk_rows
    g.create_array(
        "z", shape=(n, latent_dim), chunks=(rows, latent_dim), dtype="float32", fill_value=np.nan
    )
    if patch_grid > 1:
        k = patch_grid * patch_grid
        g.create_array(
            "patches",
            shape=(n, k, latent_dim),
            chunks=(rows, k, latent_dim),
            dtype="float32",
            fill_value=np.nan,
        )
    g.attrs["pomlia"] = {
        "encoder": encoder.name,
        "encoder_id": encoder.id,
        "encoder_sha256": digest,
        "dataset": store.name,
        "version": store.version,
        "latent_dim": latent_dim,
        "n_images": n,
        "patch_grid": patch_grid,
        "splits": store.meta.get("splits", {}),
        "shards": [list(p) for p in plan],
    }
    marker_dir(out).mkdir(parents=True, exist_ok=True)
