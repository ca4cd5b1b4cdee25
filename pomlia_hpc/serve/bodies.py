"""Reading request bodies with bounds, and the JSON answers and refusals of the REST API.

Bodies are read by our code, not by FastAPI: the read stops at a limit (413) instead of
buffering any size, and a refusal is always a JSON ``{"error": message, "status": code}``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from pomlia_hpc.serve.decode import RequestError, base_type
from pomlia_hpc.serve.guards import UploadBytes
from pomlia_hpc.serve.headers import repeated_field
from pomlia_hpc.serve.schemas import FeedbackIn

#: Largest /v1/feedback body, bytes: a prediction id and a few labels need far less.
FEEDBACK_MAX_BYTES = 64 * 1024
#: Seconds a 503 asks the client to wait before it sends the request again: a busy server's
#: uploads finish, and a replacement server (a Slurm switch) starts, in about that time.
RETRY_AFTER_S = 1
#: sys.getsizeof of an empty bytearray: the object without any buffer, bytes.
_EMPTY_BUFFER = sys.getsizeof(bytearray())


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON refusal ``{"error": message, "status": status}``; a 503 (busy, stopping, not
    ready, log not writable) says ``Retry-After`` (:data:`RETRY_AFTER_S`) for clients and
    proxies that retry by it."""
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class ContentCodingError(RequestError):
    """A body sent with a content coding (gzip, br, ...): 415 with ``Accept-Encoding:
    identity``, which says what the server takes instead (RFC 9110, 15.5.16)."""


def refusal(exc: RequestError) -> JSONResponse:
    """The JSON answer to ``exc``, with the header fields its code calls for."""
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, ContentCodingError):
        headers["Accept-Encoding"] = "identity"
    return error_response(exc.status, exc.message, headers or None)


def refuse_unclear_body(request: Request) -> None:
    """Refuse (415) a body whose ``Content-Encoding`` names a coding other than identity, and
    (400) one whose ``Transfer-Encoding`` is anything but ``chunked`` or whose
    ``Content-Type`` is given twice (:mod:`~pomlia_hpc.serve.headers`).

    Why: neither uvicorn nor Starlette decodes a request body, so a gzip upload reached the
    decoder as its compressed bytes ("not a PNG ... unrecognised first bytes", a 400 that hides
    the cause), and a body that only claimed a coding was taken as it came. Decoding here is
    not offered on purpose: a few KiB of gzip can inflate to gigabytes, past every bound the
    upload limits set on the bytes received."""
    if (repeated := repeated_field(request.headers, "content-type")) is not None:
        raise RequestError(400, repeated)
    codings = [
        c.strip().lower()
        for field in request.headers.getlist("content-encoding")
        for c in field.split(",")
    ]
    # httptools takes the chunked framing off and ignores any coding listed before it:
    # "Transfer-Encoding: gzip, chunked" handed over the compressed bytes as the body.
    transfer = [
        c.strip().lower()
        for field in request.headers.getlist("transfer-encoding")
        for c in field.split(",")
    ]
    if [c for c in transfer if c] not in ([], ["chunked"]):
        raise RequestError(
            400,
            f"Transfer-Encoding header: '{', '.join(transfer)[:60]}' is not supported; "
            "expected chunked alone (or a Content-Length)",
        )
    sent = [c for c in codings if c and c != "identity"]
    if sent:
        raise ContentCodingError(
            415,
            f"Content-Encoding header: '{', '.join(sent)[:60]}' is not supported; expected the "
            "body without a content coding (no Content-Encoding, or identity)",
        )


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
    """The whole body, at most ``limit`` bytes (415 if it comes with a content coding; 413
    beyond the limit, before reading when declared; 503 when the server's uploads in progress
    would hold more than ``max_buffered_mb``)."""
    refuse_unclear_body(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    # The server-wide cap on body bytes held (503) counts each chunk as it arrives, not the
    # declared length: heads that announce 16 MiB and send nothing must cost nothing.
    # What was taken is given back when the request ends (ServingApp, in a finally).
    # Not preallocated to the declared length for the same reason: a head and one byte
    # would hold the whole 16 MiB.
    pool = UploadBytes.of(request.scope)
    # One buffer, not a list of chunks joined at the end: the chunks of concurrent uploads
    # arrive interleaved, and the allocator could not reuse their holes for the joined body
    # (6 uploads of 10 MiB under a 64 MiB cap peaked at 123 MB of RSS, 75 MB this way).
    body = bytearray()
    counted = 0  # bytes taken from the pool: what ``body`` allocated, not only what it holds
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise RequestError(413, f"upload exceeds the limit of {limit} bytes")
        if pool is None or not chunk:
            body += chunk
            continue
        # Taken before the chunk is stored: a chunk that does not fit is refused unstored.
        if (need := len(body) + len(chunk) - counted) > 0:
            pool.take(request.scope, need)
            counted += need
        body += chunk
        # A growing bytearray allocates up to 1/8 more than it holds (so that appends are
        # cheap); that is memory held too, and counted (sys.getsizeof: its allocation).
        if (spare := sys.getsizeof(body) - _EMPTY_BUFFER - counted) > 0:
            pool.take(request.scope, spare)
            counted += spare
    out = bytes(body)
    del body  # freed here: from now on the request holds len(out) bytes, and counts that
    if pool is not None and counted > len(out):
        pool.give_back(request.scope, counted - len(out))
    return out


async def feedback_body(
    request: Request, expected_label: str = "a class name or an integer class index"
) -> FeedbackIn:
    """The /v1/feedback body, read with a bound and validated; 413, 415 or 422 otherwise.
    ``expected_label`` says what the model takes as a label, for a label of the wrong type."""
    # Read first: its header checks (a Content-Type given twice) come before this one.
    body = await read_body(request, FEEDBACK_MAX_BYTES)
    ctype = base_type(request.headers.get("content-type"))
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise RequestError(
            415, f"content type '{ctype}' is not supported; expected application/json"
        )
    try:
        item = FeedbackIn.model_validate_json(body)
    except ValidationError as exc:
        raise RequestError(422, feedback_refusal_text(exc, expected_label)) from exc
    if (key := repeated_key(body)) is not None:
        raise RequestError(
            422,
            f"body: key '{key[:40]}' is given more than once; expected each key once "
            "(which value was meant cannot be told)",
        )
    return item


def repeated_key(body: bytes) -> str | None:
    """The first key that an object of the JSON ``body`` holds twice, else None.

    Why: the JSON parser keeps the last of two equal keys, so ``{"label": 1, "label": 2}``
    was recorded as label 2 and the 1 was dropped without a word (RFC 8259 leaves the meaning
    of such an object open). Run only on a body that validated (at most 64 KiB)."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if not found and len(set(keys)) < len(keys):
            found.append(next(k for i, k in enumerate(keys) if k in keys[:i]))
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except ValueError:  # what pydantic read and the standard parser does not: not a repeat
        return None
    return found[0] if found else None


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
