"""The prediction log's readers share one rule for which files to open, for a torn last line
and for which of two labels of one prediction holds (:mod:`pomlia_hpc.serve.logfiles`): the
monitor and the harvest read the same log the same way."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.serve.issued import Claim, IssuedIds
from pomlia_hpc.serve.labelled import labelled_inputs
from pomlia_hpc.serve.predlog import log_dir
from tests.fixtures.factories import log_line
from tests.monitor_support import (
    CLASSES,
    MonitorEnv,
    append_lines,
    demo_workspace,
    images,
    label,
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


def monitor_json_args(args: list[str]) -> dict[str, Any]:
    res = runner.invoke(app, ["monitor", "run", "blood", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return dict(json.loads(res.stdout[res.stdout.index("{") :]))


def monitor_json(since: datetime, until: datetime) -> dict[str, Any]:
    return monitor_json_args(["--since", since.isoformat(), "--until", until.isoformat(), "--json"])


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


def test_a_record_written_after_the_run_read_its_window_is_in_the_next_window(
    fresh: MonitorEnv,
) -> None:
    """The nightly runs at T and T + 1 h (`--until`, the scheduled start): a prediction timed
    30 s before T but written after the run at T read the log (a replica whose clock is
    behind, a slow disk) fell between the two windows and was tested by neither. With the
    chain's settling margin (`--settle 5m`) each window ends 5 minutes before its run, so the
    second run tests it, once."""
    ws, _reg, bundle = fresh
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    x, _y = images(1)

    def predictions(end: datetime, *settle: str) -> int:
        window = ["--until", end.isoformat(), "--window", "1h", *settle, "--json"]
        report = monitor_json_args(window)
        return int(report["volume"]["predictions"])

    def two_nights(*settle: str) -> list[int]:
        first = predictions(t, *settle)
        log_predictions(ws, bundle, x, when=t - timedelta(seconds=30))  # after the run read
        return [first, predictions(t + timedelta(hours=1), *settle)]

    assert two_nights() == [0, 0]  # without a margin: between the two windows
    for path in log_dir(ws.path("logs"), "blood").glob("*.jsonl"):
        path.unlink()
    assert two_nights("--settle", "5m") == [0, 1]


def test_of_two_files_last_changed_in_the_same_second_start_up_reads_the_later_name_first(
    tmp_path: Path,
) -> None:
    """A file system that keeps whole seconds (Lustre) gives a writer's rotated file and its
    next one the same last change: start-up read the rotated file first and, its feedback
    window full, never read the next, so feedback for the newest predictions got a 404."""
    old, new = (tmp_path / f"20260101T000000-node-1-000{seq}.jsonl" for seq in (0, 1))
    ids = {}
    for path in (old, new):
        recs = [log_line("prediction") for _ in range(2)]
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
        os.utime(path, (1767225600, 1767225600))
        ids[path] = [r["id"] for r in recs]
    issued = IssuedIds.from_log(tmp_path, None, capacity=2)
    assert [issued.claim(pid, replaces=False) for pid in ids[new]] == [Claim.OK, Claim.OK]
