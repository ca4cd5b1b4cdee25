"""Decoding uploaded images into arrays, with every check that keeps bad input a 4xx.

Accepted: PNG, JPEG, TIFF (every page of a multi-page TIFF is one image) and NPY. An NPY array
is channel-last: (H, W) one grey image, (H, W, C) one image, (N, H, W, C) a batch, and (N, H, W)
a batch of grey images when the model has one channel. 8-bit and 16-bit pixels are scaled to
[0, 1]; float pixels are taken as already in [0, 1] and must be finite.

Dimensions are checked from the header, before any pixel is decoded, so a decompression bomb
never allocates memory. Nothing from the request is ever used as a path.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"II*\x00": "image/tiff",
    b"MM\x00*": "image/tiff",
    b"\x93NUMPY": "application/x-npy",
}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff")
NPY_TYPES = ("application/x-npy", "application/npy")
SNIFFED_TYPES = ("application/octet-stream",)
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/tiff": "TIFF"}
MODE_CHANNELS = {
    "1": 1,
    "L": 1,
    "I;16": 1,
    "I;16B": 1,
    "I;16L": 1,
    "I": 1,
    "F": 1,
    "LA": 2,
    "RGB": 3,
    "RGBA": 4,
    "CMYK": 4,
}
NPY_DTYPES = ("uint8", "uint16", "float32", "float64")


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP code (always 4xx), ``message`` says
    what was wrong and what is expected."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: square ``image_size`` px images with ``channels`` channels."""

    image_size: int
    channels: int


@dataclass(frozen=True)
class Limits:
    """Upload limits: bytes per request, pixels per side, images per request."""

    max_upload_bytes: int = 16 * 1024 * 1024
    max_side_px: int = 4096
    max_images: int = 256


def sniff(data: bytes) -> str | None:
    """The content type the first bytes announce, or None."""
    for magic, ctype in MAGIC.items():
        if data.startswith(magic):
            return ctype
    return None


