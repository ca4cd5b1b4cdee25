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

import re
from typing import TYPE_CHECKING, NamedTuple

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState

from pomlia_hpc.serve.decode import Limits, RequestError, base_type

if TYPE_CHECKING:  # a typing-only name of python-multipart
    from python_multipart.multipart import MultipartCallbacks

#: Largest multipart part without ``filename=`` (a form field, not a file), bytes.
FIELD_MAX_BYTES = 64 * 1024
#: Most form fields (parts without ``filename=``) a request may hold.
MAX_FIELDS = 32
#: One ``;``-separated segment of a header field: characters other than ``;`` and quotes, and
#: quoted strings (backslash escapes kept; an unclosed one runs to the end). Possessive, so it
#: never backtracks: linear in the header's length.
_SEGMENT = re.compile(r'(?:[^;"]++|"(?:[^"\\]++|\\.)*+"?)*+')
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
        self.span: tuple[int, int] | None = None  # (start, end) of its data in the body
        self.size = 0


def uploaded_files(content_type: str | None, body: bytes, limits: Limits) -> list[Upload]:
    """Each uploaded file of a request in request order: the whole ``body`` when it is not
    ``multipart/form-data``, else the file parts, each copied out of ``body`` once (the
    caller should hold no other reference to ``body``, so that it is freed on return).
    Raises :class:`RequestError`: 413 for more files than ``limits.max_images``, 400 for a
    malformed or incomplete body or one without a file part."""
    if base_type(content_type) != "multipart/form-data":
        return [Upload("body", base_type(content_type), body)]
    # The boundary is read here only: the parser and every message use this one.
    boundary = header_params(content_type or "", "Content-Type header").get("boundary", "")
    if not boundary:
        raise RequestError(
            400,
            "multipart body: Content-Type header has no boundary= parameter; expected "
            "multipart/form-data; boundary=<the boundary its body uses>",
        )
    if not body or body.isspace():  # not body.strip(): that copies a whole body
        raise RequestError(
            400, "multipart body is empty; send each image as a file part (" + FILE_PART_HINT + ")"
        )
    parts = _parse(body, boundary.encode("latin-1"), limits.max_images)
    out: list[Upload] = []
    for part in parts:
        if part.is_file:
            # Files numbered from 1, in request order (form fields between them not counted).
            what = f"part '{part.name[:40]}' #{len(out) + 1}"
            _refuse_coding(part, what)
            data = body[part.span[0] : part.span[1]] if part.span else b""
            out.append(Upload(what, _header(part, b"content-type"), data))
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


#: A file part's Content-Transfer-Encoding values that leave its bytes as they are.
_AS_IS = frozenset({"", "binary", "8bit", "7bit"})


def _refuse_coding(part: _Part, what: str) -> None:
    """Refuse (415) a file part whose bytes are encoded: a ``Content-Transfer-Encoding`` such
    as base64 (RFC 7578 deprecates it; some mail-era clients still send it) or a
    ``Content-Encoding`` other than identity. Neither is decoded here, and the encoded bytes
    got a 400 "unrecognised first bytes" that hid the cause, or a 200 for a part that only
    claimed a coding."""
    transfer = _header(part, b"content-transfer-encoding").strip().lower()
    coding = _header(part, b"content-encoding").strip().lower()
    if transfer not in _AS_IS:
        header, value, plain = "Content-Transfer-Encoding", transfer, "binary"
    elif coding not in ("", "identity"):
        header, value, plain = "Content-Encoding", coding, "identity"
    else:
        return
    raise RequestError(
        415,
        f"{what}: {header} '{value[:40]}' is not supported; expected the file's bytes as they "
        f"are (no {header}, or {plain})",
    )


