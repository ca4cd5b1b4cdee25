"""The REST server's contract, against a real server process on 127.0.0.1 (findings of a
schemathesis run and of probes by hand): a body sent with a content coding is a 415 that names
it, a feedback key given twice is refused rather than half dropped, and the OpenAPI description
states the limits and the shape of ``/v1/model`` that the server really applies and sends."""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import FeedbackLine

TOKEN = "contract-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract-logs")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs: Path) -> Iterator[LocalServer]:
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    env = {"POMLIA_SERVE_TOKEN": TOKEN}
    with LocalServer(bundle, logs, env=env, args=["--max-upload-mb", "1"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def refusal(resp: httpx.Response, status: int) -> str:
    """The message of a refusal, after checking its code and its one documented shape."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error", "status"} and body["status"] == status, body
    return str(body["error"])


def predict_id(client: httpx.Client) -> str:
    resp = client.post("/v1/predict", content=png(), headers=PNG)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["predictions"][0]["id"])


def test_a_body_with_a_content_coding_is_a_415_naming_it(client: httpx.Client) -> None:
    # A gzip upload was decoded as its compressed bytes: a 400 "unrecognised first bytes".
    zipped = {**PNG, "content-encoding": "gzip"}
    resp = client.post("/v1/predict", content=gzip.compress(png()), headers=zipped)
    error = refusal(resp, 415)
    assert error.startswith("Content-Encoding header: 'gzip' is not supported; expected"), error
    assert resp.headers["accept-encoding"] == "identity"
    # A body that only claims a coding was taken as it came (a 200 for 'br' PNG bytes).
    resp = client.post("/v1/predict", content=png(), headers={**PNG, "content-encoding": "br"})
    assert "'br' is not supported" in refusal(resp, 415)
    both = {**PNG, "content-encoding": "identity, gzip"}
    assert "'gzip' is not supported" in refusal(
        client.post("/v1/predict", content=png(), headers=both), 415
    )
    plain = {**PNG, "content-encoding": "identity"}
    assert client.post("/v1/predict", content=png(), headers=plain).status_code == 200
    body = json.dumps({"prediction_id": predict_id(client), "label": 1}).encode()
    resp = client.post(
        "/v1/feedback",
        content=gzip.compress(body),
        headers={**AUTH, **JSON, "content-encoding": "gzip"},
    )
    assert "'gzip' is not supported" in refusal(resp, 415)


def test_a_feedback_key_given_twice_is_refused_not_half_dropped(
    client: httpx.Client, logs: Path
) -> None:
    # The JSON parser kept the last 'label': label 2 was recorded, the 1 dropped silently.
    pid = predict_id(client)
    twice = f'{{"prediction_id": "{pid}", "label": 1, "label": 2}}'.encode()
    error = refusal(client.post("/v1/feedback", content=twice, headers={**AUTH, **JSON}), 422)
    assert error.startswith("body: key 'label' is given more than once; expected each key once")
    assert pid not in {r.prediction_id for r in read_records(logs, FeedbackLine)}
    once = {"prediction_id": pid, "label": 1}
    assert client.post("/v1/feedback", json=once, headers=AUTH).status_code == 200


def file_part(data: bytes, *extra_headers: str) -> bytes:
    head = 'Content-Disposition: form-data; name="file"; filename="a.png"\r\n'
    head += "".join(f"{h}\r\n" for h in extra_headers)
    return b"--XX\r\n" + head.encode() + b"\r\n" + data + b"\r\n--XX--\r\n"


def test_an_encoded_multipart_file_is_a_415_naming_its_header(client: httpx.Client) -> None:
    # A base64 part was read as its base64 text (a 400 "unrecognised first bytes"), and a part
    # that claimed a gzip coding was taken as it came (a 200).
    form = {"content-type": "multipart/form-data; boundary=XX"}
    b64 = file_part(base64.b64encode(png()), "Content-Transfer-Encoding: base64")
    error = refusal(client.post("/v1/predict", content=b64, headers=form), 415)
    assert error.startswith("part 'file' #1: Content-Transfer-Encoding 'base64' is not supported")
    zipped = file_part(png(), "Content-Encoding: gzip")
    error = refusal(client.post("/v1/predict", content=zipped, headers=form), 415)
    assert error.startswith("part 'file' #1: Content-Encoding 'gzip' is not supported"), error
    plain = file_part(png(), "Content-Transfer-Encoding: binary", "Content-Encoding: identity")
    assert client.post("/v1/predict", content=plain, headers=form).status_code == 200


def resolved(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a top-level ``$ref`` into ``components`` followed."""
    ref = schema.get("$ref", "")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def test_openapi_states_the_limits_and_the_card_the_server_really_has(
    client: httpx.Client,
) -> None:
    # /v1/model's answer was documented as any JSON ({}), and no limit was written anywhere in
    # the description: a client learnt the upload limit from its first 413.
    spec = client.get("/openapi.json").json()
    card = client.get("/v1/model").json()
    limits = card["serving"]
    assert limits["max_upload_bytes"] == 1024 * 1024  # --max-upload-mb 1
    text = spec["paths"]["/v1/predict"]["post"]["requestBody"]["description"]
    assert f"at most {limits['max_upload_bytes']} bytes" in text, text
    assert f"at most {limits['max_images']} images per request" in text, text
    assert f"at most {limits['max_side_px']} px a side" in text, text
    resp = client.post("/v1/predict", content=b"\0" * (limits["max_upload_bytes"] + 1))
    assert "exceeds the limit of 1048576 bytes" in refusal(resp, 413)
    feedback = spec["paths"]["/v1/feedback"]["post"]["requestBody"]["description"]
    assert "At most 65536 bytes" in feedback, feedback
    big = b'{"label": "' + b"x" * 65536 + b'"}'
    resp = client.post("/v1/feedback", content=big, headers={**AUTH, **JSON})
    assert "exceeds the limit of 65536 bytes" in refusal(resp, 413)
    documented = spec["paths"]["/v1/model"]["get"]["responses"]["200"]["content"]
    schema = resolved(spec, documented["application/json"]["schema"])
    assert set(schema["required"]) <= set(card) <= set(schema["properties"]), schema
    serving = resolved(spec, schema["properties"]["serving"])
    assert set(serving["required"]) == set(serving["properties"]) == set(limits)
    npy_types = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/x-npy", "application/npy"} <= set(npy_types)
    # Every 503 says when to retry (tests/test_serve_transport.py provokes one).
    answers = [op["responses"] for ops in spec["paths"].values() for op in ops.values()]
    busy = [codes["503"] for codes in answers if "503" in codes]
    assert len(busy) >= 4 and all(r["headers"]["Retry-After"]["required"] for r in busy)


def raw_request(server: LocalServer, data: bytes) -> tuple[bytes, bytes]:
    """Send ``data`` on a new connection; the status line and the body of the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while b"\r\n\r\n" not in out or len(out.split(b"\r\n\r\n", 1)[1]) < length(out):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


def length(answer: bytes) -> int:
    """The Content-Length of the answer whose head ``answer`` starts with."""
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_an_upgrade_request_is_answered_as_plain_http(server: LocalServer) -> None:
    # A WebSocket upgrade was handed to wsproto, past the connection guards, and answered
    # with an empty text/plain 403: no route here is a WebSocket.
    upgrade = (
        b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    status, body = raw_request(server, b"GET /health HTTP/1.1\r\n" + upgrade)
    assert status == b"HTTP/1.1 200 OK" and json.loads(body) == {"status": "ok"}, body
    status, body = raw_request(server, b"GET /v1/stream HTTP/1.1\r\n" + upgrade)
    assert status == b"HTTP/1.1 404 Not Found", status
    assert json.loads(body)["error"].startswith("no route /v1/stream; routes:"), body
    assert "WebSocket" not in server.log_tail(), server.log_tail()


def test_a_transfer_coding_other_than_chunked_is_refused(server: LocalServer) -> None:
    # httptools took the chunked framing off and ignored the gzip before it: the compressed
    # bytes were decoded as the image (and plain bytes labelled gzip got a 200).
    data = png()
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    status, body = raw_request(server, head + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunks)
    assert status == b"HTTP/1.1 400 Bad Request", (status, body)
    assert json.loads(body) == {
        "error": "Transfer-Encoding header: 'gzip, chunked' is not supported; expected chunked "
        "alone (or a Content-Length)",
        "status": 400,
    }
    status, body = raw_request(server, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert status == b"HTTP/1.1 200 OK", body


def test_a_class_given_twice_in_multi_label_feedback_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # [1, 1] and [1, "finding_1"] were logged as label_index [1, 1].
    bundle = cached_demo_bundle(
        tmp_path_factory.getbasetemp() / "serve-demo", num_classes=3, task_type="multi-label"
    )
    logs = tmp_path_factory.mktemp("multi-label-logs")
    with (
        LocalServer(bundle, logs, env={"POMLIA_SERVE_TOKEN": TOKEN}) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        pid = predict_id(client)
        for label, shown in (([1, 1], "1 and 1"), ([1, "finding_1"], '1 and "finding_1"')):
            body = {"prediction_id": pid, "label": label}
            error = refusal(client.post("/v1/feedback", json=body, headers=AUTH), 400)
            assert error == (
                f'label: class "finding_1" is given twice ({shown}); expected each class at '
                "most once"
            ), error
        body = {"prediction_id": pid, "label": [2, "finding_0"]}
        assert client.post("/v1/feedback", json=body, headers=AUTH).status_code == 200
    (line,) = read_records(logs, FeedbackLine)
    assert line.label == ["finding_2", "finding_0"] and line.label_index == [2, 0]


def test_a_single_valued_header_given_twice_is_refused(client: httpx.Client) -> None:
    # The first of two Content-Type or Authorization fields was read, the other ignored.
    two_types = [("content-type", "image/png"), ("content-type", "application/x-npy")]
    resp = client.post("/v1/predict", content=png(), headers=two_types)
    assert refusal(resp, 400) == (
        "Content-Type header is given more than once (image/png, application/x-npy); "
        "expected it once"
    )
    body = json.dumps({"prediction_id": predict_id(client), "label": 1}).encode()
    two_tokens = [("authorization", AUTH["Authorization"]), ("authorization", "Bearer other")]
    resp = client.post("/v1/feedback", content=body, headers=[*two_tokens, *JSON.items()])
    error = refusal(resp, 401)
    assert error == "Authorization header is given more than once; expected it once", error
    assert TOKEN not in error
    same = [("content-type", "image/png")] * 2  # an exact repeat says one thing
    assert client.post("/v1/predict", content=png(), headers=same).status_code == 200
    resp = client.post("/v1/feedback", content=body, headers={**AUTH, **JSON})
    assert resp.status_code == 200, resp.text


def test_multipart_refusals_say_where_and_what_is_expected(client: httpx.Client) -> None:
    # python-multipart's words were passed on: 'The Content-Disposition header field "name"
    # must be provided.' and 'Missing boundary in multipart.', naming no part and no remedy.
    form = {"content-type": "multipart/form-data; boundary=XX"}
    nameless = b"--XX\r\nContent-Type: image/png\r\n\r\n" + png() + b"\r\n--XX--\r\n"
    error = refusal(client.post("/v1/predict", content=nameless, headers=form), 400)
    assert error == (
        "multipart body: part 1: Content-Disposition header has no name=; expected "
        'Content-Disposition: form-data; name="file"; filename="a.png"'
    ), error
    no_boundary = {"content-type": "multipart/form-data"}
    error = refusal(client.post("/v1/predict", content=nameless, headers=no_boundary), 400)
    assert error.startswith("multipart body: Content-Type header has no boundary= parameter")
