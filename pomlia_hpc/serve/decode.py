"""Decoding uploaded images into arrays, with every check that keeps bad input a 4xx.

Accepted: PNG, JPEG, TIFF (every page of a multi-page TIFF is one image) and NPY. An NPY array
is channel-last: (H, W) one grey image, (H, W, C) one image, (N, H, W, C) a batch, and (N, H, W)
a batch of grey images when the model has one channel.

Scaling to [0, 1]: 8-bit pixels are divided by 255. 16-bit pixels (and 32-bit integer pixels,
as 16-bit PNGs open, which must lie in 0..65535) are scaled as ingest scaled the training
images when the model card records that data set's maximum (``input.intensity_scaling``):
``min(x, max)`` to 8 bits by ingest's own converter
(:class:`pomlia_hpc.data.sources.base.PixelConverter`), then divided by 255; values above the
training maximum saturate. Without that record (8-bit or float training data, or a bundle
exported before it was kept) they are divided by 65535. Float pixels (an image file's or an
NPY array's) must be finite and in [0, 1], the rule ingest applies, and are rounded to the 8-bit
steps ingest stores them at (``round(x * 255) / 255``, in the array's own float type as ingest
computes it), so a float row of an HDF5 or npz training set sent as an NPY is served as stored.

Image files (PNG, JPEG, TIFF) are decoded by the very per-file rule ingest applies to
image-folder files (:mod:`pomlia_hpc.data.sources.pixels`; TIFFs through tifffile, as
ingest reads them): an alpha channel is dropped (RGBA -> RGB, LA -> L), a palette or CMYK
image is its RGB rendering, a MinIsWhite TIFF is inverted, 16-bit RGB keeps its depth, float
TIFFs (32- or 64-bit) are taken in [0, 1] and rounded to the 8-bit steps ingest stores them
at, and a grey image is repeated to 3 channels for a colour model. So a training file is
served exactly as it was stored. A colour image for a
grey model is refused, with how to convert it (ingest never makes a colour image grey: one
colour image makes an image folder's data set colour, so there is no ingest rule to apply).
An NPY array's channel count must match the model's, save that a 4th channel is RGBA's alpha
and dropped for a colour model, as ingest drops it from an (N, H, W, 4) array, and that a grey
array ((H, W), (H, W, 1), (N, H, W, 1)) is repeated to 3 channels for a colour model, as a grey
image file is (and as ingest repeats a grey image of a colour image folder); a shape that
does not fit is named with the shapes the model accepts.

The type is read from the data (its first bytes); a Content-Type header, when given, must
agree with it (or be ``application/octet-stream``). Without one the sniffed type is used.

Every frame's size and channel count are checked against the model from the header, before
any of its pixels is decoded, and the number of images against the request's budget before the
first frame is decoded. So a decompression bomb (say a compressed multi-page TIFF of 4096 px
pages, 75 KB each) is refused without decoding a pixel, and what is decoded is at most
``max_images`` frames of the model's own size. A TIFF strip that decompresses past its own
page's pixels (200 MB of zeros in a 30 KB LZMA strip of a 64 px page) is a 413, found with
a decoder that stops one byte past those pixels (:mod:`pomlia_hpc.data.sources.segments`).
Nothing from the request is ever used as a path.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from pomlia_hpc.data.sources.base import PixelConverter
from pomlia_hpc.data.sources.pixels import (
    FrameHeader,
    PixelFormatError,
    TiffImage,
    is_unreadable_file_error,
    pil_header,
    pil_pixels,
)
from pomlia_hpc.data.sources.segments import DecompressionLimitError
from pomlia_hpc.serve.formats import (
    npy_header_problem,
    unsupported_format,
    unsupported_format_message,
)
from pomlia_hpc.serve.scan import (
    JPEG_MAX_SEGMENTS,
    JPEG_MAX_SKIPPED,
    PNG_BASE_CHUNKS,
    PNG_BYTES_PER_CHUNK,
    TIFF_BASE_ENTRIES,
    TIFF_ENTRIES_PER_PAGE,
    TIFF_MAX_IFD_ENTRIES,
    jpeg_head,
    png_chunk_limit,
    png_chunks,
    tiff_chain,
    tiff_entry_limit,
)

MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"II*\x00": "image/tiff",
    b"MM\x00*": "image/tiff",
    b"\x93NUMPY": "application/x-npy",
}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff")
#: Other spellings clients send for an accepted type (``image/jpg`` is common, not registered).
TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/tif": "image/tiff"}
NPY_TYPES = ("application/x-npy", "application/npy")
SNIFFED_TYPES = ("application/octet-stream",)
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/tiff": "TIFF"}
NPY_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")
#: A Python object's default repr, as some exception messages quote one.
OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP code (4xx; 5xx when the server
    failed: 503 it cannot log, 500 the model gave no finite output), ``message`` says what was
    wrong and what is expected."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: The rejection category when the message's words would mislead the guess
        #: (``handlers.rejection_reason``), e.g. a size refusal that names channels.
        self.reason = reason


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: square ``image_size`` px images with ``channels`` channels;
    ``scale_max``: the largest 16-bit value of the training data set, which ingest scaled to
    255 (None: 16-bit pixels are divided by 65535)."""

    image_size: int
    channels: int
    scale_max: float | None = None


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
    """``'image/png; charset=x'`` → ``'image/png'`` (lower case, ``image/jpg`` read as
    ``image/jpeg``); '' when absent."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    return TYPE_ALIASES.get(ctype, ctype)


def decode(
    data: bytes,
    content_type: str | None,
    spec: InputSpec,
    limits: Limits,
    what: str = "upload",
    *,
    budget: int | None = None,
) -> np.ndarray:
    """Decode one uploaded file into float32 NHWC in [0, 1] that fits ``spec``.

    ``what`` names the file in error messages (e.g. ``"part 'file' #2"``). ``budget`` is how
    many images this file may still hold (default ``limits.max_images``): the files of one
    multipart request share ``max_images`` between them. Raises :class:`RequestError` (400,
    413 or 415) for anything else, before decoding any pixel where the header tells.
    """
    budget = limits.max_images if budget is None else budget
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
    if actual is None and (name := unsupported_format(data)) is not None:
        # 415, as for a declared image/bmp: the same bytes got a 400 when sent unlabelled.
        raise RequestError(415, unsupported_format_message(what, name))
    if actual is None:
        raise RequestError(
            400, f"{what}: not a PNG, JPEG, TIFF or NPY file (unrecognised first bytes)"
        )
    if (
        declared in accepted
        and declared != actual
        and not (declared in NPY_TYPES and actual in NPY_TYPES)
    ):
        raise RequestError(
            415,
            f"{what}: declared as {declared} (its Content-Type) but the data is {actual}; "
            f"send Content-Type: {actual}, or no Content-Type (the type is then read from "
            "the data)",
        )
    if actual in NPY_TYPES:
        return _decode_npy(data, spec, limits, what, budget)
    _check_structure(data, actual, limits, what, budget)
    return _decode_image(data, actual, spec, limits, what, budget)


def _check_structure(data: bytes, ctype: str, limits: Limits, what: str, budget: int) -> None:
    """Refuse (413) a TIFF with more pages than ``budget`` or more IFD entries than
    :mod:`.scan` allows, a JPEG with more marker segments than ``JPEG_MAX_SEGMENTS`` or more
    fill or junk bytes than ``JPEG_MAX_SKIPPED`` before its image data, or a PNG with more
    chunks than :func:`~pomlia_hpc.serve.scan.png_chunk_limit`, counted by a linear scan that
    stops just past the limit (Pillow's own walk of such files is slow: see :mod:`.scan`)."""
    if ctype == "image/tiff":
        _check_tiff_chain(data, limits, what, budget)
    elif ctype == "image/jpeg":
        head = jpeg_head(data, stop_after=JPEG_MAX_SEGMENTS + 1, max_skipped=JPEG_MAX_SKIPPED)
        if head.segments > JPEG_MAX_SEGMENTS:
            raise RequestError(
                413,
                f"{what}: JPEG holds more than {JPEG_MAX_SEGMENTS} marker segments before its "
                "image data; save the image again with a standard encoder",
            )
        if head.skipped > JPEG_MAX_SKIPPED:
            raise RequestError(
                413,
                f"{what}: JPEG holds more than {JPEG_MAX_SKIPPED} bytes of fill (0xFF) or junk "
                "between its marker segments before its image data; save the image again with "
                "a standard encoder",
            )
    elif ctype == "image/png":
        limit = png_chunk_limit(len(data))
        if png_chunks(data, stop_after=limit + 1) > limit:
            raise RequestError(
                413,
                f"{what}: PNG holds more than {limit} chunks (at most {PNG_BASE_CHUNKS} plus one "
                f"per {PNG_BYTES_PER_CHUNK} bytes of file); save the image again with a "
                "standard encoder",
            )


def _check_tiff_chain(data: bytes, limits: Limits, what: str, budget: int) -> None:
    """Refuse (413) a TIFF with more pages than ``budget``, an IFD of more than
    ``TIFF_MAX_IFD_ENTRIES`` entries, or more entries in all than
    :func:`~pomlia_hpc.serve.scan.tiff_entry_limit`."""
    # Counted to one past the request's limit (not the smaller budget left after earlier
    # files), so a refusal within the limit still says how many pages the file has.
    chain = tiff_chain(data, stop_after=limits.max_images + 1)
    if chain.pages > budget:
        raise _too_many(what, chain.pages, limits, budget, at_least=chain.pages > limits.max_images)
    if chain.largest > TIFF_MAX_IFD_ENTRIES:
        raise RequestError(
            413,
            f"{what}: a TIFF page (IFD) holds {chain.largest} tag entries, at most "
            f"{TIFF_MAX_IFD_ENTRIES}; save the image again with a standard encoder",
        )
    if chain.entries > (limit := tiff_entry_limit(chain.pages)):
        raise RequestError(
            413,
            f"{what}: TIFF holds {chain.entries} tag entries in its {chain.pages} page(s), at "
            f"most {limit} ({TIFF_BASE_ENTRIES} plus {TIFF_ENTRIES_PER_PAGE} per page); save "
            "the image again with a standard encoder",
        )


def _too_many(
    what: str, n: int, limits: Limits, budget: int, *, at_least: bool = False
) -> RequestError:
    earlier = "" if budget >= limits.max_images else f" ({budget} left after the earlier files)"
    # A TIFF's pages are counted only to one past the budget: "more than", not a total.
    count = f"more than {n - 1}" if at_least else str(n)
    return RequestError(
        413, f"{what}: {count} images, at most {limits.max_images} per request{earlier}"
    )


def describe_size(h: int, w: int) -> str:
    """``'10 px high, 50 px wide'``: an image size that cannot be read the wrong way round."""
    return f"{h} px high, {w} px wide"


def _check_frame(
    what: str, w: int, h: int, c: int, spec: InputSpec, limits: Limits, *, grey_ok: bool = False
) -> None:
    """Refuse a ``w`` px wide, ``h`` px high, ``c``-channel image that the model cannot take;
    ``grey_ok``: a grey image is fine for a colour model (it is repeated to 3 channels)."""
    if max(w, h) > limits.max_side_px:
        raise RequestError(
            413,
            f"{what}: image is {describe_size(h, w)}, larger than the limit of "
            f"{limits.max_side_px} px per side",
        )
    if (h, w) != (spec.image_size, spec.image_size):
        raise RequestError(
            400,
            f"{what}: image is {describe_size(h, w)}, the model expects "
            f"{describe_size(spec.image_size, spec.image_size)}",
            reason="wrong-size",
        )
    if c == 3 and spec.channels == 1:
        raise RequestError(
            400,
            f"{what}: image has 3 channel(s) (colour), the model expects 1 (grey); convert it "
            "to grey before sending it (Pillow: Image.open(path).convert('L'); ImageMagick: "
            "magick in.jpg -colorspace Gray out.png). The server does not: ingest never makes "
            "a colour image grey (one colour image makes an image folder's data set colour)",
        )
    if c != spec.channels and not (grey_ok and c == 1):
        raise RequestError(
            400, f"{what}: image has {c} channel(s), the model expects {spec.channels}"
        )


def _decode_image(
    data: bytes, ctype: str, spec: InputSpec, limits: Limits, what: str, budget: int
) -> np.ndarray:
    """Every frame of an image file as float32 NHWC, each decoded by ingest's own per-file rule
    (:mod:`~pomlia_hpc.data.sources.pixels`) after its header is checked."""
    try:
        # No warnings.catch_warnings here: it swaps the process-wide filter list, which is not
        # thread-safe, and decodes run in threads (concurrent ones left filters behind for
        # good). Pillow's DecompressionBombWarning needs no filter: every frame's size is
        # checked against max_side_px (_check_frame) before any of its pixels is decoded.
        source = TiffImage(data) if ctype == "image/tiff" else _PilFrames(data, ctype)
    except PixelFormatError as exc:  # a TIFF chain of more pages than any image file has
        raise RequestError(413, f"{what}: the image {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise RequestError(
            413, f"{what}: image dimensions exceed the limit of {limits.max_side_px} px per side"
        ) from exc
    except UnidentifiedImageError as exc:
        raise RequestError(
            400, f"{what}: corrupt {ctype} image (its header cannot be read as {ctype})"
        ) from exc
    except Exception as exc:
        if not is_unreadable_file_error(exc):
            raise  # a bug: a server error, logged as one
        raise RequestError(
            400, f"{what}: corrupt {ctype} image (its header cannot be read: {reason(exc)})"
        ) from exc
    try:
        return _decode_frames(source, spec, limits, what, budget)
    except RequestError:
        raise
    except Exception as exc:
        if not is_unreadable_file_error(exc):
            raise  # a bug: a server error, logged as one
        raise RequestError(400, f"{what}: corrupt {ctype} image ({reason(exc)})") from exc
    finally:
        source.close()


class _Frames(Protocol):
    """An open image file's frames (:class:`TiffImage` and :class:`_PilFrames`)."""

    @property
    def pages(self) -> int: ...
    def header(self, index: int) -> FrameHeader: ...
    def pixels(self, index: int, channels: int) -> np.ndarray: ...
    def close(self) -> None: ...


class _PilFrames:
    """A PNG or JPEG opened by Pillow, frame by frame (an animated PNG: each frame an image)."""

    def __init__(self, data: bytes, ctype: str) -> None:
        self._data = data
        self._img = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[ctype]])
        self.pages = int(getattr(self._img, "n_frames", 1))

    def header(self, index: int) -> FrameHeader:
        self._img.seek(index)  # reads the frame's header only; its pixels are decoded later
        head = pil_header(self._img)
        if self.pages > 1 and head.channels == 3 and head.depth == "uint16":
            # Only a single-frame 16-bit colour PNG is read at full depth (pil_pixels decodes
            # it twice, high then low bytes); an animation's frames would be cut to 8 bits.
            raise PixelFormatError(
                f"is a 16-bit colour PNG of {self.pages} frames (an animation), whose frames "
                "are read only at 8 bits here: expected one PNG per image"
            )
        return head

    def pixels(self, index: int, channels: int) -> np.ndarray:
        again = (
            None if self.pages > 1 else lambda: Image.open(io.BytesIO(self._data), formats=["PNG"])
        )
        return pil_pixels(self._img, channels, reopen=again)

    def close(self) -> None:
        self._img.close()


