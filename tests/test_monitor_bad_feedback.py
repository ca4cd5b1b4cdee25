"""Log records the server never writes, read by the monitor and the harvest: a feedback label
that names no class of the model (``label_index`` 99 or -1 of an 8-class model) was scored as a
wrong answer, silently; a ``time`` that is no time (``"yesterday"``) dropped its record from
every window, silently. Such a label is counted and named now, not tested; such a line is a
corrupt line, counted and quoted; a time written with another offset is read at its instant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError
from pomlia_hpc.monitor.logread import LogWindow, read_window
from pomlia_hpc.serve.inbox import Inbox, encode_image, inputs_dir
from pomlia_hpc.serve.labelled import labelled_inputs
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.predictor import now_iso
from pomlia_hpc.serve.predlog import PredictionLog, log_dir
from pomlia_hpc.serve.records import parse_line
from tests.fixtures.factories import log_line
from tests.monitor_support import (
    MonitorEnv,
    append_lines,
    demo_workspace,
    images,
    label,
    log_predictions,
    with_empty_log,
)

runner = CliRunner()
T = "2026-01-01T00:00:00.000000+00:00"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorEnv]:
    yield from demo_workspace(tmp_path_factory, "bad-feedback")


@pytest.fixture
def fresh(env: MonitorEnv, monkeypatch: pytest.MonkeyPatch) -> MonitorEnv:
    return with_empty_log(env, monkeypatch)


def monitor_json(*args: str) -> tuple[int, dict[str, Any]]:
    res = runner.invoke(app, ["monitor", "run", "blood", *args, "--json"])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, dict(json.loads(res.stdout[res.stdout.index("{") :]))


def write(path: Path, *lines: dict[str, Any]) -> None:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))


def window(folder: Path, since: datetime, until: datetime, **kw: Any) -> LogWindow:
    """``folder``'s log as the monitor reads it for model ``demo`` v0 (:func:`log_line`'s)."""
    return read_window(
        folder,
        model="demo",
        version="v0",
        kind="stats-thumb-v1",
        dim=2,
        since=since,
        until=until,
        **kw,
    )


def test_labels_naming_no_class_are_counted_and_named_not_scored_as_misses(
    fresh: MonitorEnv,
) -> None:
    ws, _reg, bundle = fresh
    x, _y = images(42)
    records = log_predictions(ws, bundle, x)
    (path,) = log_dir(ws.path("logs"), "blood").glob("*.jsonl")
    when = datetime.now(UTC) - timedelta(minutes=1)
    append_lines(path, label(records[40], when, 99), label(records[41], when, -1))
    append_lines(path, *(label(r, when, r["output"]["label_index"]) for r in records[:40]))
    code, report = monitor_json("--window", "24h")
    perf = report["performance"]
    # The 40 right labels are tested; the two that name no class are not misses.
    assert perf["labels"] == 40 and perf["accuracy"] == 1.0
    assert perf["labels_out_of_range"] == 2
    (note,) = [n for n in report["notes"] if "name no class" in n]
    assert note.startswith("2 label(s) name no class of the model")
    assert note.endswith(f"the first: {path.name}:{len(records) + 1}: label_index 99")
    assert code == 0, report["reasons"]


def test_multi_label_indices_past_the_labels_are_counted_whichever_label_holds(
    tmp_path: Path,
) -> None:
    """Of a prediction's labels the one that holds decides (a valid replacement of a bad
    label is tested, a bad replacement of a valid one is not); the label-wise score of
    ``[0, 7]`` against a 3-label answer was below 0."""
    preds = [
        log_line(
            "prediction", time=T, output={"label": [], "label_index": [0], "probabilities": []}
        )
        for _ in range(5)
    ]
    ok, past, int_past, fixed, broken = (p["id"] for p in preds)
    feedback = [
        log_line("feedback", time=T, prediction_id=ok, label=[], label_index=[0, 1]),
        log_line("feedback", time=T, prediction_id=past, label=[], label_index=[0, 7]),
        log_line("feedback", time=T, prediction_id=int_past, label="x", label_index=3),
        log_line("feedback", time=T, prediction_id=fixed, label=[], label_index=[9]),
        log_line(
            "feedback",
            time=T,
            prediction_id=fixed,
            label=[],
            label_index=[1],
            revision=2,
            replaces=True,
        ),
        log_line("feedback", time=T, prediction_id=broken, label=[], label_index=[2]),
        log_line(
            "feedback",
            time=T,
            prediction_id=broken,
            label=[],
            label_index=[-1],
            revision=2,
            replaces=True,
        ),
    ]
    write(tmp_path / "a.jsonl", *preds, *feedback)
    since = datetime(2025, 12, 31, tzinfo=UTC)
    win = window(tmp_path, since, since + timedelta(days=2), multi_label=True, classes=3)
    assert sorted(map(str, (t for _p, t, _w in win.feedback))) == ["[0, 1]", "[1]"]
    assert win.labels.out_of_range == 3
    assert win.labels.out_of_range_first == "a.jsonl:7: label_index [0, 7]"


def kept_with_labels(folder: Path, given: list[int | list[int]]) -> list[str]:
    """A log in ``folder`` of one prediction with a kept input per label of ``given``, and
    its feedback (a list: multi-label); the predictions' ids."""
    plog = PredictionLog(folder, sidecar=Inbox(inputs_dir(folder)), fsync=False)
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    ids = [f"{i:032x}" for i in range(len(given))]
    for pid in ids:
        rec = log_line("prediction", id=pid, time=now, input_kept=True)
        plog.append([rec], inputs=encode_image(pid, now, np.zeros((4, 4, 3), np.float32)))
    plog.append(
        [
            log_line("feedback", time=now, prediction_id=pid, label=[], label_index=idx)
            for pid, idx in zip(ids, given, strict=True)
        ]
    )
    plog.close()
    return ids


