"""A newer server's prediction log read by an older monitor (the rule: docs/ARCHITECTURE.md,
"Files other processes read"). Keys this version does not know were counted as corruption:
every record of a server that added an optional key was skipped and the window looked empty.
They are ignored and counted by name now, known keys are still checked strictly, and a record
of a newer major log format (``format``) is skipped and counted, not misread."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pomlia_hpc.errors import InputError
from pomlia_hpc.monitor.logread import read_window
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import (
    LOG_FORMAT,
    BadLineError,
    NewerFormatError,
    PredictionLine,
    parse_line,
    read_line,
)
from tests.fixtures.factories import log_line, log_window

T = "2026-01-01T00:00:00.000000+00:00"


def write(path: Path, *lines: dict) -> None:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))


def test_records_with_unknown_keys_are_read_and_the_keys_counted(tmp_path: Path) -> None:
    plain = log_line("prediction", time=T)
    newer = log_line("prediction", time=T, request_images=2)
    newer["colour"] = "red"
    newer["output"]["p"] = 1
    second = dict(log_line("prediction", time=T), colour="blue")
    feedback = dict(log_line("feedback", time=T, prediction_id=plain["id"]), colour="x")
    rejection = dict(log_line("rejection", time=T), source="upload")
    write(tmp_path / "a.jsonl", plain, newer, second, feedback, rejection)
    win = log_window(tmp_path)
    assert win.corrupt_lines == 0 and win.corrupt_examples == []
    assert win.n_predictions == 3 and win.n_requests == 2  # the batch of 2 is one request
    assert len(win.feedback) == 1 and sum(win.rejections.values()) == 1
    assert win.unknown_key_lines == 4
    assert win.unknown_keys == {"colour": 3, "output.p": 1, "source": 1}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"deployment": "3"}, "bad value for 'deployment'"),
        ({"fingerprint": None}, "bad value for 'fingerprint'"),
        ({"model_version": None}, "bad value for 'model_version'"),
    ],
)
def test_known_keys_are_still_checked_beside_unknown_ones(
    tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    bad = {**log_line("prediction", time=T), "colour": "red", **change}
    missing = {k: v for k, v in log_line("prediction", time=T).items() if k != "time"}
    write(tmp_path / "a.jsonl", bad, {**missing, "colour": "red"}, log_line("prediction", time=T))
    win = log_window(tmp_path)
    assert win.corrupt_lines == 2 and win.n_predictions == 1 and win.unknown_key_lines == 0
    # The known key that makes each corrupt is named, not the unknown one beside it.
    first, second = win.corrupt_examples
    assert first.startswith(f"a.jsonl:1: {problem}: ")
    assert second == "a.jsonl:2: key 'time' is missing"
    with pytest.raises(BadLineError) as info:
        read_line(orjson.dumps(bad))
    assert str(info.value).startswith(f"{problem}: ")


def test_a_record_of_a_newer_major_format_is_skipped_not_misread(tmp_path: Path) -> None:
    newer = log_line("prediction", time=T)
    assert "format" not in newer  # this version writes none
    newer["format"] = LOG_FORMAT + 1
    # A newer format may change what a known key holds: still refused, not corrupt.
    changed = {**log_line("prediction", time=T), "format": LOG_FORMAT + 1, "output": "a"}
    explicit = {**log_line("prediction", time=T), "format": LOG_FORMAT}
    write(tmp_path / "a.jsonl", newer, changed, explicit)
    win = log_window(tmp_path)
    assert win.newer_formats == {LOG_FORMAT + 1: 2}
    assert win.corrupt_lines == 0 and win.n_predictions == 1
    # The strict readers (harvest, server start-up) refuse it with the same words.
    for raw in (orjson.dumps(newer), orjson.dumps(changed)):
        with pytest.raises(NewerFormatError, match=f"record of log format {LOG_FORMAT + 1}, "):
            parse_line(raw)
    with pytest.raises(InputError, match=r"a.jsonl:1: record of log format 2, newer than .*upg"):
        list(read_records(tmp_path))


def test_the_strict_parse_still_refuses_unknown_keys() -> None:
    line = orjson.dumps({**log_line("prediction"), "colour": "red"})
    with pytest.raises(BadLineError, match=r"^unknown key 'colour'; valid keys: "):
        parse_line(line)
    rec, unknown = read_line(line)
    assert isinstance(rec, PredictionLine) and unknown == ("colour",)


def test_a_file_last_changed_just_before_the_window_by_the_file_servers_clock_is_read(
    tmp_path: Path,
) -> None:
    """The file server's clock (a file's last change) and the writing node's (its records'
    times) differ by minutes: a file "last changed" 5 min before the window held a record 2
    min into it, was skipped with 1 s of slack, and the record was counted in no window."""
    import os
    from datetime import UTC, datetime

    path = tmp_path / "20260101T000000-h-1-0000.jsonl"
    write(path, log_line("prediction", time="2026-01-01T00:02:00.000000+00:00"))
    changed = datetime(2025, 12, 31, 23, 55, tzinfo=UTC).timestamp()
    os.utime(path, (changed, changed))
    win = read_window(
        tmp_path,
        model="demo",
        version="v0",
        kind="stats-thumb-v1",
        dim=2,
        since=datetime(2026, 1, 1, tzinfo=UTC),
        until=datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert win.n_predictions == 1 and win.files_skipped_old == 0
