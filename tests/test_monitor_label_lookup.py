"""The monitor's look-up of a late label's prediction reads no more of a month of logs than
the label needs: a prediction id says when it was issued (:mod:`pomlia_hpc.serve.ids`), so a
label whose prediction is not in the look-back no longer makes each run read all of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from pomlia_hpc.monitor.labels import Arrivals, join_labels
from pomlia_hpc.serve.ids import issued_at, prediction_ids
from pomlia_hpc.serve.records import FeedbackLine
from tests.fixtures.factories import log_line

DAYS = 30
PER_DAY = 24


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the log files opened while the test runs."""
    names: list[str] = []
    real = Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.suffix == ".jsonl":
            names.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    yield names


def month_of_logs(folder: Path, end: datetime) -> dict[int, list[str]]:
    """One file per day for the ``DAYS`` days before ``end``, as a server restarted daily
    writes them (named by its start, last changed at the day's end); the ids by days back."""
    folder.mkdir(parents=True)
    out: dict[int, list[str]] = {}
    for back in range(DAYS, 0, -1):
        day = end - timedelta(days=back)
        times = [day + timedelta(hours=h) for h in range(PER_DAY)]
        ids = [prediction_ids(1, t.timestamp())[0] for t in times]
        lines = [
            log_line("prediction", id=pid, time=t.isoformat(timespec="microseconds"))
            for pid, t in zip(ids, times, strict=True)
        ]
        path = folder / f"{day:%Y%m%dT%H%M%S}-node-{back}-0000.jsonl"
        path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        last = (day + timedelta(days=1)).timestamp()
        os.utime(path, (last, last))
        out[back] = ids
    return out


def arrivals(pids: list[str], when: datetime) -> Arrivals:
    got = Arrivals()
    for pid in pids:
        line = log_line("feedback", prediction_id=pid, time=when.isoformat())
        got.add(FeedbackLine.model_validate(line))
    return got


def test_a_label_whose_prediction_is_not_in_the_look_back_reads_no_more_files(
    tmp_path: Path, opened: list[str]
) -> None:
    """A month of daily files; a window of the last day with a late label of a prediction two
    days old. A second label, of a prediction older than the 7-day look-back, made the look-up
    open every file of the look-back (8 of them); it is now known to be too old without
    reading any, and one whose file was deleted costs the files of its day only."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    folder = tmp_path / "logs"
    ids = month_of_logs(folder, end)
    since = end - timedelta(days=1)
    known, too_old = ids[2][5], ids[20][5]
    assert issued_at(known) is not None

    def look_up(pids: list[str]) -> tuple[int, int, set[str]]:
        opened.clear()
        join = join_labels(
            arrivals(pids, since + timedelta(hours=1)),
            {},
            [folder],
            model="demo",
            version="v0",
            since=since,
            lookback=timedelta(days=7),
        )
        return len(join.tested), join.unknown, set(opened)

    tested, unknown, alone = look_up([known])
    assert (tested, unknown) == (1, 0) and len(alone) == 1
    assert look_up([known, too_old]) == (1, 1, alone)
    deleted = ids[4][12]
    (gone,) = [p for p in folder.glob("*-node-4-0000.jsonl")]
    gone.unlink()
    tested, unknown, files = look_up([known, deleted])
    assert (tested, unknown) == (1, 1)
    assert len(files - alone) <= 2  # the files next to the deleted day's (the clock margin)
