"""The REST API (FastAPI): predict, feedback, health, readiness, model card, metrics, docs.

Why FastAPI + uvicorn rather than LitServe: one process whose event loop parses requests while a
single worker thread owns the model keeps every core for the model on a small CPU node, and the
durable-log-before-answer rule needs a hook between the model and the response, which our own
batcher (``batching.py``, 200 lines) gives directly. LitServe's batching runs the model in
separate worker processes fed through queues, an extra copy and hop per request.

This module wires routes to the parts that do the work: :mod:`~pomlia_hpc.serve.holder` (the
model, its start and stop, hot swap to the bundle a followed link names, ``POST
/v1/admin/reload``), :mod:`~pomlia_hpc.serve.handlers` (what predict and feedback do),
:mod:`~pomlia_hpc.serve.bodies` (bounded body reads and JSON answers),
:mod:`~pomlia_hpc.serve.formdata` (the files of a multipart upload),
:mod:`~pomlia_hpc.serve.schemas` (the documented shapes and the codes each route sends) and
:mod:`~pomlia_hpc.serve.apidocs` (the offline ``/docs`` page, HEAD, the words of a 404/405).

Every refusal is a JSON ``{"error": message, "status": code}`` with a 4xx code; an unexpected
exception is a 500 with a generic message (and its traceback in the server log), which the
schemathesis test checks never happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pomlia_hpc import __version__
from pomlia_hpc.serve import handlers
from pomlia_hpc.serve.apidocs import (
    add_head_routes,
    docs_page,
    not_allowed_message,
    not_found_message,
)
from pomlia_hpc.serve.bodies import (
    FEEDBACK_MAX_BYTES,
    client_gone,
    close_unless_read,
    error_response,
    json_response,
    refusal,
)
from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.decode import InputSpec, Limits, RequestError
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.fingerprint import FingerprintFn
from pomlia_hpc.serve.guards import BodyClock, UploadBytes
from pomlia_hpc.serve.headers import repeated_field
from pomlia_hpc.serve.holder import ModelHolder
from pomlia_hpc.serve.metrics import (
    ASGIApp,
    Message,
    MetricsMiddleware,
    Receive,
    Scope,
    Send,
    ServerMetrics,
)
from pomlia_hpc.serve.schemas import (
    FeedbackOut,
    ModelCardOut,
    PredictResponse,
    ReloadOut,
    Status,
    errors,
    feedback_body,
    predict_body,
)
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
        "/openapi.json",
        "/v1/admin/reload",
    }
)


def create_app(
    bundle: ExportedBundle,
    config: ServeConfig,
    log_dir: Path,
    *,
    fingerprint: FingerprintFn | None = None,
    on_ready: Callable[[], Any] | None = None,
    follow: Path | None = None,
) -> ServingApp:
    """Build the app for ``bundle``. The model, batcher and log start in the lifespan, so
    nothing runs until a server starts it; ``on_ready()`` (optional) is called then.
    ``follow``: the link ``bundle`` was found through; the server swaps to where it points."""
    spec = InputSpec(bundle.image_size, bundle.channels, bundle.scale_max)
    limits = Limits(config.max_upload_bytes, config.max_side_px, config.max_images)
    metrics = ServerMetrics()
    holder = ModelHolder(bundle, config, log_dir, metrics, fingerprint=fingerprint, follow=follow)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await holder.start(on_ready)
        try:
            yield
        finally:
            await holder.stop()

    app = FastAPI(
        title=f"pomlia-hpc model server: {bundle.name}",
        version=__version__,
        description=(
            f"Classifier '{bundle.name}' (version {bundle.version}, task {bundle.task_type}, "
            f"{bundle.channels}-channel {bundle.image_size}x{bundle.image_size} px input). "
            "Every prediction and feedback is logged durably before it is answered. "
            "Refusals are JSON {error, status}; a method a route does not take is 405 "
            "(Allow names the methods), an unknown path 404; HEAD is answered on every GET "
            "route."
        ),
        lifespan=lifespan,
        # FastAPI's Swagger UI and ReDoc load their assets from a CDN, blank offline (on a
        # compute node): /docs is our own page (serve.apidocs). No slash redirect: its
        # Location was built from the client's Host header (an open redirect).
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    _add_error_handlers(app)
    _add_routes(app, holder, spec, limits, BearerGuard(load_token(config.token_file)))
    _add_info_routes(app, holder)

    async def fast_predict(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await handlers.predict(holder, Request(scope, receive), spec, limits)
        except RequestError as exc:
            response = refusal(exc)
        except ClientDisconnect:
            response = client_gone()
        except Exception as exc:
            log.exception("unexpected error", exc_info=exc)
            response = error_response(500, "internal server error")
        await response(scope, receive, send)

    clock = BodyClock(config.body_timeout_s, config.body_deadline_s)
    return ServingApp(app, fast_predict, metrics, clock, UploadBytes(config.max_buffered_bytes))


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal as a JSON error body; anything unexpected as a logged 500."""

    @app.exception_handler(RequestError)
    async def _request_error(_r: Request, exc: RequestError) -> JSONResponse:
        return refusal(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(r: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {}) or None
        message = str(exc.detail)
        if exc.status_code == 404:
            message = not_found_message(r.url.path, ROUTES)
        elif exc.status_code == 405:
            message = not_allowed_message(r.method, r.url.path, (headers or {}).get("Allow"))
        return error_response(exc.status_code, message, headers)

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(_r: Request, _exc: ClientDisconnect) -> JSONResponse:
        return client_gone()

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal server error")


def _add_routes(
    app: FastAPI, holder: ModelHolder, spec: InputSpec, limits: Limits, guard: BearerGuard
) -> None:
    """The documented routes (``POST /v1/predict`` is also taken by :class:`ServingApp`)."""
    bearer = HTTPBearer(auto_error=False, description="the server's token (POMLIA_SERVE_TOKEN)")
    config = holder.config

    async def require_token(
        request: Request, _creds: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> None:
        # A dependency runs before the body is validated: no token, no schema hints.
        repeated = repeated_field(request.headers, "authorization", quote=False)
        if guard.enabled and repeated is not None:
            raise RequestError(401, repeated)
        guard.check(request.headers.get("authorization"))

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=errors("/v1/predict"),
        openapi_extra=predict_body(limits),
        summary="Classify one image or a batch",
    )
    async def predict(request: Request) -> Response:
        return await handlers.predict(holder, request, spec, limits)

    @app.post(
        "/v1/feedback",
        response_model=FeedbackOut,
        responses=errors("/v1/feedback"),
        dependencies=[Depends(require_token)],
        openapi_extra=feedback_body(FEEDBACK_MAX_BYTES),
        summary="Record the true label of a prediction (bearer token)",
    )
    async def feedback(request: Request) -> Response:
        # The body is read by the handler, not by FastAPI: the token dependency has run by
        # now, so an anonymous client gets its 401 before a byte of its body is read, and the
        # read is bounded (FastAPI would parse a body of any size).
        return await handlers.feedback(holder, request)

    @app.get(
        "/health",
        response_model=Status,
        responses=errors("/health"),
        summary="Liveness: the process answers",
    )
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/ready",
        response_model=Status,
        responses=errors("/ready"),
        summary="Readiness: model loaded, worker and log healthy",
    )
    async def ready() -> Response:
        b = holder.current().bundle
        return json_response({"status": "ready", "model": b.name, "model_version": b.version})

    @app.post(
        "/v1/admin/reload",
        response_model=ReloadOut,
        responses=errors("/v1/admin/reload"),
        dependencies=[Depends(require_token)],
        summary="Swap to the bundle the followed link names now (bearer token)",
    )
    async def admin_reload() -> Response:
        return json_response(await holder.reload())

    @app.get(
        "/v1/model",
        response_model=ModelCardOut,
        responses=errors("/v1/model"),
        summary="The model card and the limits this server applies",
    )
    async def model_card() -> Response:
        card = dict(holder.card_bundle().card)
        card["serving"] = {
            "max_batch": config.max_batch,
            "max_wait_ms": config.max_wait_ms,
            "max_upload_bytes": limits.max_upload_bytes,
            "max_images": limits.max_images,
            "max_side_px": limits.max_side_px,
        }
        return json_response(card)


