"""How an image file becomes pixels: the one per-file decoding that ingest (image folders) and
the server (uploaded PNG, JPEG and TIFF) share, so a served file is read exactly as the same
file was read for training. Torch-free: the serving decode path imports it.

Each frame (a PNG or JPEG, or one page of a TIFF) becomes an (H, W, C) array of its own depth,
before any scaling (the caller scales: ingest by the data set's rule,
:class:`~pomlia_hpc.data.sources.base.PixelConverter`; the server by the same rule, with the
training set's maximum from the model card):

- a palette, CMYK, YCbCr or other colour image is its RGB rendering (Pillow's, for PNG, JPEG
  and TIFF alike), 8-bit;
- a MinIsWhite (photometric 0) grey TIFF is inverted to what it looks like (0 black), as a
  viewer shows it;
- an alpha channel is dropped: RGBA -> RGB, grey + alpha -> grey;
- a bilevel (1-bit) image is grey 0/255 (PNG and TIFF alike);
- a grey image is repeated to the wanted channel count;
- 16-bit (grey or RGB, PNG or TIFF: 16-bit RGB and grey + alpha PNGs are read at full depth,
  not cut to their high byte, and grey + alpha stays grey), 32-bit integer and float pixels
  keep their values (``depth`` ``uint16`` or ``float32``), LZW- and JPEG-compressed grey
  TIFFs too (Pillow reads them at full depth).

Refused (:class:`PixelFormatError`, whose message the caller prefixes with the file's name):
a multi-page TIFF or a multi-frame (animated) PNG where one image is expected, a TIFF pixel
type or layout that has no grey or RGB reading (extra samples of unspecified meaning, such as
the 2nd and 3rd channels of a 3-sample MinIsBlack file, are data, not alpha), and a 16-bit
colour TIFF whose compression only Pillow decodes (it would cut it to 8 bits). A deflate, LZMA
or PackBits strip or tile that decompresses to more bytes than its pixels take is refused
(:class:`~pomlia_hpc.data.sources.segments.DecompressionLimitError`): each one is decoded once,
with that limit, and the page assembled from those decodes (:mod:`.tiffpage`), never by
tifffile's decoders, which set no output limit (an uncompressed page too: tifffile read its
strips by their stated byte counts). Refused before any decode too: a 3-D volume,
floating-point differencing, packed samples of 2 to 24 bits, samples of mixed formats
(:func:`~.tiffpage.layout_problem`), and more than one alpha sample.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import tifffile
from PIL import Image, ImageFile

from pomlia_hpc.data.sources.segments import READ_HERE
from pomlia_hpc.data.sources.tiffpage import layout_problem, page_array
from pomlia_hpc.data.sources.tiffquiet import tifffile_muted
from pomlia_hpc.errors import InputError

#: PIL modes kept as they are (their pixels are already grey or RGB values).
PLAIN_MODES = frozenset({"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "RGB"})
#: PIL modes read as grey: bilevel, and grey with alpha.
GREY_MODES = frozenset({"1", "LA"})
_PIL_GREY = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_PIL_COLOUR = frozenset({"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
#: Pillow's raw modes of 16-bit colour PNGs (which it cuts to their high byte), with the raw
#: mode that unpacks their low byte instead.
_PNG_16_BIT_COLOUR = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
#: Pillow's raw mode of a 16-bit grey + alpha PNG, which it opens as 8-bit RGBA (the grey's
#: high byte in R, G and B): read instead as 4 plain bytes per pixel, grey high and low byte
#: first, so 12-bit data is not cut to 0..15 nor made colour.
_PNG_16_BIT_GREY_ALPHA = "LA;16B"
_PH = tifffile.PHOTOMETRIC
_CP = tifffile.COMPRESSION
_EXTRA = tifffile.EXTRASAMPLE
#: Most pages (IFDs) a TIFF's chain is followed to: far past the server's images per request
#: (256) and any stack ingest would name, yet a walk of a few hundred milliseconds at most.
MAX_TIFF_PAGES = 4096
#: An ImageJ hyperstack's channel count: the ``channels=N`` line of its ImageDescription.
_IMAGEJ_CHANNELS = re.compile(r"^channels=(\d{1,9})\s*$", re.MULTILINE)
#: The start of an OME-XML description's ``Pixels`` element (with or without a prefix).
_OME_PIXELS = re.compile(r"[<:]Pixels\s")
#: The channel count among that element's attributes.
_OME_SIZE_C = re.compile(r"\sSizeC=\"(\d{1,9})\"")
#: How much of a description is searched for either, characters.
_DESCRIPTION_HEAD = 65536
#: TIFF integer types read as 16-bit values (checked to lie in 0..65535 when decoded).
_TIFF_WIDE_INTS = frozenset({np.dtype(t) for t in ("uint16", "int16", "int32", "uint32")})

#: What Pillow, tifffile, numpy and the codecs raise for a damaged, truncated or unsupported
#: image file: each is the file's fault wherever it is raised, so the caller makes it its one
#: clear refusal (a 400 in the server, one line naming the file at ingest). Left out on
#: purpose: AttributeError, NameError, AssertionError, TypeError and the like, which are bugs
#: when raised by this project's code and must surface as such (a 500 that is logged, a
#: traceback), not be hidden as a bad file; raised inside tifffile's or Pillow's own code, any
#: exception is the file's (:func:`is_unreadable_file_error`).
UNREADABLE_FILE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # Pillow: "image file is truncated", UnidentifiedImageError; read errors
    EOFError,  # Pillow: a header cut short
    SyntaxError,  # Pillow's plugins: "not a PNG file" and other header errors
    ValueError,  # tifffile's TiffFileError; Pillow's and numpy's checks of sizes and modes
    struct.error,  # a header cut short, unpacked by Pillow or tifffile
    zlib.error,  # a damaged deflate strip (tifffile's decoder and ours)
    lzma.LZMAError,  # a damaged LZMA strip
    ArithmeticError,  # ZeroDivisionError, OverflowError: absurd tag values (0 rows per strip)
    LookupError,  # KeyError, IndexError: a missing or short tag, a code with no decoder
    MemoryError,  # an allocation that a damaged header asks for
    NotImplementedError,  # tifffile: a TIFF feature it does not decode
    Image.DecompressionBombError,  # Pillow: past its pixel limit (the server says 413 first)
)

#: Where the decoders' own code lives: an exception raised there while a file is read is the
#: file's fault, whatever its type (tifffile and Pillow compare and compute with tag values as
#: stored, and a damaged tag, a tuple where one number belongs, fails deep inside them as a
#: TypeError, an AttributeError, ...).
_DECODER_DIRS = tuple(str(Path(m.__file__).parent) + os.sep for m in (tifffile, PIL) if m.__file__)
#: numpy's code: an exception raised there is counted where numpy was called from (tifffile
#: reshaping a damaged strip, or a bug of this project's).
_NUMPY_DIR = str(Path(np.__file__).parent) + os.sep


def _raised_in(exc: BaseException) -> str | None:
    """The source file of the innermost frame of ``exc``'s traceback outside numpy (where it
    was raised, or where numpy was called that raised it); None without a traceback."""
    files: list[str] = []
    frame = exc.__traceback__
    while frame is not None:
        files.append(frame.tb_frame.f_code.co_filename)
        frame = frame.tb_next
    return next((f for f in reversed(files) if not f.startswith(_NUMPY_DIR)), None)


def is_unreadable_file_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised while an image file was opened or decoded, says the file is
    damaged, truncated or of a kind the decoders do not read, rather than a bug of this code,
    which its caller lets through: one of :data:`UNREADABLE_FILE_ERRORS` wherever raised, or
    any other ``Exception`` raised inside tifffile's or Pillow's own code (also by numpy,
    called from there). Decided by where it was raised, not by its type alone: the same
    TypeError raised in this project's code (or by numpy called from it) is a bug."""
    if isinstance(exc, UNREADABLE_FILE_ERRORS):
        return True
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: never the file's
        return False
    where = _raised_in(exc)
    return where is not None and where.startswith(_DECODER_DIRS)