def _decode_frames(
    source: _Frames, spec: InputSpec, limits: Limits, what: str, budget: int
) -> np.ndarray:
    """``source``'s frames as float32 NHWC, each frame's header checked before its pixels are
    decoded; the frame count is checked against ``budget`` before any."""
    if source.pages > budget:
        raise _too_many(what, source.pages, limits, budget)
    frames: list[np.ndarray] = []
    for i in range(source.pages):
        where = what if source.pages == 1 else f"{what} page {i + 1}"
        head = _header(source.header, i, where)
        _check_frame(where, head.width, head.height, head.channels, spec, limits, grey_ok=True)
        try:
            pixels = source.pixels(i, spec.channels)
        except DecompressionLimitError as exc:
            raise RequestError(413, f"{where}: the image {exc}") from exc
        frames.append(_to_unit_float(pixels, where, spec.scale_max))
    return np.stack(frames)


def _header(read: Callable[[Any], FrameHeader], frame: Any, what: str) -> FrameHeader:
    """``read(frame)``, a frame's header; a pixel layout ingest does not read is a 400."""
    try:
        return read(frame)
    except PixelFormatError as exc:
        raise RequestError(
            400,
            f"{what}: the image {exc} (ingest reads image files by the same rule)",
            reason="unsupported-type",
        ) from exc


