"""Limits on what a client may hold on the server before its request is even parsed.

uvicorn's httptools protocol takes request heads of any size (a 64 MB header line was
accepted, and four such connections cost the server 500 MB) and waits forever for a body
that was announced but never sent (a connection announcing 1,000 bytes and sending 10 stayed
open for minutes). Here:

* :func:`guarded_protocol` — the httptools protocol with a bound on the head (request line and
  headers: ``max_head_bytes`` in total, at most ``max_headers`` fields) answered with 431, and
  a time limit for the whole head (``head_timeout_s``, from the connection or the previous
  response) answered with 408; both close the connection. Bytes that are not HTTP get a
  JSON 400. A refusal on a connection with pipelined requests still being answered waits
  until their answers are out (closing at once lost them).
* :class:`BodyClock` — the ASGI ``receive`` of each request with a time limit per wait for
  body bytes (``body_timeout_s``) and one for the whole body (``body_deadline_s``); the app
  answers 408 and closes the connection. At shutdown the waits end early with a 503.
* :class:`UploadBytes` — a cap on the request body bytes all requests in progress hold
  together (``max_buffered_mb``), counted as they arrive; a request whose next bytes do not
  fit gets 503. A body is held once (:mod:`~pomlia_hpc.serve.formdata` copies a multipart
  body's files out of it and the body is freed), so the count is what the uploads hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from starlette.types import Message, Receive
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from pomlia_hpc.serve.decode import RequestError
from pomlia_hpc.serve.records import BUSY_REASON, SHUTDOWN_REASON


def mib(n: int) -> str:
    """``n`` bytes in MiB for a message, e.g. ``'16.0'``."""
    return f"{n / 2**20:.1f}"


def amount(n: int) -> str:
    """``n`` bytes for a message in the unit that shows it: ``'900 bytes'``, ``'1.2 KiB'``,
    ``'16.0 MiB'`` (a 1.2 KB upload was said to need "0.0 MiB")."""
    if n < 1024:
        return f"{n} bytes"
    if n < 2**20:
        return f"{n / 1024:.1f} KiB"
    return f"{mib(n)} MiB"


class BodyClock:
    """Time limits on reading each request's body, and the end of body reads at shutdown.

    The ``receive`` a request gets from :meth:`wrap` raises :class:`RequestError` when the
    client sends nothing for ``gap_s`` seconds (408), when the whole body has not arrived
    ``deadline_s`` seconds after the request's head (408: one byte every 20 s kept a body
    open for ever under the gap limit alone), or, once :meth:`drain` was called, at the drain
    time (503: the server is stopping, retry).
    """

    def __init__(self, gap_s: float, deadline_s: float) -> None:
        self.gap_s = gap_s
        self.deadline_s = deadline_s
        self.drain_at: float | None = None
        self._waits: set[asyncio.Timeout] = set()

    def wrap(self, receive: Receive) -> Receive:
        """``receive`` with the time limits, the whole-body deadline counted from now."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s

        async def timed() -> Message:
            when = min(loop.time() + self.gap_s, deadline)
            if self.drain_at is not None:
                when = min(when, self.drain_at)
            try:
                async with asyncio.timeout_at(when) as wait:
                    self._waits.add(wait)
                    try:
                        return await receive()
                    finally:
                        self._waits.discard(wait)
            except TimeoutError:
                raise self._refusal(loop.time(), deadline) from None

        return timed

    def _refusal(self, now: float, deadline: float) -> RequestError:
        if self.drain_at is not None and now >= self.drain_at:
            return RequestError(
                503,
                "server is shutting down and the request body was not complete; send the "
                "request again (to the server that replaces this one)",
                reason=SHUTDOWN_REASON,
            )
        if now >= deadline:
            return RequestError(
                408,
                f"request body not complete within {self.deadline_s:g} s of its head "
                "(body_deadline_s); send the whole body the Content-Length announces, faster",
            )
        return RequestError(
            408,
            f"request body not received: nothing arrived for {self.gap_s:g} s (send the "
            "whole body the Content-Length announces)",
        )

    def drain(self, within_s: float) -> None:
        """Stop every body read, waiting or future, ``within_s`` seconds from now (503)."""
        self.drain_at = asyncio.get_running_loop().time() + max(0.0, within_s)
        for wait in list(self._waits):
            when = wait.when()
            if when is None or when > self.drain_at:
                wait.reschedule(self.drain_at)


class UploadBytes:
    """Request body bytes held by the requests in progress, server-wide, at most ``cap``.

    Without a cap, 50 connections each holding a 16 MiB upload one byte short took 720 MB.
    A request takes each chunk of its body as it arrives, not its declared
    ``Content-Length`` up front: 16 connections that sent only a head declaring 16 MiB
    reserved the whole 256 MiB and every real upload got 503, while costing no memory. A
    chunk that does not fit is refused with 503; the spare room a body's buffer allocated
    is taken too, and given back once the body is read (:meth:`give_back`); the request
    gives back what it took when it ends (:meth:`release`)."""

    #: Where a request's share is noted in its ASGI scope, and where the pool itself is.
    SCOPE_KEY = "pomlia.upload_bytes"
    POOL_KEY = "pomlia.uploads"

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0

    def attach(self, scope: MutableMapping[str, Any]) -> None:
        """Make this pool the one the request of ``scope`` takes from (see :meth:`of`)."""
        scope[self.POOL_KEY] = self

    @classmethod
    def of(cls, scope: MutableMapping[str, Any]) -> UploadBytes | None:
        """The pool a request takes from (None when the app did not attach one)."""
        pool = scope.get(cls.POOL_KEY)
        return pool if isinstance(pool, cls) else None

    def take(self, scope: MutableMapping[str, Any], n: int) -> None:
        """Count ``n`` more bytes for the request of ``scope`` (503 over the cap)."""
        if self.held + n > self.cap:
            raise RequestError(
                503,
                f"server busy: uploads in progress hold {amount(self.held)} and this one "
                f"needs {amount(n)} more, over the limit of {mib(self.cap)} MiB "
                "(max_buffered_mb); retry in a moment",
                reason=BUSY_REASON,
            )
        self.held += n
        scope[self.SCOPE_KEY] = scope.get(self.SCOPE_KEY, 0) + n

    def give_back(self, scope: MutableMapping[str, Any], n: int) -> None:
        """Count ``n`` fewer bytes for the request of ``scope`` (its body shrank)."""
        n = min(n, scope.get(self.SCOPE_KEY, 0))
        self.held -= n
        scope[self.SCOPE_KEY] = scope.get(self.SCOPE_KEY, 0) - n

    def release(self, scope: MutableMapping[str, Any]) -> None:
        """Give back everything the request of ``scope`` took."""
        self.held -= scope.pop(self.SCOPE_KEY, 0)


