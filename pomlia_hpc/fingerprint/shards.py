"""One extraction shard, the array-task side: embed a range of rows into its region of the
embeddings group and mark it done.

See :mod:`pomlia_hpc.fingerprint.extract` for the layout of the group, the shard plan and how
re-runs skip finished shards; this module is what a job imports and runs. The ``.done``
markers and the weights digest are defined in :mod:`.markers` (read without torch) and
imported from here too.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import torch

from pomlia_hpc.data.store import DatasetStore, open_store
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_atomic
from pomlia_hpc.fingerprint.autoencoder import Autoencoder, to_input
from pomlia_hpc.fingerprint.io import group_meta, open_array
from pomlia_hpc.fingerprint.markers import ShardMarker as ShardMarker
from pomlia_hpc.fingerprint.markers import checkpoint_digest as checkpoint_digest
from pomlia_hpc.fingerprint.markers import done_record as done_record
from pomlia_hpc.fingerprint.markers import marker as marker
from pomlia_hpc.fingerprint.markers import marker_dir as marker_dir
from pomlia_hpc.fingerprint.train import load_checkpoint
from pomlia_hpc.processes import cpus_available
from pomlia_hpc.progress import say

#: Seconds between a shard's progress lines in its job's output file (first and last always).
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class ShardSpec:
    """One array task: embed rows [start, stop) of ``store_path`` into ``out_path``."""

    store_path: str
    out_path: str
    checkpoint: str
    shard: int
    start: int
    stop: int
    batch_size: int = 256
    patch_grid: int = 1
    threads: int | None = None
    device: str = "auto"

    @property
    def name(self) -> str:
        """``<dataset>/<version> shard <i>``: how messages name a shard (an array task may
        run shards of several data sets)."""
        out = Path(self.out_path)
        return f"{out.parent.name}/{out.name.removesuffix('.zarr')} shard {self.shard}"


# ----------------------------------------------------------------------------- the shard job

_MODEL_CACHE: dict[tuple[str, int, int, int, str], Autoencoder] = {}


def _model(checkpoint: str, device: torch.device) -> Autoencoder:
    # Keyed by the file's identity too: an encoder retrained under the same name (a new file,
    # written by rename) must not be served from the cache of a long-lived process.
    st = Path(checkpoint).stat()
    key = (checkpoint, st.st_ino, st.st_size, st.st_mtime_ns, str(device))
    if key not in _MODEL_CACHE:
        model, _cfg = load_checkpoint(checkpoint)
        _MODEL_CACHE[key] = model.to(device)
    return _MODEL_CACHE[key]


def _prefetch(store: DatasetStore, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
    """Whole chunks of rows [start, stop), the next one read on a thread meanwhile."""
    q: Queue[tuple[int, np.ndarray] | BaseException | None] = Queue(maxsize=2)

    def reader() -> None:
        try:
            for a, b in store.chunk_ranges(start, stop):
                q.put((a, store.read_rows(a, b)))
            q.put(None)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    threading.Thread(target=reader, daemon=True).start()
    while (item := q.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def tiles(images: np.ndarray, grid: int) -> np.ndarray:
    """Split uint8 images (n, H, W, C) into grid x grid tiles: (n * grid**2, H/grid, W/grid, C),
    tiles of one image consecutive, row-major."""
    n, h, w, c = images.shape
    th, tw = h // grid, w // grid
    x = images[:, : th * grid, : tw * grid]
    x = x.reshape(n, grid, th, grid, tw, c).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(x.reshape(n * grid * grid, th, tw, c))


@torch.inference_mode()
def embed_images(
    model: Autoencoder, images: np.ndarray, batch_size: int, device: torch.device
) -> np.ndarray:
    """float32 (n, d) latent vectors of uint8 images (n, H, W, C), in batches of
    ``batch_size`` starting at row 0 (so a row's vector depends only on its batch). An
    :class:`InputError` when a vector is not finite."""
    out = []
    size = model.config.image_size
    for i in range(0, len(images), batch_size):
        x = to_input(images[i : i + batch_size], size).to(device)
        z = model.encode(x).float().cpu().numpy()
        # NaN weights (a training that diverged, registered before its epochs were checked)
        # give NaN vectors, which every distance, plot and index downstream then failed on.
        if not np.isfinite(z).all():
            raise InputError(
                f"the encoder gives non-finite latent vectors (NaN or inf) for images "
                f"[{i}, {i + len(z)}): expected finite ones; its weights are not finite "
                "(a training that diverged)",
                hint="train the encoder again with a lower --lr",
            )
        out.append(z)
    d = model.config.latent_dim
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_shard(spec: ShardSpec) -> dict[str, Any]:
    """Embed one shard (the array-task callable). Returns the shard's ``.done`` record."""
    planned = group_meta(spec.out_path).get("shards", [])
    stored = tuple(planned[spec.shard]) if spec.shard < len(planned) else None
    if stored != (spec.start, spec.stop):
        has = f"rows [{stored[0]}, {stored[1]})" if stored else "no such shard"
        raise InputError(
            f"shard {spec.shard} of '{spec.out_path}' asks for rows [{spec.start}, {spec.stop}) "
            f"but the stored plan has {has}: expected a task of the current plan (the "
            "embeddings were re-planned since it was submitted)",
            hint="run `pomlia fingerprint extract` again",
        )
    if (record := done_record(spec.out_path, spec.shard, (spec.start, spec.stop))) is not None:
        return record
    done = marker(spec.out_path, spec.shard)
    t0 = time.perf_counter()
    torch.set_num_threads(spec.threads or cpus_available())
    device = _device(spec.device)
    model = _model(spec.checkpoint, device)
    store = open_store(spec.store_path)
    z = open_array(spec.out_path, "z", mode="r+")
    patches = open_array(spec.out_path, "patches", mode="r+") if spec.patch_grid > 1 else None
    total = np.zeros(model.config.latent_dim, np.float64)
    n_rows, last_said = spec.stop - spec.start, -math.inf
    # An array task's output file is all that shows how far a long shard has got: a line now
    # and then (the driver only counts finished tasks).
    say(f"{spec.name}: embedding rows [{spec.start}, {spec.stop}) on {device}")
    for a, images in _prefetch(store, spec.start, spec.stop):
        emb = embed_images(model, images, spec.batch_size, device)
        z[a : a + len(emb)] = emb
        total += emb.sum(axis=0, dtype=np.float64)
        if patches is not None:
            g = spec.patch_grid
            pe = embed_images(model, tiles(images, g), spec.batch_size, device)
            patches[a : a + len(emb)] = pe.reshape(len(emb), g * g, -1)
        now, done_rows = time.perf_counter(), a + len(emb) - spec.start
        if now - last_said >= PROGRESS_EVERY_S or done_rows == n_rows:
            rate = done_rows / max(now - t0, 1e-9)
            say(f"{spec.name}: {done_rows}/{n_rows} rows ({rate:.0f} images/s)")
            last_said = now
    record = ShardMarker(
        shard=spec.shard,
        start=spec.start,
        stop=spec.stop,
        sum=total.tolist(),
        seconds=time.perf_counter() - t0,
        host=os.uname().nodename,
    ).to_dict()
    write_atomic(done, json.dumps(record))
    return record


def read_embeddings(path: str | Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """float32 (n, d) embeddings of rows [start, stop) of the group at ``path``."""
    z = open_array(path, "z")
    return np.asarray(z[start : z.shape[0] if stop is None else stop])