def reason(exc: BaseException) -> str:
    """Pillow's words for what was wrong, without a Python repr it may quote (the in-memory
    file, ``<_io.BytesIO object at 0x7f…>``), which tells the client nothing."""
    text = OBJECT_REPR.sub("", str(exc)).strip(" :")
    return text or type(exc).__name__


def _from_16_bit(arr: np.ndarray, scale_max: float | None) -> np.ndarray:
    """16-bit values (any integer dtype, in 0..65535) → float32 in [0, 1]: as ingest scaled
    the training set when its maximum ``scale_max`` is known, else divided by 65535."""
    if scale_max is None:
        return np.multiply(arr, np.float32(1 / 65535), dtype=np.float32)
    # Ingest's converter, on values clipped to the training maximum (above it they would wrap).
    clipped = np.minimum(arr, scale_max).astype(np.uint16)
    convert = PixelConverter("upload", np.dtype(np.uint16), scale_max=scale_max)
    as_8_bit = convert(clipped.reshape(1, -1, 1, 1)).reshape(arr.shape)
    return np.multiply(as_8_bit, np.float32(1 / 255), dtype=np.float32)


def _to_unit_float(arr: np.ndarray, what: str, scale_max: float | None = None) -> np.ndarray:
    """Pixels as float32 in [0, 1] (see the module doc). Float pixels (of an image file or an
    NPY array) are rounded to the 8-bit steps ingest stores them at: the model never saw a
    value between two steps, and a training image is then served exactly as stored."""
    if arr.dtype == np.uint8:
        return np.multiply(arr, np.float32(1 / 255), dtype=np.float32)
    if arr.dtype in (np.uint16, np.dtype(">u2"), np.dtype("<u2")):
        return _from_16_bit(arr, scale_max)
    if arr.dtype.kind in "iu":  # 32-bit integer pixels: Pillow opens 16-bit PNGs so
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise RequestError(
                400,
                f"{what}: integer pixels in [{lo}, {hi}]; expected 8-bit or 16-bit values "
                "(0..65535)",
                reason="bad-values",  # its words name no range or [0, 1]: not "undecodable"
            )
        return _from_16_bit(arr, scale_max)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise RequestError(400, f"{what}: float pixels must be finite (found NaN or inf)")
        # In the array's own float type, as ingest checks: a float64 1 + 1e-12 is out of range
        # there, though float32 would round it to 1.
        fmin, fmax = float(arr.min()), float(arr.max())
        if fmin < 0.0 or fmax > 1.0:
            raise RequestError(
                400,
                f"{what}: float pixels in [{fmin:g}, {fmax:g}]; expected floats in [0, 1] "
                "(or send 8-bit or 16-bit integers)",
            )
        # Ingest's own converter, in the array's own float type (its rounding is that type's).
        stored = PixelConverter("upload", arr.dtype)(arr.reshape(1, -1, 1, 1), None)
        return np.multiply(stored.reshape(arr.shape), np.float32(1 / 255), dtype=np.float32)
    raise RequestError(
        400, f"{what}: pixel type {arr.dtype} is not supported", reason="unsupported-type"
    )


