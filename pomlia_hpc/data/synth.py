"""MedMNIST look-alikes: 12 synthetic npz files with MedMNIST's exact layout.

Each file has MedMNIST's keys (``train_images``, ``train_labels``, ``val_*``, ``test_*``),
dtype uint8, gray images as (N, S, S) and RGB as (N, S, S, 3), labels as (N, 1) — ChestMNIST's
as (N, 14) multi-label 0/1 — the same number of classes, and split sizes = MedMNIST's times
``scale`` (at least 1 image per split). The pixels are not medical: each dataset has its own
visual style (:data:`STYLES`) whose content depends on the class, so a classifier can learn it,
and nuisance variation (position jitter, contrast, noise) so it is not trivial. Output is a
deterministic function of (flag, scale, seed, size).

API::

    make_lookalike("pathmnist", scale=0.01, seed=0, size=28) -> dict[str, np.ndarray]
    write_lookalike(path, "pathmnist", scale=0.01, seed=0, size=28) -> Path  # in batches
    write_lookalikes(out_dir, scale=0.01, seed=0, size=28) -> list[Path]   # all 12 files

File names follow MedMNIST (``pathmnist.npz`` at 28 px, ``pathmnist_64.npz`` at 64 px), so a
folder of look-alikes is a drop-in MedMNIST root for ``pomlia data add pathmnist --root DIR``.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from pomlia_hpc.data.medmnist_info import FLAGS_2D, check_size, flag_info
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import make_dirs, remove_made_dirs, write_atomic

Array = np.ndarray

STYLES: dict[str, str] = {
    "pathmnist": "H&E-like pink tissue with purple nuclei; the class sets nucleus density, "
    "blob scale and hue.",
    "chestmnist": "Gray chest-film look: bright mediastinum, two dark lungs; each of the 14 "
    "labels adds a bright opacity at its own place (several labels, several opacities).",
    "dermamnist": "Skin-toned mottled background with one lesion; the class sets the lesion's "
    "colour and size.",
    "octmnist": "Gray horizontal retinal layers with speckle; class 0 adds a large dark fluid "
    "pocket, 1 small cysts, 2 bumps under the bottom layer, 3 is plain.",
    "pneumoniamnist": "Gray chest film; class 1 (pneumonia) adds hazy diffuse opacity in the "
    "lungs.",
    "retinamnist": "Dark fundus photo with an orange disc and a bright optic disc; the grade "
    "(0-4) sets how many yellow lesions appear (ordinal).",
    "breastmnist": "Gray ultrasound speckle with a dark mass: irregular spiky rim for class 0 "
    "(malignant), small smooth oval for class 1 (normal/benign).",
    "bloodmnist": "Light smear background with one pale cell; the class sets the number of "
    "nucleus lobes, their size and stain.",
    "tissuemnist": "Gray microscopy texture on a dark field; the class sets the texture scale "
    "and brightness.",
    "organamnist": "Axial CT look: wide body ellipse on black; the class puts a bright organ at "
    "its own position and size.",
    "organcmnist": "Coronal CT look: tall body ellipse; the class sets the organ's position and "
    "size.",
    "organsmnist": "Sagittal CT look: narrow tall body; the class sets the organ's position and "
    "size.",
}

_KEYS = ("train", "val", "test")
#: Images generated (and written) per batch are bounded to about this many float32 pixels
#: (64 MiB; a style makes a few such arrays): the memory `data synth` needs at any scale.
BATCH_PIXELS = 1 << 24
#: The largest --scale: 100 times MedMNIST is 70 million images, past any test's need.
MAX_SCALE = 100.0


def split_sizes(flag: str, scale: float) -> dict[str, int]:
    """MedMNIST's split sizes times ``scale`` (rounded, at least 1 each)."""
    if not 0 < scale <= MAX_SCALE:  # NaN fails too; inf overflowed the sizes
        raise InputError(
            f"look-alike scale {scale} is not valid: expected a number > 0 and at most "
            f"{MAX_SCALE:g} (MedMNIST's sizes times it)"
        )
    info = flag_info(flag)
    return {k: max(1, round(info.n_samples[k] * scale)) for k in _KEYS}


