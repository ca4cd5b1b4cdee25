"""The one way to read the prediction log's files, used by every reader.

The server writes ``<start>-<host>-<pid>-<seq>.jsonl`` files (:mod:`.predlog`); the monitor's
window (:mod:`pomlia_hpc.monitor.logread`), its label look-up (:mod:`pomlia_hpc.monitor.labels`),
the harvest's labelled inputs (:mod:`.labelled`), a server's start-up (:mod:`.issued`) and its
peer reader (:mod:`.peers`) read them. Each had its own rule for which files to open and for a
torn last line; the rules are here, once:

* **Which files may hold records timed at or after ``since``** (:func:`files_since`): a
  record is appended before its file's last change, so a file last changed before ``since``
  holds none of them. This compares the clocks of different machines (the file server's
  mtime, the writing node's record time), so the bound has the margin :data:`CLOCK_SKEW_S`.
  The file name's start time is no upper bound: a log copied in, or written by a test,
  may hold records older than its name.
* **In which order**: by name (= writer start) for a reader that reads them all; newest last
  change first (of equal last changes, the later name first) for a reader that stops once it
  found what it looks for. Not by name then: a
  server that ran for weeks beside a newer one has its newest records in a file whose name
  sorts before the newer server's (a server's start-up that filled its feedback window from
  the newer file first forgot the older server's recent ids).
* **A torn last line** (:class:`WholeLines`): a last line without its newline is a record being
  written, or the tail of a writer that crashed mid-line; it is never parsed. A reader of a
  finished window counts it; a reader that follows a growing file reads it again once whole.
* **One line, one record**: :func:`~.records.read_line` (unknown keys ignored and named) or
  :func:`~.records.parse_line` (strict) read a line's bytes.
* **Which of two labels of one prediction holds** (:func:`later_label`): the higher
  ``revision``, which the deployment's servers count under the feedback lock, so a
  replacement taken by a server whose clock is behind still wins over the label it replaced;
  where a revision is not known (a replacement logged before revisions) or both are equal (a
  file system without locks), the later by feedback time; of two with the same time, the one
  read later (file order, then line order).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar, overload

from pomlia_hpc.errors import InputError
from pomlia_hpc.serve.records import BadLineError, FeedbackLine, LogLine, parse_line

#: Slack between clocks, s: a file's name (the writing node's clock), its modification time (the
#: file server's) and a registry time (the deploying machine's) are compared only with this
#: margin, as NTP keeps cluster clocks within seconds and a stale one within minutes.
CLOCK_SKEW_S = 3600.0
_STEM_TIME = re.compile(r"^(\d{8}T\d{6})-")
_L = TypeVar("_L", bound=LogLine)
#: A log file's name: its writer's stem (``<start>-<host>-<pid>``) and its sequence number.
_NAME = re.compile(r"^(.+)-([0-9]+)\.jsonl$")


def file_start_time(path: Path) -> float | None:
    """When the server that wrote log file ``path`` started (epoch s, from the name's UTC
    ``YYYYmmddTHHMMSS``, the writing node's clock): none of its records is older. None for a
    name not in the server's form (a file copied in or renamed)."""
    m = _STEM_TIME.match(path.name)
    if m is None:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def writer_of(name: str) -> tuple[str, int]:
    """The writer's stem and the sequence number of log file ``name``; a name not in the
    server's form (a file copied in) is its own writer."""
    m = _NAME.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


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
    """What :func:`files_since` chose: the files to read, and how many it left out."""

    files: list[Path] = field(default_factory=list)
    #: Files last changed before the span's start (less the clock margin).
    before: int = 0


def files_since(
    folders: Path | Sequence[Path], since: datetime | None, *, newest_first: bool = False
) -> FileSelection:
    """The log files of ``folders`` that may hold records timed at or after ``since`` (an
    aware datetime; None: all), in name order or, with ``newest_first``, by last change,
    newest first (see the module docstring). A file deleted while they are listed is left out
    (it holds nothing now)."""
    lo = None if since is None else since.timestamp() - CLOCK_SKEW_S
    out = FileSelection()
    kept: list[tuple[float, Path]] = []
    for path in log_files(folders):
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:  # pruned meanwhile
            continue
        except OSError:  # kept: the reader's open says what is wrong with it
            mtime = float("inf")
        # The file server's clock (mtime) against the writing node's (record times): with 1 s
        # of slack, a node 5 min ahead of it wrote records of a window into a file last
        # changed "before" it, and neither that window nor the one before counted them.
        if lo is not None and mtime < lo:
            out.before += 1
        else:
            kept.append((mtime, path))
    if newest_first:
        # Of two files last changed at the same time (a file system that keeps whole seconds,
        # as Lustre does: a rotation and the next file's writes), the later name is the newer
        # (a writer's next file, a later writer): start-up read the older first and, its
        # window full, never read the file of the newest predictions.
        kept.reverse()
        kept.sort(key=lambda mp: mp[0], reverse=True)  # stable: ties keep reversed name order
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


@dataclass(frozen=True)
class LabelOrder:
    """Where a label stands among the labels of its prediction: its feedback ``time`` (ISO,
    the receiving server's clock) and its ``revision`` (None: not known, a replacement logged
    before revisions were counted)."""

    time: str
    revision: int | None

    @classmethod
    def of(cls, rec: FeedbackLine) -> LabelOrder:
        """The order of feedback record ``rec``."""
        legacy = rec.replaces and rec.revision == 1  # no server now writes a replacement so
        return cls(rec.time, None if legacy else rec.revision)


def labels_up_to(rec: FeedbackLine) -> int:
    """At least how many labels the prediction of feedback record ``rec`` has had up to and
    including it (a replacement logged before revisions: at least 2); the next label's
    revision follows the highest of these a server knows."""
    return max(rec.revision, 2 if rec.replaces else 1)


def later_label(label: LabelOrder, than: LabelOrder) -> bool:
    """Whether ``label`` replaces ``than``, a label of the same prediction read before it: the
    higher revision holds (counted under the deployment's feedback lock: no clock decides);
    without two different known revisions, the later time, and of equal times the one read
    later. Times are compared as instants (an offset written as ``Z`` or ``+00:00`` is the same
    time); a time that is not ISO is compared as text."""
    known = label.revision is not None and than.revision is not None
    if known and label.revision != than.revision:
        return (label.revision or 0) > (than.revision or 0)
    a, b = _instant(label.time), _instant(than.time)
    if a is None or b is None:
        return label.time >= than.time
    return a >= b


def _instant(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def whole_lines_end(path: Path, size: int) -> int:
    """The offset after the last newline in the first ``size`` bytes of ``path`` (0: none):
    where the whole lines end, without reading them."""
    pos = size
    with path.open("rb") as f:
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            end = chunk.rfind(b"\n")
            if end >= 0:
                return start + end + 1
            pos = start
    return 0


@overload
def read_records(directory: Path, kind: None = None) -> Iterator[LogLine]: ...
@overload
def read_records(directory: Path, kind: type[_L]) -> Iterator[_L]: ...
def read_records(directory: Path, kind: type[_L] | None = None) -> Iterator[LogLine]:
    """Every record under ``directory`` (files in name order, i.e. by start time), optionally
    only those of ``kind`` (e.g. :class:`~.records.FeedbackLine`). A torn last line is
    skipped; any other bad line is an :class:`InputError` naming the file, line and key."""
    for path in log_files(Path(directory)):
        for rec in read_file(path):
            if kind is None or isinstance(rec, kind):
                yield rec


def read_file(
    path: Path,
    bad: list[str] | None = None,
    *,
    containing: bytes | None = None,
    skip: Callable[[bytes], bool] | None = None,
) -> Iterator[LogLine]:
    """The records of one log file (strict, see :func:`read_records`). With ``bad``, a bad
    line is appended to it as ``"<file>:<line>: <problem>"`` and skipped instead. With
    ``containing``, lines without those bytes are skipped unparsed (a cheap filter, e.g.
    ``b'"feedback"'``: the caller still checks what it gets); with ``skip``, lines for which
    it is true are skipped unparsed."""
    with path.open("rb") as f:
        for lineno, raw in WholeLines(f):
            if containing is not None and containing not in raw:
                continue
            if skip is not None and skip(raw):
                continue
            try:
                yield parse_line(raw)
            except BadLineError as exc:
                if bad is None:
                    raise InputError(f"{path}:{lineno}: {exc}") from None
                bad.append(f"{path}:{lineno}: {exc}")
