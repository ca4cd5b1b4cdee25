"""What the prediction log's retention deleted, so its readers can say so.

A server with ``log_retention_days`` deletes whole log files (:func:`.predlog.prune_log`).
Before, nothing on disk said so: a monitor window or a harvest ``--since`` reaching back past
the deletion silently saw fewer records. Each deletion now leaves a marker in the log folder,
an empty file whose name holds the latest last-write time of the files retention deleted there
(``.retention-deleted-through-<UTC YYYYmmddTHHMMSS>``, rounded up to the second). Records are
appended before their file's last write, so every record at or before that time may be gone, and
none after it was deleted by retention (up to the clock margin between writing nodes).

A marker is made with one exclusive create (no file is ever rewritten, so servers of several
nodes pruning one folder never race on its content), and the markers it supersedes (earlier
times) are removed after it; readers take the latest name. The ``*.jsonl`` glob of every reader
does not see the markers. A deletion by hand leaves none (docs/guide/serving.md).
"""

from __future__ import annotations

import contextlib
import math
import os
from datetime import UTC, datetime
from pathlib import Path

from pomlia_hpc.files import PRIVATE_FILE

PREFIX = ".retention-deleted-through-"
_FORMAT = "%Y%m%dT%H%M%S"


def note_deleted(directory: Path, last_write: float) -> Path:
    """Record in ``directory`` that retention deleted files last written up to ``last_write``
    (epoch s); returns the marker (the existing one when a later one is there already)."""
    directory = Path(directory)
    current = deleted_through(directory)
    when = datetime.fromtimestamp(math.ceil(last_write), UTC)
    if current is not None and current >= when:
        return directory / f"{PREFIX}{current.strftime(_FORMAT)}"
    marker = directory / f"{PREFIX}{when.strftime(_FORMAT)}"
    with contextlib.suppress(FileExistsError):  # another server made the same one
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    for old in directory.glob(f"{PREFIX}*"):
        t = _marker_time(old)
        if t is not None and t < when:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    return marker


def deleted_through(directory: Path) -> datetime | None:
    """The latest last-write time (UTC) of the files retention deleted from ``directory``;
    None when it deleted none there (or the folder does not exist)."""
    times = [t for p in Path(directory).glob(f"{PREFIX}*") if (t := _marker_time(p)) is not None]
    return max(times) if times else None


def missing_since(
    directories: list[Path], since: datetime | None, *, margin_s: float = 0.0
) -> datetime | None:
    """The latest time up to which retention deleted records in any of ``directories``, when
    it is at or after ``since`` less ``margin_s`` (the clock margin between the file server,
    whose clock dates the deletion, and the writing nodes, whose clocks date the records;
    ``since`` None: from the start), i.e. when records a reader asks for from ``since`` on
    may have been deleted; None when none can have been."""
    times = [t for d in directories if (t := deleted_through(d)) is not None]
    if not times:
        return None
    latest = max(times)
    if since is None or latest.timestamp() >= since.timestamp() - margin_s:
        return latest
    return None


def _marker_time(path: Path) -> datetime | None:
    try:
        return datetime.strptime(path.name[len(PREFIX) :], _FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
