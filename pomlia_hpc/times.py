"""Recorded times read back: pomlia records times in UTC, as aware datetimes or ISO 8601 text
(an older record's text may carry no zone, which then means UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def as_utc(value: Any) -> datetime | None:
    """``value`` (a datetime, or ISO 8601 text) as an aware datetime in UTC (one without a
    zone is taken as UTC); None for None, empty text or text that is no time."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
