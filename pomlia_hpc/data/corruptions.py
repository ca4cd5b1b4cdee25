"""Acquisition-like image corruptions: a dataset "seen through another scanner or stain".

The families follow MedMNIST-C (Di Salvo et al., 2024), written here from their descriptions
(the ``medmnistc`` package pins versions this project cannot use). Each family has five
severities; 3 is "moderate". A corruption is a *systematic* change of the whole set (like a
new device or protocol), so every parameter is fixed by (family, severity) and the same for
every image and every call; only ``noise`` draws random numbers, from the ``rng`` passed in.
Corrupting a dataset in chunks therefore gives the same result as in one call (except for the
noise draws, which follow the generator's state).

=========  ============================================================  ======================
family     what                                                          severities 1..5
=========  ============================================================  ======================
brightness add c to the HSV value (RGB) / grey level, hue kept            c = .1 .2 .3 .4 .5
contrast   (x - image mean) * c + image mean                             c = .75 .6 .5 .4 .3
gamma      x ** g (darkens the mid-tones)                                g = 1.3 1.6 1.9 2.2 2.6
blur       Gaussian blur, sigma in px (at 28 px)                         .5 .75 1 1.25 1.5
noise      additive Gaussian noise, sigma (of the 0..1 range)            .03 .05 .07 .09 .11
jpeg       JPEG compression at quality q                                 60 40 25 15 10
pixelate   downscale by f (box), upscale (nearest)                       .8 .65 .5 .4 .3
stain      H&E-DAB stain shift: per stain channel scaled and shifted     s = .05 .1 .15 .2 .25
           (colour deconvolution, RGB only)
=========  ============================================================  ======================

API::

    corrupt(images, "gamma", severity=3, rng=np.random.default_rng(0)) -> uint8, same shape

``images`` are uint8 (N, H, W, C) with C in {1, 3}, or (N, H, W) grey.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from pomlia_hpc.errors import InputError

FAMILIES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "gamma",
    "blur",
    "noise",
    "jpeg",
    "pixelate",
    "stain",
)
"""The corruption families, in MedMNIST-C's order of kinds (digital, then acquisition)."""

#: Families that need RGB images.
RGB_ONLY: frozenset[str] = frozenset({"stain"})

_PARAMS: dict[str, tuple[float, ...]] = {
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.75, 0.6, 0.5, 0.4, 0.3),
    "gamma": (1.3, 1.6, 1.9, 2.2, 2.6),
    "blur": (0.5, 0.75, 1.0, 1.25, 1.5),
    "noise": (0.03, 0.05, 0.07, 0.09, 0.11),
    "jpeg": (60, 40, 25, 15, 10),
    "pixelate": (0.8, 0.65, 0.5, 0.4, 0.3),
    "stain": (0.05, 0.1, 0.15, 0.2, 0.25),
}

# Colour deconvolution matrix of Ruifrok & Johnston (2001): rows are the optical-density
# colours of haematoxylin, eosin and DAB (a published constant, as in scikit-image).
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
# Per stain: direction of the scale change (one stain stronger, one weaker, like a protocol
# with longer haematoxylin and shorter eosin staining) and of the shift.
_STAIN_SCALE = np.array([1.0, -1.0, 0.5])
_STAIN_SHIFT = np.array([0.5, -0.5, 0.25])


def parameter(family: str, severity: int) -> float:
    """The parameter of ``family`` at ``severity`` (1..5), see the module table."""
    check(family, severity)
    return float(_PARAMS[family][severity - 1])


def check(family: str, severity: int) -> None:
    """Raise :class:`InputError` unless ``family`` is known and ``severity`` is 1..5."""
    if family not in _PARAMS:
        raise InputError(
            f"corruption '{family}' is not known: expected one of {', '.join(FAMILIES)}"
        )
    if not isinstance(severity, int | np.integer) or not 1 <= severity <= 5:
        raise InputError(f"corruption severity {severity!r}: expected an integer 1..5")


def _brightness(x: np.ndarray, c: float) -> np.ndarray:
    if x.shape[-1] == 1:
        return x + c
    # Scale RGB so the HSV value (max channel) rises by c: hue and saturation are kept.
    v = x.max(axis=-1, keepdims=True)
    target = np.minimum(v + c, 1.0)
    scale = np.where(v > 1e-6, target / np.maximum(v, 1e-6), 1.0)
    return np.where(v > 1e-6, x * scale, x + c)


def _contrast(x: np.ndarray, c: float) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * c + mean


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")


def _pixelate(x8: np.ndarray, f: float) -> np.ndarray:
    n, h, w, c = x8.shape
    small = (max(1, round(w * f)), max(1, round(h * f)))
    out = np.empty_like(x8)
    for i in range(n):
        im = Image.fromarray(x8[i, ..., 0] if c == 1 else x8[i])
        im = im.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.NEAREST)
        out[i] = np.asarray(im).reshape(h, w, c)
    return out


def _jpeg(x8: np.ndarray, quality: int) -> np.ndarray:
    n, h, w, c = x8.shape
    out = np.empty_like(x8)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(x8[i, ..., 0] if c == 1 else x8[i]).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf)).reshape(h, w, c)
    return out


def _stain(x: np.ndarray, s: float) -> np.ndarray:
    # Optical density per pixel, into stain concentrations, shifted, back to RGB.
    od = -np.log10(np.maximum(x, 1.0 / 255.0))  # black pixels: finite density
    hed = od @ _HED_FROM_RGB
    hed = hed * (1.0 + s * _STAIN_SCALE) + s * 0.1 * _STAIN_SHIFT
    rgb = 10.0 ** (-(hed @ _RGB_FROM_HED))
    return rgb


def corrupt(images: np.ndarray, family: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``images`` (uint8 (N, H, W, C) or (N, H, W)) corrupted by ``family`` at ``severity``
    (1..5); uint8, same shape. ``rng`` is used only by ``noise``."""
    check(family, severity)
    x8 = np.asarray(images)
    if (
        x8.dtype != np.uint8
        or x8.ndim not in (3, 4)
        or (x8.ndim == 4 and x8.shape[-1] not in (1, 3))
    ):
        raise InputError(
            f"images of dtype {x8.dtype} and shape {x8.shape}: expected uint8 (N, H, W, C) "
            "with C = 1 or 3, or (N, H, W)"
        )
    squeeze = x8.ndim == 3
    if squeeze:
        x8 = x8[..., None]
    if family in RGB_ONLY and x8.shape[-1] != 3:
        raise InputError(f"corruption '{family}' needs RGB images, got {x8.shape[-1]} channel(s)")
    p = _PARAMS[family][severity - 1]
    if len(x8) == 0:
        out = x8.copy()
    elif family == "jpeg":
        out = _jpeg(x8, int(p))
    elif family == "pixelate":
        out = _pixelate(x8, float(p))
    else:
        x = x8.astype(np.float32) / 255.0
        if family == "brightness":
            y = _brightness(x, p)
        elif family == "contrast":
            y = _contrast(x, p)
        elif family == "gamma":
            y = x**p
        elif family == "blur":
            y = _blur(x, p)
        elif family == "noise":
            y = x + rng.normal(0.0, p, size=x.shape).astype(np.float32)
        else:  # stain
            y = _stain(x.astype(np.float64), p)
        out = (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out[..., 0] if squeeze else out