class PixelFormatError(InputError):
    """A file whose pixels have no grey or RGB reading; the message starts with a verb ("is a
    5-page TIFF stack ...") so that callers prefix the file's name."""


@dataclass(frozen=True)
class FrameHeader:
    """One frame as it will decode: size in px, channels (1 or 3) and depth (``"uint8"``,
    ``"uint16"`` or ``"float32"``), read without decoding a pixel."""

    height: int
    width: int
    channels: int
    depth: str


def _png_16_bit_colour(image: Image.Image) -> str | None:
    """The raw mode of a 16-bit-per-sample colour PNG (which Pillow cuts to 8 bits), else
    None."""
    if not isinstance(image, ImageFile.ImageFile) or image.format != "PNG" or len(image.tile) != 1:
        return None
    args = image.tile[0].args
    raw = args[0] if isinstance(args, tuple) else args
    return raw if raw in _PNG_16_BIT_COLOUR or raw == _PNG_16_BIT_GREY_ALPHA else None


def pil_header(image: Image.Image) -> FrameHeader:
    """The :class:`FrameHeader` of an opened PNG or JPEG (its current frame)."""
    mode, (w, h) = image.mode, image.size
    if _png_16_bit_colour(image) == _PNG_16_BIT_GREY_ALPHA:
        return FrameHeader(h, w, 1, "uint16")
    if mode in _PIL_GREY:
        channels = 1
    elif mode in _PIL_COLOUR:
        channels = 3
    else:
        raise PixelFormatError(f"has pixel mode '{mode}': expected grey, RGB or RGBA")
    if _png_16_bit_colour(image) is not None or mode.startswith("I"):
        depth = "uint16"
    else:
        depth = "float32" if mode == "F" else "uint8"
    return FrameHeader(h, w, channels, depth)