# ----------------------------------------------------------------------------- helpers


def _grid(size: int) -> tuple[Array, Array]:
    """Coordinate grids yy, xx in [-1, 1], float32 (S, S)."""
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    return yy, xx


def _interp_matrix(size: int, k: int) -> Array:
    """(S, k) linear-interpolation matrix from k control points to S pixels."""
    pos = np.linspace(0.0, k - 1.0, size, dtype=np.float32)
    lo = np.clip(np.floor(pos).astype(int), 0, max(k - 2, 0))
    frac = pos - lo
    m = np.zeros((size, k), np.float32)
    m[np.arange(size), lo] += 1.0 - frac
    m[np.arange(size), np.minimum(lo + 1, k - 1)] += frac
    return m


def _smooth(rng: np.random.Generator, n: int, size: int, k: int) -> Array:
    """Smooth random field (n, S, S) from k x k Gaussian control points (unit variance-ish)."""
    low = rng.standard_normal((n, k, k), dtype=np.float32)
    m = _interp_matrix(size, k)
    return np.einsum("ij,njk,lk->nil", m, low, m, optimize=True)


def _col(v: Array) -> Array:
    """Per-sample values (n,) as (n, 1, 1) for broadcasting over images."""
    return v.astype(np.float32)[:, None, None]


def _blob(
    yy: Array, xx: Array, cy: Array, cx: Array, ry: Array | float, rx: Array | float
) -> Array:
    """Gaussian blobs (n, S, S) centred at (cy, cx) (n,) with radii ry, rx (n,) or scalars."""
    ry_ = _col(np.broadcast_to(np.asarray(ry, np.float32), cy.shape))
    rx_ = _col(np.broadcast_to(np.asarray(rx, np.float32), cx.shape))
    d = ((yy - _col(cy)) / ry_) ** 2 + ((xx - _col(cx)) / rx_) ** 2
    return np.exp(-0.5 * d)


def _ellipse(
    yy: Array, xx: Array, cy: Array, cx: Array, ry: float, rx: float, soft: float
) -> Array:
    """Soft-edged filled ellipses (n, S, S) in [0, 1]."""
    d = np.sqrt(((yy - _col(cy)) / ry) ** 2 + ((xx - _col(cx)) / rx) ** 2)
    return 1.0 / (1.0 + np.exp((d - 1.0) / soft))


def _jit(rng: np.random.Generator, n: int, amount: float) -> Array:
    return rng.uniform(-amount, amount, n).astype(np.float32)


def _rgb(gray: Array, color: Iterable[float]) -> Array:
    return gray[..., None] * np.asarray(list(color), np.float32)


def _chest(rng: np.random.Generator, n: int, size: int) -> tuple[Array, Array, Array, Array]:
    """Chest film base (n, S, S) and the lung mask, plus the jittered lung centre."""
    yy, xx = _grid(size)
    dy, dx = _jit(rng, n, 0.08), _jit(rng, n, 0.08)
    body = _ellipse(yy, xx, dy, dx, 1.05, 0.95, 0.06)
    lungs = _ellipse(yy, xx, dy - 0.05, dx - 0.45, 0.62, 0.33, 0.05) + _ellipse(
        yy, xx, dy - 0.05, dx + 0.45, 0.62, 0.33, 0.05
    )
    base = 0.25 + 0.6 * body - 0.45 * lungs + 0.05 * _smooth(rng, n, size, 6)
    return base, lungs, dy, dx


# ----------------------------------------------------------------------------- styles
# Each style maps (rng, labels (n, L) int, size) -> float images (n, S, S) or (n, S, S, 3) in
# about [0, 1]; the caller adds nothing else, clips and quantises.


