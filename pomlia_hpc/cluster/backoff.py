"""How often to ask Slurm again while nothing changes.

A command that waits for its jobs asks ``sacct`` (slurmdbd) for their states every second and
``squeue`` (slurmctld) for their pending reasons every 15 s. For a few jobs that is nothing;
a 1000-task array waited for over a night made tens of thousands of accounting queries while
its tasks pended. :class:`Backoff` keeps the first interval for a while (a job that ends soon
is seen as soon as before: tests and short jobs wait no longer), then lets it grow while
the answers stay the same, up to a ceiling, and goes back to the first interval as soon as
an answer changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

#: Seconds without a change before the interval starts to grow.
PATIENCE_S = 120.0

#: The longest interval, seconds: a job's end is seen at most this late.
CEILING_S = 30.0

#: How much the interval grows per quiet poll once :data:`PATIENCE_S` has passed.
GROWTH = 1.5


class Backoff:
    """The interval before the next poll, seconds: ``start_s`` until the polled answer has
    stayed the same for ``patience_s`` seconds, then ``growth`` times longer per quiet poll,
    up to ``ceiling_s`` (or ``start_s``, if larger); ``start_s`` again after any change.
    ``clock``: seconds of a monotonic clock (``time.monotonic``)."""

    def __init__(
        self,
        start_s: float,
        *,
        ceiling_s: float = CEILING_S,
        patience_s: float = PATIENCE_S,
        growth: float = GROWTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.start_s = start_s
        self.ceiling_s = max(ceiling_s, start_s)
        self.patience_s = patience_s
        self.growth = growth
        self.clock = clock
        self.interval_s = start_s
        self._seen: Hashable = None
        self._quiet_since = clock()

    def next(self, seen: Hashable) -> float:
        """The interval after a poll whose answer was ``seen`` (any hashable summary of it,
        e.g. the jobs' states), seconds."""
        now = self.clock()
        if seen != self._seen:
            self._seen, self._quiet_since, self.interval_s = seen, now, self.start_s
        elif now - self._quiet_since >= self.patience_s:
            self.interval_s = min(self.interval_s * self.growth, self.ceiling_s)
        return self.interval_s
