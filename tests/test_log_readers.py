"""The prediction log's readers share one rule for which files to open, for a torn last line
and for which of two labels of one prediction holds (:mod:`pomlia_hpc.serve.logfiles`): the
monitor and the harvest read the same log the same way."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.serve.labelled import labelled_inputs
from pomlia_hpc.serve.predlog import log_dir
from tests.monitor_support import (
    CLASSES,
    MonitorEnv,
    append_lines,
    demo_workspace,
    images,
    log_predictions,
    with_empty_log,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorEnv]:
    yield from demo_workspace(tmp_path_factory, "log-readers")


@pytest.fixture
def fresh(env: MonitorEnv, monkeypatch: pytest.MonkeyPatch) -> MonitorEnv:
    return with_empty_log(env, monkeypatch)


def label(pred: dict[str, Any], when: datetime, index: int, **more: Any) -> dict[str, Any]:
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


def monitor_json(since: datetime, until: datetime) -> dict[str, Any]:
    window = ["--since", since.isoformat(), "--until", until.isoformat(), "--json"]
    res = runner.invoke(app, ["monitor", "run", "blood", *window])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return dict(json.loads(res.stdout[res.stdout.index("{") :]))


def test_monitor_and_harvest_keep_the_later_label_by_time(fresh: MonitorEnv) -> None:
    """Two servers took labels of one prediction: the first label in the file whose name
    sorts last, its correction (later by time) in the one that sorts first. The harvest kept
    the label it read last (the first one); the monitor the later by time. Both keep the
    correction now; of two labels of the same time, both keep the one read later."""
    ws, _reg, bundle = fresh
    at = datetime.now(UTC) - timedelta(hours=3)
    x, _y = images(2)
    one, two = log_predictions(ws, bundle, x, when=at, keep_inputs=True)
    right = [int(p["output"]["label_index"]) for p in (one, two)]
    wrong = [(r + 1) % CLASSES for r in right]
    folder = log_dir(ws.path("logs"), "blood")
    first, fix = at + timedelta(minutes=10), at + timedelta(minutes=40)
    append_lines(folder / "b-server.jsonl", label(one, first, wrong[0]))
    append_lines(folder / "a-server.jsonl", label(one, fix, right[0], replaces=True))
    # A tie: the same time on both servers; the file read later ("b") holds.
    append_lines(folder / "a-server.jsonl", label(two, first, right[1]))
    append_lines(folder / "b-server.jsonl", label(two, first, wrong[1], replaces=True))
    got = labelled_inputs(folder, since=at - timedelta(hours=1))
    assert dict(zip(got.ids, got.labels, strict=True)) == {
        one["id"]: [right[0]],
        two["id"]: [wrong[1]],
    }
    perf = monitor_json(at - timedelta(hours=1), at + timedelta(hours=1))["performance"]
    assert perf["labels"] == 2 and perf["accuracy"] == 0.5
