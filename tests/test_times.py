"""Recorded times read back in UTC (pomlia_hpc.times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from pomlia_hpc.times import as_utc


def test_recorded_times_are_read_back_in_utc() -> None:
    noon = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert as_utc(noon) == noon
    assert as_utc("2026-12-06T12:00:00") == noon  # no zone: UTC, as pomlia records it
    assert as_utc("2026-12-06T13:00:00+01:00") == noon
    assert as_utc(datetime(2026, 12, 6, 7, 0, tzinfo=timezone(timedelta(hours=-5)))) == noon
    assert as_utc(datetime(2026, 12, 6, 12, 0)) == noon
    assert as_utc("2026-12-06T13:00:00+01:00").tzinfo == UTC  # type: ignore[union-attr]


def test_what_is_no_time_is_none() -> None:
    for value in (None, "", "yesterday", "n/a"):
        assert as_utc(value) is None
