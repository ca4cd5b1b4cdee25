"""What the REST server says and which routes it answers, against a real server process on
127.0.0.1 (a tester's findings): a body timeout is logged as ``timeout``, not ``undecodable``;
a cut-off multipart body, a file part without ``filename=``, a malicious NPY header, a BMP and a
signed-integer TIFF are named for what they are; HEAD works on the GET routes; the OpenAPI
description lists the codes each route sends; /docs needs no CDN; no slash redirect built from
the Host header; feedback bodies are judged strictly; Ctrl-C says "stopped (SIGINT)"."""

from __future__ import annotations

import io
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import FeedbackLine, RejectionLine
from tests.fixtures.factories import npy

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS = "max_head_kb: 8\nbody_timeout_s: 1\n"
BOUNDARY = "XyZ"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

#: The status codes each route can answer with (a 500 is a bug and never documented): what
#: the handlers raise, plus 408 and 431, which the connection guard sends for any route.
SENT = {
    # 500: the model produced a non-finite output (no prediction is made for the request)
    "/v1/predict": {200, 400, 408, 413, 415, 431, 500, 503},
    "/v1/feedback": {200, 400, 401, 403, 404, 408, 409, 413, 415, 422, 431, 503},
    "/v1/admin/reload": {200, 401, 403, 408, 409, 431, 503},
    "/health": {200, 408, 431},
    "/ready": {200, 408, 431, 503},
    "/v1/model": {200, 408, 431},
    "/metrics": {200, 408, 431},
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("message-logs")


@pytest.fixture(scope="module")
def server(
    bundle: Path, logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    cfg = tmp_path_factory.mktemp("cfg") / "serve.yaml"
    cfg.write_text(SETTINGS)
    env = {"POMLIA_SERVE_TOKEN": TOKEN}
    with LocalServer(bundle, logs, env=env, args=["--config", str(cfg)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image()).save(buf, fmt)
    return buf.getvalue()


def refusal(resp: httpx.Response, status: int = 400) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"] == status
    return str(body["error"])


def raw_request(server: LocalServer, data: bytes, wait_s: float = 5.0) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def predict_id(client: httpx.Client) -> str:
    resp = client.post(
        "/v1/predict", content=npy(image()), headers={"content-type": "application/x-npy"}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["predictions"][0]["id"])


def test_a_body_timeout_is_logged_as_timeout_not_as_undecodable(
    server: LocalServer, logs: Path
) -> None:
    answer = raw_request(
        server,
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000\r\n\r\n\x89PNG",
    )
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    deadline = time.monotonic() + 10  # a rejection is appended without waiting for the disk
    while time.monotonic() < deadline:
        timeouts = [r for r in read_records(logs, RejectionLine) if r.status == 408]
        if timeouts:
            break
        time.sleep(0.1)
    assert [r.reason for r in timeouts] == ["timeout"]


def part(data: bytes, disposition: str = 'name="file"; filename="a.png"') -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + data


def test_a_cut_off_multipart_body_and_a_part_without_filename_are_named(
    client: httpx.Client,
) -> None:
    png = encoded("PNG")
    whole = part(png) + f"\r\n--{BOUNDARY}--\r\n".encode()
    assert client.post("/v1/predict", content=whole, headers=MULTIPART).status_code == 200
    for cut in (whole[:-8], whole[:200]):
        error = refusal(client.post("/v1/predict", content=cut, headers=MULTIPART))
        assert error.startswith(
            "multipart body ends inside a part: part 1 'file' is not followed by a boundary line "
            "('--XyZ', or the closing '--XyZ--', each after a CRLF): it was cut off"
        ), error
    error = refusal(client.post("/v1/predict", content=b"", headers=MULTIPART))
    assert "multipart body is empty" in error
    for disposition in ('name="file"', "name=\"file\"; filename*=UTF-8''%E2%82%AC.png"):
        body = part(png, disposition) + f"\r\n--{BOUNDARY}--\r\n".encode()
        error = refusal(client.post("/v1/predict", content=body, headers=MULTIPART))
        assert "part 'file' has no filename=" in error and "holds no file" not in error


def test_a_badly_terminated_last_part_is_400_not_a_lost_file(client: httpx.Client) -> None:
    """Before, the body was only checked to hold '--XyZ--' somewhere: a last part whose
    closing boundary lacked the CRLF before it, or a cut-off body whose file bytes held
    '--XyZ--', lost its last file and got 200 for the first alone."""
    png = encoded("PNG")
    first = part(png) + b"\r\n"
    for body in (
        first + part(png) + f"--{BOUNDARY}--\r\n".encode(),
        first + part(png + f"--{BOUNDARY}--".encode() + png),
    ):
        error = refusal(client.post("/v1/predict", content=body, headers=MULTIPART))
        assert error.startswith(
            "multipart body ends inside a part: part 2 'file' is not followed by a boundary"
        ), error
    error = refusal(client.post("/v1/predict", content=png, headers=MULTIPART))
    assert error.startswith("multipart body has no boundary line ('--XyZ' then CRLF"), error


def test_a_charset_parameter_cannot_cause_a_500(client: httpx.Client) -> None:
    """Before, charset=punycode or idna on the Content-Type made decoding a part's name raise
    UnicodeError, which nothing caught: a 500 with a traceback. Names are read as UTF-8
    whatever charset= says (RFC 7578 defines no charset= for multipart/form-data)."""
    for name in ("abc-9999", "\xe9-9999"):
        body = part(b"DATA", f'name="{name}"; filename="a.png"')
        body += f"\r\n--{BOUNDARY}--\r\n".encode()
        for charset in ("punycode", "idna", "utf-16", "latin-1", "no-such-codec"):
            ctype = f"multipart/form-data; boundary={BOUNDARY}; charset={charset}"
            resp = client.post("/v1/predict", content=body, headers={"content-type": ctype})
            assert resp.status_code == 400, (charset, resp.text)
            assert resp.json()["error"].startswith(f"part '{name}' #1: not a PNG"), charset


def test_a_preamble_and_transport_padding_are_read(client: httpx.Client) -> None:
    """RFC 2046 bodies that were refused with 400: text before the first boundary line (a
    preamble) and spaces or tabs after a boundary line (transport padding)."""
    png = encoded("PNG")
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    line = f"--{BOUNDARY}\r\n".encode()
    padded = line.replace(b"\r\n", b" \t \r\n")
    bodies = {
        "preamble": b"This is the preamble.\r\n" + part(png) + closing,
        "padding": part(png).replace(line, padded)
        + b"\r\n"
        + part(png).replace(line, padded)
        + closing,
    }
    for what, body in bodies.items():
        resp = client.post("/v1/predict", content=body, headers=MULTIPART)
        assert resp.status_code == 200, (what, resp.text)
        assert len(resp.json()["predictions"]) == body.count(b'filename="a.png"'), what


def test_a_parameter_given_twice_is_refused(client: httpx.Client) -> None:
    """``boundary=abc; boundary=XyZ`` was read as the last (a body that used the first was
    refused as incomplete, one that used the last answered): an ambiguous header is a 400 now,
    whichever boundary the body uses, and so is any other parameter given twice, in the
    Content-Type (``charset=``, not read) or in a part's Content-Disposition."""
    png = encoded("PNG")
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    expected = "; expected it at most once"
    for first in ("abc", BOUNDARY):
        ctype = f"multipart/form-data; boundary={first}; boundary={BOUNDARY}"
        for used in (first, BOUNDARY):
            body = (part(png) + closing).replace(f"--{BOUNDARY}".encode(), f"--{used}".encode())
            resp = client.post("/v1/predict", content=body, headers={"content-type": ctype})
            assert resp.text.count("\n") == 0 and set(resp.json()) == {"status", "error"}
            assert refusal(resp) == (
                "Content-Type header: parameter 'boundary' is given more than once "
                f"(boundary={first}, boundary={BOUNDARY})" + expected
            )
    body = part(png) + closing
    for ctype, error in [
        (
            f"multipart/form-data; Boundary={BOUNDARY}; boundary={BOUNDARY}",
            f"parameter 'boundary' is given more than once (boundary={BOUNDARY}, boundary=",
        ),
        (
            f'multipart/form-data; boundary={BOUNDARY}; charset=utf-8; CHARSET="latin 1"',
            "parameter 'charset' is given more than once (charset=utf-8, charset=\"latin 1\")",
        ),
    ]:
        resp = client.post("/v1/predict", content=body, headers={"content-type": ctype})
        assert refusal(resp).startswith(f"Content-Type header: {error}"), ctype
    for disposition, key in [
        ('name="file"; name="other"; filename="a.png"', "name"),
        ('name="file"; filename="a.png"; filename="b.png"', "filename"),
    ]:
        body = part(png) + b"\r\n" + part(png, disposition) + closing
        error = refusal(client.post("/v1/predict", content=body, headers=MULTIPART))
        assert error.startswith(
            f"multipart body: part 2: Content-Disposition header: parameter '{key}' is given "
            "more than once ("
        ), error
        assert error.endswith(expected)
    # Names are case-insensitive, and one of each is read as before.
    ctype = f"multipart/form-data; BOUNDARY={BOUNDARY}; charset=utf-8; boundary*=x"
    resp = client.post("/v1/predict", content=part(png) + closing, headers={"content-type": ctype})
    assert resp.status_code == 200, resp.text


def npy_with_header(raw: bytes, version: int = 1) -> bytes:
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(raw)) + raw


def test_a_malformed_npy_header_is_named_without_python_reprs(client: httpx.Client) -> None:
    npy_type = {"content-type": "application/x-npy"}
    cases = [
        (npy_with_header(b"{'descr': __import__('os'), }".ljust(117) + b"\n"), "field 'descr'"),
        (npy_with_header(b"(" * 3000 + b"\n", version=2), "not a valid NPY dict"),
        (
            npy_with_header(b"{'descr': '|u1', 'fortran_order': 'no', 'shape': (28, 28, 3)}\n"),
            "field 'fortran_order'",
        ),
        (npy_with_header(b"{'descr': '|u1'}\n"), "'descr', 'fortran_order' and 'shape'"),
    ]
    for data, expected in cases:
        error = refusal(client.post("/v1/predict", content=data, headers=npy_type))
        assert error.startswith("body: corrupt NPY header: ") and expected in error, error
        for python_words in ("object at 0x", "Error", "<ast."):
            assert python_words not in error, error


def test_an_unsupported_format_is_named_not_called_corrupt(client: httpx.Client) -> None:
    for fmt, name in (("BMP", "BMP"), ("GIF", "GIF"), ("WEBP", "WebP")):
        # 415 whether it comes unlabelled or labelled as it is (it was 400 unlabelled).
        error = refusal(client.post("/v1/predict", content=encoded(fmt)), 415)
        assert f"{name} is not supported; send PNG, JPEG, TIFF or NPY" in error, error
        octet = {"content-type": "application/octet-stream"}
        refusal(client.post("/v1/predict", content=encoded(fmt), headers=octet), 415)
        labelled = {"content-type": f"image/{fmt.lower()}"}
        refusal(client.post("/v1/predict", content=encoded(fmt), headers=labelled), 415)
    buf = io.BytesIO()
    tifffile.imwrite(buf, image()[..., 0].astype(np.int8))  # a pixel type ingest refuses too
    error = refusal(client.post("/v1/predict", content=buf.getvalue()))
    assert "the image has pixel type int8: expected 1-, 8- or 16-bit unsigned" in error
    assert "corrupt" not in error


def test_head_is_answered_on_the_get_routes(client: httpx.Client) -> None:
    for path in ("/health", "/ready", "/v1/model", "/metrics", "/docs", "/openapi.json"):
        resp = client.head(path)
        assert resp.status_code == 200 and resp.content == b"", (path, resp.status_code)
    assert client.head("/v1/predict").status_code == 405


def test_openapi_lists_the_codes_each_route_sends(
    client: httpx.Client, server: LocalServer
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    declared = {
        path: {int(code) for op in ops.values() for code in op["responses"]}
        for path, ops in paths.items()
    }
    assert declared == SENT
    metrics_200 = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics_200) == [client.get("/metrics").headers["content-type"]]
    # Each refusal of predict that a test can provoke is one that is documented.
    too_many = npy(np.zeros((300, 28, 28, 3), np.uint8))
    responses = [
        client.post("/v1/predict", content=b"junk"),  # 400
        client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"}),  # 415
        client.post("/v1/predict", content=too_many),  # 413
    ]
    codes = {r.status_code for r in responses}
    # A head over the 8 KB limit that has not ended yet (one that ends in the same read is
    # parsed before it is counted).
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000
    codes.add(int(raw_request(server, head).split(b" ")[1]))
    body = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab"
    codes.add(int(raw_request(server, body).split(b" ")[1]))
    assert codes == {400, 408, 413, 415, 431} and codes <= declared["/v1/predict"]


def test_docs_is_a_self_contained_page_and_redoc_is_gone(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    page = docs.text
    assert "<script" not in page and "cdn." not in page and "<link" not in page
    assert "href='/openapi.json'" in page and "POST /v1/predict" in page
    assert refusal(client.get("/redoc"), 404).startswith("no route /redoc; routes: ")


def test_a_trailing_slash_is_a_404_naming_the_route_not_a_redirect(client: httpx.Client) -> None:
    resp = client.post("/v1/predict/", content=encoded("PNG"), headers={"host": "evil.example"})
    assert "location" not in resp.headers
    error = refusal(resp, 404)
    assert error == "no route /v1/predict/; use /v1/predict (without the trailing slash)"
    assert "evil" not in error


def test_feedback_bodies_are_judged_strictly_and_quoted_as_sent(
    client: httpx.Client, logs: Path
) -> None:
    pid = predict_id(client)
    json_type = {**AUTH, "content-type": "application/json"}
    huge = f'{{"prediction_id": "{pid}", "label": 1e400}}'.encode()
    error = refusal(client.post("/v1/feedback", content=huge, headers=json_type), 422)
    assert error.startswith("body.label: a number out of range is not a label; expected")
    error = refusal(
        client.post("/v1/feedback", json={"prediction_id": pid, "label": 99}, headers=AUTH)
    )
    assert error.startswith("label: index 99 is out of range;") and "'99'" not in error
    extra = {"prediction_id": pid, "label": 1, "x": 1}
    error = refusal(client.post("/v1/feedback", json=extra, headers=AUTH), 422)
    assert error == "body: unknown key 'x'; valid keys: prediction_id, label, replaces"
    upper = client.post(
        "/v1/feedback", json={"prediction_id": pid.upper(), "label": 1}, headers=AUTH
    )
    assert upper.status_code == 200, upper.text
    assert upper.json()["prediction_id"] == pid
    deadline = time.monotonic() + 10
    while not [r for r in read_records(logs, FeedbackLine) if r.prediction_id == pid]:
        assert time.monotonic() < deadline, "feedback not logged"
        time.sleep(0.1)


def test_ctrl_c_says_the_server_stopped_not_that_jobs_run_on(bundle: Path, tmp_path: Path) -> None:
    srv = LocalServer(bundle, tmp_path / "logs").start()
    try:
        srv.signal(signal.SIGINT)
        code = srv.wait()
    finally:
        srv.stop()
    out = srv.log_tail()
    assert code == 130, out
    assert out.rstrip().endswith("stopped (SIGINT)") and "interrupted" not in out, out
