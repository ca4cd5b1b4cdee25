"""Sample grids: a PNG with one row per class (per label for multi-label) of a version."""

from __future__ import annotations

import importlib.util
import os
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pomlia_hpc.data.store import DatasetStore
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import check_png_suffix, probe_writable, write_atomic

MAX_ROWS = 20
"""Rows (classes) a grid draws unless told otherwise (``--max-rows``); the rest are named."""
MAX_GRID_SIDE = 64
"""The largest ``--per-class`` and ``--max-rows``: a grid is for the eye (a billion columns
overflowed, a traceback). With tiles of at most :data:`TILE_MAX_PX` the canvas stays under
about 70 megapixels."""
TILE_MAX_PX = 128
"""Longest side of a tile, px: larger images are shrunk (a 4096 px data set drew 4096 px
tiles: gigabytes of canvas at the default size)."""
READ_BUDGET_BYTES = 512 << 20
"""Most pixel bytes a grid reads (its picked images at full size), or it is refused."""
TITLE_PX = 20
"""Height of the title band above the rows, px."""
EMPTY_TILE = (235, 235, 235)
"""Grey of a tile with no image (the class has fewer images than columns)."""
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


@dataclass(frozen=True)
class GridRow:
    """One row of a sample grid: a class, the rows of the images drawn, and how many images
    of it the split has (fewer than the columns: the rest are hatched grey tiles)."""

    cls: int
    name: str
    picks: np.ndarray
    available: int


@dataclass(frozen=True)
class GridPlan:
    """What a sample grid shows: its title, its rows, and the classes left out by the row cap
    (their names, in class order). The public seam between choosing and drawing."""

    title: str
    columns: int
    rows: list[GridRow]
    left_out: list[str] = field(default_factory=list)


def _class_indices(names: list[str], classes: list[str] | None) -> list[int]:
    """Indices of ``classes`` (names or 0-based indices), in the order given; all if None."""
    if not classes:
        return list(range(len(names)))
    out = []
    for c in classes:
        if c in names:
            out.append(names.index(c))
        elif c.isdigit() and int(c) < len(names):
            out.append(int(c))
        else:
            raise InputError(
                f"class '{c}' is not in this data set: expected a class name or an index "
                f"0-{len(names) - 1}"
            )
    return list(dict.fromkeys(out))


def plan_grid(
    store: DatasetStore,
    *,
    per_class: int = 8,
    seed: int = 0,
    split: str | None = None,
    classes: list[str] | None = None,
    max_rows: int = MAX_ROWS,
) -> GridPlan:
    """Choose the images of a sample grid: ``per_class`` random images (seeded by ``seed``)
    of each class in ``classes`` (names or indices; default all) from ``split`` (default all
    splits), at most ``max_rows`` rows; the classes past the cap are in ``left_out``."""
    for option, value in (("--per-class", per_class), ("--max-rows", max_rows)):
        if not 1 <= value <= MAX_GRID_SIDE:
            raise InputError(f"sample grid: {option} {value}: expected 1 to {MAX_GRID_SIDE}")
    if split is not None and not split.strip():
        raise InputError("sample grid: --split is empty: expected train, val or test")
    lo, hi = store.split_range(split) if split else (0, store.n_images)
    labels = store.read_labels(lo, hi)
    names = store.class_names
    multi = store.task_type.startswith("multi-label")
    rng = np.random.default_rng(seed)
    wanted = _class_indices(names, classes)
    rows = []
    for cls in wanted[:max_rows]:
        hits = np.flatnonzero(labels[:, cls] == 1) if multi else np.flatnonzero(labels[:, 0] == cls)
        picks = hits + lo  # an empty class stays empty (choice of nothing fails)
        if len(hits):
            picks = np.sort(rng.choice(hits, size=min(per_class, len(hits)), replace=False)) + lo
        rows.append(GridRow(cls, names[cls], picks, len(hits)))
    needed = sum(len(r.picks) for r in rows) * int(np.prod(store.image_shape))
    if needed > READ_BUDGET_BYTES:
        raise InputError(
            f"sample grid: {needed >> 20} MiB of images to read ({store.image_shape[0]} px "
            f"images), at most {READ_BUDGET_BYTES >> 20} MiB: expected a smaller --per-class or "
            "--max-rows"
        )
    title = f"{store.ref}, {split or 'all'} split{'' if split else 's'}"
    if len(wanted) > max_rows:  # the figure itself says it is not the whole set
        title += f", {max_rows} of {len(wanted)} classes"
    return GridPlan(title, per_class, rows, [names[c] for c in wanted[max_rows:]])


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


