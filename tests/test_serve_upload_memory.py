"""The cap on uploads in progress (``max_buffered_mb``) bounds what a multipart upload really
holds. Before, each file was held three times (the body, Starlette's spooled copy, the bytes
``UploadFile.read()`` returned) while only the body was counted: 20 concurrent 10 MiB uploads
under a 64 MiB cap raised the server's peak memory by 200 to 280 MB.

A real server on 127.0.0.1 runs in this process, so that the bytes it holds can be counted
(tracemalloc: Python's own allocations, not the noisy RSS) while uploads wait in the decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from starlette.requests import Request

from pomlia_hpc.serve import handlers
from pomlia_hpc.serve.app import ServingApp, create_app
from pomlia_hpc.serve.bodies import read_body
from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.decode import Limits, RequestError
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.formdata import uploaded_files
from pomlia_hpc.serve.guards import UploadBytes, guarded_protocol
from pomlia_hpc.serve.server import bind_socket
from tests.fixtures.sockets import read_until_closed
from tests.fixtures.waiting import wait_until

MIB = 1 << 20
#: Body bytes of each upload: a small PNG padded with zeros (ignored after its IEND).
UPLOAD = 6 * MIB
#: Uploads held in the decoder at once: one per decode thread.
HELD = min(2, handlers.DECODE_THREADS)
BOUNDARY = "pomliaboundary"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def multipart_upload(size: int) -> bytes:
    """A whole ``POST /v1/predict`` request of one file part, ``size`` body bytes."""
    arr = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    png = buf.getvalue()
    body = head + png + b"\0" * (size - len(head) - len(png) - len(tail)) + tail
    return (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: multipart/form-data; boundary=" + BOUNDARY.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[int], threading.Event]]:
    """Uploads wait before they are decoded until the test sets the event; the list counts
    those that arrived."""
    arrived, release = [0], threading.Event()
    lock = threading.Lock()
    real_decode = handlers.decode

    def held_decode(*args: object, **kwargs: object) -> np.ndarray:
        with lock:
            arrived[0] += 1
        release.wait(60)
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(handlers, "decode", held_decode)
    yield arrived, release
    release.set()


def serve(app: ServingApp, config: ServeConfig) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = bind_socket("127.0.0.1", 0)
    protocol = guarded_protocol(config.max_head_bytes, config.max_headers, config.head_timeout_s)
    srv = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", http=protocol))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, 60, what="the server to start")
    return srv, thread, f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"


def post(address: str, raw: bytes, answers: list[bytes]) -> None:
    """Send ``raw`` (all of it, or until the server refuses it) and keep the answer."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        # Refused before the whole body was read: its answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        answers.append(read_until_closed(sock))


