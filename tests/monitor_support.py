"""Helpers for the monitor tests: a registered, exported demo model with a reference computed
from look-alike validation images, and prediction logs written by the server's own code
(:class:`Predictor` and :class:`PredictionLog`), so the records are exactly what a server logs.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.monitor.schedule import job_name
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.demo import register_demo_model
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.inbox import Inbox, encode_image, inputs_dir
from pomlia_hpc.serve.predlog import PredictionLog, log_dir
from pomlia_hpc.serve.reference import compute_reference, write_reference
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import onnx_predictor
from tests.fixtures.waiting import wait_until

MonitorEnv = tuple[Workspace, Registry, Path]

FLAG = "bloodmnist"  # RGB 28 px, 8 classes
CLASSES = 8


def images(n: int, seed: int = 0, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``n`` look-alike images uint8 (n, 28, 28, 3) and labels (n,)."""
    x, y = make_split(FLAG, n, seed=seed, size=28, split=split)
    return x, y[:, 0].astype(int)


def demo_model(reg: Registry, ws: Workspace, name: str = "blood", n_ref: int = 300) -> Path:
    """Register + export an (untrained) demo model and write its reference from ``n_ref``
    validation look-alikes; returns the bundle directory."""
    res = register_demo_model(reg, ws, name, channels=3, num_classes=CLASSES)
    x, y = images(n_ref, split="val")
    ref = compute_reference(res.bundle, x, y, source=f"{FLAG} look-alike [val]", threads=1)
    write_reference(res.bundle, ref)
    return res.bundle.root


def log_predictions(
    ws: Workspace,
    bundle_dir: Path,
    x: np.ndarray,
    *,
    when: datetime | None = None,
    labels: np.ndarray | None = None,
    deployment: int | None = None,
    keep_inputs: bool = False,
    log_name: str | None = None,
    one_request: bool = True,
) -> list[dict[str, Any]]:
    """Run the server's predictor on uint8 ``x`` and log the records (one new log file, as a
    new server process would); ``when`` rewrites their time; ``labels`` adds feedback ((n,)
    class indices, or (n, L) 0/1 rows for a multi-label model); ``log_name``: the folder's
    name (a deployment slot's) instead of the model's; ``one_request``: ``x`` came as one
    request (a batch), else as one request per image."""
    bundle = ExportedBundle.open(bundle_dir)
    directory = log_dir(ws.path("logs"), log_name or bundle.name)
    # Written in a side folder, then moved in under a name of its own: each call is one more
    # server process's file (two calls in the same second would otherwise share a name).
    staging = directory.parent / f".staging-{os.urandom(4).hex()}"
    log = PredictionLog(staging, fsync=False)
    pred = onnx_predictor(bundle_dir, log, deployment_id=deployment)
    try:
        scaled = x.astype(np.float32) / 255.0
        results = pred.process([scaled] if one_request else [row[None] for row in scaled])
    finally:
        pred.batcher.close()
    records = [r for res in results for r in res.records]
    t = (when or datetime.now(UTC)).isoformat(timespec="microseconds")
    for r in records:
        r["time"] = t
    feedback = []
    if labels is not None:
        for r, y in zip(records, labels, strict=True):
            feedback.append(
                {
                    "type": "feedback",
                    "id": os.urandom(16).hex(),
                    "time": t,
                    "prediction_id": r["id"],
                    "model": bundle.name,
                    "model_version": bundle.version,
                    "deployment": deployment,
                    **_label(bundle.labels, y),
                }
            )
    log.append(records + feedback)
    log.close()
    directory.mkdir(parents=True, exist_ok=True)
    for path in staging.glob("*.jsonl"):
        path.rename(directory / f"{path.stem}-{os.urandom(3).hex()}.jsonl")
    staging.rmdir()
    if keep_inputs:  # what `pomlia serve --keep-inputs` stores beside the log
        inbox = Inbox(inputs_dir(directory), fsync=False)
        for r, img in zip(records, x, strict=True):
            inbox.write(encode_image(r["id"], r["time"], img))
        inbox.close()
    return records


def append_lines(path: Path, *lines: bytes | dict[str, Any]) -> None:
    with path.open("ab") as f:
        for line in lines:
            if isinstance(line, dict):
                line = orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
            f.write(line)


def _label(names: list[str], y: Any) -> dict[str, Any]:
    """The feedback ``label`` and ``label_index`` of ``y``: a class index, or a 0/1 row."""
    if np.ndim(y):
        idx = [int(i) for i in np.flatnonzero(y)]
        return {"label": [names[i] for i in idx], "label_index": idx}
    return {"label": names[int(y)], "label_index": int(y)}


def demo_workspace(tmp: pytest.TempPathFactory, prefix: str) -> Iterator[MonitorEnv]:
    """For a module fixture: one workspace with an exported demo model 'blood' and its
    reference (export is slow); yields (workspace, registry, bundle), closes the registry."""
    home = tmp.mktemp(prefix) / "home"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    bundle = demo_model(reg, ws)
    yield ws, reg, bundle
    reg.dispose()


def with_empty_log(env: MonitorEnv, monkeypatch: pytest.MonkeyPatch) -> MonitorEnv:
    """``env`` with an empty prediction log for 'blood', selected for the CLI."""
    ws = env[0]
    shutil.rmtree(log_dir(ws.path("logs"), "blood"), ignore_errors=True)
    monkeypatch.setenv("POMLIA_HOME", str(ws.home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    return env


@contextmanager
def local_time_zone(zone: str) -> Iterator[None]:
    """This process's local time zone set to ``zone`` (TZ + tzset), the old one put back."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def scheduled_hourly_chain(
    reg: Registry, ws: Workspace, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> Iterator[str]:
    """For a fixture: an hourly chain of its own demo model (job names are the user's,
    cluster-wide), its first run an hour ahead, on the real Slurm; the test runs as that job
    (``SLURM_JOB_ID`` set to it). Yields the model's name; ends the chain after."""
    runner = CliRunner()
    model = f"{prefix}-{os.getpid()}"
    demo_model(reg, ws, name=model, n_ref=50)
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    res = runner.invoke(app, ["monitor", "schedule", model, "--at", "", "--every", "1h"])
    assert res.exit_code == 0, (res.output, res.exception)
    (first,) = jobs_named(job_name(model))
    monkeypatch.setenv("SLURM_JOB_ID", first.job_id)
    yield model
    monkeypatch.delenv("SLURM_JOB_ID")
    runner.invoke(app, ["monitor", "unschedule", model])
    wait_until(lambda: jobs_named(job_name(model)) == [], timeout=60, interval=0.5, what="end")


def label(pred: dict[str, Any], when: datetime, index: int, **more: Any) -> dict[str, Any]:
    """A feedback record giving prediction ``pred`` (a logged prediction's dict) the label of
    class ``index`` at ``when``, as the server logs it; ``more``: extra or replaced keys."""
    return {
        "type": "feedback",
        "id": os.urandom(16).hex(),
        "time": when.isoformat(timespec="microseconds"),
        "prediction_id": pred["id"],
        "model": pred["model"],
        "model_version": pred["model_version"],
        "deployment": None,
        "label": str(index),
        "label_index": index,
        **more,
    }