def base_type(content_type: str | None) -> str:
    """``'image/png; charset=x'`` → ``'image/png'`` (lower case); '' when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(
    data: bytes, content_type: str | None, spec: InputSpec, limits: Limits, what: str = "upload"
) -> np.ndarray:
    """Decode one uploaded file into float32 NHWC in [0, 1] that fits ``spec``.

    ``what`` names the file in error messages (e.g. ``"part 'file' #2"``).
    Raises :class:`RequestError` (400, 413 or 415) for anything else.
    """
    declared = base_type(content_type)
    if not data:
        raise RequestError(400, f"{what}: empty body; expected a PNG, JPEG, TIFF or NPY file")
    actual = sniff(data)
    accepted = (*IMAGE_TYPES, *NPY_TYPES)
    if declared and declared not in accepted and declared not in SNIFFED_TYPES:
        raise RequestError(
            415,
            f"{what}: content type '{declared}' is not supported; expected one of "
            f"{', '.join(accepted)} (or application/octet-stream)",
        )
    if actual is None:
        raise RequestError(
            400, f"{what}: not a PNG, JPEG, TIFF or NPY file (unrecognised first bytes)"
        )
    if (
        declared in accepted
        and declared != actual
        and not (declared in NPY_TYPES and actual in NPY_TYPES)
    ):
        raise RequestError(415, f"{what}: declared as {declared} but the data is {actual}")
    if actual in NPY_TYPES:
        images = _decode_npy(data, spec, limits, what)
    else:
        images = _decode_image(data, actual, limits, what)
    return _check_shape(images, spec, limits, what)


def _decode_image(data: bytes, ctype: str, limits: Limits, what: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[ctype]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(
            413, f"{what}: image dimensions exceed the limit of {limits.max_side_px} px per side"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(400, f"{what}: corrupt or unreadable {ctype} image ({exc})") from exc
    frames: list[np.ndarray] = []
    try:
        n_frames = int(getattr(img, "n_frames", 1))
        if n_frames > limits.max_images:
            raise RequestError(
                413, f"{what}: {n_frames} pages, at most {limits.max_images} images per request"
            )
        for i in range(n_frames):
            img.seek(i)
            w, h = img.size
            if max(w, h) > limits.max_side_px:
                raise RequestError(
                    413,
                    f"{what}: image is {w}x{h} px, larger than the limit of "
                    f"{limits.max_side_px} px per side",
                )
            frames.append(_pixels(img, what))
    except RequestError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        TypeError,
        KeyError,
        IndexError,
        MemoryError,
        ZeroDivisionError,
        struct_error(),
    ) as exc:
        raise RequestError(400, f"{what}: corrupt {ctype} image ({exc})") from exc
    finally:
        img.close()
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise RequestError(400, f"{what}: TIFF pages differ in size or channels {sorted(shapes)}")
    return np.stack(frames)


def struct_error() -> type[Exception]:
    """``struct.error``, which Pillow lets escape from some truncated TIFF headers."""
    import struct

    return struct.error


def _pixels(img: Image.Image, what: str) -> np.ndarray:
    """One frame → float32 HWC in [0, 1]."""
    mode = img.mode
    if mode == "P":  # a palette image is its RGB (or RGBA) rendering
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode not in MODE_CHANNELS:
        raise RequestError(
            400, f"{what}: pixel mode '{mode}' is not supported; expected grey, RGB or RGBA"
        )
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return _to_unit_float(arr, what)


def _to_unit_float(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.multiply(arr, np.float32(1 / 255), dtype=np.float32)
    if arr.dtype in (np.uint16, np.dtype(">u2"), np.dtype("<u2")):
        return np.multiply(arr, np.float32(1 / 65535), dtype=np.float32)
    if arr.dtype.kind in "iu":  # 32-bit integer TIFFs: the 16-bit range is the common case
        return np.clip(arr.astype(np.float32) * np.float32(1 / 65535), 0.0, 1.0)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise RequestError(400, f"{what}: float pixels must be finite (found NaN or inf)")
        return out
    raise RequestError(400, f"{what}: pixel type {arr.dtype} is not supported")


def _decode_npy(data: bytes, spec: InputSpec, limits: Limits, what: str) -> np.ndarray:
    fmt = np.lib.format
    buf = io.BytesIO(data)
    try:
        version = fmt.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(buf)
        else:
            raise ValueError(f"NPY version {version}")
    except (ValueError, SyntaxError, OSError, TypeError) as exc:
        raise RequestError(400, f"{what}: corrupt NPY header ({exc})") from exc
    if dtype.hasobject or dtype.name not in NPY_DTYPES:
        raise RequestError(
            400,
            f"{what}: NPY dtype {dtype} is not supported; expected one of {', '.join(NPY_DTYPES)}",
        )
    if not 2 <= len(shape) <= 4 or any(int(s) < 1 for s in shape):
        raise RequestError(
            400,
            f"{what}: NPY shape {tuple(shape)}: expected (H, W), (H, W, C), "
            "(N, H, W) or (N, H, W, C)",
        )
    if len(shape) == 4 or (
        len(shape) == 3
        and spec.channels == 1
        and tuple(shape[1:]) == (spec.image_size, spec.image_size)
    ):
        sides = tuple(shape[1:3])
    else:
        sides = tuple(shape[0:2])
    if max(int(s) for s in sides) > limits.max_side_px:
        raise RequestError(
            413, f"{what}: image side {max(sides)} px exceeds the limit of {limits.max_side_px} px"
        )
    count = int(np.prod(shape))
    offset = buf.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise RequestError(
            400,
            f"{what}: NPY data is {len(data) - offset} bytes, the header "
            f"announces {count * dtype.itemsize}",
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[:, :, :, None] if tuple(sides) == tuple(shape[1:3]) else arr[None]
    return _to_unit_float(np.ascontiguousarray(arr), what)


def _check_shape(images: np.ndarray, spec: InputSpec, limits: Limits, what: str) -> np.ndarray:
    n, h, w, c = images.shape
    if n > limits.max_images:
        raise RequestError(413, f"{what}: {n} images, at most {limits.max_images} per request")
    if (h, w) != (spec.image_size, spec.image_size):
        raise RequestError(
            400,
            f"{what}: image is {w}x{h} px, the model expects {spec.image_size}x{spec.image_size}",
        )
    if c != spec.channels:
        raise RequestError(
            400, f"{what}: image has {c} channel(s), the model expects {spec.channels}"
        )
    return images
