"""Sample grids: a PNG with one row per class (per label for multi-label) of a version."""

from __future__ import annotations

import importlib.util
import os
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pomlia_hpc.data.store import DatasetStore
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import check_png_suffix, probe_writable, write_atomic

MAX_ROWS = 20
LABEL_WIDTH_PX = 120
LABEL_FONT_PX = 11
"""Size of the class labels, px."""
LABEL_X_PX = 4
"""Left margin of a class label, px; the label ends at least this far before the first tile."""


@cache
def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans as matplotlib ships it (found without importing matplotlib, ~0.5 s): it
    has glyphs for accented Latin, Greek and Cyrillic class names, where Pillow's built-in
    font draws a box; Pillow's font only if that file is missing."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        ttf = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if ttf.is_file():
            return ImageFont.truetype(str(ttf), LABEL_FONT_PX)
    return ImageFont.load_default()


def fit_label(name: str, max_px: float = LABEL_WIDTH_PX - 2 * LABEL_X_PX) -> str:
    """``name`` as drawn in the label column: whole when it fits ``max_px`` (px, in
    :func:`label_font`), else cut by its measured width and ended with an ellipsis (a cut
    by characters let wide upper-case names run over the first tile). Control characters
    (a newline in a name of a version ingested before image folders refused them, or in
    ``--class-names``) are drawn escaped (``\\n``): Pillow's text layout fails on them."""
    name = "".join(
        repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in name
    )
    font = label_font()
    if font.getlength(name) <= max_px:
        return name
    lo, hi = 0, len(name)  # the longest prefix that fits with the ellipsis, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(name[:mid] + "…") <= max_px:
            lo = mid
        else:
            hi = mid - 1
    return name[:lo].rstrip() + "…"


def check_grid_path(out: str | Path) -> Path:
    """Refuse a grid path that does not end in ``.png`` (the grid is PNG) or whose folder
    does not exist or cannot be written (:func:`~pomlia_hpc.files.probe_writable`), before any
    work; return it as a Path."""
    out = check_png_suffix(out, "sample grid")
    folder = out.parent
    if not folder.is_dir():
        raise InputError(
            f"sample grid '{out}': folder '{folder}' does not exist: expected an existing folder"
        )
    try:
        probe_writable(folder)
    except OSError as exc:
        raise InputError(
            f"sample grid '{out}' cannot be written ({exc.strerror or exc}): "
            "expected a writable path"
        ) from exc
    if out.is_dir() or (out.exists() and not os.access(out, os.W_OK)):
        raise InputError(f"sample grid '{out}' is a folder or read-only: expected a file path")
    return out


def _pick(
    labels: np.ndarray, cls: int, multi: bool, k: int, rng: np.random.Generator
) -> np.ndarray:
    hits = np.flatnonzero(labels[:, cls] == 1) if multi else np.flatnonzero(labels[:, 0] == cls)
    return np.sort(rng.choice(hits, size=min(k, len(hits)), replace=False)) if len(hits) else hits


def _read_tiles(store: DatasetStore, picks: list[np.ndarray]) -> dict[int, np.ndarray]:
    """The images of the rows in ``picks``, read through the store's checked reader (each
    chunk touched is decoded once and compared with its ingest hash: a damaged chunk is a
    :class:`~pomlia_hpc.errors.DataIntegrityError`, as in training, not a black tile)."""
    wanted = sorted({int(i) for p in picks for i in p})
    step = store.chunk_rows
    out: dict[int, np.ndarray] = {}
    for chunk in sorted({i // step for i in wanted}):
        lo = chunk * step
        block = store.read_rows(lo, min(store.n_images, lo + step))
        out.update({i: block[i - lo] for i in wanted if i // step == chunk})
    return out


def sample_grid(store: DatasetStore, out: str | Path, *, per_class: int = 8, seed: int = 0) -> Path:
    """Write a grid of ``per_class`` random images per class (first ``MAX_ROWS`` classes) to
    ``out`` (PNG, written atomically; see :func:`check_grid_path`); images under 64 px are
    enlarged for legibility."""
    out = check_grid_path(out)
    labels = store.read_labels()
    names = store.class_names
    multi = store.task_type.startswith("multi-label")
    rng = np.random.default_rng(seed)
    h, w, c = store.image_shape
    zoom = max(1, 64 // max(h, w))
    cell_h, cell_w = h * zoom + 2, w * zoom + 2
    rows = names[:MAX_ROWS]
    picks = [_pick(labels, r, multi, per_class, rng) for r in range(len(rows))]
    tiles = _read_tiles(store, picks)
    canvas = Image.new("RGB", (LABEL_WIDTH_PX + per_class * cell_w, len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(rows):
        label = fit_label(name)
        draw.text(
            (LABEL_X_PX, r * cell_h + cell_h // 2 - 6), label, fill="black", font=label_font()
        )
        for j, idx in enumerate(picks[r]):
            img = tiles[int(idx)]
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