def pil_pixels(
    image: Image.Image, channels: int, reopen: Callable[[], Image.Image] | None = None
) -> np.ndarray:
    """The pixels of one opened PNG or JPEG (or frame) as (H, W, C): see the module doc. C is
    ``channels`` for a grey image, 3 for a colour one (the caller checks it fits). ``reopen``
    opens the same file again: a 16-bit colour PNG is decoded twice (high, then low bytes)."""
    raw = _png_16_bit_colour(image)
    if raw == _PNG_16_BIT_GREY_ALPHA:
        return pixel_layout(_png_16_bit_grey(image), channels)
    if raw is not None and reopen is not None:
        high = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        # Pillow has no 48-bit mode: its unpacker of little-endian samples, applied to the
        # big-endian PNG data, yields each sample's low byte.
        with reopen() as again:
            assert isinstance(again, ImageFile.ImageFile)  # a PNG, as image is
            tile = again.tile[0]
            args = tile.args
            low_raw = _PNG_16_BIT_COLOUR[raw]
            low_args = (low_raw, *args[1:]) if isinstance(args, tuple) else low_raw
            # Pillow >= 11 keeps tiles as named tuples, older releases as plain tuples.
            parts = (tile[0], tile[1], tile[2], low_args)
            low_tile: Any = type(tile)(*parts) if hasattr(tile, "_replace") else parts
            again.tile = [low_tile]
            low = np.asarray(again.convert("RGB") if again.mode != "RGB" else again)
        return pixel_layout((high.astype(np.uint16) << 8) | low, channels)
    if image.mode in GREY_MODES:
        image = image.convert("L")
    elif image.mode not in PLAIN_MODES:
        image = image.convert("RGB")
    return pixel_layout(np.asarray(image), channels)


def _png_16_bit_grey(image: Image.Image) -> np.ndarray:
    """The grey samples of a 16-bit grey + alpha PNG, not yet decoded, as (H, W) uint16:
    decoded with the raw mode that keeps each pixel's 4 bytes (grey high, grey low, alpha
    high, alpha low) as they are; the PNG filters work on the same 4 bytes per pixel."""
    assert isinstance(image, ImageFile.ImageFile)  # a PNG (see _png_16_bit_colour)
    tile = image.tile[0]
    args = tile.args
    plain = ("RGBA", *args[1:]) if isinstance(args, tuple) else "RGBA"
    parts = (tile[0], tile[1], tile[2], plain)
    # Pillow >= 11 keeps tiles as named tuples, older releases as plain tuples.
    plain_tile: Any = type(tile)(*parts) if hasattr(tile, "_replace") else parts
    image.tile = [plain_tile]
    x = np.asarray(image)
    return (x[..., 0].astype(np.uint16) << 8) | x[..., 1]


