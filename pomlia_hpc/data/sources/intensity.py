"""How a source's pixel values become uint8 (b, H, W, C): the one intensity rule every source
shares (the pixel rules of :mod:`pomlia_hpc.data.sources.base`), with the first pass that finds
a 16-bit data set's maximum and its outlier check, and :func:`convert_as`: pixels as another
version's store made them (the split carried as a source grows, :mod:`pomlia_hpc.data.carry`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pomlia_hpc.data.writer import CHUNK_TARGET_BYTES
from pomlia_hpc.errors import InputError

#: A 16-bit data set's maximum is an outlier when it is more than this many times its
#: 99.9th percentile (a hot pixel of 65535 in 12-bit data is 16 times): ``data add`` warns.
OUTLIER_RATIO = 4.0
#: The percentile that maximum is compared with, %.
OUTLIER_PERCENTILE = 99.9


@dataclass
class PixelConverter:
    """Converts one source's pixel arrays to uint8 (b, H, W, C), checking values on the way."""

    where: str  # "file 'x.npz', key 'train_images'" — used in every message
    dtype: np.dtype[Any]
    scale_max: float | None = None  # set for uint16 after the first pass
    #: The source's images have a 4th (alpha) channel, dropped (as for RGBA PNGs).
    drop_alpha: bool = False
    #: Where the largest value seen by :meth:`observe` is (``"file 'x.tif'"``, ``"row 7"``).
    max_at: str | None = None
    #: How many times each 16-bit value was seen by :meth:`observe` (for the percentile).
    counts: np.ndarray | None = field(default=None, repr=False)
    #: The dropped 4th channel took more than one value (across pixels or images): it may be a
    #: 4th channel of data (fluorescence) rather than a plain alpha, and `data add` warns.
    alpha_varies: bool = False
    #: The first value the dropped 4th channel took (None before any).
    alpha_value: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # A big-endian array (">u2", as some writers store it) holds the same values: compare
        # and convert in the machine's own byte order (see __call__).
        self.dtype = np.dtype(self.dtype).newbyteorder("=")
        ok = self.dtype in (np.uint8, np.uint16) or np.issubdtype(self.dtype, np.floating)
        if not ok:
            raise InputError(
                f"{self.where} has dtype {self.dtype}: expected uint8, uint16 or float in [0, 1]"
            )

    @property
    def needs_max(self) -> bool:
        return self.dtype == np.uint16

    @property
    def rule(self) -> str:
        """Which scaling rule the pixels take: ``"uint8"`` (as they are), ``"uint16"`` (by
        the data set's maximum) or ``"float"`` (x 255, any float width)."""
        return "float" if np.issubdtype(self.dtype, np.floating) else str(self.dtype)

    def _colour(self, x: np.ndarray) -> np.ndarray:
        if not (self.drop_alpha and x.ndim == 4 and x.shape[-1] == 4):
            return x
        if x.size and not self.alpha_varies:
            lo, hi = float(x[..., 3].min()), float(x[..., 3].max())
            first = lo if self.alpha_value is None else self.alpha_value
            self.alpha_value, self.alpha_varies = first, lo != hi or lo != first
        return x[..., :3]

    def observe(self, batch: np.ndarray, first_row: int = 0, name: str | None = None) -> None:
        """First pass for uint16: remember the largest value, where it is (``name``, else
        its row: ``first_row`` + its index in ``batch``) and how often each value occurs."""
        batch = self._colour(batch)
        if not batch.size:
            return
        m = float(batch.max())
        if self.scale_max is None or m > self.scale_max:
            self.scale_max = m
            row = first_row + int(np.unravel_index(int(np.argmax(batch)), batch.shape)[0])
            self.max_at = name or f"row {row}"
        seen = np.bincount(np.asarray(batch, np.uint16).ravel(), minlength=65536)
        self.counts = seen if self.counts is None else self.counts + seen

    def outlier(self) -> dict[str, Any] | None:
        """The maximum of a uint16 first pass when it is an extreme outlier (over
        :data:`OUTLIER_RATIO` times the :data:`OUTLIER_PERCENTILE` th percentile), with the
        percentile and where the maximum is; else None."""
        if self.counts is None or not self.scale_max:
            return None
        cum = np.cumsum(self.counts)
        rank = int(np.ceil(cum[-1] * OUTLIER_PERCENTILE / 100))
        pct = int(np.searchsorted(cum, max(rank, 1)))
        if self.scale_max <= OUTLIER_RATIO * max(pct, 1):
            return None
        return {
            "max": self.scale_max,
            "percentile": OUTLIER_PERCENTILE,
            "value": pct,
            "at": self.max_at,
        }

    def __call__(self, batch: np.ndarray, first_row: int | None = 0) -> np.ndarray:
        """``batch`` as uint8 (b, H, W, C); a bad value is refused naming its row (its
        ``first_row`` + index; no row when ``first_row`` is None: one image)."""
        x = self._colour(batch if batch.ndim == 4 else batch[..., None])
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        if x.dtype == np.uint8:
            return x
        if x.dtype == np.uint16:
            top = max(self.scale_max or 65535.0, 1.0)
            return (x.astype(np.float32) * (255.0 / top) + 0.5).astype(np.uint8)
        bad = ~np.isfinite(x)
        if bad.any():
            row = "" if first_row is None else f" (row {first_row + int(np.argwhere(bad)[0][0])})"
            raise InputError(
                f"{self.where} has NaN or infinite values{row}: expected finite floats in [0, 1]"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"{self.where} has float values in [{lo:g}, {hi:g}]: expected floats in [0, 1]"
            )
        return (x * 255.0 + 0.5).astype(np.uint8)

    def scaling(self) -> dict[str, Any] | None:
        """How the pixels were made 8-bit (``meta["source"]["intensity_scaling"]``); None for
        uint8, stored as it is."""
        if self.dtype == np.uint8:
            return None
        if self.dtype == np.uint16:
            return {"from": "uint16", "max": self.scale_max, "to": "uint8 0..255 linear"}
        return {"from": str(self.dtype), "range": [0, 1], "to": "uint8 0..255 linear"}


