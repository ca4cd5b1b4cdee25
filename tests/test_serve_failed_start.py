"""A server whose model fails to load leaves no thread running (serve/holder.py): the lifespan
calls no stop() for a start that failed."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.holder import ModelHolder
from pomlia_hpc.serve.metrics import ServerMetrics

OURS = ("peer-logs", "prediction-log")


def test_a_model_that_fails_to_load_leaves_no_reader_or_writer_thread(tmp_path: Path) -> None:
    """The peer reader started before the model loaded, and neither it nor the log's writer
    was stopped when loading failed: each failed start in a process (a test, a notebook, an
    embedding application) left two threads reading and waiting for good."""
    root = tmp_path / "bundle"
    shutil.copytree(cached_demo_bundle(tmp_path / "cache", num_classes=4), root)
    bundle = ExportedBundle.open(root)
    onnx = bundle.file("model.onnx")
    assert onnx is not None
    onnx.write_bytes(b"not an ONNX model")  # damaged after the server opened the bundle
    before = {t for t in threading.enumerate() if t.name in OURS}
    config = ServeConfig(backend="onnx", peer_read_interval_s=0.05, watch_interval_s=0)
    holder = ModelHolder(bundle, config, tmp_path / "logs", ServerMetrics())
    with pytest.raises(Exception, match=r"(?i)onnx|protobuf|load|model"):
        asyncio.run(holder.start())
    left = [t for t in threading.enumerate() if t.name in OURS and t not in before]
    for t in left:
        t.join(60)  # a bound for a loaded machine: a stopped thread ends at once
    assert [t.name for t in left if t.is_alive()] == []