def pixel_layout(x: np.ndarray, channels: int) -> np.ndarray:
    """An image array as (H, W, C): a 4th (alpha) channel dropped, a grey image (2-D or one
    channel) repeated to ``channels``."""
    if x.ndim == 3 and x.shape[2] == 4:
        x = x[..., :3]  # drop alpha
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        # Not np.repeat, which copies value by value (twice np.stack's time for 3 channels,
        # and 200 times a plain copy for 1). A copy either way: the result is writable.
        x = x[..., None].copy() if channels == 1 else np.stack([x] * channels, axis=2)
    return x


def _compression_name(page: Any) -> str:
    """The name of a TIFF page's compression; a code tifffile does not know (a damaged or
    exotic file) is named by its number."""
    code = page.compression
    return str(getattr(code, "name", f"code {int(code)}"))


#: The page attributes this module and :mod:`.tiffpage` read as one number each.
_SCALAR_TAGS = (
    "imagewidth",
    "imagelength",
    "imagedepth",
    "samplesperpixel",
    "photometric",
    "compression",
    "planarconfig",
    "predictor",
    "fillorder",
    "rowsperstrip",
    "tilewidth",
    "tilelength",
    "tiledepth",
    "sampleformat",
)


def _check_scalar_tags(page: Any) -> None:
    """Refuse a page whose size or layout tag holds several values (a damaged count) or a
    non-number (a damaged type): tifffile keeps such a value as it is, a tuple or a string,
    and every comparison with it fails (a TypeError, which would read as a bug)."""
    if not {256, 257} <= set(page.tags.keys()):  # ImageWidth, ImageLength: never optional
        raise tifffile.TiffFileError("TIFF page without its size tags (damaged file)")
    for name in _SCALAR_TAGS:
        value = getattr(page, name)
        if not isinstance(value, int | np.integer):
            raise tifffile.TiffFileError(
                f"TIFF tag {name} holds {value!r}: expected one number (damaged file)"
            )


def _bits_per_sample(page: Any) -> int:
    """A TIFF page's bits per sample: one number, refused when its samples differ in depth
    (tifffile keeps e.g. RGB 5-6-5 as a tuple)."""
    bits = page.bitspersample
    if isinstance(bits, tuple):
        raise PixelFormatError(
            f"is a TIFF whose samples differ in depth ({', '.join(map(str, bits))} bits): "
            "expected grey or RGB samples of one depth (8 or 16 bits)"
        )
    return int(bits)


