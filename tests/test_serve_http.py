"""The REST API against a real server process on 127.0.0.1 over HTTP."""

from __future__ import annotations

import io
import json
import socket
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.errors import ConfigError, InputError, NotFoundError, PomliaError
from pomlia_hpc.models.checkpoint import load_classifier
from pomlia_hpc.serve.config import load_serve_config
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import FeedbackLine, PredictionLine
from pomlia_hpc.serve.server import bind_socket
from tests.fixtures import bad_tiffs
from tests.fixtures.factories import npy
from tests.fixtures.waiting import wait_until

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    logs = tmp_path_factory.mktemp("logs")
    srv = LocalServer(
        bundle,
        logs,
        env={"POMLIA_SERVE_TOKEN": TOKEN},
        args=["--max-upload-mb", "0.5", "--max-batch", "8"],
    )
    with srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)


def test_health_ready_card_and_docs(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"] == "demo"
    card = client.get("/v1/model").json()
    assert card["label_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert card["input"]["image_size"] == 28 and card["input"]["channels"] == 3
    assert card["serving"]["max_batch"] == 8
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/feedback", "/health", "/ready", "/v1/model", "/metrics"} <= set(
        spec["paths"]
    )
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_predictions_equal_pytorch_on_the_same_pixels(
    client: httpx.Client, server: LocalServer
) -> None:
    imgs = images(3)
    resp = client.post(
        "/v1/predict", content=npy(imgs), headers={"content-type": "application/x-npy"}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "demo" and len(body["predictions"]) == 3
    ckpt = next(server.bundle.parents[1].glob("*.pt"))
    model = load_classifier(ckpt).model
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        expected = torch.softmax(model(x), dim=1).numpy()
    got = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    labels = [p["label"] for p in body["predictions"]]
    assert labels == [f"class_{i}" for i in expected.argmax(axis=1)]
    assert len({p["id"] for p in body["predictions"]}) == 3


def test_every_format_one_or_many(client: httpx.Client) -> None:
    imgs = images(4, seed=1)
    single = client.post(
        "/v1/predict", content=png(imgs[0]), headers={"content-type": "image/png"}
    ).json()["predictions"]
    tiff = io.BytesIO()
    Image.fromarray(imgs[2]).save(tiff, "TIFF")
    jpeg = io.BytesIO()
    Image.fromarray(imgs[3]).save(jpeg, "JPEG")
    files = [
        ("file", ("a.png", png(imgs[0]), "image/png")),
        ("file", ("b.npy", npy(imgs[1]), "application/x-npy")),
        ("file", ("c.tif", tiff.getvalue(), "image/tiff")),
        ("file", ("d.jpg", jpeg.getvalue(), "image/jpeg")),
    ]
    resp = client.post("/v1/predict", files=files)
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == 4
    # Order is kept: the PNG part gets the same answer as the same PNG alone.
    assert preds[0]["probabilities"] == pytest.approx(single[0]["probabilities"], abs=1e-6)


def test_a_grey_npy_is_served_to_a_colour_model_as_a_grey_png_is(client: httpx.Client) -> None:
    """A grey NPY for a colour model was a 400 ("1 channel(s), the model expects 3") while
    the same pixels as a grey PNG were repeated to RGB, as ingest repeats a grey image of a
    colour folder: now every grey form is repeated to 3 channels."""
    grey = np.random.default_rng(11).integers(0, 256, (2, 28, 28), dtype=np.uint8)

    def answer(body: bytes, ctype: str) -> list[float]:
        resp = client.post("/v1/predict", content=body, headers={"content-type": ctype})
        assert resp.status_code == 200, resp.text
        return [float(x) for p in resp.json()["predictions"] for x in p["probabilities"].values()]

    want = answer(npy(np.repeat(grey[..., None], 3, axis=-1)), "application/x-npy")
    assert answer(png(grey[0]), "image/png") == pytest.approx(want[:4], abs=1e-6)
    for body in (grey[0], grey[0, ..., None]):
        assert answer(npy(body), "application/x-npy") == pytest.approx(want[:4], abs=1e-6)
    assert answer(npy(grey[..., None]), "application/x-npy") == pytest.approx(want, abs=1e-6)
    # (N, H, W) stays an (H, W, C) image for a colour model: refused naming the grey forms.
    resp = client.post(
        "/v1/predict", content=npy(grey), headers={"content-type": "application/x-npy"}
    )
    assert resp.status_code == 400 and "(28, 28, 1) or (N, 28, 28, 1)" in resp.text, resp.text


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "not supported"),
        (
            {"content": b"\x89PNG\r\n\x1a\nbroken", "headers": {"content-type": "image/png"}},
            400,
            "corrupt",
        ),
        (
            {
                "content": png(np.zeros((32, 32, 3), np.uint8)),
                "headers": {"content-type": "image/png"},
            },
            400,
            "model expects 28 px high, 28 px wide",
        ),
        (
            {  # grey (1) and colour (3, or 4 with alpha) are taken; 2 channels are neither
                "content": npy(np.zeros((28, 28, 2), np.uint8)),
                "headers": {"content-type": "application/x-npy"},
            },
            400,
            "the model expects 3",
        ),
        (
            {"content": b"\x00" * 600_000, "headers": {"content-type": "image/png"}},
            413,
            "exceeds the limit",
        ),
        (
            {
                "content": npy(np.zeros((300, 28, 28, 3), np.uint8)),
                "headers": {"content-type": "application/x-npy"},
            },
            413,
            "exceeds the limit",
        ),
        ({"files": {"note": (None, b"text, not a file")}}, 400, "part 'note' has no filename="),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty body"),
    ],
)
def test_bad_uploads_are_4xx_with_a_message(
    client: httpx.Client, kwargs: dict[str, object], status: int, message: str
) -> None:
    resp = client.post("/v1/predict", **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"] == status and message in body["error"]


@pytest.mark.timeout(120)  # the looping page chain was followed without end
def test_damaged_tiffs_found_by_fuzzing_are_400_and_the_server_answers_on(
    client: httpx.Client,
) -> None:
    damaged = {
        "loop": bad_tiffs.looping_chain(28, 3),
        "tuple tag": bad_tiffs.tuple_image_length(28),
        "text byte counts": bad_tiffs.text_byte_counts(28),
        "rgb 565": bad_tiffs.rgb_565(28),
    }
    for name, data in damaged.items():
        resp = client.post("/v1/predict", content=data, headers={"content-type": "image/tiff"})
        assert resp.status_code == 400, (name, resp.text)
        assert resp.json()["error"].startswith("body: "), name  # one message, no traceback
    ok = png(np.zeros((28, 28, 3), np.uint8))
    resp = client.post("/v1/predict", content=ok, headers={"content-type": "image/png"})
    assert resp.status_code == 200, resp.text


def _tiff_pages(n: int) -> bytes:
    pages = [Image.new("RGB", (28, 28), (i % 256, 0, 0)) for i in range(n)]
    buf = io.BytesIO()
    pages[0].save(
        buf, "TIFF", save_all=True, append_images=pages[1:], compression="tiff_adobe_deflate"
    )
    return buf.getvalue()


def test_multipart_files_share_the_image_limit(client: httpx.Client) -> None:
    small = png(np.zeros((28, 28, 3), np.uint8))
    too_many_files = [("file", (f"{i}.png", small, "image/png")) for i in range(257)]
    resp = client.post("/v1/predict", files=too_many_files)
    assert resp.status_code == 413, resp.text
    assert "Too many files" in resp.json()["error"]
    # 200 + 100 pages: the second file is refused before its pages are decoded.
    files = [
        ("file", ("a.tif", _tiff_pages(200), "image/tiff")),
        ("file", ("b.tif", _tiff_pages(100), "image/tiff")),
    ]
    resp = client.post("/v1/predict", files=files)
    assert resp.status_code == 413, resp.text
    assert (
        "#2: 100 images, at most 256 per request (56 left after the earlier files)"
        in (resp.json()["error"])
    )


def test_unknown_route_and_method_are_json_errors(client: httpx.Client) -> None:
    assert client.get("/nope").json()["error"].startswith("no route /nope; routes: /docs, ")
    assert client.get("/v1/predict").status_code == 405


def test_feedback_needs_the_token_and_a_known_label(client: httpx.Client) -> None:
    pid = client.post(
        "/v1/predict", content=npy(images(1)[0]), headers={"content-type": "application/x-npy"}
    ).json()["predictions"][0]["id"]
    good = {"prediction_id": pid, "label": "class_2"}
    assert client.post("/v1/feedback", json=good).status_code == 401
    wrong = client.post("/v1/feedback", json=good, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    ok = client.post("/v1/feedback", json=good, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["recorded"] is True
    by_index = client.post(
        "/v1/feedback", json={"prediction_id": pid, "label": 3, "replaces": True}, headers=AUTH
    )
    assert by_index.status_code == 200
    bad_label = client.post(
        "/v1/feedback", json={"prediction_id": pid, "label": "cat"}, headers=AUTH
    )
    assert bad_label.status_code == 400 and "not a label of this model" in bad_label.json()["error"]
    bad_id = client.post(
        "/v1/feedback", json={"prediction_id": "../../x", "label": 1}, headers=AUTH
    )
    assert bad_id.status_code == 400
    missing = client.post("/v1/feedback", json={"label": 1}, headers=AUTH)
    assert missing.status_code == 422 and "prediction_id" in missing.json()["error"]


def test_feedback_checks_the_token_before_reading_a_bounded_body(client: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    anonymous = client.post("/v1/feedback", content=b"{", headers=json_type)
    assert anonymous.status_code == 401, anonymous.text
    malformed = client.post("/v1/feedback", content=b"{", headers={**AUTH, **json_type})
    assert malformed.status_code == 422 and "Invalid JSON" in malformed.json()["error"]
    big = json.dumps({"prediction_id": "a" * 100_000, "label": 0}).encode()
    too_big = client.post("/v1/feedback", content=big, headers={**AUTH, **json_type})
    assert too_big.status_code == 413 and "limit of 65536 bytes" in too_big.json()["error"]
    # Its unread body must not be parsed as the next request on the connection (431 on CI).
    assert too_big.headers["connection"] == anonymous.headers["connection"] == "close"
    form = client.post("/v1/feedback", data={"label": "1"}, headers=AUTH)
    assert form.status_code == 415 and "expected application/json" in form.json()["error"]
    spec = client.get("/openapi.json").json()["paths"]["/v1/feedback"]["post"]
    body_schema = spec["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["required"] == ["prediction_id", "label"]


def test_metrics_count_requests_latency_batches_and_errors(client: httpx.Client) -> None:
    client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    assert 'pomlia_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'pomlia_request_errors_total{route="/v1/predict",status="415"}' in text
    assert "pomlia_request_latency_seconds_bucket" in text
    assert "pomlia_batch_size_images_count" in text
    assert 'route="other"' in text  # /nope is not a label of its own


def test_log_holds_every_answered_prediction_and_feedback(
    client: httpx.Client, server: LocalServer
) -> None:
    answered = [
        p["id"]
        for n in (1, 2, 5)
        for p in client.post(
            "/v1/predict",
            content=npy(images(n, seed=n)),
            headers={"content-type": "application/x-npy"},
        ).json()["predictions"]
    ]
    records = {r.id: r for r in read_records(server.log_dir, PredictionLine)}
    for pid in answered:
        rec = records[pid]
        assert rec.model == "demo" and rec.fingerprint_kind == "stats-thumb-v1"
        assert len(rec.fingerprint) == 198 and len(rec.output.probabilities) == 4
    feedback = list(read_records(server.log_dir, FeedbackLine))
    assert feedback and all(f.prediction_id in records for f in feedback)
    for path in server.log_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line)


def test_server_refuses_a_bundle_path_that_is_not_a_bundle(tmp_path: Path) -> None:
    srv = LocalServer(tmp_path, tmp_path / "logs", startup_timeout_s=30)
    with pytest.raises(PomliaError, match="exited with 2") as info:
        srv.start()
    assert "not an exported bundle (no card.json)" in " ".join(str(info.value).split())
    assert not srv.address_file.parent.exists()  # its temporary directory is removed


def test_a_bundle_path_that_does_not_exist_is_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pomlia serve ./missing_dir` said "not an exported bundle (no card.json)"."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["serve", "./missing_dir"])
    assert isinstance(res.exception, NotFoundError), res.output
    assert str(res.exception).startswith("./missing_dir does not exist; expected an exported")
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["serve", "./empty"])
    assert isinstance(res.exception, InputError) and "no card.json" in str(res.exception)


def test_local_server_removes_its_temporary_directory(tmp_path: Path) -> None:
    probe = LocalServer(tmp_path, tmp_path / "logs")
    tmp = probe.address_file.parent
    assert tmp.is_dir()
    assert probe.stop() is None  # never started: nothing to signal, the directory still goes
    assert not tmp.exists()


def test_an_address_that_cannot_be_served_is_one_error(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A port in use (or a host that is not this machine's) and an address file whose folder
    cannot be made were tracebacks: from bind, and from uvicorn's startup (exit 3)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} .*expected .* a free port"):
            bind_socket("127.0.0.1", port)
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    opts = [
        "--port",
        "0",
        "--log-dir",
        str(tmp_path / "logs"),
        "--address-file",
        str(afile / "addr"),
    ]
    res = CliRunner().invoke(app, ["--home", str(tmp_path / "ws"), "serve", str(bundle), *opts])
    assert isinstance(res.exception, ConfigError), (res.output, res.exception)
    assert f"address file {afile / 'addr'}: its folder cannot be created" in str(res.exception)


def test_serve_config_file_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("max_batch: 64\nmax_wiat_ms: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_wiat_ms'; valid keys: .*max_wait_ms"):
        load_serve_config(cfg)
    cfg.write_text("max_batch: 0\n")
    with pytest.raises(ConfigError, match="bad value for 'max_batch'"):
        load_serve_config(cfg)
    cfg.write_text("graceful_timeout_s: 0\n")  # uvicorn would wait forever
    with pytest.raises(ConfigError, match="bad value for 'graceful_timeout_s'"):
        load_serve_config(cfg)
    cfg.write_text("graceful_timeout_s: 0.2\n")
    assert load_serve_config(cfg).graceful_timeout_whole_s == 1
    cfg.write_text("max_batch: 64\nport: 9000\n")
    assert load_serve_config(cfg, {"port": 9100, "host": None}).model_dump()["port"] == 9100


class FileSizeLimitedServer(LocalServer):
    """A server whose files may not grow past ``max_file_bytes`` (RLIMIT_FSIZE; Python ignores
    SIGXFSZ, so a write past it fails with EFBIG): its prediction log fails once full, and the
    server is not ready until a try of the disk (``log_retry_s``) succeeds, as on a full
    disk."""

    def __init__(
        self, bundle: Path, log_dir: Path, *, max_file_bytes: int, args: tuple[str, ...] = ()
    ) -> None:
        # no bytecode: Python's cache writer ignores a short write, and a .pyc cut at the
        # limit would break every later import of that module
        env = {"POMLIA_SERVE_TOKEN": TOKEN, "PYTHONDONTWRITEBYTECODE": "1"}
        super().__init__(bundle, log_dir, args=args, env=env)
        self.max_file_bytes = max_file_bytes

    def command(self) -> list[str]:
        limit = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({self.max_file_bytes},) * 2); "
            "os.execv(sys.executable, sys.argv[1:])"
        )
        return [sys.executable, "-c", limit, *super().command()]


def test_a_server_whose_log_failed_answers_again_once_the_disk_takes_writes(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """After one failed prediction-log write (a full disk) the server refused every prediction
    for good, also after space was freed, until someone restarted it. It tries the disk again
    (``log_retry_s``) and then answers and records again, in a new file; every answered
    prediction is in the log and no refused one is."""
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    config = tmp_path / "serve.yaml"
    config.write_text("log_retry_s: 1\n")
    srv = FileSizeLimitedServer(
        bundle, tmp_path / "logs", max_file_bytes=64 * 1024, args=("--config", str(config))
    )
    answered: set[str] = set()
    with srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        npy_type = {"content-type": "application/x-npy"}

        def predict() -> httpx.Response:
            resp = c.post("/v1/predict", content=npy(images(8)), headers=npy_type)
            if resp.status_code == 200:
                answered.update(p["id"] for p in resp.json()["predictions"])
            return resp

        # ~4 KB a prediction line: the file is at its limit after a few batches
        wait_until(lambda: predict().status_code == 503, what="a refused prediction")
        not_ready = c.get("/ready")
        if not_ready.status_code == 503:  # unless the first try of the disk was quicker
            assert "cannot write the prediction log" in not_ready.json()["error"], not_ready.text
        wait_until(lambda: c.get("/ready").status_code == 200, timeout=60, what="ready again")
        assert predict().status_code == 200
    logged = {r.id for r in read_records(srv.log_dir, PredictionLine)}
    assert logged == answered
    assert len(list(srv.log_dir.glob("*.jsonl"))) >= 2


def test_a_server_that_is_not_ready_still_judges_a_feedback_body_first(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A malformed feedback body got the 503 of a server that was not ready; it gets the 4xx
    a ready server gives it, and only a valid body gets the 503."""
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    srv = FileSizeLimitedServer(bundle, tmp_path / "logs", max_file_bytes=64 * 1024)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        npy_type = {"content-type": "application/x-npy"}
        pid = c.post("/v1/predict", content=npy(images(1)[0]), headers=npy_type).json()
        pid = pid["predictions"][0]["id"]
        for _ in range(20):  # ~4 KB a prediction line: the log is full after a few batches
            if c.post("/v1/predict", content=npy(images(8)), headers=npy_type).status_code == 503:
                break
        assert c.get("/ready").status_code == 503
        json_type = {**AUTH, "content-type": "application/json"}
        refusals = [
            (c.post("/v1/feedback", content=b"{", headers=json_type), 422, "Invalid JSON"),
            (c.post("/v1/feedback", json={"label": 1}, headers=AUTH), 422, "prediction_id"),
            (
                c.post("/v1/feedback", json={"prediction_id": pid, "label": 1.5}, headers=AUTH),
                422,
                "body.label: 1.5 is not a label; expected an integer class index 0..3",
            ),
            (
                c.post("/v1/feedback", json={"prediction_id": "x", "label": 1}, headers=AUTH),
                400,
                "prediction_id: expected the 32-hex-digit id",
            ),
            (
                c.post("/v1/feedback", json={"prediction_id": pid, "label": "cat"}, headers=AUTH),
                400,
                "not a label of this model",
            ),
        ]
        for resp, status, message in refusals:
            assert resp.status_code == status, resp.text
            assert message in resp.json()["error"]
        valid = c.post("/v1/feedback", json={"prediction_id": pid, "label": 1}, headers=AUTH)
        assert valid.status_code == 503, valid.text


def test_feedback_labels_match_in_unicode_nfc(tmp_path: Path) -> None:
    """A bundle exported before ingest kept class names in NFC may spell "ö" decomposed
    (NFD, a folder copied from a Mac), and a Mac client may send NFD to a newer bundle: the
    label printed alike but was refused as "not a label of this model". Names now match in
    NFC both ways, and the log keeps the bundle's spelling (the monitor's class list)."""
    from pomlia_hpc.models.checkpoint import save_classifier
    from pomlia_hpc.models.nets import build_classifier
    from pomlia_hpc.serve.export import export_checkpoint

    nfd, nfc = unicodedata.normalize("NFD", "Blut_ö"), unicodedata.normalize("NFC", "Luft_ä")
    ckpt = tmp_path / "c.pt"
    save_classifier(
        ckpt,
        build_classifier("small_cnn", 2, 3, image_size=28),
        arch="small_cnn",
        num_classes=2,
        in_channels=3,
        image_size=28,
        task_type="multi-class",
        label_names=[nfd, nfc],
    )
    bundle = export_checkpoint(ckpt, tmp_path / "bundles", name="mac").bundle.root
    with (
        LocalServer(bundle, tmp_path / "logs", env={"POMLIA_SERVE_TOKEN": TOKEN}) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        preds = c.post(
            "/v1/predict", content=npy(images(2)), headers={"content-type": "application/x-npy"}
        ).json()["predictions"]
        sent = [unicodedata.normalize("NFC", nfd), unicodedata.normalize("NFD", nfc)]
        for pred, label in zip(preds, sent, strict=True):
            r = c.post(
                "/v1/feedback", json={"prediction_id": pred["id"], "label": label}, headers=AUTH
            )
            assert r.status_code == 200, r.text
    logged = {f.prediction_id: f for f in read_records(srv.log_dir, FeedbackLine)}
    assert [(logged[p["id"]].label, logged[p["id"]].label_index) for p in preds] == [
        (nfd, 0),
        (nfc, 1),
    ]


def test_a_server_that_sees_no_gpu_loads_no_torch(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``backend: auto`` imported torch to learn that there is no GPU, and a CPU server held
    torch's libraries for its whole life (619 MB resident for a small ONNX model). With every
    GPU hidden it now answers with onnxruntime and never loads them."""
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    with LocalServer(bundle, tmp_path / "logs", env={"CUDA_VISIBLE_DEVICES": ""}) as srv:
        resp = httpx.post(
            srv.url + "/v1/predict",
            content=png(images(1)[0]),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        assert srv.proc is not None
        libraries = Path(f"/proc/{srv.proc.pid}/maps").read_text()
    assert "libtorch" not in libraries
