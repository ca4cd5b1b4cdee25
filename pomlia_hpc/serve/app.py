"""The REST API (FastAPI): predict, feedback, health, readiness, model card, metrics, docs.

Why FastAPI + uvicorn rather than LitServe: one process whose event loop parses requests while a
single worker thread owns the model keeps every core for the model on a small CPU node, and the
durable-log-before-answer rule needs a hook between the model and the response, which our own
batcher (``batching.py``, 200 lines) gives directly. LitServe's batching runs the model in
separate worker processes fed through queues, an extra copy and hop per request.

Hot swap: a server started on a link (a deployment slot's ``current``, see
:mod:`pomlia_hpc.serve.slots`) moves to the bundle the link names when it changes (checked every
``watch_interval_s``) or on ``POST /v1/admin/reload`` (bearer token). The new bundle's model is
loaded beside the old one, new requests go to it, and the old batcher answers what it holds;
both write to the same prediction log, each record naming the model version that produced it.
A request that reached the old batcher after it closed is run by the new one, so none fails.

Every refusal is a JSON ``{"error": message, "status": code}`` with a 4xx code; an unexpected
exception is a 500 with a generic message (and its traceback in the server log), which the
schemathesis test checks never happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from pomlia_hpc import __version__
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.serve.batching import BatcherClosedError
from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.decode import (
    IMAGE_TYPES,
    InputSpec,
    Limits,
    RequestError,
    base_type,
    decode,
)
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.fingerprint import FingerprintFn, bundle_fingerprint
from pomlia_hpc.serve.guards import timed_receive
from pomlia_hpc.serve.inbox import Inbox, inputs_dir
from pomlia_hpc.serve.issued import IssuedIds, feedback_refusal
from pomlia_hpc.serve.metrics import (
    ASGIApp,
    MetricsMiddleware,
    Receive,
    Scope,
    Send,
    ServerMetrics,
)
from pomlia_hpc.serve.predictor import Predictor, now_iso
from pomlia_hpc.serve.predlog import LogClosedError, LogWriteError, PredictionLog
from pomlia_hpc.serve.runtime import load_runtime
from pomlia_hpc.serve.security import BearerGuard, load_token

log = logging.getLogger("pomlia.serve")

ROUTES = frozenset(
    {
        "/v1/predict",
        "/v1/feedback",
        "/health",
        "/ready",
        "/v1/model",
        "/metrics",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/v1/admin/reload",
    }
)
PREDICTION_ID = re.compile(r"^[0-9a-f]{32}$")


class ErrorBody(BaseModel):
    error: str
    status: int


class Prediction(BaseModel):
    id: str = Field(description="prediction id: send it back with /v1/feedback")
    label: str | list[str] = Field(description="the label (a list for multi-label tasks)")
    label_index: int | list[int]
    probabilities: dict[str, float] = Field(description="label name -> probability")


class PredictResponse(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction]


class FeedbackIn(BaseModel):
    # Strict types: JSON true is not class 1, "3" is not index 3, 2.0 is not an index.
    prediction_id: StrictStr = Field(
        description="the id /v1/predict returned", examples=["0123456789abcdef0123456789abcdef"]
    )
    label: StrictStr | StrictInt | list[StrictStr | StrictInt] = Field(
        description="the true label: a class name or an index; a list for multi-label tasks"
    )
    replaces: StrictBool = Field(
        False, description="true to replace a label sent earlier for this prediction (else 409)"
    )


class FeedbackOut(BaseModel):
    id: str
    prediction_id: str
    recorded: bool


class ReloadOut(BaseModel):
    reloaded: bool
    model: str
    model_version: str
    previous_model: str | None = None
    previous_version: str | None = None


class Status(BaseModel):
    status: str
    model: str | None = None
    model_version: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad input: corrupt image, wrong size or channel count, bad multipart"),
        (401, "missing or wrong bearer token"),
        (403, "route disabled (no token configured)"),
        (413, "upload, image side or image count over the limit"),
        (409, "reload refused: no link followed, or a bundle of another input or labels"),
        (415, "unsupported content type"),
        (422, "request body does not match the schema"),
        (503, "not ready or shutting down"),
    )
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "One image as the raw body (PNG, JPEG, TIFF, or NPY: (H,W[,C]) one image, "
            "(N,H,W[,C]) a batch), or several files as multipart/form-data (any field name, "
            "order kept). Size and channels must match /v1/model's 'input'."
        ),
        "content": {
            **{t: _BINARY for t in (*IMAGE_TYPES, "application/x-npy", "application/octet-stream")},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


#: Largest /v1/feedback body, bytes: a prediction id and a few labels need far less.
FEEDBACK_MAX_BYTES = 64 * 1024
_FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": FeedbackIn.model_json_schema()}},
    }
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if status == 408:  # the rest of the body may still come: the connection cannot be reused
        headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _client_gone() -> JSONResponse:
    """The client hung up mid-upload: not a server error, nothing to log. 499 ("client closed
    request", nginx's code) is what the metrics count; uvicorn drops the answer itself."""
    return _error(499, "client closed the request before its body was read")


def _json(payload: Any) -> Response:
    # orjson directly: FastAPI's jsonable_encoder walk costs more than the model at batch 1.
    return Response(orjson.dumps(payload), media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _feedback_body(request: Request) -> FeedbackIn:
    """The /v1/feedback body, read with a bound and validated; 413, 415 or 422 otherwise."""
    ctype = base_type(request.headers.get("content-type"))
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise RequestError(
            415, f"content type '{ctype}' is not supported; expected application/json"
        )
    body = await _read_body(request, FEEDBACK_MAX_BYTES)
    try:
        return FeedbackIn.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(("body", *(str(p) for p in first["loc"])))
        raise RequestError(422, f"{where}: {first['msg']}") from exc


async def _files(request: Request, body: bytes, limits: Limits) -> list[tuple[str, str, bytes]]:
    """(name for messages, content type, bytes) of each uploaded file, in request order."""
    ctype = base_type(request.headers.get("content-type"))
    if ctype != "multipart/form-data":
        return [("body", ctype, body)]

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(
            request.headers,
            stream(),
            max_files=limits.max_images,
            max_fields=32,
            max_part_size=64 * 1024,
        ).parse()
    except MultiPartException as exc:
        # Starlette says which limit was hit only in words; too many files is a count limit.
        too_many = exc.message.startswith("Too many files")
        raise RequestError(413 if too_many else 400, f"multipart body: {exc.message}") from exc
    out: list[tuple[str, str, bytes]] = []
    try:
        for i, (field, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile):
                data = await value.read()
                out.append((f"part '{field[:40]}' #{i}", value.content_type or "", data))
    finally:
        await form.close()
    if not out:
        raise RequestError(400, "multipart body holds no file; send images as file parts")
    return out


def create_app(
    bundle: ExportedBundle,
    config: ServeConfig,
    log_dir: Path,
    *,
    fingerprint: FingerprintFn | None = None,
    on_ready: Any = None,
    follow: Path | None = None,
) -> ServingApp:
    """Build the app for ``bundle``. The model, batcher and log start in the lifespan, so
    nothing runs until a server starts it; ``on_ready()`` (optional) is called then.
    ``follow``: the link ``bundle`` was found through; the server swaps to where it points."""
    spec = InputSpec(bundle.image_size, bundle.channels)
    limits = Limits(config.max_upload_bytes, config.max_side_px, config.max_images)
    guard = BearerGuard(load_token(config.token_file))
    metrics = ServerMetrics()
    state: dict[str, Any] = {
        "predictor": None,
        "draining": False,
        "refused": None,
        "issued": IssuedIds(config.feedback_window),
    }
    swap_lock = asyncio.Lock()

    def make_predictor(b: ExportedBundle, plog: PredictionLog) -> Predictor:
        runtime = load_runtime(b, config.backend, config.threads)
        fp, kind = fingerprint, "custom"
        if fp is None:
            fp, kind = bundle_fingerprint(b.encoder_file)
        pred = Predictor(
            b,
            runtime,
            plog,
            metrics,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000.0,
            fingerprint=fp,
            fingerprint_kind=kind,
            deployment_id=config.deployment_id,
            keep_inputs=config.keep_inputs,
            issued=state["issued"],
        )
        log.info("model %s (%s) on %s/%s ready", b.name, b.version, runtime.backend, runtime.device)
        return pred

    async def reload() -> dict[str, Any]:
        """Swap to the bundle ``follow`` names now (no-op if it is the one served)."""
        if follow is None:
            raise RequestError(
                409,
                "this server was started on a bundle directory, not on a deployment link: "
                "nothing to reload (serve a slot's link to use hot swap)",
            )
        async with swap_lock:
            old = current()
            target = Path(os.path.realpath(follow))
            same = {"model": old.bundle.name, "model_version": old.bundle.version}
            if target == old.bundle.root:
                return {"reloaded": False, **same}
            try:
                new_bundle = await asyncio.to_thread(ExportedBundle.open, target)
            except PomliaError as exc:
                raise RequestError(409, f"link {follow} names {target}: {exc}") from exc
            if problem := _incompatible(old.bundle, new_bundle):
                raise RequestError(409, f"{target}: {problem}; the server keeps {old.bundle.name}")
            new = await asyncio.to_thread(make_predictor, new_bundle, old.log)
            state["predictor"] = new
            # New requests already go to ``new``; the old batcher answers what it holds.
            await asyncio.to_thread(old.close, close_log=False)
            metrics.swaps.inc()
            log.info(
                "hot swap: %s (%s) -> %s (%s)",
                old.bundle.name,
                old.bundle.version,
                new.bundle.name,
                new.bundle.version,
            )
            return {
                "reloaded": True,
                "model": new.bundle.name,
                "model_version": new.bundle.version,
                "previous_model": old.bundle.name,
                "previous_version": old.bundle.version,
            }

    async def watch(link: Path) -> None:
        while True:
            await asyncio.sleep(config.watch_interval_s)
            target = Path(os.path.realpath(link))
            pred = state["predictor"]
            if pred is None or target == pred.bundle.root or target == state["refused"]:
                continue
            try:
                await reload()
            except RequestError as exc:
                state["refused"] = target  # said once, not every interval
                log.error("hot swap refused: %s", exc.message)
            except Exception:
                log.exception("hot swap to %s failed; still serving %s", target, pred.bundle.name)
                state["refused"] = target

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        inbox = None
        if config.keep_inputs:
            inbox = Inbox(
                inputs_dir(log_dir),
                quota_bytes=config.inputs_quota_bytes,
                retention_s=config.inputs_retention_days * 86400.0,
                fsync=config.log_fsync,
            )
        state["issued"] = await asyncio.to_thread(
            IssuedIds.from_log, log_dir, config.deployment_id, config.feedback_window
        )
        plog = PredictionLog(log_dir, fsync=config.log_fsync, sidecar=inbox)
        state["predictor"] = await asyncio.to_thread(make_predictor, bundle, plog)
        watcher = None
        if follow is not None and config.watch_interval_s > 0:
            watcher = asyncio.create_task(watch(follow))
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            state["draining"] = True
            # Uvicorn has already waited for in-flight requests; this answers anything still
            # queued and writes every record before the process exits.
            async with swap_lock:
                await asyncio.to_thread(state["predictor"].close)

    app = FastAPI(
        title=f"pomlia-hpc model server: {bundle.name}",
        version=__version__,
        description=(
            f"Classifier '{bundle.name}' (version {bundle.version}, task {bundle.task_type}, "
            f"{bundle.channels}-channel {bundle.image_size}x{bundle.image_size} px input). "
            "Every prediction and feedback is logged durably before it is answered."
        ),
        lifespan=lifespan,
    )

    @app.exception_handler(RequestError)
    async def _request_error(_r: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(_r: Request, _exc: ClientDisconnect) -> JSONResponse:
        return _client_gone()

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return _error(500, "internal server error")

    bearer = HTTPBearer(auto_error=False, description="the server's token (POMLIA_SERVE_TOKEN)")

    async def require_token(
        request: Request, _creds: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> None:
        # A dependency runs before the body is validated: no token, no schema hints.
        guard.check(request.headers.get("authorization"))

    def current() -> Predictor:
        p = state["predictor"]
        if p is None or state["draining"] or not p.ready:
            raise RequestError(503, "the model is not ready (starting, failing or shutting down)")
        assert isinstance(p, Predictor)
        return p

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_PREDICT_BODY,
        summary="Classify one image or a batch",
    )
    async def predict(request: Request) -> Response:
        return await handle_predict(request)

    async def handle_predict(request: Request) -> Response:
        pred = current()
        arrays: list[np.ndarray] = []
        try:
            body = await _read_body(request, limits.max_upload_bytes)
            budget = limits.max_images  # shared by all files, checked before each is decoded
            for what, ctype, data in await _files(request, body, limits):
                arrays.append(decode(data, ctype, spec, limits, what, budget=budget))
                budget -= len(arrays[-1])
        except RequestError as exc:
            _log_rejection(pred, exc, config.deployment_id)
            raise
        images = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            try:
                predictions = await pred.predict(images)
            except BatcherClosedError:
                # Swapped out between lookup and submit: the new model answers instead.
                if (newer := current()) is pred:
                    raise
                pred = newer
                predictions = await pred.predict(images)
        except (BatcherClosedError, LogClosedError, LogWriteError) as exc:
            # Shutting down, or the log cannot be written: not the client's fault, retry later.
            raise RequestError(503, f"prediction not recorded: {exc}") from exc
        return _json(
            {
                "model": pred.bundle.name,
                "model_version": pred.bundle.version,
                "predictions": predictions,
            }
        )

    @app.post(
        "/v1/feedback",
        response_model=FeedbackOut,
        responses=_ERRORS,
        dependencies=[Depends(require_token)],
        openapi_extra=_FEEDBACK_BODY,
        summary="Record the true label of a prediction (bearer token)",
    )
    async def feedback(request: Request) -> Response:
        # The body is read here, not by FastAPI: the token dependency has run by now, so an
        # anonymous client gets its 401 before a byte of its body is read, and the read is
        # bounded (FastAPI would parse a body of any size).
        item = await _feedback_body(request)
        pred = current()
        bundle = pred.bundle
        if not PREDICTION_ID.fullmatch(item.prediction_id):
            raise RequestError(
                400, "prediction_id: expected the 32-hex-digit id /v1/predict returned"
            )
        names, indices = _labels(item.label, bundle)
        issued: IssuedIds = state["issued"]
        had_label = issued.labelled(item.prediction_id)
        refusal = feedback_refusal(
            issued.claim(item.prediction_id, replaces=item.replaces), item.prediction_id
        )
        if refusal is not None:
            raise refusal
        record = {
            "type": "feedback",
            "id": _new_id(),
            "time": now_iso(),
            "prediction_id": item.prediction_id,
            "model": bundle.name,
            "model_version": bundle.version,
            "deployment": config.deployment_id,
            "label": names if bundle.task_type == "multi-label" else names[0],
            "label_index": indices if bundle.task_type == "multi-label" else indices[0],
        }
        if had_label:
            record["replaces"] = True
        try:
            await _append_durably(pred.log, record)
        except BaseException:
            issued.release(item.prediction_id, had_label=had_label)
            raise
        metrics.feedback.inc()
        return _json({"id": record["id"], "prediction_id": item.prediction_id, "recorded": True})

    @app.get("/health", response_model=Status, summary="Liveness: the process answers")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get(
        "/ready",
        response_model=Status,
        responses={503: _ERRORS[503]},
        summary="Readiness: model loaded, worker and log healthy",
    )
    async def ready() -> Response:
        b = current().bundle
        return _json({"status": "ready", "model": b.name, "model_version": b.version})

    @app.post(
        "/v1/admin/reload",
        response_model=ReloadOut,
        responses=_ERRORS,
        dependencies=[Depends(require_token)],
        summary="Swap to the bundle the followed link names now (bearer token)",
    )
    async def admin_reload() -> Response:
        return _json(await reload())

    @app.get("/v1/model", summary="The model card")
    async def model_card() -> Response:
        p = state["predictor"]
        card = dict((p.bundle if p is not None else bundle).card)
        card["serving"] = {
            "max_batch": config.max_batch,
            "max_wait_ms": config.max_wait_ms,
            "max_upload_bytes": limits.max_upload_bytes,
            "max_images": limits.max_images,
            "max_side_px": limits.max_side_px,
        }
        return _json(card)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def prometheus() -> Response:
        p = state["predictor"]
        if p is not None:
            metrics.queue_depth.set(p.batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def fast_predict(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await handle_predict(Request(scope, receive))
        except RequestError as exc:
            response = _error(exc.status, exc.message)
        except ClientDisconnect:
            response = _client_gone()
        except Exception as exc:
            log.exception("unexpected error", exc_info=exc)
            response = _error(500, "internal server error")
        await response(scope, receive, send)

    return ServingApp(app, fast_predict, metrics, config.body_timeout_s)


class ServingApp:
    """The ASGI app uvicorn runs: metrics around everything, and ``POST /v1/predict`` taken
    straight to its handler.

    Why the shortcut: FastAPI's stack (routing, dependency solving, four middleware layers)
    costs about 0.2 ms per request on this 2-core machine, more than decoding a 64 px PNG; the
    hot route skips it and calls the same handler the FastAPI route wraps, so behaviour,
    errors and the OpenAPI description are identical. Every other route goes through FastAPI.
    """

    def __init__(
        self, api: FastAPI, predict: ASGIApp, metrics: ServerMetrics, body_timeout_s: float = 30.0
    ) -> None:
        self.api = api
        self.metrics = metrics
        self._predict = predict
        self._inner = MetricsMiddleware(self._route, metrics, ROUTES)
        self.body_timeout_s = body_timeout_s

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            receive = timed_receive(receive, self.body_timeout_s)
        if scope["type"] == "http" and scope["path"] == "/v1/predict" and scope["method"] == "POST":
            await self._predict(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inner(scope, receive, send)


def _incompatible(old: ExportedBundle, new: ExportedBundle) -> str | None:
    """Why ``new`` cannot replace ``old`` in a running server (clients and feedback rely on
    the input spec and the labels), or None."""
    for what, a, b in (
        ("image size", old.image_size, new.image_size),
        ("channels", old.channels, new.channels),
        ("task type", old.task_type, new.task_type),
        ("label names", old.labels, new.labels),
    ):
        if a != b:
            return f"its {what} ({b}) differ from the served model's ({a})"
    return None


def rejection_reason(exc: RequestError) -> str:
    """A short category of a refused upload, for the monitor's rejected-share-by-reason."""
    text = exc.message.lower()
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


def _log_rejection(pred: Predictor, exc: RequestError, deployment: int | None) -> None:
    """Record a refused upload in the prediction log (not waited for: the client gets its 4xx
    at once; a log that cannot take it loses only this count)."""
    with contextlib.suppress(LogClosedError, LogWriteError):
        pred.log.append(
            [
                {
                    "type": "rejection",
                    "id": _new_id(),
                    "time": now_iso(),
                    "model": pred.bundle.name,
                    "model_version": pred.bundle.version,
                    "deployment": deployment,
                    "status": exc.status,
                    "reason": rejection_reason(exc),
                }
            ]
        )


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex


def _labels(
    label: str | int | list[str | int], bundle: ExportedBundle
) -> tuple[list[str], list[int]]:
    values = label if isinstance(label, list) else [label]
    if bundle.task_type != "multi-label" and len(values) != 1:
        raise RequestError(
            400, f"label: task '{bundle.task_type}' takes one label, got {len(values)}"
        )
    names, indices = [], []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(bundle.labels):
            idx = v
        elif isinstance(v, str) and v in bundle.labels:
            idx = bundle.labels.index(v)
        else:
            shown = ", ".join(bundle.labels[:20])
            raise RequestError(
                400,
                f"label: {str(v)[:60]!r} is not a label of this model; "
                f"expected a name ({shown}) or an index "
                f"0..{len(bundle.labels) - 1}",
            )
        names.append(bundle.labels[idx])
        indices.append(idx)
    return names, indices


async def _append_durably(plog: PredictionLog, record: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def done(error: BaseException | None) -> None:
        def settle() -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(RequestError(503, f"feedback not recorded: {error}"))

        loop.call_soon_threadsafe(settle)

    try:
        plog.append([record], done)
    except (LogClosedError, LogWriteError) as exc:
        raise RequestError(503, f"feedback not recorded: {exc}") from exc
    await fut