def _path(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    out = np.empty((n, size, size, 3), np.float32)
    for k in np.unique(y[:, 0]):
        idx = np.flatnonzero(y[:, 0] == k)
        m = len(idx)
        field = _smooth(rng, m, size, 3 + int(k))  # class sets the blob scale
        thr = 1.2 - 0.12 * k  # and how much of the patch is nuclei
        nuc = 1.0 / (1.0 + np.exp(-(field - thr) * 6.0))
        hue = 0.35 + 0.05 * k
        bg = np.asarray([0.93, 0.70 - 0.02 * k, 0.85], np.float32)
        fg = np.asarray([hue, 0.20, 0.55 + 0.03 * (k % 3)], np.float32)
        img = bg * (1 - nuc[..., None]) + fg * nuc[..., None]
        img += 0.05 * rng.standard_normal(img.shape, dtype=np.float32)
        out[idx] = img
    return out


def _chestmnist(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    yy, xx = _grid(size)
    base, _lungs, dy, dx = _chest(rng, n, size)
    # Each label j has its own spot: 7 per lung, on a 7-point path down the lung.
    for j in range(y.shape[1]):
        on = y[:, j].astype(np.float32)
        if not on.any():
            continue
        side = -0.45 if j < 7 else 0.45
        cy = dy + (-0.45 + 0.15 * (j % 7))
        cx = dx + side + (0.12 if j % 2 else -0.12)
        base = base + 0.45 * _col(on) * _blob(yy, xx, cy, cx, 0.1, 0.1)
    return base + 0.04 * rng.standard_normal(base.shape, dtype=np.float32)


def _derma(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    yy, xx = _grid(size)
    colors = np.asarray(
        [
            [0.45, 0.25, 0.15],
            [0.60, 0.35, 0.25],
            [0.30, 0.15, 0.10],
            [0.75, 0.30, 0.30],
            [0.20, 0.12, 0.12],
            [0.55, 0.45, 0.30],
            [0.80, 0.20, 0.25],
        ],
        np.float32,
    )
    k = y[:, 0]
    skin = np.asarray([0.88, 0.68, 0.58], np.float32)
    tex = 0.04 * _smooth(rng, n, size, 5)
    r = (0.30 + 0.06 * (k % 4)).astype(np.float32)
    d = np.sqrt((yy - _col(_jit(rng, n, 0.2))) ** 2 + (xx - _col(_jit(rng, n, 0.2))) ** 2)
    lesion = 1.0 / (1.0 + np.exp((d - _col(r)) / 0.05))
    img = skin * (1 - lesion[..., None]) + colors[k][:, None, None, :] * lesion[..., None]
    img += tex[..., None] + 0.04 * rng.standard_normal(img.shape, dtype=np.float32)
    return img


def _oct(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    yy, xx = _grid(size)
    k = y[:, 0]
    tilt = _col(_jit(rng, n, 0.25))
    curve = yy - tilt * xx - 0.2 * xx**2
    layers = np.exp(-((curve / 0.35) ** 2)) * (0.6 + 0.3 * np.cos(curve * 14.0))
    bottom = curve - 0.3 - np.where(_col(k) == 2, 0.12 * np.maximum(np.sin(xx * 9.0), 0), 0.0)
    layers = layers + 0.7 * np.exp(-((bottom / 0.06) ** 2))
    cx = _jit(rng, n, 0.4)
    fluid = _blob(yy, xx, tilt[:, 0, 0] * cx + 0.02, cx, 0.14, 0.3)
    cysts = sum(
        _blob(yy, xx, 0.02 + _jit(rng, n, 0.1), _jit(rng, n, 0.7), 0.06, 0.06) for _ in range(3)
    )
    layers = layers - 0.9 * np.where(_col(k) == 0, fluid, 0.0)
    layers = layers - 0.8 * np.where(_col(k) == 1, cysts, 0.0)
    speckle = 0.12 * rng.standard_normal(layers.shape, dtype=np.float32)
    return 0.08 + 0.8 * np.clip(layers, 0, None) + speckle


def _pneumonia(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    base, lungs, _dy, _dx = _chest(rng, n, size)
    haze = np.clip(0.5 + 0.5 * _smooth(rng, n, size, 4), 0, 1)
    base = base + 0.35 * _col(y[:, 0]) * lungs * haze
    return base + 0.05 * rng.standard_normal(base.shape, dtype=np.float32)


def _retina(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    yy, xx = _grid(size)
    k = y[:, 0]
    disc = _ellipse(yy, xx, np.zeros(n, np.float32), np.zeros(n, np.float32), 0.92, 0.92, 0.03)
    img = _rgb(disc, (0.75, 0.35, 0.12)) * (1 + 0.1 * _smooth(rng, n, size, 4))[..., None]
    side = np.where(rng.random(n) < 0.5, -0.45, 0.45).astype(np.float32)
    optic = _blob(yy, xx, _jit(rng, n, 0.1), side, 0.12, 0.12)
    img += _rgb(optic, (0.25, 0.3, 0.2))
    lesions = np.zeros((n, size, size), np.float32)
    for i in range(12):  # grade g shows 3 g lesions
        on = _col((k * 3 > i).astype(np.float32))
        lesions += on * _blob(yy, xx, _jit(rng, n, 0.6), _jit(rng, n, 0.6), 0.06, 0.06)
    img += _rgb(np.minimum(lesions, 1.0) * disc, (0.25, 0.45, 0.3))
    return img + 0.03 * rng.standard_normal(img.shape, dtype=np.float32)


def _breast(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    yy, xx = _grid(size)
    k = _col(y[:, 0])
    cy, cx = _jit(rng, n, 0.25), _jit(rng, n, 0.25)
    ang = np.arctan2(yy - _col(cy), xx - _col(cx))
    d = np.sqrt((yy - _col(cy)) ** 2 + (xx - _col(cx)) ** 2)
    phase = _col(rng.uniform(0, 6.28, n))
    r_malig = 0.42 + 0.12 * np.sin(7 * ang + phase)  # spiky, large
    r_benign = 0.22 + 0.02 * np.sin(2 * ang + phase)  # small, smooth
    r = np.where(k == 0, r_malig, r_benign)
    mass = 1.0 / (1.0 + np.exp((d - r) / 0.04))
    tissue = 0.45 + 0.1 * _smooth(rng, n, size, 5) + 0.15 * (yy > -0.6)
    speckle = np.abs(rng.standard_normal((n, size, size), dtype=np.float32)) * 0.18
    return tissue * (1 - 0.8 * mass) + speckle - 0.1


def _blood(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    yy, xx = _grid(size)
    k = y[:, 0]
    cy, cx = _jit(rng, n, 0.12), _jit(rng, n, 0.12)
    cell = _ellipse(yy, xx, cy, cx, 0.62, 0.62, 0.05)
    img = np.asarray([0.92, 0.88, 0.80], np.float32) * np.ones((n, size, size, 3), np.float32)
    img -= _rgb(cell, (0.10, 0.25, 0.12))
    lobes = (k % 4 + 1).astype(np.float32)  # 1-4 lobes
    lobe_r = (0.14 + 0.04 * (k // 4)).astype(np.float32)
    rot = rng.uniform(0, 6.28, n).astype(np.float32)
    nucleus = np.zeros((n, size, size), np.float32)
    for i in range(4):
        on = _col((lobes > i).astype(np.float32))
        a = rot + i * 6.28 / lobes
        off = np.where(lobes > 1, 0.2, 0.0).astype(np.float32)
        nucleus += on * _blob(yy, xx, cy + off * np.sin(a), cx + off * np.cos(a), lobe_r, lobe_r)
    nucleus = np.minimum(nucleus * 1.5, 1.0)
    stain = np.where((k // 4)[:, None] == 0, [0.45, 0.55, 0.15], [0.6, 0.45, 0.1]).astype(
        np.float32
    )
    img -= nucleus[..., None] * stain[:, None, None, :]
    return img + 0.03 * rng.standard_normal(img.shape, dtype=np.float32)


def _tissue(rng: np.random.Generator, y: Array, size: int) -> Array:
    n = len(y)
    out = np.empty((n, size, size), np.float32)
    for k in np.unique(y[:, 0]):
        idx = np.flatnonzero(y[:, 0] == k)
        field = _smooth(rng, len(idx), size, 2 + int(k))
        bright = 0.25 + 0.06 * k
        out[idx] = 0.12 + bright * np.clip(field + 0.6, 0, None)
    return out + 0.05 * rng.standard_normal(out.shape, dtype=np.float32)


def _organ(view: str) -> Callable[[np.random.Generator, Array, int], Array]:
    ry, rx, oy = {
        "axial": (0.6, 0.85, 0.0),
        "coronal": (0.88, 0.55, 0.0),
        "sagittal": (0.88, 0.42, 0.05),
    }[view]

    def style(rng: np.random.Generator, y: Array, size: int) -> Array:
        n = len(y)
        yy, xx = _grid(size)
        k = y[:, 0].astype(np.float32)
        dy, dx = _jit(rng, n, 0.07), _jit(rng, n, 0.07)
        body = _ellipse(yy, xx, dy + oy, dx, ry, rx, 0.04)
        ang = k * (6.2832 / 11.0)
        oy_, ox_ = dy + 0.45 * ry * np.sin(ang), dx + 0.45 * rx * np.cos(ang)
        r = 0.09 + 0.012 * (k % 4)
        organ = _blob(yy, xx, oy_, ox_, r, r * 1.3)
        img = 0.02 + 0.4 * body * (1 + 0.15 * _smooth(rng, n, size, 6)) + 0.5 * organ * body
        return img + 0.04 * rng.standard_normal(img.shape, dtype=np.float32)

    return style


_STYLE_FNS: dict[str, Callable[[np.random.Generator, Array, int], Array]] = {
    "pathmnist": _path,
    "chestmnist": _chestmnist,
    "dermamnist": _derma,
    "octmnist": _oct,
    "pneumoniamnist": _pneumonia,
    "retinamnist": _retina,
    "breastmnist": _breast,
    "bloodmnist": _blood,
    "tissuemnist": _tissue,
    "organamnist": _organ("axial"),
    "organcmnist": _organ("coronal"),
    "organsmnist": _organ("sagittal"),
}


# ----------------------------------------------------------------------------- labels


def _class_probs(flag: str, n_classes: int) -> Array:
    """A fixed, mildly imbalanced class distribution per flag (ordinal: decreasing)."""
    r = np.random.default_rng(zlib.crc32(flag.encode()))
    if flag == "retinamnist":
        p = np.asarray([0.44, 0.12, 0.2, 0.17, 0.07])
    else:
        p = 0.5 + r.random(n_classes)
    return np.asarray(p / p.sum())


def _labels(flag: str, n: int, rng: np.random.Generator) -> Array:
    info = flag_info(flag)
    if info.multi_label:
        prevalence = np.linspace(0.03, 0.18, info.n_classes)
        return (rng.random((n, info.n_classes)) < prevalence).astype(np.uint8)
    y = rng.choice(info.n_classes, size=n, p=_class_probs(flag, info.n_classes))
    m = min(n, info.n_classes)
    y[:m] = np.arange(m)  # every class present when the split is large enough
    rng.shuffle(y)
    return y.astype(np.uint8)[:, None]


# ----------------------------------------------------------------------------- public API


def make_split(
    flag: str, n: int, seed: int = 0, size: int = 28, split: str = "train"
) -> tuple[Array, Array]:
    """``n`` look-alike images and labels of one split: uint8 (n, S, S[, 3]), uint8 (n, L)."""
    labels, shape, batches = split_batches(flag, n, seed=seed, size=size, split=split)
    images = np.empty(shape, np.uint8)
    lo = 0
    for x in batches:
        images[lo : lo + len(x)] = x
        lo += len(x)
    return images, labels


def split_batches(
    flag: str, n: int, seed: int = 0, size: int = 28, split: str = "train"
) -> tuple[Array, tuple[int, ...], Iterator[Array]]:
    """One split as :func:`make_split` makes it, its images in batches: the labels, the images'
    shape, and an iterator of uint8 image batches (about :data:`BATCH_PIXELS` pixels, 16 MiB,
    each) in order. The same random draws in the same order, so the images are the same."""
    info = flag_info(flag)
    check_size(size)
    _check_seed(seed)
    rng = np.random.default_rng([seed, FLAGS_2D.index(flag), _KEYS.index(split), size])
    labels = _labels(flag, n, rng)
    shape = (n, size, size, 3) if info.channels == 3 else (n, size, size)
    batch = max(1, BATCH_PIXELS // (size * size * info.channels))
    style = _STYLE_FNS[flag]

    def batches() -> Iterator[Array]:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            x = style(rng, labels[lo:hi], size)
            # Per-image contrast/brightness jitter, then quantise.
            gain = _col(rng.uniform(0.85, 1.15, hi - lo))
            if x.ndim == 4:
                gain = gain[..., None]
            x = x * gain * 255.0
            np.clip(x, 0, 255, out=x)
            yield (x + 0.5).astype(np.uint8)

    return labels, shape, batches()


def write_lookalike(
    path: str | Path,
    flag: str,
    scale: float = 0.01,
    seed: int = 0,
    size: int = 28,
    *,
    compress: bool = True,
) -> Path:
    """Write one look-alike npz file, the same bytes ``np.savez_compressed`` (``np.savez``
    with ``compress=False``) writes of :func:`make_lookalike`'s arrays (but for the zip
    entries' times), one batch of images at a time: its memory is a few hundred MB (a batch
    and the style's intermediate arrays) whatever ``scale`` and ``size`` (PathMNIST at 224
    px and scale 1 is a 13.5 GB array). Atomic (:func:`~pomlia_hpc.files.write_atomic`)."""

    def write(f: IO[bytes]) -> None:
        # As numpy's savez: a zip64 member per array, an .npy header (version 1.0) and the
        # C-order bytes; the deflate stream does not depend on how its input is cut.
        mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(f, mode="w", compression=mode, allowZip64=True) as zf:
            for split, n in split_sizes(flag, scale).items():
                labels, shape, batches = split_batches(flag, n, seed, size, split)
                descr = npy_format.dtype_to_descr(np.dtype(np.uint8))
                header: dict[str, Any] = {"descr": descr, "fortran_order": False, "shape": shape}
                with zf.open(f"{split}_images.npy", "w", force_zip64=True) as fid:
                    npy_format.write_array_header_1_0(fid, header)
                    for x in batches:
                        fid.write(x.tobytes())
                with zf.open(f"{split}_labels.npy", "w", force_zip64=True) as fid:
                    npy_format.write_array(fid, labels)

    return write_atomic(path, write)


def make_lookalike(
    flag: str, scale: float = 0.01, seed: int = 0, size: int = 28
) -> dict[str, Array]:
    """All six arrays of one look-alike dataset, in memory, keyed like MedMNIST's npz."""
    out: dict[str, Array] = {}
    for split, n in split_sizes(flag, scale).items():
        x, y = make_split(flag, n, seed=seed, size=size, split=split)
        out[f"{split}_images"], out[f"{split}_labels"] = x, y
    return out


def check_lookalike_options(scale: float, seed: int, size: int, flags: Iterable[str]) -> None:
    """Refuse what :func:`make_lookalike` would refuse, before anything is written: an unknown
    flag, a scale <= 0, a size MedMNIST lacks, a negative seed."""
    for flag in flags:
        split_sizes(flag, scale)  # refuses a scale <= 0 and an unknown flag
    check_size(size)
    _check_seed(seed)


def _check_seed(seed: int) -> None:
    """numpy's seed sequences take whole numbers >= 0 only (a ValueError traceback before)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"look-alike seed {seed!r} is not valid: expected a whole number >= 0")


def write_lookalikes(
    out_dir: str | Path,
    scale: float = 0.01,
    seed: int = 0,
    size: int = 28,
    flags: Iterable[str] | None = None,
    *,
    compress: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write look-alike npz files (default: all 12) into ``out_dir``; return their paths.

    The options are checked before ``out_dir`` is created; if writing fails, the files this
    call added and the folders it made are removed (files it replaced are not restored)."""
    chosen = list(flags or FLAGS_2D)
    check_lookalike_options(scale, seed, size, chosen)
    out = Path(out_dir)
    try:
        made = make_dirs(out)
    except OSError as exc:
        raise InputError(f"output folder '{out}' cannot be created: {exc.strerror}") from exc
    paths: list[Path] = []
    added: list[Path] = []
    try:
        for flag in chosen:
            path = out / flag_info(flag).file_name(size)
            existed = path.exists()
            write_lookalike(path, flag, scale, seed, size, compress=compress)
            paths.append(path)
            if not existed:
                added.append(path)
            if progress is not None:
                progress(flag)
    except BaseException:
        for path in added:
            path.unlink(missing_ok=True)
        remove_made_dirs(made)
        raise
    return paths
