"""Acquisition-like random views of images, for the contrastive encoder objective.

:func:`acquisition_view` changes each image as another scanner, exposure or compression
setting would, with its own random parameters: brightness, contrast, gamma, Gaussian blur,
Gaussian noise, JPEG, a small random crop (resized back) and flips. Two views of the same image
are pulled together by the objective, so the latent becomes insensitive to these changes and
keeps what the images show.

Deliberately *not* used here: the ``pixelate`` and ``stain`` corruption families of
:mod:`pomlia_hpc.data.corruptions`, so the fingerprint benchmark's acquisition-shifted set
also tests shifts the encoder never saw during training.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

#: Ranges of the per-image parameters (uniform), and how often each change is applied.
BRIGHTNESS = 0.25  # added value, +-
CONTRAST = (0.6, 1.4)  # factor around the image mean
GAMMA = (0.6, 1.8)
BLUR_SIGMA = (0.3, 1.2)  # px at 28 px
NOISE_SIGMA = (0.01, 0.08)
JPEG_QUALITY = (15, 90)
CROP_AREA = (0.7, 1.0)  # fraction of the image kept by the crop
P_BLUR, P_NOISE, P_JPEG, P_CROP = 0.4, 0.4, 0.3, 0.5


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w, c = img.shape
    side = np.sqrt(rng.uniform(*CROP_AREA))
    ch, cw = max(2, round(h * side)), max(2, round(w * side))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    part = img[y0 : y0 + ch, x0 : x0 + cw]
    im = Image.fromarray(part[..., 0] if c == 1 else part)
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR)).reshape(h, w, c)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    h, w, c = img.shape
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if c == 1 else img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf)).reshape(h, w, c)


def acquisition_view(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random acquisition-like view of each uint8 image (N, H, W, C): uint8, same shape."""
    x8 = np.asarray(images, np.uint8)
    n = len(x8)
    out = np.empty_like(x8)
    for i in range(n):
        img = x8[i]
        if rng.random() < P_CROP:
            img = _crop(img, rng)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1]
        f = img.astype(np.float32) / 255.0
        f = f + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
        mean = f.mean()
        f = (f - mean) * rng.uniform(*CONTRAST) + mean
        f = np.clip(f, 0.0, 1.0) ** rng.uniform(*GAMMA)
        if rng.random() < P_BLUR:
            s = rng.uniform(*BLUR_SIGMA)
            f = ndimage.gaussian_filter(f, sigma=(s, s, 0), mode="reflect")
        if rng.random() < P_NOISE:
            f = f + rng.normal(0.0, rng.uniform(*NOISE_SIGMA), f.shape).astype(np.float32)
        img = (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if rng.random() < P_JPEG:
            img = _jpeg(img, int(rng.integers(*JPEG_QUALITY)))
        out[i] = img
    return out