def _npy_layout(
    shape: tuple[int, ...], spec: InputSpec, limits: Limits, what: str, budget: int
) -> tuple[int, int, int, int]:
    """(N, H, W, C) of an NPY array of ``shape``, checked against the model and limits."""
    size = spec.image_size
    grey_batch = len(shape) == 3 and spec.channels == 1 and shape[1:] == (size, size)
    if len(shape) == 2:
        n, h, w, c = 1, shape[0], shape[1], 1
    elif grey_batch:
        n, h, w, c = shape[0], shape[1], shape[2], 1
    elif len(shape) == 3:
        n, (h, w, c) = 1, shape
    else:
        n, h, w, c = shape
    if max(h, w) > limits.max_side_px:
        raise RequestError(
            413, f"{what}: image side {max(h, w)} px exceeds the limit of {limits.max_side_px} px"
        )
    if n > budget:
        raise _too_many(what, n, limits, budget)
    fits = (h, w, 3 if c == 4 else c) == (size, size, spec.channels)
    if len(shape) == 3 and spec.channels == 1 and not fits:
        # Both readings of a 3-D array are plausible for a grey model; name them both. Only a
        # model-sized (H, W, C) reading makes the channels the fault; the message names
        # channels either way, so the reason is set here, not guessed from its words.
        channels_wrong = (shape[0], shape[1]) == (size, size)
        raise RequestError(
            400,
            f"{what}: NPY shape {shape} fits neither reading: as one (H, W, C) image it is "
            f"{describe_size(shape[0], shape[1])} with {shape[2]} channel(s), as (N, H, W) grey "
            f"images {shape[0]} of {describe_size(shape[1], shape[2])}; the model expects "
            f"{describe_size(size, size)} grey "
            f"images: ({size}, {size}), ({size}, {size}, 1), (N, {size}, {size}) or "
            f"(N, {size}, {size}, 1)",
            reason="wrong-channels" if channels_wrong else "wrong-size",
        )
    if not fits and (h, w) != (size, size):
        # A channel-first (1, 1, 28, 28) array read channel-last is "1 px high, 28 px wide":
        # name the shape the client sent and the shapes the model takes instead.
        raise RequestError(
            400,
            f"{what}: NPY shape {shape} does not fit the model: read channel-last "
            f"{'(N, H, W, C)' if len(shape) == 4 else '(H, W, C)'} it is "
            f"{describe_size(h, w)} with {c} channel(s); the model expects "
            f"{describe_size(size, size)}, {spec.channels} channel(s): accepted shapes "
            f"{accepted_npy_shapes(spec)} (channel-last: move a channel-first axis to the end)",
            reason="wrong-size",
        )
    # A 4th channel is RGBA's alpha, dropped as ingest drops it from an (N, H, W, 4) array; a
    # grey array is repeated to 3 channels, as a grey image file is (:func:`_decode_npy`).
    _check_frame(what, w, h, 3 if c == 4 else c, spec, limits, grey_ok=True)
    return n, h, w, c