def _empty_tile(draw: ImageDraw.ImageDraw, x: int, y: int, w: int, h: int) -> None:
    """A light grey tile hatched diagonally: no image here, not a white image."""
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=EMPTY_TILE)
    for d in range(-h, w, 8):
        draw.line(
            (x + max(d, 0), y + max(-d, 0), x + min(d + h, w) - 1, y + min(w - d, h) - 1),
            fill=(200, 200, 200),
        )


def draw_grid(store: DatasetStore, plan: GridPlan, out: str | Path) -> Path:
    """Draw ``plan`` (:func:`plan_grid`) to ``out`` (PNG, written atomically; see
    :func:`check_grid_path`): a title band, then one row per class with its label and, under
    it, the class's image count when it has fewer than the columns (those tiles hatched grey);
    images under 64 px are enlarged for legibility, those over :data:`TILE_MAX_PX` shrunk."""
    out = check_grid_path(out)
    h, w, c = store.image_shape
    zoom = max(1, 64 // max(h, w))
    tile_h, tile_w = h * zoom, w * zoom
    if max(h, w) > TILE_MAX_PX:  # shrunk, the longest side to TILE_MAX_PX
        tile_h, tile_w = max(1, h * TILE_MAX_PX // max(h, w)), max(1, w * TILE_MAX_PX // max(h, w))
    cell_h, cell_w = tile_h + 2, tile_w + 2
    tiles = _read_tiles(store, [r.picks for r in plan.rows])
    width = LABEL_WIDTH_PX + plan.columns * cell_w
    canvas = Image.new("RGB", (width, TITLE_PX + len(plan.rows) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    draw.text(
        (LABEL_X_PX, 4), fit_label(plan.title, width - 2 * LABEL_X_PX), fill="black", font=font
    )
    for r, row in enumerate(plan.rows):
        top = TITLE_PX + r * cell_h
        short = row.available < plan.columns
        # A short class gets its count under the name, so a grey tile reads as "no more images".
        y = top + cell_h // 2 - (12 if short else 6)
        draw.text((LABEL_X_PX, y), fit_label(row.name), fill="black", font=font)
        if short:
            count = f"{row.available} image{'' if row.available == 1 else 's'}"
            draw.text((LABEL_X_PX, y + 13), count, fill=(110, 110, 110), font=font)
        for j in range(plan.columns):
            x = LABEL_WIDTH_PX + j * cell_w + 1
            if j >= len(row.picks):
                _empty_tile(draw, x, top + 1, tile_w, tile_h)
                continue
            img = tiles[int(row.picks[j])]
            tile = Image.fromarray(img[..., 0] if c == 1 else img).convert("RGB")
            # Enlarged by whole pixels (NEAREST: crisp), shrunk by averaging (BOX: no aliasing).
            how = Image.Resampling.NEAREST if tile_w >= w else Image.Resampling.BOX
            canvas.paste(tile.resize((tile_w, tile_h), how), (x, top + 1))
    try:
        write_atomic(out, lambda f: canvas.save(f, format="PNG"), fsync=False)
    except OSError as exc:
        raise InputError(
            f"sample grid '{out}' cannot be written ({exc.strerror or exc}): "
            "expected a writable path"
        ) from exc
    return out


def sample_grid(store: DatasetStore, out: str | Path, *, per_class: int = 8, seed: int = 0) -> Path:
    """Write a grid of ``per_class`` random images per class (first :data:`MAX_ROWS` classes,
    all splits) to ``out``: :func:`plan_grid`, then :func:`draw_grid`."""
    return draw_grid(store, plan_grid(store, per_class=per_class, seed=seed), out)
