"""The app in-process, with a stand-in model: failures a real server cannot be made to show on
demand (a full disk under the prediction log, a client hanging up mid-upload)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import generate_latest

import pomlia_hpc.serve.app as appmod
import pomlia_hpc.serve.holder as holdermod
from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.predlog import PredictionLog
from pomlia_hpc.serve.records import PredictionLine, RejectionLine
from pomlia_hpc.serve.runtime import Runtime
from tests.fixtures.factories import log_line, npy

TOKEN = "app-token-0123456789abcdef"


def _bundle() -> ExportedBundle:
    fake = SimpleNamespace(
        labels=["a", "b"],
        task_type="multi-class",
        mean=[0.5],
        std=[0.5],
        name="m",
        version="v1",
        image_size=8,
        channels=1,
        scale_max=None,
        encoder_file=None,
        card={},
    )
    return cast(ExportedBundle, fake)


class FullDiskLog(PredictionLog):
    """A prediction log on a disk that is full: every write fails with ENOSPC."""

    def write_all(self, data: bytes) -> None:
        raise OSError(28, os.strerror(28))


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    monkeypatch.setenv("POMLIA_SERVE_TOKEN", TOKEN)

    def fake_runtime(_bundle: Any, _backend: str, _threads: int | None) -> Runtime:
        return Runtime("fake", "cpu", lambda x: np.zeros((len(x), 2), np.float32))

    monkeypatch.setattr(holdermod, "load_runtime", fake_runtime)

    def make(log_cls: type[PredictionLog] = PredictionLog) -> appmod.ServingApp:
        monkeypatch.setattr(holdermod, "PredictionLog", log_cls)
        return appmod.create_app(_bundle(), ServeConfig(), tmp_path / "logs")

    yield make


@asynccontextmanager
async def running(app: appmod.ServingApp) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan (model, batcher, log) around an in-process client."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    transport = httpx.ASGITransport(app=cast(Any, app))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task


def test_a_failed_log_write_is_a_503_for_predictions_and_feedback(
    make_app: Any, tmp_path: Path
) -> None:
    # The feedback below is for a prediction an earlier run of this server logged (the app
    # reads the ids it issued from its log at start; an unknown id would be a 404).
    (tmp_path / "logs").mkdir()
    earlier = orjson.dumps(log_line("prediction", id="0" * 32)) + b"\n"
    (tmp_path / "logs" / "00000000-earlier.jsonl").write_bytes(earlier)

    async def main() -> None:
        async with running(make_app(FullDiskLog)) as client:
            resp = await client.post(
                "/v1/predict",
                content=npy(np.zeros((8, 8), np.uint8)),
                headers={"content-type": "application/x-npy"},
            )
            assert resp.status_code == 503, resp.text
            assert (
                "prediction not recorded: cannot write the prediction log (No space"
                in (resp.json()["error"])
            )
            assert (await client.get("/ready")).status_code == 503  # broken log: not ready
        async with running(make_app(FullDiskLog)) as client:
            resp = await client.post(
                "/v1/feedback",
                json={"prediction_id": "0" * 32, "label": "a"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert resp.status_code == 503, resp.text
            assert (
                "feedback not recorded: cannot write the prediction log" in (resp.json()["error"])
            )

    asyncio.run(main())


def test_a_client_hanging_up_mid_upload_is_no_server_error(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    async def hang_up(path: str) -> list[int]:
        messages: Iterator[dict[str, Any]] = iter(
            [
                {"type": "http.request", "body": b"\x93NUMPY", "more_body": True},
                {"type": "http.disconnect"},
            ]
        )
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [
                (b"content-type", b"application/json"),
                (b"authorization", f"Bearer {TOKEN}".encode()),
            ],
            "query_string": b"",
        }
        await app(scope, receive, send)
        return [m["status"] for m in sent if m["type"] == "http.response.start"]

    async def main() -> list[list[int]]:
        async with running(app):
            return [await hang_up("/v1/predict"), await hang_up("/v1/feedback")]

    with caplog.at_level(logging.ERROR, logger="pomlia.serve"):
        assert asyncio.run(main()) == [[499], [499]]
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a client hang-up"
    metrics = generate_latest(app.metrics.registry).decode()
    assert 'pomlia_request_errors_total{route="/v1/predict",status="499"} 1.0' in metrics
    assert 'status="500"' not in metrics


def test_refused_uploads_are_logged_as_rejections_by_reason(make_app: Any, tmp_path: Path) -> None:
    """The monitor's rejected-share-by-reason comes from these records."""
    from pomlia_hpc.serve.logfiles import read_records

    async def main() -> None:
        async with running(make_app()) as client:
            for body, ctype, status in (
                (npy(np.zeros((9, 9), np.uint8)), "application/x-npy", 400),  # wrong size
                (npy(np.zeros((8, 8, 3), np.uint8)), "application/x-npy", 400),  # channels
                # One (H, W, 1) grey image of the wrong size: its message names "1 channel(s)"
                # as one reading, and it was logged "wrong-channels".
                (npy(np.zeros((10, 10, 1), np.uint8)), "application/x-npy", 400),
                (b"hello", "text/plain", 415),
                (npy(np.zeros((8, 8), np.uint8)), "application/x-npy", 200),
            ):
                resp = await client.post(
                    "/v1/predict", content=body, headers={"content-type": ctype}
                )
                assert resp.status_code == status, resp.text

    asyncio.run(main())
    rejections = list(read_records(tmp_path / "logs", RejectionLine))
    assert sorted(r.reason for r in rejections) == [
        "unsupported-type",
        "wrong-channels",
        "wrong-size",
        "wrong-size",
    ]
    assert {r.model for r in rejections} == {"m"} and all(r.time for r in rejections)
    assert len(list(read_records(tmp_path / "logs", PredictionLine))) == 1
