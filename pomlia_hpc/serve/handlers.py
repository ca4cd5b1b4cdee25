"""What ``POST /v1/predict`` and ``POST /v1/feedback`` do, apart from routing.

A prediction: read the upload with bounds, decode every file (a refused upload is counted in
the prediction log by reason), run the model, answer once the records are on disk. Feedback:
check the id was issued by this deployment and not labelled yet (unless it replaces), map the
label to the model's names and indices, append it durably, answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

from pomlia_hpc.serve.batching import BatcherClosedError
from pomlia_hpc.serve.bodies import feedback_body, json_response, read_body
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError, decode
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.formdata import Upload, uploaded_files
from pomlia_hpc.serve.holder import ModelHolder
from pomlia_hpc.serve.predictor import (
    NONFINITE_REASON,
    ModelOutputError,
    Predictor,
    now_iso,
)
from pomlia_hpc.serve.predlog import LogClosedError, LogWriteError
from pomlia_hpc.serve.records import (
    MALFORMED_REQUEST_REASON,
    REQUEST_REASONS_BY_STATUS,
    TIMEOUT_REASON,
    FeedbackLine,
    RejectionLine,
    to_line,
)

PREDICTION_ID = re.compile(r"^[0-9a-f]{32}$")

#: The threads uploads are decoded in, apart from asyncio's default executor: slow uploads
#: queue here and cannot take every thread that a model reload (ModelHolder) also needs.
DECODE_THREADS = min(4, os.cpu_count() or 1)
DECODE_POOL = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="pomlia-decode")


async def predict(
    holder: ModelHolder, request: Request, spec: InputSpec, limits: Limits
) -> Response:
    """Answer one /v1/predict request (raises :class:`RequestError` for a refusal)."""
    pred = holder.current()
    try:
        # The body is not kept in a name here: once its files are split out of a multipart
        # body it is freed, and the upload is held once (what max_buffered_mb counted), not
        # twice for the decode and the model call.
        ctype = request.headers.get("content-type")
        files = uploaded_files(ctype, await read_body(request, limits.max_upload_bytes), limits)
    except RequestError as exc:
        # Refused by the HTTP layer before any file was read: logged as such, so that the
        # monitor keeps it out of its refused share of images.
        log_rejection(pred, exc, holder.config.deployment_id, request_level=True)
        raise
    try:
        # Decoded in a worker thread: one upload that takes long to decode must not hold the
        # event loop, which answers /health, /ready and every other request meanwhile.
        loop = asyncio.get_running_loop()
        images = await loop.run_in_executor(DECODE_POOL, decode_uploads, files, spec, limits)
    except RequestError as exc:
        log_rejection(pred, exc, holder.config.deployment_id)
        raise
    try:
        try:
            predictions = await pred.predict(images)
        except BatcherClosedError:
            # Swapped out between lookup and submit: the new model answers instead.
            if (newer := holder.current()) is pred:
                raise
            pred = newer
            predictions = await pred.predict(images)
    except (BatcherClosedError, LogClosedError, LogWriteError) as exc:
        # Shutting down, or the log cannot be written: not the client's fault, retry later.
        raise RequestError(503, f"prediction not recorded: {exc}") from exc
    except ModelOutputError as exc:
        # The model failed on these images: a server error, not the client's (its rejection
        # record is in the log already, written with the batch).
        raise RequestError(500, str(exc), reason=NONFINITE_REASON) from exc
    return json_response(
        {
            "model": pred.bundle.name,
            "model_version": pred.bundle.version,
            "predictions": predictions,
        }
    )


def decode_uploads(files: list[Upload], spec: InputSpec, limits: Limits) -> np.ndarray:
    """The images of one request's ``files`` ((name, content type, bytes) each), in order,
    as one float32 NHWC array; the files share ``limits.max_images``, checked before each is
    decoded. Blocking: runs in a worker thread."""
    arrays: list[np.ndarray] = []
    budget = limits.max_images
    for what, ctype, data in files:
        arrays.append(decode(data, ctype, spec, limits, what, budget=budget))
        budget -= len(arrays[-1])
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


async def feedback(holder: ModelHolder, request: Request) -> Response:
    """Answer one /v1/feedback request (the token has been checked by then). The body is
    judged before readiness: a malformed body gets the same 4xx whatever the server's state,
    and only a valid one may get the 503 of a server that is not ready."""
    # A hot swap never changes the labels (see holder.incompatible), so the bundle the server
    # was started with judges a label as the current one would, before any model is loaded.
    item = await feedback_body(request, expected_label(holder.card_bundle()))
    # Ids are issued in lower case; hex digits are case-insensitive, so an upper-case copy
    # (a spreadsheet, a client that upper-cases ids) names the same prediction.
    item.prediction_id = item.prediction_id.lower()
    if not PREDICTION_ID.fullmatch(item.prediction_id):
        raise RequestError(400, "prediction_id: expected the 32-hex-digit id /v1/predict returned")
    names, indices = labels_of(item.label, holder.card_bundle())
    pred = holder.current()
    bundle = pred.bundle
    multi = bundle.task_type == "multi-label"

    def record(revision: int) -> FeedbackLine:
        return FeedbackLine(
            id=new_id(),
            time=now_iso(),
            prediction_id=item.prediction_id,
            model=bundle.name,
            model_version=bundle.version,
            deployment=holder.config.deployment_id,
            label=names if multi else names[0],
            label_index=indices if multi else indices[0],
            replaces=revision > 1,
            revision=revision,
        )

    line = await holder.accept_feedback(
        item.prediction_id, replaces=item.replaces, record=record, plog=pred.log
    )
    holder.metrics.feedback.inc()
    return json_response({"id": line.id, "prediction_id": item.prediction_id, "recorded": True})


def rejection_reason(exc: RequestError, *, request_level: bool = False) -> str:
    """A short category of a refused upload, for the monitor's rejected-share-by-reason;
    ``request_level``: refused by the HTTP layer before any file was read (one of
    ``REQUEST_REASONS``, which the monitor keeps out of that share)."""
    text = exc.message.lower()
    if exc.reason is not None:
        return exc.reason
    if exc.status == 408:
        # The body did not arrive in time: the client's or the network's failure, not a
        # property of the image (the monitor leaves it out of the refused share).
        return TIMEOUT_REASON
    if request_level:
        return REQUEST_REASONS_BY_STATUS.get(exc.status, MALFORMED_REQUEST_REASON)
    if exc.status == 413:
        return "too-large"
    if exc.status == 415:
        return "unsupported-type"
    if "channel" in text:
        return "wrong-channels"
    if "size" in text or " px" in text or "shape" in text:
        return "wrong-size"
    if "finite" in text or "[0, 1]" in text or "range" in text:
        return "bad-values"
    return "undecodable"


def log_rejection(
    pred: Predictor, exc: RequestError, deployment: int | None, *, request_level: bool = False
) -> None:
    """Record a refused upload in the prediction log (not waited for: the client gets its 4xx
    at once; a log that cannot take it loses only this count); ``request_level`` as for
    :func:`rejection_reason`."""
    with contextlib.suppress(LogClosedError, LogWriteError):
        pred.log.append(
            [
                to_line(
                    RejectionLine(
                        id=new_id(),
                        time=now_iso(),
                        model=pred.bundle.name,
                        model_version=pred.bundle.version,
                        deployment=deployment,
                        status=exc.status,
                        reason=rejection_reason(exc, request_level=request_level),
                    )
                )
            ]
        )


def new_id() -> str:
    """A fresh record id (32 hex digits)."""
    return uuid.uuid4().hex


def expected_label(bundle: ExportedBundle) -> str:
    """What ``bundle``'s model takes as a feedback label, in words for a refusal."""
    n = len(bundle.labels)
    shown = ", ".join(bundle.labels[:20]) + (", ..." if n > 20 else "")
    one = f"an integer class index 0..{n - 1} or a class name ({shown})"
    return f"{one}, or a list of them" if bundle.task_type == "multi-label" else one


