"""tifffile's log records, muted while pomlia decodes a TIFF in this thread.

tifffile logs an ERROR for each damaged tag or page offset it skips (14 lines for one file of
damaged tags, up to ~1000 for a crafted one) before pomlia's own one-line refusal or decode:
``data add`` printed them above its message and among a ``--skip-unreadable`` report. The
records are dropped only in a thread inside :func:`tifffile_muted`, by a filter on the
``tifffile`` logger: another thread's (or another library's) use of tifffile keeps its log,
and no logger level changes under a thread that is decoding.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

_here = threading.local()


class _MutedInThisThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_here, "muted", False)


_FILTER = _MutedInThisThread()


@contextlib.contextmanager
def tifffile_muted() -> Iterator[None]:
    """tifffile's log records of this thread dropped inside the block (nestable)."""
    logger = logging.getLogger("tifffile")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)  # once per process: addFilter keeps one of each anyway
    before = getattr(_here, "muted", False)
    _here.muted = True
    try:
        yield
    finally:
        _here.muted = before
