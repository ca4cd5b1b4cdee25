"""A monitoring chain that fell behind its schedule catches up in one run, not one per period.

A chain's run submits its successor one period after its own scheduled start. After an
outage (the cluster down for a week, the chain's job held) that time has long passed, and so
have the ones after it: an hourly chain down a week ran 168 times in a row, and a chain whose
period is shorter than one run fell further behind with every run. Instead, a successor
whose time has passed is scheduled at the latest of the chain's times that has passed (it
starts at once) and tests the whole span its missed runs would have tested, from the first
missed run's window start to its own scheduled start: nothing is tested twice, nothing falls
between windows, and the chain is back on its times after that one run.

A run's window is the period before its scheduled start. On the wall clock of a chain fixed to
a time of day, a summer-time change puts two runs 23 or 25 hours apart: a 24 hour window
before each tested an hour twice, or left one untested. A run's window therefore starts one
period (elapsed time) after its predecessor's (:func:`window_start`), where they meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pomlia_hpc.monitor.cronlines import next_begin


@dataclass(frozen=True)
class CatchUp:
    """The successor of a run that is behind: one run for ``missed`` scheduled runs."""

    #: Its scheduled start: the latest of the chain's times that has passed (UTC offset kept).
    begin: datetime
    #: The start of its window: the first missed run's (:func:`window_start`).
    since: datetime
    #: The scheduled runs it stands for (itself included), the first of them at ``first``.
    missed: int
    first: datetime

    def describe(self) -> str:
        """The chain log's line: what was missed and what the one run tests instead."""
        return (
            f"the chain is behind: {self.missed} run(s) due from {_show(self.first)} to "
            f"{_show(self.begin)} have not run; one run at {_show(self.begin)} (now) tests "
            f"their whole span, {_show(self.since)} to {_show(self.begin)}, instead"
        )


def catch_up(
    at: str | None,
    every: timedelta,
    after: datetime,
    window: timedelta,
    now: datetime,
) -> CatchUp | None:
    """The catch-up successor of the run scheduled at ``after`` (aware times; ``at`` and
    ``every`` as in :func:`~pomlia_hpc.monitor.cronlines.next_begin`, ``window`` the length
    each run tests), or None when its next time (one period after ``after``) is still ahead
    of ``now``."""
    first = next_begin(at, every, now=after)
    if first > now:
        return None
    if at is None:
        last = first + ((now - first) // every) * every
    else:
        # Times fixed on the wall clock: the one in (now - every, now] is the latest passed
        # (a summer-time change can move it off that span: then the first missed one).
        last = next_begin(at, every, now=now - every)
        if not first <= last <= now:
            last = first
    missed = round((last - first) / every) + 1
    return CatchUp(
        begin=last, since=window_start(after, every, window, first), missed=missed, first=first
    )


def window_start(after: datetime, every: timedelta, window: timedelta, begin: datetime) -> datetime:
    """The window start of the run at ``begin`` that follows the one scheduled at ``after``:
    one period (``every``, elapsed time) after that run's window start, ``after - window``
    (module docstring: consecutive windows meet across a summer-time change too). A window
    shorter than the period is ``window`` before ``begin``: such windows have gaps between
    them anyway, and one period after the last start could be ``begin`` itself (an empty
    window, refused) or past it."""
    if window < every:
        return begin - window
    return after.replace(microsecond=0).astimezone(UTC) + every - window


@dataclass(frozen=True)
class NextRun:
    """The run a chain's run at ``after`` submits: its scheduled start, its window start when
    that is not ``begin - window`` (a catch-up, a summer-time change between the two runs),
    and the catch-up it is, if one."""

    begin: datetime
    since: datetime | None
    behind: CatchUp | None

    def describe(self) -> str | None:
        """The chain log's line when the run is not an ordinary one: why it starts at once,
        or why its window is not ``--window`` long."""
        if self.behind is not None:
            return self.behind.describe()
        if self.since is None:
            return None
        return (
            f"the clock changes (summer time) before the next run at {self.begin.isoformat()}: "
            f"its window starts at {self.since.isoformat()}, one period after this run's"
        )


def next_run(
    at: str | None, every: timedelta, after: datetime, window: timedelta, now: datetime
) -> NextRun:
    """The successor of the run scheduled at ``after`` (arguments as for :func:`catch_up`)."""
    behind = catch_up(at, every, after, window, now)
    if behind is not None:
        return NextRun(behind.begin, behind.since, behind)
    begin = next_begin(at, every, now=after)
    since = window_start(after, every, window, begin)
    return NextRun(begin, None if since == begin - window else since, None)


def script_catches_up(script: Path) -> bool:
    """Whether the chain's copy of ``jobs/monitor.sbatch`` tests a catch-up run's whole span
    (it reads ``POMLIA_MONITOR_SINCE``): a chain scheduled before it did keeps one run per
    period, as a catch-up run of it would test only its own window and leave the rest out."""
    try:
        return b"POMLIA_MONITOR_SINCE" in script.read_bytes()
    except OSError:
        return False


def _show(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