def accepted_npy_shapes(spec: InputSpec) -> str:
    """The NPY shapes the model takes, e.g. ``(28, 28), (28, 28, 1), (N, 28, 28) or
    (N, 28, 28, 1)`` for a grey 28 px model."""
    s, c = spec.image_size, spec.channels
    shapes = [f"({s}, {s}, {c})", f"(N, {s}, {s}, {c})"]
    if c == 1:
        shapes = [f"({s}, {s})", shapes[0], f"(N, {s}, {s})", shapes[1]]
    else:  # grey arrays too, repeated to the model's channels (no (N, H, W): read as (H, W, C))
        shapes = [shapes[0], shapes[1], f"({s}, {s})", f"({s}, {s}, 1)", f"(N, {s}, {s}, 1)"]
    return ", ".join(shapes[:-1]) + " or " + shapes[-1]


def _decode_npy(data: bytes, spec: InputSpec, limits: Limits, what: str, budget: int) -> np.ndarray:
    fmt = np.lib.format
    buf = io.BytesIO(data)
    try:
        version = fmt.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(buf)
        else:
            raise ValueError(f"NPY version {version[0]}.{version[1]}")
    except Exception as exc:  # numpy's header parser (ast.literal_eval on
        # client bytes) raises ValueError, SyntaxError, tokenize.TokenError, RecursionError,
        # MemoryError...: every one of them means a malformed header, never a server error.
        # Their words quote Python reprs (<ast.Call object at 0x...>): named by field instead.
        raise RequestError(
            400,
            f"{what}: corrupt NPY header: {npy_header_problem(data, exc)}",
            reason="undecodable",  # not "wrong-size" for a bad 'shape' field
        ) from exc
    if dtype.hasobject or dtype.name not in NPY_DTYPES:
        raise RequestError(
            400,
            f"{what}: NPY dtype {dtype} is not supported; expected one of {', '.join(NPY_DTYPES)}",
            reason="unsupported-type",  # a well-formed array of a type not taken
        )
    shape = tuple(int(s) for s in shape)
    if not 2 <= len(shape) <= 4 or any(s < 1 for s in shape):
        raise RequestError(
            400,
            f"{what}: NPY shape {shape}: expected (H, W), (H, W, C), (N, H, W) or (N, H, W, C)",
        )
    nhwc = _npy_layout(shape, spec, limits, what, budget)
    count = int(np.prod(shape))
    offset = buf.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise RequestError(
            400,
            f"{what}: NPY data is {len(data) - offset} bytes, the header "
            f"announces {count * dtype.itemsize}",
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    arr = arr.reshape(shape, order="F" if fortran else "C").reshape(nhwc)
    if nhwc[3] == 4:  # RGBA: its alpha is dropped, as ingest drops it (_npy_layout)
        arr = arr[..., :3]
    unit = _to_unit_float(np.ascontiguousarray(arr), what, spec.scale_max)
    if nhwc[3] == 1 and spec.channels == 3:
        # A grey array for a colour model: each value copied to the 3 channels, as a grey image
        # file is here and as ingest copies a grey image of a colour image folder.
        unit = np.repeat(unit, 3, axis=-1)
    return unit