class _GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with head limits; the limits are class attributes of the subclass
    :func:`guarded_protocol` makes."""

    max_head_bytes = 32 * 1024
    max_headers = 100
    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0  # request line and header fields as parsed
        self._read_head_bytes = 0  # whole reads inside a head begun in an earlier read
        self._n_headers = 0
        self._in_head = True  # waiting for or reading a head (the head timer runs)
        self._head_begun = False  # a head's first byte was parsed, its end not yet
        self._heads_begun = 0  # heads begun on this connection
        self._in_message = False  # a request's first byte was parsed, its last not yet
        self._refused = False
        self._last_answer: bytes | None = None  # to send once earlier answers are out
        self._running: RequestResponseCycle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing at all is closed too

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused:
            self._refuse(408, f"request head not complete within {self.head_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error and close; nothing more is parsed."""
        self._refused = True
        self._disarm()
        body = f'{{"error": "{message}", "status": {status}}}'.encode()
        phrase = {
            400: "Bad Request",
            408: "Request Timeout",
            431: "Request Header Fields Too Large",
        }[status]
        head = (
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        self._answer_last(head + body)

    def _answer_last(self, raw: bytes) -> None:
        """Write ``raw`` (a whole response) and close, after the answers to the requests
        already read on this connection (pipelined): closing at once lost them, and their
        writes to the closed transport were "Exception in ASGI application" tracebacks."""
        if self.transport.is_closing():
            return
        current = self.cycle
        waiting = bool(self.pipeline) or (current is not None and not current.response_complete)
        if waiting and current is not None and not current.more_body:
            self._last_answer = raw  # written by on_response_complete after the last one
            self.flow.pause_reading()
            return
        # A request whose body will never arrive (the parser stopped inside it): its handler,
        # and those of any request read before it, see a client that hung up.
        for cycle in (self._running, current, *(c for c, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self.transport.write(raw)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's plain-text 400 for bytes that are not HTTP, as JSON like every refusal.
        self._refuse(400, "invalid HTTP request: the bytes received are not an HTTP/1.1 request")

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        carried, begun = self._head_begun, self._heads_begun
        between = not self._in_message  # the read starts between requests
        super().data_received(data)
        if not self._head_begun or self._refused:
            return
        # An incomplete head (a header line arriving in pieces reaches on_header only once
        # complete): every byte of a read that continues it, or that began it between
        # requests, is a byte of it. In a read that also held earlier (pipelined) requests
        # its share is unknown and not counted: such a head may take max_head_bytes plus
        # that one read.
        if carried and self._heads_begun == begun:
            self._read_head_bytes += len(data)
        elif between and self._heads_begun == begun + 1:
            self._read_head_bytes = len(data)
        if self._read_head_bytes > self.max_head_bytes:
            self._refuse(431, f"request head over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._n_headers = True, 0
        self._head_begun, self._head_bytes, self._read_head_bytes = True, 0, 0
        self._heads_begun += 1
        self._in_message = True
        if self._head_timer is None:
            self._arm()

    def _count_head(self, n: int) -> None:
        # The request line and header fields as parsed, however the bytes arrived: a 100 KiB
        # head that came in one read was never counted by data_received and got through.
        self._head_bytes += n
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, f"request head over {self.max_head_bytes} bytes")

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._count_head(len(url))
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._n_headers += 1
        if self._n_headers > self.max_headers:
            self._refuse(431, f"request has more than {self.max_headers} header fields")
            return
        self._count_head(len(name) + len(value) + 4)  # "name: value\r\n"
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head, self._head_begun = False, False
        self._disarm()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._in_head = True  # the next request's head starts now
        idle = not self.pipeline and (self.cycle is None or self.cycle.response_complete)
        if self._last_answer is not None and idle and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self.transport.write(self._last_answer)
            self.transport.close()

    def _unsupported_upgrade_warning(self) -> None:
        # An Upgrade header (websocket, h2c) is not taken and the request is answered as
        # plain HTTP; uvicorn's two warnings per such request (one telling to install a
        # WebSocket library) would let any client fill the server's log with advice.
        return

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        # uvicorn tells only the newest request of the connection that the client is gone;
        # a pipelined one still running would write to the closed transport.
        running = self._running
        if running is not None and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)


def guarded_protocol(
    max_head_bytes: int, max_headers: int, head_timeout_s: float
) -> type[HttpToolsProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)`` with these limits."""
    attrs: dict[str, Any] = {
        "max_head_bytes": max_head_bytes,
        "max_headers": max_headers,
        "head_timeout_s": head_timeout_s,
    }
    return type("GuardedHttpToolsProtocol", (_GuardedProtocol,), attrs)
