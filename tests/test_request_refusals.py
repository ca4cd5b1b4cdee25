"""Requests the HTTP layer refuses before reading any file in them (a body over the upload
limit, a body in a content coding, a malformed multipart body) were logged with the reasons of
refused images ("too-large", "unsupported-type", "undecodable"), so the monitor counted them
in its refused share of the data. They are logged with reasons of their own now, and the
monitor counts them apart (``request_refusals``), as it does transport failures."""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.serve.records import REQUEST_REASONS_BY_STATUS, RejectionLine
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import log_line
from tests.monitor_support import append_lines, demo_model, images, log_predictions


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Path]]:
    tmp = tmp_path_factory.mktemp("refusals")
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    (tmp / "serve.yaml").write_text("max_upload_mb: 1\nmax_buffered_mb: 1.5\n")
    srv = LocalServer(bundle, tmp / "logs", args=["--config", str(tmp / "serve.yaml")]).start()
    try:
        yield srv, tmp / "logs"
    finally:
        srv.stop()


def test_requests_refused_unread_are_logged_apart_from_refused_images(
    server: tuple[LocalServer, Path],
) -> None:
    srv, logs = server
    sends = [
        # (body, headers, status): the HTTP layer's refusals first, then the images'.
        (bytes(1_200_000), {"content-type": "image/png"}, 413),
        (gzip.compress(png(28)), {"content-type": "image/png", "content-encoding": "gzip"}, 415),
        (b"--x\r\nnot a part", {"content-type": "multipart/form-data"}, 400),
        (png(20), {"content-type": "image/png"}, 400),
        (b"BM" + bytes(60), {"content-type": "image/bmp"}, 415),
        (png(28), {"content-type": "image/png"}, 200),
    ]
    for body, headers, status in sends:
        resp = httpx.post(srv.url + "/v1/predict", content=body, headers=headers, timeout=30)
        assert resp.status_code == status, resp.text
    srv.stop()  # the log is flushed and closed
    reasons = sorted(r.reason for r in read_records(logs, RejectionLine))
    unread = ["request-too-large", "request-encoding", "malformed-request"]
    assert reasons == sorted([*unread, "wrong-size", "unsupported-type"])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, Path]]:
    home = tmp_path_factory.mktemp("monitor") / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    yield ws, demo_model(reg, ws)
    reg.dispose()


def test_the_monitor_keeps_requests_refused_unread_out_of_the_refused_share(
    workspace: tuple[Workspace, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, bundle = workspace
    shutil.rmtree(log_dir(ws.path("logs"), "blood"), ignore_errors=True)
    monkeypatch.setenv("POMLIA_HOME", str(ws.home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    x, _ = images(60)
    records = log_predictions(ws, bundle, x, one_request=False)
    (first,) = log_dir(ws.path("logs"), "blood").glob("*.jsonl")
    at = {"time": records[0]["time"], "model": "blood"}
    unread = [
        log_line("rejection", status=status, reason=reason, **at)
        for status, reason in REQUEST_REASONS_BY_STATUS.items()
        for _ in range(10)
    ]
    append_lines(first, *unread, log_line("rejection", **at))
    res = CliRunner().invoke(app, ["monitor", "run", "blood", "--json"])
    assert res.exit_code == 0, res.output
    quality = json.loads(res.output[res.output.index("{") :])["quality"]
    assert quality["rejections_by_reason"] == {"wrong-size": 1}
    assert quality["rejected_share"] == pytest.approx(1 / 61)
    assert quality["request_refusals"] == 30 and quality["requests"] == 91
    assert quality["request_refusals_by_reason"] == {
        "request-too-large": 10,
        "request-encoding": 10,
        "malformed-request": 10,
    }
    assert "were refused" not in " ".join(quality["warnings"])