def _parse(body: bytes, boundary: bytes, max_files: int) -> list[_Part]:
    """The parts of ``body``, their data as places in it (nothing copied yet)."""
    preamble = _Part()  # what comes before the first boundary line (RFC 2046: ignored)
    parts: list[_Part] = []
    current = preamble
    field: list[bytes] = [b"", b""]  # header name and value being read
    files = fields = 0
    begun = 0

    def on_part_begin() -> None:
        nonlocal current, begun
        begun += 1
        current = preamble if begun == 1 else _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        field[1] += data[start:end]

    def on_header_end() -> None:
        current.headers.append((field[0].lower(), field[1]))
        field[0] = field[1] = b""

    def on_headers_finished() -> None:
        nonlocal files, fields
        if current is preamble:
            return
        where = f"multipart body: part {len(parts) + 1}: Content-Disposition header"
        options = header_params(_header(current, b"content-disposition"), where)
        if "name" not in options:
            # python-multipart's own words named neither the part nor what to send.
            raise RequestError(400, f"{where} has no name=; expected {FILE_PART_HINT}")
        # RFC 7578 (4.2): names are UTF-8 unless a _charset_ field says otherwise, and a
        # charset= of the body's Content-Type is not part of the standard: it is not read (a
        # codec such as punycode raised what no refusal caught, a 500).
        current.name = options["name"].encode("latin-1").decode("utf-8", "replace")
        current.is_file = "filename" in options
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
        if current is preamble:
            return
        # The parser passes bytes of its own (a look-behind buffer) only for data carried
        # over from an earlier write(), and ``body`` is the last and only write with parts.
        assert data is body, "a part's data must lie in the body"
        current.size += end - start
        if not current.is_file and current.size > FIELD_MAX_BYTES:
            # Only a part without filename= (a form field) is held to this limit.
            raise RequestError(
                400,
                "multipart body: a part without filename= is a form field, at most "
                f"{FIELD_MAX_BYTES // 1024} KB; send each image as a file part ({FILE_PART_HINT})",
            )
        # A place in the body, not a copy: the file's bytes are copied out once, at the end.
        current.span = (current.span[0] if current.span else start, end)

    def on_part_end() -> None:
        if current is not preamble:
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
        # A part without headers whose data ends in CRLF, fed first, is the preamble: the
        # parser then reads the body's first boundary line as it reads every later one, after
        # a preamble (which python-multipart refuses at the start) and with transport padding
        # (spaces or tabs before its CRLF, refused on the first line only). Fed separately,
        # not joined to the body: that would copy a whole upload.
        parser.write(b"--" + boundary + b"\r\n\r\n\r\n")
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise RequestError(400, "multipart body: Invalid multipart data.") from None
    if parser.state != MultipartState.END:
        no_line = current is preamble
        raise RequestError(400, _unfinished(boundary, no_line, len(parts) + 1, current.name))
    return parts


def _unfinished(boundary: bytes, no_line: bool, number: int, name: str) -> str:
    """The 400 message for a multipart body that ends before its closing boundary: without
    a boundary line at all (``no_line``), or inside its part ``number`` (form fields
    counted), named ``name`` when its headers were read."""
    shown = boundary.decode("latin-1")[:70]
    if no_line:
        return (
            f"multipart body has no boundary line ('--{shown}' then CRLF; the boundary= of its "
            f"Content-Type); send each image as a file part ({FILE_PART_HINT})"
        )
    # Checked here, not by finding '--BOUNDARY--' anywhere in the body: a last part without
    # the CRLF before its closing boundary, or file bytes that hold that text in a body that
    # was cut off, lost the last file and got 200.
    part = f"part {number} '{name[:40]}'" if name else f"part {number}"
    return (
        f"multipart body ends inside a part: {part} is not followed by a boundary line "
        f"('--{shown}', or the closing '--{shown}--', each after a CRLF): it was cut off or "
        "badly terminated; send the whole body"
    )


def header_params(value: str, where: str) -> dict[str, str]:
    """The parameters of the header field ``value`` (``type; key=value; key="quoted"``) by
    lower-case name, quotes and backslash escapes removed; ``where`` names the header in the
    refusal. As python-multipart reads them (a ``;`` inside quotes is no separator, a name
    without ``=`` has the value "", RFC 2231's ``key*=`` forms are left out: RFC 7578 forbids
    them), except that a parameter given twice is refused (400): ``boundary=a; boundary=b``
    gives no one boundary (the last won, and a client that meant the first got a body it did
    not send read), and a repeated ``charset=`` or ``name=`` is as ambiguous, so every name is
    held to once, read or not."""
    params: dict[str, str] = {}
    for segment in _segments(value)[1:]:
        key, _, val = segment.partition("=")
        key = key.strip(" \t").lower()
        if not key or "*" in key:  # an empty segment (";;"), or an RFC 2231 form
            continue
        val = val.strip(" \t")
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1].replace("\\\\", "\\").replace('\\"', '"')
        if key in params:
            raise RequestError(
                400,
                f"{where}: parameter '{key[:40]}' is given more than once "
                f"({key[:40]}={_shown(params[key])}, {key[:40]}={_shown(val)}); expected it "
                "at most once",
                reason="undecodable",
            )
        if key == "filename" and (val[1:3] == ":\\" or val[:2] == "\\\\"):
            val = val.split("\\")[-1]  # a full Windows path (old browsers): its last part
        params[key] = val
    return params


def _segments(value: str) -> list[str]:
    """``value`` split at each ``;`` that is not inside a quoted string (a regular expression,
    not a loop over characters: a part's header can be as long as the body)."""
    out: list[str] = []
    pos = 0
    while True:
        match = _SEGMENT.match(value, pos)
        assert match is not None  # it matches the empty string
        out.append(match.group())
        pos = match.end() + 1  # past the ';' it stopped at
        if pos > len(value):
            return out


def _shown(value: str) -> str:
    """A parameter's value for a message: at most 40 characters, quoted when it has spaces."""
    text = value[:40] + ("..." if len(value) > 40 else "")
    return f'"{text}"' if not text or any(c in text for c in " \t;,") else text


def _header(part: _Part, name: bytes) -> str:
    """The first header field ``name`` (lower case) of ``part``, "" when it has none."""
    return next((v.decode("latin-1") for k, v in part.headers if k == name), "")
