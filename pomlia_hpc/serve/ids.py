"""Prediction ids that say when they were issued.

A prediction id is 32 hex digits, as always; since this version it is laid out like a UUID
version 7: the issuing server's clock in milliseconds since the epoch (12 digits), the version
digit ``7``, 3 random digits, the variant digit ``8`` and 15 random digits (72 random bits per
millisecond). Why: the monitor looks up the prediction of a late label in the log files of the
look-back (a week of a busy model's log is gigabytes), newest first until each is found; a
label whose prediction is not there (older than the look-back, or its file deleted) made every
run read the whole look-back. With the time in the id the look-up opens only the files that
can hold it (:func:`issued_at`), and none for an id older than the look-back.

Ids issued before (128 random bits) have no time: :func:`issued_at` says None for them, and
they are looked up as before. A random id reads as timed only when its version and variant
digits match (1 in 64) and its 48 leading bits fall between :data:`FIRST_ISSUE` and now
(about 1 in 9,000 of those for each year since then).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

#: No id of this layout was issued before this time (epoch s; a year before this version, so a
#: log generated for a test or a benchmark may go back months): a random id whose leading bits
#: read as an earlier time is one of the old, untimed ones.
FIRST_ISSUE = datetime(2025, 12, 1, tzinfo=UTC).timestamp()
#: How far ahead of this machine's clock an issuing server's clock may be, s.
AHEAD_S = 86400.0


def prediction_ids(n: int, when: float | None = None) -> list[str]:
    """``n`` fresh prediction ids issued at ``when`` (epoch s; this machine's clock if None)."""
    ms = int((time.time() if when is None else when) * 1000) & 0xFFFF_FFFF_FFFF
    head = f"{ms:012x}7"
    out = []
    for _ in range(n):
        rand = os.urandom(9).hex()  # 72 bits, a third of uuid4's cost
        out.append(f"{head}{rand[:3]}8{rand[3:]}")
    return out


def issued_at(pid: str) -> float | None:
    """When the prediction of id ``pid`` was issued (epoch s, the issuing server's clock);
    None for an id without a time (issued before ids had one)."""
    if len(pid) != 32 or pid[12] != "7" or pid[16] not in "89abAB":
        return None
    try:
        t = int(pid[:12], 16) / 1000
    except ValueError:
        return None
    return t if FIRST_ISSUE <= t <= time.time() + AHEAD_S else None
