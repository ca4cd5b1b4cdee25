"""Sample grids: a PNG with one row per class (per label for multi-label) of a version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pomlia_hpc.data.store import DatasetStore
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_atomic

MAX_ROWS = 20
LABEL_WIDTH_PX = 120


def _pick(
    labels: np.ndarray, cls: int, multi: bool, k: int, rng: np.random.Generator
) -> np.ndarray:
    hits = np.flatnonzero(labels[:, cls] == 1) if multi else np.flatnonzero(labels[:, 0] == cls)
    return np.sort(rng.choice(hits, size=min(k, len(hits)), replace=False)) if len(hits) else hits


def sample_grid(store: DatasetStore, out: str | Path, *, per_class: int = 8, seed: int = 0) -> Path:
    """Write a grid of ``per_class`` random images per class (first ``MAX_ROWS`` classes) to
    ``out`` (PNG, written atomically); images under 64 px are enlarged for legibility."""
    out = Path(out)
    labels = store.read_labels()
    names = store.class_names
    multi = store.task_type.startswith("multi-label")
    rng = np.random.default_rng(seed)
    h, w, c = store.image_shape
    zoom = max(1, 64 // max(h, w))
    cell_h, cell_w = h * zoom + 2, w * zoom + 2
    rows = names[:MAX_ROWS]
    canvas = Image.new("RGB", (LABEL_WIDTH_PX + per_class * cell_w, len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(rows):
        draw.text((4, r * cell_h + cell_h // 2 - 6), name[:18], fill="black")
        for j, idx in enumerate(_pick(labels, r, multi, per_class, rng)):
            img = np.asarray(store.images[int(idx)])
            tile = Image.fromarray(img[..., 0] if c == 1 else img).convert("RGB")
            tile = tile.resize((w * zoom, h * zoom), Image.Resampling.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH_PX + j * cell_w + 1, r * cell_h + 1))
    try:
        write_atomic(out, lambda f: canvas.save(f, format="PNG"), fsync=False)
    except OSError as exc:
        raise InputError(
            f"sample grid '{out}' cannot be written ({exc.strerror or exc}): "
            "expected a writable path"
        ) from exc
    return out