def _add_info_routes(app: FastAPI, holder: ModelHolder) -> None:
    """``/metrics`` and ``/docs``, then HEAD beside every GET route (so these come last)."""

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        # Response (no media type of its own): the 200 is documented as the text it is, and
        # not also as application/json, FastAPI's default.
        response_class=Response,
        responses={
            200: {
                "description": "metrics in the Prometheus text format",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            },
            **errors("/metrics"),
        },
    )
    async def prometheus() -> Response:
        p = holder.predictor
        if p is not None:
            holder.metrics.queue_depth.set(p.batcher.depth)
        return Response(generate_latest(holder.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return HTMLResponse(docs_page(app.openapi()))

    add_head_routes(app)


class ServingApp:
    """The ASGI app uvicorn runs: metrics around everything, and ``POST /v1/predict`` taken
    straight to its handler.

    Why the shortcut: FastAPI's stack (routing, dependency solving, four middleware layers)
    costs about 0.2 ms per request on this 2-core machine, more than decoding a 64 px PNG; the
    hot route skips it and calls the same handler the FastAPI route wraps, so behaviour,
    errors and the OpenAPI description are identical. Every other route goes through FastAPI.
    """

    def __init__(
        self,
        api: FastAPI,
        predict: ASGIApp,
        metrics: ServerMetrics,
        clock: BodyClock,
        uploads: UploadBytes,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self._predict = predict
        self._inner = MetricsMiddleware(self._route, metrics, ROUTES)
        self.clock = clock
        self.uploads = uploads

    def drain(self, within_s: float) -> None:
        """The server is stopping: body reads still waiting ``within_s`` seconds from now end
        with a 503 (see :class:`~pomlia_hpc.serve.guards.BodyClock`)."""
        self.clock.drain(within_s)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        receive, send = close_unless_read(scope, self.clock.wrap(receive), send)
        self.uploads.attach(scope)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            if scope["path"] == "/v1/predict" and scope["method"] == "POST":
                await self._predict(scope, receive, tracked)
            else:
                await self.api(scope, receive, tracked)
        except asyncio.CancelledError:
            if self.clock.drain_at is None:
                raise
            # uvicorn cancels what is still running when the graceful shutdown ends; its
            # answer would be a text/plain 500 and a logged traceback.
            log.warning("request %s %s cut off by the shutdown", scope["method"], scope["path"])
            if not started:
                await error_response(503, "server is shutting down; send the request again")(
                    scope, receive, send
                )
        finally:
            self.uploads.release(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inner(scope, receive, send)