def test_the_harvest_counts_multi_label_indices_past_the_width(tmp_path: Path) -> None:
    """A row of 0/1 per label silently dropped an index at or past the width: the image went
    into the data set with a label the user never gave."""
    ids = kept_with_labels(tmp_path / "a", [[0, 2], [1, 3], [-1]])
    got = labelled_inputs(tmp_path / "a", multi_label_width=3)
    assert got.ids == [ids[0]] and got.labels == [[1, 0, 1]]
    assert got.counts["label_out_of_range"] == 2
    assert got.counts["no_input"] == 0 and got.counts["used"] == 1
    # None out of range: no key, so a harvest's provenance (and its hash) stays as it was.
    kept_with_labels(tmp_path / "b", [[0, 2], [1]])
    assert "label_out_of_range" not in labelled_inputs(tmp_path / "b", multi_label_width=3).counts


def test_the_harvest_counts_single_label_indices_past_the_classes(tmp_path: Path) -> None:
    """A single-label model's number of classes was not known to the join: an index of 99
    for a 3-class model went into the data set as a class it does not have."""
    ids = kept_with_labels(tmp_path / "a", [1, 99, 3, 2])
    got = labelled_inputs(tmp_path / "a", n_classes=3)
    assert got.ids == [ids[0], ids[3]] and got.labels == [[1], [2]]
    assert got.counts["label_out_of_range"] == 2


def test_a_malformed_time_is_a_corrupt_line_quoted_with_its_key(fresh: MonitorEnv) -> None:
    ws, _reg, bundle = fresh
    x, _y = images(20)
    records = log_predictions(ws, bundle, x)
    (path,) = log_dir(ws.path("logs"), "blood").glob("*.jsonl")
    append_lines(path, dict(records[1], id="d" * 32, time="yesterday"))
    _code, report = monitor_json()
    log = report["log"]
    assert report["volume"]["predictions"] == 20
    assert log["corrupt_lines"] == 1
    (example,) = log["corrupt_examples"]
    assert example.startswith(f"{path.name}:{len(records) + 1}: bad value for 'time'")
    assert example.endswith("(got 'yesterday')")
    assert any(n.startswith("1 corrupt line(s) skipped") for n in report["notes"])


def test_times_with_another_offset_are_read_at_their_instant(tmp_path: Path) -> None:
    """Readers compare times as text: ``02:30+02:00`` (00:30 UTC) fell outside a window of
    00:00 to 01:00 UTC, and ``00:30-01:00`` (01:30 UTC) inside it."""
    times = [
        "2026-01-01T00:10:00.000000+00:00",  # as the server writes it
        "2026-01-01T02:30:00+02:00",
        "2026-01-01T00:45:00.5Z",
        "2026-01-01T00:30:00.000000-01:00",  # 01:30 UTC: after the window
        "2026-01-01T00:20:00.000000",  # no offset
        "2026-02-30T00:00:00.000000+00:00",  # no such day
    ]
    write(tmp_path / "a.jsonl", *({**log_line("prediction"), "time": t} for t in times))
    since = datetime(2026, 1, 1, tzinfo=UTC)
    win = window(tmp_path, since, since + timedelta(hours=1))
    assert win.n_predictions == 3 and win.per_hour == {"2026-01-01T00": 3}
    assert win.corrupt_lines == 2
    for lineno, example in zip((5, 6), win.corrupt_examples, strict=True):
        assert example.startswith(f"a.jsonl:{lineno}: bad value for 'time': expected an ISO")


def test_the_strict_readers_refuse_a_bad_time_and_keep_the_servers_own(tmp_path: Path) -> None:
    written = now_iso()
    assert parse_line(orjson.dumps(log_line("feedback", time=written))).time == written
    other = {**log_line("feedback"), "time": "2026-01-01T01:00:00+01:00"}
    assert parse_line(orjson.dumps(other)).time == T
    write(tmp_path / "a.jsonl", log_line("feedback"), {**log_line("feedback"), "time": "t"})
    with pytest.raises(InputError, match=r"a\.jsonl:2: bad value for 'time': .* \(got 't'\)$"):
        list(read_records(tmp_path))
