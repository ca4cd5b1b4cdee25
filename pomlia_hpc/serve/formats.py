"""What an upload the decoder cannot take is, in words a client can act on.

Called only once a file is refused (never on the hot path): a recognised image format the
server does not take (BMP, GIF, WebP, ...) is named as such rather than "unrecognised first
bytes"; and a malformed NPY header
is named by the field that is wrong, never by numpy's or Python's own words (which quoted
``<ast.Call object at 0x7f...>`` or a tokenizer error).
"""

from __future__ import annotations

import ast
import logging
import struct
import warnings

#: First bytes of image formats that are recognised but not accepted, and their names.
UNSUPPORTED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"BM", "BMP"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"II+\x00", "BigTIFF"),
    (0, b"MM\x00+", "BigTIFF"),
    (0, b"PK\x03\x04", "ZIP (an NPZ file?)"),
    (128, b"DICM", "DICOM"),
)

#: What to do with a format that is recognised but not accepted.
CONVERT_HINT = {
    "ZIP (an NPZ file?)": "send each array as NPY (np.save), not an NPZ archive",
    "DICOM": "convert it to a 16-bit PNG or TIFF first (pydicom: ds.pixel_array)",
    "BigTIFF": "save it as a classic TIFF, tifffile.imwrite(..., bigtiff=False), or as PNG",
}

#: A valid NPY header, as an example in refusals.
NPY_HEADER_EXAMPLE = "{'descr': '|u1', 'fortran_order': False, 'shape': (28, 28, 3)}"

#: numpy's header complaints (by their first words) and what they mean for the client.
_NPY_FIELD_ERRORS = (
    (
        "Header does not contain the correct keys",
        "its keys must be exactly 'descr', 'fortran_order' and 'shape'",
    ),
    ("shape is not valid", "field 'shape' is not a tuple of integers"),
    ("fortran_order is not a valid bool", "field 'fortran_order' is not True or False"),
    ("descr is not a valid dtype descriptor", "field 'descr' is not a dtype such as '|u1'"),
    ("Header info length", "it is longer than numpy's limit of 10000 bytes"),
    ("EOF", "the file ends inside the header"),
)


def unsupported_format(data: bytes) -> str | None:
    """The name of a recognised image format the server does not take, or None."""
    for offset, magic, name in UNSUPPORTED_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    return None


def unsupported_format_message(what: str, name: str) -> str:
    """The refusal for a file of the recognised but unsupported format ``name``."""
    hint = CONVERT_HINT.get(name, "convert it to PNG first, which loses nothing")
    return f"{what}: {name} is not supported; send PNG, JPEG, TIFF or NPY ({hint})"


def npy_header_problem(data: bytes, exc: BaseException) -> str:
    """What is wrong with the header of the NPY file ``data``, whose reading raised ``exc``,
    as a phrase ("field 'descr' is not a dtype such as '|u1'")."""
    text = str(exc)
    for prefix, meaning in _NPY_FIELD_ERRORS:
        if text.startswith(prefix):
            return meaning
    if text.startswith("NPY version"):
        return f"{text} is not supported (expected 1.0, 2.0 or 3.0)"
    field = _non_literal_field(_npy_header_text(data))
    if field is not None:
        return f"field {field} is not a plain value (a string, number, boolean or tuple)"
    return f"it is not a valid NPY dict (expected one like {NPY_HEADER_EXAMPLE})"


def _npy_header_text(data: bytes) -> str:
    """The header of an NPY file (''  when it cannot be cut out or is over 10000 bytes)."""
    try:
        if data[6:7] == b"\x01":
            (n,), start = struct.unpack("<H", data[8:10]), 10
        else:
            (n,), start = struct.unpack("<I", data[8:12]), 12
    except struct.error:
        return ""
    return data[start : start + n].decode("latin1") if n <= 10000 else ""


def _non_literal_field(header: str) -> str | None:
    """The quoted key of the first field of ``header`` (a dict display) whose value is not a
    literal (a call, a name), or None: parsed, never evaluated."""
    try:
        tree = ast.parse(header.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.Dict):
        return None
    for key, value in zip(tree.body.keys, tree.body.values, strict=True):
        try:
            ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            name = key.value if isinstance(key, ast.Constant) else None
            return f"'{str(name)[:40]}'" if isinstance(name, str) else "(a non-string key)"
    return None


def quiet_pillow_warnings() -> None:
    """Ignore Pillow's warnings and tifffile's log records about uploads for the rest of the
    process: a damaged TIFF directory and a decompression bomb (the decoder checks every
    frame's size itself). Call once at server start, before decode threads run: changing
    warning filters is not thread-safe."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", module=r"PIL\.TiffImagePlugin")
    # tifffile logs an ERROR per damaged tag (1000 bad tag offsets in a 16 KB upload: 1000
    # records per request); the upload's refusal or decoding says what matters.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
