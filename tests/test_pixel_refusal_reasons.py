"""Uploads refused for their pixel values or type are logged with the reason the monitor
reports them under: 32-bit pixels above 65535 (a detector's counts saved as int32) are
``bad-values`` and an NPY array of a dtype the server does not take (int32, int16) is
``unsupported-type``. Both were logged ``undecodable``, as if the files were damaged, since
their messages name no range the reason guess looked for (a tester's finding)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile

from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import RejectionLine
from tests.fixtures.factories import npy


def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Path]]:
    tmp = tmp_path_factory.mktemp("pixel-refusals")
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    srv = LocalServer(bundle, tmp / "logs").start()
    try:
        yield srv, tmp / "logs"
    finally:
        srv.stop()


def test_pixel_values_and_types_are_logged_under_their_own_reasons(
    server: tuple[LocalServer, Path],
) -> None:
    srv, logs = server
    counts = np.full((28, 28, 3), 70_000, np.int32)
    sends = [
        (tiff(counts), "image/tiff", "integer pixels in [70000, 70000]"),
        (npy(counts), "application/x-npy", "NPY dtype int32 is not supported"),
        (npy(np.zeros((28, 28, 3), np.int16)), "application/x-npy", "dtype int16"),
    ]
    for body, ctype, words in sends:
        resp = httpx.post(
            srv.url + "/v1/predict", content=body, headers={"content-type": ctype}, timeout=30
        )
        assert resp.status_code == 400 and words in resp.json()["error"], resp.text
    srv.stop()  # the log is flushed and closed
    reasons = [r.reason for r in sorted(read_records(logs, RejectionLine), key=lambda r: r.time)]
    assert reasons == ["bad-values", "unsupported-type", "unsupported-type"]
