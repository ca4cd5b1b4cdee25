"""How a decoded image file becomes pixels: the one rule ingest (image folders) and the
server (uploaded PNG, JPEG and TIFF) share, so a served image is read as its training images
were. Torch-free: the serving decode path imports it.

A palette, CMYK or other colour image is its RGB rendering, an alpha channel is dropped
(RGBA -> RGB, LA -> L), a bilevel image is grey 0/255, and a grey image is repeated to the
wanted channel count. 16-bit, 32-bit integer and float pixels keep their values and dtype.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: PIL modes kept as they are (their pixels are already grey or RGB values).
PLAIN_MODES = frozenset({"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "RGB"})
#: PIL modes read as grey: bilevel, and grey with alpha.
GREY_MODES = frozenset({"1", "LA"})


def pil_pixels(image: Image.Image, channels: int) -> np.ndarray:
    """The pixels of one decoded PIL image (or frame) as (H, W, C): see the module doc. C is
    ``channels`` for a grey image, 3 for a colour one (the caller checks it fits)."""
    if image.mode in GREY_MODES:
        image = image.convert("L")
    elif image.mode not in PLAIN_MODES:
        image = image.convert("RGB")
    return pixel_layout(np.asarray(image), channels)


def pixel_layout(x: np.ndarray, channels: int) -> np.ndarray:
    """An image array as (H, W, C): a 4th (alpha) channel dropped, a grey image (2-D or one
    channel) repeated to ``channels``."""
    if x.ndim == 3 and x.shape[2] == 4:
        x = x[..., :3]  # drop alpha
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.repeat(x[..., None], channels, axis=2)
    return x
