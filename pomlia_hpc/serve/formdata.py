"""The files of a ``multipart/form-data`` upload, split from its buffered body in one pass.

Why not Starlette's ``MultiPartParser``: it held each file three times while the request was
in progress: the received body, the parser's copy of each file part (spooled to a
``SpooledTemporaryFile``, written in a thread) and the bytes ``UploadFile.read()`` returned,
while only the body counted against ``max_buffered_mb`` (20 concurrent 10 MiB uploads under a
64 MiB cap raised the server's peak memory by 200 to 280 MB). Here the body, already in memory
and counted, is parsed by python-multipart in one synchronous call: each file's bytes are
copied out of the body once, with no spool and no thread, and the caller drops the body when
this returns. Two copies of an upload exist only inside that call, which no other request can
interleave with (one event loop), so the uploads in progress hold at most the counted bytes,
plus one upload being assembled (:func:`~pomlia_hpc.serve.bodies.read_body`) or split.
"""

from __future__ import annotations

import codecs
from email.message import Message
from typing import TYPE_CHECKING, NamedTuple

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from pomlia_hpc.serve.decode import Limits, RequestError, base_type

if TYPE_CHECKING:  # a typing-only name of python-multipart
    from python_multipart.multipart import MultipartCallbacks

#: Largest multipart part without ``filename=`` (a form field, not a file), bytes.
FIELD_MAX_BYTES = 64 * 1024
#: Most form fields (parts without ``filename=``) a request may hold.
MAX_FIELDS = 32
#: How a file part's header must look, for refusals of multipart bodies.
FILE_PART_HINT = 'Content-Disposition: form-data; name="file"; filename="a.png"'


class Upload(NamedTuple):
    """One uploaded file: its name for messages, its declared content type, its bytes."""

    what: str
    content_type: str
    data: bytes


class _Part:
    """A part being parsed: its header fields and where its data lies in the body."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.name = ""
        self.is_file = False
        # (start, end) in the body, or bytes the parser passed from its own look-behind
        # buffer (a few bytes that looked like the start of a boundary and were not).
        self.pieces: list[tuple[int, int] | bytes] = []
        self.size = 0


def uploaded_files(content_type: str | None, body: bytes, limits: Limits) -> list[Upload]:
    """Each uploaded file of a request in request order: the whole ``body`` when it is not
    ``multipart/form-data``, else the file parts, each copied out of ``body`` once (the
    caller should hold no other reference to ``body``, so that it is freed on return).
    Raises :class:`RequestError`: 413 for more files than ``limits.max_images``, 400 for a
    malformed body or one without a file part."""
    if base_type(content_type) != "multipart/form-data":
        return [Upload("body", base_type(content_type), body)]
    header = content_type or ""
    check_multipart_complete(header, body)
    _, params = parse_options_header(header)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart body: Missing boundary in multipart.")
    charset = _charset(params.get(b"charset", b"utf-8"))
    parts = _parse(body, boundary, charset, limits.max_images)
    out: list[Upload] = []
    for part in parts:
        if part.is_file:
            # Files numbered from 1, in request order (form fields between them not counted).
            what = f"part '{part.name[:40]}' #{len(out) + 1}"
            out.append(Upload(what, _header(part, b"content-type"), _join(body, part.pieces)))
    if not out and parts:
        # Starlette reads filename= only (not RFC 2231's filename*=): a part without it is a
        # form field, and the client meant it as the image.
        raise RequestError(
            400,
            f"multipart body: part '{parts[0].name[:40]}' has no filename= in its "
            "Content-Disposition, so it is a form field, not a file (filename*= alone is not "
            f"read); send each image as a file part ({FILE_PART_HINT})",
        )
    if not out:
        raise RequestError(400, "multipart body holds no file; send images as file parts")
    return out


def _parse(body: bytes, boundary: bytes, charset: str, max_files: int) -> list[_Part]:
    """The parts of ``body``, their data as places in it (nothing copied yet)."""
    parts: list[_Part] = []
    current = _Part()
    field: list[bytes] = [b"", b""]  # header name and value being read
    files = fields = 0

    def on_part_begin() -> None:
        nonlocal current
        current = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        field[1] += data[start:end]

    def on_header_end() -> None:
        current.headers.append((field[0].lower(), field[1]))
        field[0] = field[1] = b""

    def on_headers_finished() -> None:
        nonlocal files, fields
        _, options = parse_options_header(_header(current, b"content-disposition"))
        if b"name" not in options:
            raise RequestError(
                400, 'multipart body: The Content-Disposition header field "name" must be provided.'
            )
        current.name = _decode(options[b"name"], charset)
        current.is_file = b"filename" in options
        if current.is_file:
            files += 1
            if files > max_files:
                raise RequestError(
                    413, f"multipart body: Too many files. Maximum number of files is {max_files}."
                )
        else:
            fields += 1
            if fields > MAX_FIELDS:
                raise RequestError(
                    400,
                    f"multipart body: Too many fields. Maximum number of fields is {MAX_FIELDS}.",
                )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.size += end - start
        if not current.is_file and current.size > FIELD_MAX_BYTES:
            # Only a part without filename= (a form field) is held to this limit.
            raise RequestError(
                400,
                "multipart body: a part without filename= is a form field, at most "
                f"{FIELD_MAX_BYTES // 1024} KB; send each image as a file part ({FILE_PART_HINT})",
            )
        # A place in the body, not a copy: the file's bytes are copied out once, at the end.
        current.pieces.append((start, end) if data is body else bytes(data[start:end]))

    def on_part_end() -> None:
        parts.append(current)

    callbacks: MultipartCallbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise RequestError(400, "multipart body: Invalid multipart data.") from None
    return parts


def _join(body: bytes, pieces: list[tuple[int, int] | bytes]) -> bytes:
    """A file's bytes: one copy of its pieces (memoryviews of the body copy nothing more)."""
    if len(pieces) == 1 and isinstance(pieces[0], tuple):
        start, end = pieces[0]
        return body[start:end]
    view = memoryview(body)
    return b"".join(view[p[0] : p[1]] if isinstance(p, tuple) else p for p in pieces)


def _header(part: _Part, name: bytes) -> str:
    """The first header field ``name`` (lower case) of ``part``, "" when it has none."""
    return next((v.decode("latin-1") for k, v in part.headers if k == name), "")


def _charset(value: bytes | str) -> str:
    """The codec of a multipart body's ``charset=`` (latin-1 for one Python does not know)."""
    name = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "latin-1"


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def check_multipart_complete(content_type: str, body: bytes) -> None:
    """400 for a multipart ``body`` that is empty or lacks its closing boundary (cut off, or
    cut mid-part): the parser would read it as a body without files and say so."""
    msg = Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return  # the parser names a missing boundary itself
    if not body or body.isspace():  # not body.strip(): that copies a whole body
        raise RequestError(
            400, "multipart body is empty; send each image as a file part (" + FILE_PART_HINT + ")"
        )
    if f"--{boundary}--".encode("latin-1", "replace") not in body:
        raise RequestError(
            400,
            f"multipart body is incomplete (no closing boundary '--{boundary[:70]}--'): it "
            "was cut off; send the whole body",
        )