def _tiff_plan(page: Any) -> tuple[FrameHeader, str]:
    """A TIFF page's header, and how it is decoded: ``"raw"`` (tifffile's samples) or
    ``"pillow"`` (Pillow's 8-bit rendering: palette, CMYK and other colour spaces, and
    compressions tifffile cannot decode here)."""
    _check_scalar_tags(page)
    photometric = page.photometric
    bits = _bits_per_sample(page)
    if page.dtype is None:  # no numpy type for these samples (tifffile cannot decode them)
        raise PixelFormatError(
            f"is a TIFF of {bits}-bit samples of sample format {int(page.sampleformat)}: "
            "expected 1-, 8- or 16-bit unsigned integers or floats"
        )
    dtype = np.dtype(page.dtype)
    extras = tuple(int(e) for e in page.extrasamples or ())
    h, w = int(page.imagelength), int(page.imagewidth)
    if _EXTRA.UNSPECIFIED in extras:
        # Extra samples of no stated meaning (e.g. the 2nd and 3rd fluorescence channels of a
        # 3-sample MinIsBlack file) are data, not alpha: dropping them would lose channels.
        raise PixelFormatError(
            f"is a TIFF of {int(page.samplesperpixel)} samples per pixel, "
            f"{extras.count(_EXTRA.UNSPECIFIED)} of them extra samples of unspecified meaning "
            "(not alpha): expected grey or RGB, with at most an alpha extra sample (save "
            "each channel as its own grey file, or 3 channels as RGB)"
        )
    if len(extras) > 1:
        # Each would be decoded and dropped: 60000 "alpha" samples per pixel made a 28 px
        # page of a 360 KB upload take 200 MB (and the page's size no longer followed from
        # its sides, which the caller bounds).
        raise PixelFormatError(
            f"is a TIFF of {int(page.samplesperpixel)} samples per pixel, {len(extras)} of "
            "them extra (alpha) samples: expected grey or RGB with at most one alpha sample"
        )
    samples = int(page.samplesperpixel) - len(extras)  # an alpha sample is dropped
    if photometric in (_PH.MINISBLACK, _PH.MINISWHITE) and samples == 1:
        channels = 1
    elif photometric == _PH.RGB and samples == 3:
        channels = 3
    elif photometric in (_PH.PALETTE, _PH.SEPARATED, _PH.YCBCR, _PH.CIELAB) and bits == 8:
        return FrameHeader(h, w, 3, "uint8"), "pillow"
    else:
        name = getattr(photometric, "name", str(photometric))
        raise PixelFormatError(
            f"is a TIFF of photometric {name} with {samples} colour sample(s) of {bits} bit(s): "
            "expected grey, RGB (an alpha sample is dropped), an 8-bit palette or CMYK image"
        )
    if dtype == np.bool_ or dtype == np.uint8:
        depth = "uint8"
    elif dtype in _TIFF_WIDE_INTS:
        depth = "uint16"
    elif dtype.kind == "f":
        depth = "float32"
    else:
        raise PixelFormatError(
            f"has pixel type {dtype}: expected 1-, 8- or 16-bit unsigned integers or floats "
            "in [0, 1]"
        )
    how = "raw" if int(page.compression) in READ_HERE else "pillow"
    if how == "raw" and (problem := layout_problem(page)) is not None:
        # Refused before any strip is decoded (tifffile would fail on most of these after
        # the decompression, or, for a volume, read slices as rows).
        raise PixelFormatError(problem)
    if how == "pillow" and channels == 3 and bits > 8:
        # Pillow reads grey LZW or JPEG at full depth (I;16, F) but has no 16-bit RGB mode.
        raise PixelFormatError(
            f"is a {bits}-bit colour TIFF compressed as {_compression_name(page)}, which is "
            "read only at 8 bits here: expected it uncompressed or compressed as deflate, "
            "packbits or LZMA (save it again so)"
        )
    return FrameHeader(h, w, channels, depth), how


def _raw_tiff_pixels(page: Any, x: np.ndarray, channels: int) -> np.ndarray:
    """A MinIsBlack, MinIsWhite or RGB page's samples ``x`` (as ``page.asarray()`` returns
    them) as (H, W, C) of their own dtype."""
    if page.axes.startswith("S"):  # planar (one plane per sample): samples last
        x = np.moveaxis(x, 0, -1)
    colour = 3 if page.photometric == _PH.RGB else 1
    if x.ndim == 3:
        x = x[..., :colour]  # alpha and other extra samples dropped
    if x.dtype == np.bool_:
        x = x.astype(np.uint8) * np.uint8(255)  # bilevel: grey 0/255, as Pillow reads "1"
    if page.photometric == _PH.MINISWHITE:
        # 0 is white: inverted to what a viewer shows (Pillow does so for 8-bit files too).
        if x.dtype.kind == "f":
            x = 1.0 - x
        elif page.bitspersample == 1:
            x = 255 - x
        else:  # in the file's dtype: a uint8 page stays uint8 (the server scales by dtype)
            top = 2 ** int(page.bitspersample) - 1
            x = np.clip(top - x.astype(np.int64), 0, None).astype(x.dtype)
    if x.dtype.kind in "iu" and x.dtype not in (np.uint8, np.uint16):
        x = x.astype(np.int64)  # the caller checks the 0..65535 range
    return pixel_layout(x, channels)