def labels_of(
    label: str | int | list[str | int], bundle: ExportedBundle
) -> tuple[list[str], list[int]]:
    """The label names (the bundle's spelling) and indices a feedback ``label`` (names, matched
    in Unicode NFC, or indices) stands for; 400 for one that is not a label of the model, a
    class given twice, or several labels for a single-label task."""
    values = label if isinstance(label, list) else [label]
    if bundle.task_type != "multi-label" and len(values) != 1:
        raise RequestError(
            400, f"label: task '{bundle.task_type}' takes one label, got {len(values)}"
        )
    # Names are compared in Unicode NFC: a bundle exported before ingest kept names in NFC
    # may spell "ö" decomposed (NFD, a folder copied from a Mac), and a Mac client may send
    # NFD to a newer bundle; both print alike. What is logged stays the bundle's own spelling,
    # so the monitor's class list matches it.
    nfc = [unicodedata.normalize("NFC", name) for name in bundle.labels]
    names: list[str] = []
    indices: list[int] = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(bundle.labels):
            idx = v
        elif isinstance(v, str) and v in bundle.labels:
            idx = bundle.labels.index(v)
        elif isinstance(v, str) and unicodedata.normalize("NFC", v) in nfc:
            idx = nfc.index(unicodedata.normalize("NFC", v))
        else:
            shown = ", ".join(bundle.labels[:20])
            # Quoted as JSON: an index stays a number (99), a name a string ("x").
            what = (
                f"index {v} is out of range"
                if isinstance(v, int)
                else f"{orjson.dumps(v[:60]).decode()} is not a label of this model"
            )
            raise RequestError(
                400,
                f"label: {what}; expected a name ({shown}) or an index 0..{len(bundle.labels) - 1}",
            )
        if idx in indices:
            # Logged as sent, [1, 1] was a label_index [1, 1] that no multi-hot row holds.
            first = values[indices.index(idx)]
            raise RequestError(
                400,
                f"label: class {orjson.dumps(bundle.labels[idx]).decode()} is given twice "
                f"({orjson.dumps(first).decode()[:60]} and {orjson.dumps(v).decode()[:60]}); "
                "expected each class at most once",
            )
        names.append(bundle.labels[idx])
        indices.append(idx)
    return names, indices
