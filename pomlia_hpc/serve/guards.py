"""Limits on what a client may hold on the server before its request is even parsed.

uvicorn's httptools protocol takes request heads of any size (a 64 MB header line was
accepted, and four such connections cost the server 500 MB) and waits forever for a body
that was announced but never sent (a connection announcing 1,000 bytes and sending 10 stayed
open for minutes). Here:

* :func:`guarded_protocol` — the httptools protocol with a bound on the head (request line and
  headers: ``max_head_bytes`` in total, at most ``max_headers`` fields) answered with 431, and
  a time limit for the whole head (``head_timeout_s``, from the connection or the previous
  response) answered with 408; both close the connection.
* :func:`timed_receive` — the ASGI ``receive`` of each request with a time limit per wait for
  body bytes (``body_timeout_s``); the app answers 408 and closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pomlia_hpc.serve.decode import RequestError


def timed_receive(receive: Receive, timeout_s: float) -> Receive:
    """``receive`` that raises :class:`RequestError` (408) when the client sends nothing for
    ``timeout_s`` seconds while the app waits for the body."""

    async def timed() -> Message:
        try:
            async with asyncio.timeout(timeout_s):
                return await receive()
        except TimeoutError:
            raise RequestError(
                408,
                f"request body not received: nothing arrived for {timeout_s:g} s (send the "
                "whole body the Content-Length announces)",
            ) from None

    return timed


class _GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with head limits; the limits are class attributes of the subclass
    :func:`guarded_protocol` makes."""

    max_head_bytes = 32 * 1024
    max_headers = 100
    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._n_headers = 0
        self._in_head = True
        self._refused = False
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
        phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        head = (
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and not self._refused:
            # Counted after parsing, so the bytes of a chunk in which the head ended (and the
            # body began) never count: the head may take max_head_bytes plus one read.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, f"request head over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._n_headers = True, 0
        if self._head_timer is None:
            self._arm()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._n_headers += 1
        if self._n_headers > self.max_headers:
            self._refuse(431, f"request has more than {self.max_headers} header fields")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head, self._head_bytes = False, 0
        self._disarm()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._in_head, self._head_bytes = True, 0  # the next request's head starts now

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
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