def _image_pages(tf: tifffile.TiffFile) -> list[Any]:
    """The pages of ``tf`` that are images of their own (reduced-resolution copies left out).

    The chain of pages (IFDs) is walked by hand, page by page: tifffile follows a chain that
    loops back on itself (an empty IFD that names itself as the next one, in an 865-byte
    upload) without end, adding a page each time, so a server thread spun forever and its
    memory grew by 20 MB a second. A page offset seen twice is refused as a damaged file, and
    so is a chain of more than ``MAX_TIFF_PAGES`` pages."""
    pages: list[Any] = []
    seen: set[int] = set()
    for page in tf.pages:
        offset = int(page.offset)
        if offset in seen:
            raise tifffile.TiffFileError(
                f"the chain of TIFF pages (IFDs) loops back to the page at byte {offset} "
                "(damaged file)"
            )
        seen.add(offset)
        if len(seen) > MAX_TIFF_PAGES:
            raise PixelFormatError(
                f"is a TIFF of more than {MAX_TIFF_PAGES} pages: expected one image per file "
                "(save each page as its own file)"
            )
        if not getattr(page, "is_reduced", False):
            pages.append(page)
    if not pages:  # tifffile reads a damaged first IFD offset as no page
        raise ValueError("no image page can be read (damaged IFD chain)")
    return pages


def _described_channels(page: Any) -> tuple[int, str]:
    """The channel count a TIFF's first ``page`` describes (ImageJ's ``channels=N``, OME-XML's
    ``SizeC``) and who describes it; (1, "") when it says none. The tag is searched with
    bounded, linear scans: it comes from the file (an upload too)."""
    desc = page.description
    if not isinstance(desc, str):
        return 1, ""
    head = desc[:_DESCRIPTION_HEAD]
    if head.startswith("ImageJ="):
        found = _IMAGEJ_CHANNELS.search(head)
        return (int(found.group(1)), "an ImageJ hyperstack") if found else (1, "")
    pixels = _OME_PIXELS.search(head) if "OME" in head[:1024] else None
    if pixels is None:
        return 1, ""
    end = head.find(">", pixels.start())
    found = _OME_SIZE_C.search(head[pixels.start() : end if end >= 0 else len(head)])
    return (int(found.group(1)), "an OME-TIFF") if found else (1, "")


def _channels_as_pages(page: Any, pages: int) -> str | None:
    """Why a TIFF of ``pages`` pages whose first is ``page`` is one multi-channel image, its
    channels stored as grey pages (as ImageJ, Fiji and microscopes write 2- to 5-channel
    fluorescence), not ``pages`` images; None when it is not. Reading each page as an image
    of its own gave one prediction per channel."""
    samples = int(page.samplesperpixel) - len(tuple(page.extrasamples or ()))
    if pages < 2 or samples != 1:
        return None
    channels, kind = _described_channels(page)
    if channels < 2:
        return None
    # tifffile's imwrite(..., imagej=True) describes any grey stack (N, H, W) as N channels
    # unless given its axes: a stack of separate images is then refused too, so say how.
    stack = (
        "; pages that are separate images or slices are saved as such with tifffile's "
        "imwrite(..., imagej=True, metadata={'axes': 'ZYX'}), which without axes calls "
        "every page a channel"
        if kind == "an ImageJ hyperstack"
        else ""
    )
    return (
        f"is {kind} of {channels} channels stored as {pages} grey pages: expected one grey or "
        "RGB image per page (save three channels as one RGB image, or each channel as its "
        f"own grey data set{stack})"
    )


