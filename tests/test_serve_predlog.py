"""The prediction log and the batcher: nothing answered is ever missing from the log, under
concurrent load and across SIGTERM (counted, against real server processes)."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from pomlia_hpc.serve.batching import BatcherClosedError, DynamicBatcher
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.local import LocalServer
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.predlog import LogClosedError, LogWriteError, PredictionLog
from pomlia_hpc.serve.records import FeedbackLine, PredictionLine
from pomlia_hpc.serve.runtime import load_runtime
from tests.fixtures.factories import log_line, onnx_predictor


def test_log_group_commits_and_calls_back_after_writing(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    done: list[BaseException | None] = []
    threads = [
        threading.Thread(
            target=lambda i=i: [
                log.append([log_line("prediction", id=f"{i}-{j}")], done.append) for j in range(50)
            ]
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    ids = [r.id for r in read_records(tmp_path)]
    assert len(ids) == 400 and len(set(ids)) == 400
    assert done == [None] * 400 and log.written == 400
    assert log.commits <= 400  # grouped whenever records queued up during a write
    with pytest.raises(LogClosedError):
        log.append([log_line("prediction", id="late")])


def test_log_rotates_and_reader_skips_a_torn_tail(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, max_bytes=200)
    for i in range(20):
        log.append([log_line("feedback", id=str(i))])
        time.sleep(0.001)
    log.close()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) > 1
    with files[-1].open("ab") as f:
        f.write(b'{"type": "feedback", "id": "torn')  # a crash mid-line
    assert [r.id for r in read_records(tmp_path, FeedbackLine)] == [str(i) for i in range(20)]


class TornWriteLog(PredictionLog):
    """Its second write stops half-way with ENOSPC, once the test says so (``release``), so
    the test can queue another group behind the failing one."""

    def __init__(self, directory: Path) -> None:
        self.writes = 0
        self.entered, self.release = threading.Event(), threading.Event()
        super().__init__(directory)

    def write_all(self, data: bytes) -> None:
        self.writes += 1
        if self.writes == 2:
            self.entered.set()
            self.release.wait(30)
            super().write_all(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write_all(data)


def test_a_failed_write_is_cut_back_and_nothing_is_written_after_it(tmp_path: Path) -> None:
    log = TornWriteLog(tmp_path)
    outcome: queue.Queue[tuple[str, BaseException | None]] = queue.Queue()

    def record(key: str) -> tuple[list[dict[str, object]], Callable[[BaseException | None], None]]:
        return [log_line("prediction", id=key)], lambda e: outcome.put((key, e))

    log.append(*record("first"))
    assert outcome.get(timeout=30) == ("first", None)
    log.append(*record("torn"))
    assert log.entered.wait(30)
    log.append(*record("queued behind"))  # accepted: the failure is not known yet
    log.release.set()
    results = dict(outcome.get(timeout=30) for _ in range(2))
    assert isinstance(results["torn"], LogWriteError)
    assert isinstance(results["queued behind"], LogWriteError)
    assert "No space left on device" in str(results["torn"])
    with pytest.raises(LogWriteError, match="failed earlier"):
        log.append(*record("late"))
    assert not log.healthy
    log.close()
    (path,) = tmp_path.glob("*.jsonl")
    assert path.read_bytes().count(b"\n") == 1 and path.read_bytes().endswith(b"\n")
    assert [r.id for r in read_records(tmp_path)] == ["first"]


def test_batcher_groups_requests_and_drains_on_close() -> None:
    seen: list[int] = []

    def process(arrays: list[np.ndarray]) -> list[int]:
        seen.append(sum(len(a) for a in arrays))
        time.sleep(0.02)  # a slow model: requests pile up meanwhile
        return [int(a.sum()) for a in arrays]

    batcher: DynamicBatcher[int] = DynamicBatcher(process, max_batch=8, max_wait_s=0.01)

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(np.full((1,), i)) for i in range(40)))

    assert asyncio.run(main()) == list(range(40))
    assert max(seen) <= 8 and len(seen) < 40 and sum(seen) == 40
    batcher.close()

    async def late() -> None:
        await batcher.submit(np.zeros(1))

    with pytest.raises(BatcherClosedError):
        asyncio.run(late())


def test_batcher_off_runs_one_request_per_call_and_never_splits() -> None:
    sizes: list[list[int]] = []

    def process(arrays: list[np.ndarray]) -> list[int]:
        sizes.append([len(a) for a in arrays])
        return [len(a) for a in arrays]

    off: DynamicBatcher[int] = DynamicBatcher(process, max_batch=1, max_wait_s=0)

    async def main() -> list[int]:
        return await asyncio.gather(*(off.submit(np.zeros((n,))) for n in (1, 3, 1)))

    assert asyncio.run(main()) == [1, 3, 1]
    assert sorted(map(tuple, sizes)) == [(1,), (1,), (3,)]
    off.close()


def test_multi_label_predictor_uses_sigmoid(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The same settings as test_export.py's multi-label model: one export per session.
    root = cached_demo_bundle(
        tmp_path_factory.getbasetemp() / "serve-ml",
        task_type="multi-label",
        num_classes=5,
        channels=1,
    )
    pred = onnx_predictor(root, PredictionLog(tmp_path / "logs"), max_batch=4)
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    out = asyncio.run(pred.predict(x))
    pred.close()
    for p in out:
        probs = np.array(list(p["probabilities"].values()))
        assert isinstance(p["label"], list)
        assert p["label_index"] == [i for i, v in enumerate(probs) if v > 0.5]
        assert not np.isclose(probs.sum(), 1.0)  # independent sigmoids, not a softmax
    assert len(list(read_records(tmp_path / "logs", PredictionLine))) == 3


def _npy(n: int, seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8))
    return buf.getvalue()


async def _fire(url: str, requests: int, concurrency: int) -> list[str]:
    """``requests`` predict requests, ``concurrency`` at a time; returns every answered id."""
    sem = asyncio.Semaphore(concurrency)
    bodies = [_npy(1 + i % 3, i) for i in range(requests)]

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(body: bytes) -> list[str]:
            async with sem:
                r = await client.post(
                    "/v1/predict", content=body, headers={"content-type": "application/x-npy"}
                )
                r.raise_for_status()
                return [p["id"] for p in r.json()["predictions"]]

        results = await asyncio.gather(*(one(b) for b in bodies))
    return [pid for ids in results for pid in ids]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def test_concurrent_requests_give_exactly_one_record_each(bundle: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with LocalServer(bundle, logs, args=["--max-batch", "16"]) as srv:
        answered = asyncio.run(_fire(srv.url, requests=150, concurrency=32))
        metrics = httpx.get(srv.url + "/metrics").text
    assert len(answered) == sum(1 + i % 3 for i in range(150))
    logged = Counter(r.id for r in read_records(logs, PredictionLine))
    assert set(logged) == set(answered)  # no record lost, none invented
    assert max(logged.values()) == 1  # none written twice
    batch_sizes = [
        line for line in metrics.splitlines() if line.startswith("pomlia_batch_size_images_count")
    ]
    n_batches = float(batch_sizes[0].split()[-1])
    assert n_batches < 150  # concurrent requests were batched together


def test_sigterm_ends_the_server_with_one_line(bundle: Path, tmp_path: Path) -> None:
    """`pomlia serve` ended silently on SIGTERM (a Slurm output file stopped at "serving
    ..."): it says "stopped (SIGTERM)" once and exits 0."""
    srv = LocalServer(bundle, tmp_path / "logs").start()
    srv.signal(signal.SIGTERM)
    code = srv.wait(60)
    srv.stop()  # ended: this removes the server's temporary folder (its output stays readable)
    assert code == 0, srv.log_tail()
    lines = [line.strip() for line in srv.log_tail().splitlines() if line.strip()]
    assert lines.count("stopped (SIGTERM)") == 1 and lines[-1] == "stopped (SIGTERM)", lines


def test_sigterm_under_load_loses_no_answered_prediction(bundle: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    srv = LocalServer(bundle, logs, args=["--max-batch", "8"]).start()
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:

            async def worker(k: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = await client.post(
                            "/v1/predict",
                            content=_npy(1 + i % 2, k * 1000 + i),
                            headers={"content-type": "application/x-npy"},
                        )
                    except httpx.HTTPError as exc:  # refused once the server stops listening
                        failures.append(type(exc).__name__)
                        return
                    if r.status_code == 200:
                        answered.extend(p["id"] for p in r.json()["predictions"])
                    else:
                        failures.append(str(r.status_code))

            await asyncio.gather(*(worker(k) for k in range(16)))

    t = threading.Thread(target=asyncio.run, args=(load(),))
    t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.signal(signal.SIGTERM)
    code = srv.wait(60)
    srv.stop()  # ended: this removes the server's temporary folder (its output stays readable)
    stop.set()
    t.join(60)
    assert code == 0, srv.log_tail()
    assert len(answered) >= 100
    logged = Counter(r.id for r in read_records(logs, PredictionLine))
    missing = set(answered) - set(logged)
    assert not missing, f"{len(missing)} answered predictions are not in the log"
    assert max(logged.values()) == 1
    # Anything logged but not answered can only be a request whose client gave up.
    assert len(set(logged) - set(answered)) <= 16 * 2


def test_torch_backend_agrees_with_onnxruntime(bundle: Path) -> None:
    b = ExportedBundle.open(bundle)
    x = np.random.default_rng(3).standard_normal((5, 3, 28, 28)).astype(np.float32)
    onnx = load_runtime(b, "onnx", threads=1)
    ts = load_runtime(b, "torch", threads=1)
    assert (onnx.backend, ts.backend) == ("onnx", "torch")
    assert load_runtime(b, "auto").backend == ("torch" if ts.device == "cuda" else "onnx")
    np.testing.assert_allclose(ts.logits(x), onnx.logits(x), atol=1e-4)