@pytest.mark.parametrize("fits", [True, False], ids=["under-the-cap", "over-the-cap"])
def test_multipart_uploads_hold_what_the_cap_counts(
    bundle: Path, tmp_path: Path, gate: tuple[list[int], threading.Event], fits: bool
) -> None:
    """HELD uploads wait in the decoder: the server holds no more than the bytes counted
    against the cap (before: twice as many, the body and the file read from its spool). One
    more upload then gets a JSON 503 when the uploads would hold more than the cap together,
    and is answered 200 with the others when the cap has room for all."""
    arrived, release = gate
    raw = multipart_upload(UPLOAD)
    body = len(raw) - raw.index(b"\r\n\r\n") - 4
    # Room for one more body while it arrives: its buffer grows by up to 1/8 beyond its bytes,
    # and that is counted too.
    cap_mb = (HELD + (1.2 if fits else 0.5)) * UPLOAD / MIB + 0.5
    config = ServeConfig(max_upload_mb=UPLOAD / MIB, max_buffered_mb=cap_mb)
    app = create_app(ExportedBundle.open(bundle), config, tmp_path / "logs")
    srv, thread, address = serve(app, config)
    answers: list[bytes] = []
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        senders = [threading.Thread(target=post, args=(address, raw, answers)) for _ in range(HELD)]
        for t in senders:
            t.start()
        wait_until(lambda: arrived[0] == HELD, 60, what="the uploads to reach the decoder")
        held = tracemalloc.get_traced_memory()[0] - baseline
        assert app.uploads.held == HELD * body  # each body counted once, until its answer
        # The file parts copied out, the bodies freed: at most what the cap counts (and a
        # little for the requests' own objects). Before: about twice that.
        assert held < app.uploads.held + MIB // 2, (held, app.uploads.held)
        tracemalloc.stop()
        if fits:
            senders.append(threading.Thread(target=post, args=(address, raw, answers)))
            senders[-1].start()
            # Its whole body is held with the others' before any is answered.
            wait_until(lambda: app.uploads.held == (HELD + 1) * body, 60, what="its body")
        else:
            post(address, raw[: len(raw) - UPLOAD // 2 + MIB], answers)
            assert answers[0].startswith(b"HTTP/1.1 503 "), answers[0][:300]
            assert b"(max_buffered_mb); retry in a moment" in answers[0]
            answers.clear()
        release.set()
        for t in senders:
            t.join(60)
        assert len(answers) == len(senders)
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:200] for a in answers]
        # Given back as each request ends (after its answer was sent).
        wait_until(lambda: app.uploads.held == 0, 30, what="the counted bytes to be given back")
    finally:
        tracemalloc.stop()
        release.set()
        srv.should_exit = True
        thread.join(30)


def test_files_are_split_out_whole_around_boundary_lookalikes() -> None:
    """Bytes that start like the boundary line and are not one stay in the file (each file is
    one slice of the body), and form fields between files are skipped and not counted in the
    file numbers."""
    files = [
        b"\r\n--pomlia\r\n-" + bytes(range(256)) + b"\r\n--",
        b"",
        b"\r",
        f"\r\n--{BOUNDARY[:-1]}".encode(),
        f"x\r\n--{BOUNDARY}X\r\n--{BOUNDARY}-y".encode(),
    ]
    body = b""
    for i, data in enumerate(files):
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="{i}.png"\r\n'
                f"Content-Type: image/x-{i}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
        body += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n'.encode()
    body += f"--{BOUNDARY}--\r\n".encode()
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    out = uploaded_files(ctype, body, Limits(max_images=5))
    assert [u.data for u in out] == files
    assert [u.content_type for u in out] == [f"image/x-{i}" for i in range(5)]
    assert [u.what for u in out] == [f"part 'f' #{i}" for i in range(1, 6)]
    with pytest.raises(RequestError, match=r"Too many files\. Maximum number of files is 4"):
        uploaded_files(ctype, body, Limits(max_images=4))


def test_a_body_being_read_counts_what_its_buffer_allocated() -> None:
    """A body's buffer grows by up to 1/8 beyond the bytes it holds (bytearray appends);
    before, only the bytes were counted against max_buffered_mb, so 16 MiB uploads held up
    to 2 MiB each more than the cap counted. Every chunk is checked as it is asked for:
    what Python allocated since the read began is at most what the pool counts for it. Once
    read, the count is the body's size exactly (the spare room is given back)."""
    chunks = [bytes([i % 251]) * 65536 for i in range(96)]  # 6 MiB in 64 KiB chunks
    pool = UploadBytes(64 * MIB)
    scope: dict[str, object] = {"type": "http", "method": "POST", "headers": []}
    pool.attach(scope)
    over: list[int] = []

    async def receive() -> dict[str, object]:
        # The chunks already stored are in the traced memory; what is not counted shows here.
        over.append(tracemalloc.get_traced_memory()[0] - baseline - pool.held)
        i = len(over) - 1
        return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        body = asyncio.run(read_body(Request(scope, receive), 16 * MIB))
    finally:
        tracemalloc.stop()
    assert body == b"".join(chunks)
    assert pool.held == len(body)
    # A few KiB for the coroutine and its objects; before, up to 1/8 of the bytes read.
    assert max(over) < 64 * 1024, max(over)