class TiffImage:
    """An open TIFF (a path, or an upload's bytes) whose pages decode by the module's rule.

    Use as a context manager; :attr:`pages` counts its pages (reduced-resolution copies,
    such as pyramid levels and thumbnails, are not images of their own and are left out)."""

    def __init__(self, source: Path | bytes) -> None:
        self._source = source
        opened = io.BytesIO(source) if isinstance(source, bytes) else source
        self._pil: Image.Image | None = None
        with tifffile_muted():
            self._tf = tifffile.TiffFile(opened)
            try:
                if self._tf.is_bigtiff:  # the server refuses it by its first bytes: so here
                    raise PixelFormatError(
                        "is a BigTIFF (64-bit offsets), which the server refuses too: expected "
                        "a classic TIFF, PNG or JPEG (tifffile.imwrite(..., bigtiff=False))"
                    )
                self._pages = _image_pages(self._tf)
            except BaseException:
                self._tf.close()  # a path's file handle is not left open
                raise

    def __enter__(self) -> TiffImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tf.close()
        if self._pil is not None:
            self._pil.close()

    @property
    def pages(self) -> int:
        return len(self._pages)

    def header(self, index: int) -> FrameHeader:
        """Page ``index``'s header, from its tags alone; a multi-channel image whose channels
        are pages is refused (:func:`_channels_as_pages`)."""
        with tifffile_muted():
            head = _tiff_plan(self._pages[index])[0]
        if (problem := _channels_as_pages(self._pages[0], self.pages)) is not None:
            raise PixelFormatError(problem)
        return head

    def pixels(self, index: int, channels: int) -> np.ndarray:
        """Page ``index`` as (H, W, C) (C is ``channels`` for a grey page, 3 for colour)."""
        with tifffile_muted():
            return self._pixels(self._pages[index], channels)

    def _pixels(self, page: Any, channels: int) -> np.ndarray:
        if _tiff_plan(page)[1] == "raw":
            # tifffile's own decoders have no output limit, and its reads of a file take the
            # byte counts as the file states them: the page is assembled from bounded reads
            # and decodes, each segment decoded once.
            return _raw_tiff_pixels(page, page_array(page, self._read), channels)
        if self._pil is None:
            src = self._source
            self._pil = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        self._pil.seek(self._tf.pages.index(page))
        x = pil_pixels(self._pil, channels)
        if page.photometric == _PH.MINISWHITE and int(page.bitspersample) > 8:
            # Pillow inverts 1- and 8-bit MinIsWhite pages only: wider ones as the raw path.
            if x.dtype.kind == "f":
                return 1.0 - x
            top = 2 ** int(page.bitspersample) - 1
            return np.clip(top - x.astype(np.int64), 0, None).astype(x.dtype)
        return x

    def _read(self, offset: int, count: int) -> bytes | memoryview:
        """``count`` bytes of the file from byte ``offset`` (fewer at its end)."""
        if isinstance(self._source, bytes):
            return memoryview(self._source)[offset : offset + count]
        handle = self._tf.filehandle
        handle.seek(offset)
        # A file object's read(n) allocates n bytes first: a damaged byte count of 4 GB in a
        # 1 KB file is cut to what the file holds.
        return handle.read(max(0, min(count, int(handle.size) - offset)))


def is_tiff(path: Path) -> bool:
    """Whether ``path`` names a TIFF (by its suffix, as image folders tell formats)."""
    return path.suffix.lower() in (".tif", ".tiff")


def _one_frame(image: Image.Image) -> Image.Image:
    """``image``, refused when it has more than one frame (an animated PNG), as a TIFF stack
    is: which frame is the image is not for ingest to guess."""
    frames = int(getattr(image, "n_frames", 1))
    if frames != 1:
        raise PixelFormatError(
            f"has {frames} frames (an animation): expected one image per file (save each frame "
            "as its own file)"
        )
    return image


def file_header(path: Path) -> FrameHeader:
    """The header of image file ``path`` (one image per file: a TIFF stack is refused)."""
    if not is_tiff(path):
        with Image.open(path) as im:
            return pil_header(_one_frame(im))
    with TiffImage(path) as tif:
        head = tif.header(0)  # first: a multi-channel image is named as one, not as a stack
        if tif.pages != 1:
            raise PixelFormatError(
                f"is a {tif.pages}-page TIFF stack: expected one image per file (save each "
                "page as its own file)"
            )
        return head


def file_pixels(path: Path, channels: int) -> np.ndarray:
    """The pixels of image file ``path`` as (H, W, C), before scaling (see the module doc)."""
    if not is_tiff(path):
        with Image.open(path) as im:
            return pil_pixels(_one_frame(im), channels, reopen=lambda: Image.open(path))
    with TiffImage(path) as tif:
        return tif.pixels(0, channels)
