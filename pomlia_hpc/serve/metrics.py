"""Prometheus metrics of one server, and the ASGI middleware that counts every request.

Each app gets its own ``CollectorRegistry`` (several servers can live in one test process).
Route labels are the fixed route paths, never the raw request path, so a scanner probing
random URLs cannot blow up the number of time series.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """The metric families of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pomlia_requests", "HTTP requests served", ["route", "method", "status"], registry=r
        )
        self.errors = Counter(
            "pomlia_request_errors",
            "HTTP requests answered 4xx or 5xx",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "pomlia_request_latency_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pomlia_batch_size_images", "Images per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.model_latency = Histogram(
            "pomlia_model_seconds",
            "Seconds per model call (preprocessing, model, fingerprint)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("pomlia_images", "Images classified", registry=r)
        self.feedback = Counter("pomlia_feedback", "Feedback records accepted", registry=r)
        self.queue_depth = Gauge("pomlia_queue_depth", "Requests waiting for the model", registry=r)
        self.swaps = Counter("pomlia_model_swaps", "Hot swaps to another bundle", registry=r)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.model_latency.observe(seconds)
        self.images.inc(images)


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            route = path if path in self.routes else "other"
            m = self.metrics
            m.requests.labels(route, scope.get("method", ""), str(status)).inc()
            m.latency.labels(route).observe(time.perf_counter() - start)
            if status >= 400:
                m.errors.labels(route, str(status)).inc()
