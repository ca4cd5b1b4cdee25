"""The one way to read the prediction log's files, used by every reader.

The server writes ``<start>-<host>-<pid>-<seq>.jsonl`` files (:mod:`.predlog`); the monitor's
window (:mod:`pomlia_hpc.monitor.logread`), its label look-up (:mod:`pomlia_hpc.monitor.labels`),
the harvest's labelled inputs (:mod:`.labelled`), a server's start-up (:mod:`.issued`) and its
peer reader (:mod:`.peers`) read them. Each had its own rule for which files to open and for a
torn last line; the rules are here, once:

* **Which files may hold records timed in [since, until)** (:func:`files_between`): a record is
  appended before its file's last change, so a file last changed before ``since`` holds none
  of them; no record of a file is older than its writer's start (the file name's time), so a
  file whose writer started after ``until`` holds none either. Both compare clocks of
  different machines (the file server's mtime, the writing node's record and name times), so
  each bound has the margin :data:`~.predlog.CLOCK_SKEW_S`.
* **In which order**: by name (= writer start) for a reader that reads them all; newest last
  change first for a reader that stops once it found what it looks for. Not by name then: a
  server that ran for weeks beside a newer one has its newest records in a file whose name
  sorts before the newer server's.
* **A torn last line** (:class:`WholeLines`): a last line without its newline is a record being
  written, or the tail of a writer that crashed mid-line; it is never parsed. A reader of a
  finished window counts it; a reader that follows a growing file reads it again once whole.
* **One line, one record**: :func:`~.records.read_line` (unknown keys ignored and named) or
  :func:`~.records.parse_line` (strict) read a line's bytes.
* **Which of two labels of one prediction holds** (:func:`later_label`): the later by its
  feedback time; of two with the same time, the one read later (file order, then line order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pomlia_hpc.serve.predlog import CLOCK_SKEW_S, file_start_time


def log_files(folders: Path | Sequence[Path]) -> list[Path]:
    """The ``*.jsonl`` files of one log folder or several, in name order (each folder's by
    writer start; the folders one after another). A missing folder has none."""
    out: list[Path] = []
    for folder in [folders] if isinstance(folders, Path) else folders:
        if folder.is_dir():
            out.extend(sorted(p for p in folder.glob("*.jsonl") if p.is_file()))
    return out


@dataclass
class FileSelection:
    """What :func:`files_between` chose: the files to read, and how many it left out."""

    files: list[Path] = field(default_factory=list)
    #: Files last changed before the span's start (less the clock margin).
    before: int = 0
    #: Files whose writer started after the span's end (plus the clock margin).
    after: int = 0


def files_between(
    folders: Path | Sequence[Path],
    since: datetime | None,
    until: datetime | None = None,
    *,
    newest_first: bool = False,
) -> FileSelection:
    """The log files of ``folders`` that may hold records timed at or after ``since`` and
    before ``until`` (aware datetimes; None: no bound), in name order or, with
    ``newest_first``, by last change, newest first (see the module docstring). A file deleted
    while they are listed is left out (it holds nothing now)."""
    lo = None if since is None else since.timestamp() - CLOCK_SKEW_S
    hi = None if until is None else until.timestamp() + CLOCK_SKEW_S
    out = FileSelection()
    kept: list[tuple[float, Path]] = []
    for path in log_files(folders):
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:  # pruned meanwhile
            continue
        except OSError:  # kept: the reader's open says what is wrong with it
            mtime = float("inf")
        started = file_start_time(path)
        if lo is not None and mtime < lo:
            out.before += 1
        elif hi is not None and started is not None and started > hi:
            out.after += 1
        else:
            kept.append((mtime, path))
    if newest_first:
        kept.sort(key=lambda mp: mp[0], reverse=True)  # stable: ties keep name order
    out.files = [path for _, path in kept]
    return out


class WholeLines:
    """The whole lines of an open log file from byte ``offset``, as (line number counted from
    ``first``, bytes with the newline). A last line without its newline is not given:
    afterwards ``torn`` says whether there was one and ``end`` is the byte offset after the
    last whole line (where a follower of a growing file reads on)."""

    def __init__(self, fh: BinaryIO, *, offset: int = 0, first: int = 1) -> None:
        self._fh = fh
        self._first = first
        self.end = offset
        self.torn = False
        if offset:
            fh.seek(offset)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for lineno, raw in enumerate(self._fh, self._first):
            if not raw.endswith(b"\n"):
                self.torn = True  # being written, or a crashed writer's last bytes
                return
            self.end += len(raw)
            yield lineno, raw


def later_label(time: str, than: str) -> bool:
    """Whether a label of feedback time ``time`` (ISO, a record's ``time``) replaces one of
    time ``than`` read before it: the later holds; of equal times, the one read later. Times
    are compared as instants (an offset written as ``Z`` or ``+00:00`` is the same time); a
    time that is not ISO is compared as text."""
    a, b = _instant(time), _instant(than)
    if a is None or b is None:
        return time >= than
    return a >= b


def _instant(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
