"""What a hostile or careless client did to a real server (over HTTP on 127.0.0.1) and what it
gets now: malformed NPY headers are 400 (never 500), huge or numerous header lines 431, a
head or body that never completes 408, feedback for ids the server never issued 404, a second
label 409 unless it replaces the first, and ``"label": true`` 422. Raw sockets where httpx
would refuse to send the request."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.issued import Claim, IssuedIds
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import FeedbackLine
from tests.fixtures.factories import npy
from tests.fixtures.sockets import read_until_closed as read_response

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS = "max_head_kb: 8\nmax_headers: 20\nhead_timeout_s: 1\nbody_timeout_s: 1\n"


def start(bundle: Path, logs: Path, tmp: Path) -> LocalServer:
    cfg = tmp / "serve.yaml"
    cfg.write_text(SETTINGS)
    env = {"POMLIA_SERVE_TOKEN": TOKEN}
    return LocalServer(bundle, logs, env=env, args=["--config", str(cfg)]).start()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-logs")


@pytest.fixture(scope="module")
def server(
    bundle: Path, logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    srv = start(bundle, logs, tmp_path_factory.mktemp("cfg"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def npy_with_header(text: str) -> bytes:
    raw = text.encode("latin1")
    raw += b" " * (64 - (10 + len(raw) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + bytes(28 * 28 * 3)


def predict_ids(client: httpx.Client, n: int = 1) -> list[str]:
    imgs = np.random.default_rng(n).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    resp = client.post(
        "/v1/predict", content=npy(imgs), headers={"content-type": "application/x-npy"}
    )
    assert resp.status_code == 200, resp.text
    return [p["id"] for p in resp.json()["predictions"]]


def connect(server: LocalServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


# --- 8. no 5xx for a malformed NPY header ------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (28, 28, 3)",  # unclosed: TokenError
        "{'descr': '<f4', 'fortran_order': False, 'shape': (28, 28, 3), }" + "(" * 300,
        "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 200 + ")" * 200 + "}",
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (28, 28, 3), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (28, 28, 10**40), }",
    ],
)
def test_malformed_npy_headers_are_400(client: httpx.Client, header: str) -> None:
    resp = client.post(
        "/v1/predict",
        content=npy_with_header(header),
        headers={"content-type": "application/x-npy"},
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith("body: ")


# --- 9. header size and count ------------------------------------------------------------


def test_a_huge_header_line_is_431_and_costs_no_memory(server: LocalServer) -> None:
    proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    before = proc.memory_info().rss
    answers = []
    for _ in range(4):  # the four connections, here 32 MB of header each
        sock = connect(server)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(32):
                sock.sendall(b"a" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while we were still sending: what we want
        answers.append(read_response(sock))
        sock.close()
    grown_mb = (proc.memory_info().rss - before) / 2**20
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), answers[0][:200]
    assert b"request head over 8192 bytes" in answers[0]
    assert grown_mb < 40, grown_mb
    assert httpx.get(server.url + "/health").status_code == 200


def test_too_many_header_fields_is_431(server: LocalServer) -> None:
    sock = connect(server)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(50))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    answer = read_response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and b"more than 20 header fields" in answer


# --- 10. slow heads and bodies -----------------------------------------------------------


def test_a_body_that_never_completes_is_408_and_closed(server: LocalServer) -> None:
    sock = connect(server)
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        b"Content-Length: 1000\r\n\r\n" + b"\x93NUMPY\x01\x00ab"
    )
    answer = read_response(sock)  # returns only once the server closes the connection
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"request body not received" in answer and b"connection: close" in answer.lower()


def test_a_head_that_never_completes_is_408_and_closed(server: LocalServer) -> None:
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    answer = read_response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request head not complete" in answer
    idle = connect(server)  # a connection that sends nothing is closed as well
    assert read_response(idle).startswith(b"HTTP/1.1 408 ")
    idle.close()


def test_keep_alive_requests_still_work(server: LocalServer) -> None:
    with httpx.Client(base_url=server.url) as c:
        for _ in range(3):
            assert c.get("/health").status_code == 200
            time.sleep(0.3)


# --- 11-12. feedback ---------------------------------------------------------------------


def test_feedback_for_an_id_never_issued_is_404(client: httpx.Client, logs: Path) -> None:
    made_up = "0123456789abcdef0123456789abcdef"
    resp = client.post("/v1/feedback", json={"prediction_id": made_up, "label": 1}, headers=AUTH)
    assert resp.status_code == 404, resp.text
    assert "was not issued by this deployment" in resp.json()["error"]
    assert made_up not in {r.prediction_id for r in read_records(logs, FeedbackLine)}


def test_a_second_label_is_409_unless_it_replaces(client: httpx.Client, logs: Path) -> None:
    (pid,) = predict_ids(client)
    first = client.post("/v1/feedback", json={"prediction_id": pid, "label": 1}, headers=AUTH)
    assert first.status_code == 200, first.text
    again = client.post(
        "/v1/feedback", json={"prediction_id": pid, "label": "class_2"}, headers=AUTH
    )
    assert again.status_code == 409 and '"replaces": true' in again.json()["error"]
    replaced = client.post(
        "/v1/feedback",
        json={"prediction_id": pid, "label": "class_2", "replaces": True},
        headers=AUTH,
    )
    assert replaced.status_code == 200, replaced.text
    mine = [r for r in read_records(logs, FeedbackLine) if r.prediction_id == pid]
    assert [r.label_index for r in mine] == [1, 2] and mine[1].replaces is True


@pytest.mark.parametrize("label", [True, False, 1.0, 1.5, [True], [1.5], None, {"a": 1}])
def test_a_label_must_be_a_class_name_or_an_integer(client: httpx.Client, label: object) -> None:
    """The refusal says what a label is: `1.5` got "body.label.str: Input should be a valid
    string", as though integers were not labels."""
    (pid,) = predict_ids(client)
    resp = client.post("/v1/feedback", json={"prediction_id": pid, "label": label}, headers=AUTH)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error.startswith("body.label: ") and "is not a label; expected an integer" in error
    assert "class index 0..3 or a class name (class_0, class_1, class_2, class_3)" in error
    assert "valid string" not in error


def test_the_id_index_is_rebuilt_from_the_log_and_bounded(client: httpx.Client, logs: Path) -> None:
    """What a restarted server starts from: the ids and labels in the log beside it."""
    ids = predict_ids(client, 3)
    ok = client.post("/v1/feedback", json={"prediction_id": ids[0], "label": 0}, headers=AUTH)
    assert ok.status_code == 200
    rebuilt = IssuedIds.from_log(logs, deployment=None)
    assert rebuilt.claim(ids[1], replaces=False) is Claim.OK
    assert rebuilt.claim(ids[0], replaces=False) is Claim.LABELLED
    assert IssuedIds.from_log(logs, deployment=7).claim(ids[2], replaces=False) is Claim.UNKNOWN
    small = IssuedIds(capacity=2)
    small.add(ids)  # the oldest falls out
    assert len(small) == 2 and small.claim(ids[0], replaces=False) is Claim.UNKNOWN
