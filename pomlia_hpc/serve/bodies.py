"""Reading request bodies with bounds, and the JSON answers and refusals of the REST API.

Bodies are read by our code, not by FastAPI: the read stops at a limit (413) instead of
buffering any size, and a refusal is always a JSON ``{"error": message, "status": code}``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from email.message import Message
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from pomlia_hpc.serve.decode import Limits, RequestError, base_type
from pomlia_hpc.serve.guards import UploadBytes
from pomlia_hpc.serve.schemas import FeedbackIn

#: Largest /v1/feedback body, bytes: a prediction id and a few labels need far less.
FEEDBACK_MAX_BYTES = 64 * 1024

#: Largest multipart part without ``filename=`` (a form field, not a file), bytes.
FIELD_MAX_BYTES = 64 * 1024
#: How a file part's header must look, for refusals of multipart bodies.
FILE_PART_HINT = 'Content-Disposition: form-data; name="file"; filename="a.png"'


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON refusal ``{"error": message, "status": status}``."""
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def close_unless_read(scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """``receive`` and ``send`` of a request whose answer closes the connection when it is
    sent before the request's body was read to its end (a missing token, a body declared too
    large, a timeout, a busy or stopping server, an unknown path): the rest of the body may
    still be on its way, and the connection is of no use for another request. An answer after
    the whole body (a 503 for a prediction not recorded, a 415 found while decoding) or to a
    request without a body keeps the connection open: closing it for every refusal made
    keep-alive clients reconnect for nothing."""
    headers = dict(scope.get("headers") or [])
    read = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0"

    async def counting() -> AsgiMessage:
        nonlocal read
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            read = True
        return message

    async def closing(message: AsgiMessage) -> None:
        if message["type"] == "http.response.start" and not read:
            fields = list(message.get("headers") or [])
            if not any(k.lower() == b"connection" for k, _ in fields):
                fields.append((b"connection", b"close"))
            message = {**message, "headers": fields}
        await send(message)

    return counting, closing


def client_gone() -> JSONResponse:
    """The client hung up mid-upload: not a server error, nothing to log. 499 ("client closed
    request", nginx's code) is what the metrics count; uvicorn drops the answer itself."""
    return error_response(499, "client closed the request before its body was read")


def json_response(payload: Any) -> Response:
    """``payload`` as a JSON answer."""
    # orjson directly: FastAPI's jsonable_encoder walk costs more than the model at batch 1.
    return Response(orjson.dumps(payload), media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond, before reading when declared;
    503 when the server's uploads in progress would hold more than ``max_buffered_mb``)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    # The server-wide cap on body bytes held (503) counts each chunk as it arrives, not the
    # declared length: heads that announce 16 MiB and send nothing must cost nothing.
    # What was taken is given back when the request ends (ServingApp, in a finally).
    pool = UploadBytes.of(request.scope)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"upload exceeds the limit of {limit} bytes")
        if pool is not None and chunk:
            pool.take(request.scope, len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def feedback_body(
    request: Request, expected_label: str = "a class name or an integer class index"
) -> FeedbackIn:
    """The /v1/feedback body, read with a bound and validated; 413, 415 or 422 otherwise.
    ``expected_label`` says what the model takes as a label, for a label of the wrong type."""
    ctype = base_type(request.headers.get("content-type"))
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise RequestError(
            415, f"content type '{ctype}' is not supported; expected application/json"
        )
    body = await read_body(request, FEEDBACK_MAX_BYTES)
    try:
        return FeedbackIn.model_validate_json(body)
    except ValidationError as exc:
        raise RequestError(422, feedback_refusal_text(exc, expected_label)) from exc


def feedback_refusal_text(exc: ValidationError, expected_label: str) -> str:
    """The 422 message for a /v1/feedback body that does not validate. A label of the wrong
    type fails every member of the label's union, and pydantic's first complaint named only
    one ("body.label.str: Input should be a valid string" for 1.5, though an integer was as
    good): such a label gets what the model takes instead."""
    first = exc.errors()[0]
    loc = first["loc"]
    if first["type"] == "extra_forbidden" and loc:
        valid = ", ".join(FeedbackIn.model_fields)
        return f"body: unknown key '{str(loc[-1])[:40]}'; valid keys: {valid}"
    if loc and loc[0] == "label" and first["type"] != "missing":
        value = first.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            # 1e400 parses as infinity, which JSON would show as null.
            shown = "a number out of range"
        else:
            try:
                shown = orjson.dumps(value).decode()[:60]
            except TypeError:
                shown = "the value"
        return f"body.label: {shown} is not a label; expected {expected_label}"
    where = ".".join(("body", *(str(p) for p in loc)))
    return f"{where}: {first['msg']}"


async def uploaded_files(
    request: Request, body: bytes, limits: Limits
) -> list[tuple[str, str, bytes]]:
    """(name for messages, content type, bytes) of each uploaded file, in request order."""
    ctype = base_type(request.headers.get("content-type"))
    if ctype != "multipart/form-data":
        return [("body", ctype, body)]
    check_multipart_complete(request.headers.get("content-type", ""), body)

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(
            request.headers,
            stream(),
            max_files=limits.max_images,
            max_fields=32,
            max_part_size=FIELD_MAX_BYTES,
        ).parse()
    except MultiPartException as exc:
        # Starlette says which limit was hit only in words; too many files is a count limit.
        too_many = exc.message.startswith("Too many files")
        message = f"multipart body: {exc.message}"
        if exc.message.startswith("Part exceeded"):
            # Only a part without filename= (a form field) is held to this limit.
            message = (
                f"multipart body: a part without filename= is a form field, at most "
                f"{FIELD_MAX_BYTES // 1024} KB; send each image as a file part ({FILE_PART_HINT})"
            )
        raise RequestError(413 if too_many else 400, message) from exc
    out: list[tuple[str, str, bytes]] = []
    fields: list[str] = []
    try:
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                fields.append(field)
            else:
                data = await value.read()
                # Files numbered from 1, in request order (form fields between them not
                # counted): the second file is #2.
                name = f"part '{field[:40]}' #{len(out) + 1}"
                out.append((name, value.content_type or "", data))
    finally:
        await form.close()
    if not out and fields:
        # Starlette reads filename= only (not RFC 2231's filename*=): a part without it is a
        # form field, and the client meant it as the image.
        raise RequestError(
            400,
            f"multipart body: part '{fields[0][:40]}' has no filename= in its "
            "Content-Disposition, so it is a form field, not a file (filename*= alone is not "
            f"read); send each image as a file part ({FILE_PART_HINT})",
        )
    if not out:
        raise RequestError(400, "multipart body holds no file; send images as file parts")
    return out


def check_multipart_complete(content_type: str, body: bytes) -> None:
    """400 for a multipart ``body`` that is empty or lacks its closing boundary (cut off, or
    cut mid-part): the parser would read it as a body without files and say so."""
    msg = Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return  # the parser names a missing boundary itself
    if not body.strip():
        raise RequestError(
            400, "multipart body is empty; send each image as a file part (" + FILE_PART_HINT + ")"
        )
    if f"--{boundary}--".encode("latin-1", "replace") not in body:
        raise RequestError(
            400,
            f"multipart body is incomplete (no closing boundary '--{boundary[:70]}--'): it "
            "was cut off; send the whole body",
        )