def first_pass_rows(shape: Sequence[int], itemsize: int) -> int:
    """Images per read of the uint16 first pass over a source array of ``shape`` (N, H, W[, C])
    with ``itemsize`` bytes per value: about :data:`CHUNK_TARGET_BYTES`, so the pass needs
    little memory however large the images."""
    per_image = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return max(1, CHUNK_TARGET_BYTES // per_image)


@dataclass(frozen=True)
class StoredAs:
    """How a version's store made its pixels: its channel count and, for 16-bit sources, the
    maximum it scaled by (None: no such maximum)."""

    channels: int
    scale_max: float | None = None


def convert_as(
    convert: PixelConverter, raw: np.ndarray, like: StoredAs | None, first_row: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``raw`` (b, H, W[, C]) made uint8 as the store ``like`` describes made its images, and
    which rows that store could hold at all. A 16-bit data set's maximum moves as it grows
    (and every stored value with it): the rows are scaled by ``like``'s maximum, a row with a
    value over it being no image of that store; a grey store compares the first channel of
    grey rows (a colour row is none of its images), a colour store grey rows repeated."""
    ok = np.ones(len(raw), bool)
    if like is None:
        return convert(raw, first_row=first_row), ok
    x = raw if raw.ndim == 4 else raw[..., None]
    if convert.needs_max and like.scale_max is not None:
        top = np.asarray(min(int(like.scale_max), 65535), x.dtype)
        seen = x[..., :3] if convert.drop_alpha and x.shape[-1] == 4 else x
        ok &= seen.reshape(len(x), -1).max(axis=1, initial=0) <= top
        convert, x = replace(convert, scale_max=float(top)), np.minimum(x, top)
    out = convert(x, first_row=first_row)
    if like.channels == 1 and out.shape[-1] == 3:
        ok &= (out == out[..., :1]).all(axis=(1, 2, 3))
        out = out[..., :1]
    elif like.channels == 3 and out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out, ok
