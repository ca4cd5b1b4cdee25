"""Prediction ids that other servers of the same deployment log beside this one after it started.

A server learns the ids it takes feedback for from the log folder once, at start-up
(:meth:`~.issued.IssuedIds.from_log`), and from its own answers after that. Two servers of one
deployment share a folder while one replaces the other (a restart or a Slurm switch: the new
job starts, the address file names it once it is ready, then the old job is cancelled and
drains), and the old one answers on meanwhile: feedback sent to the new server for those answers
was refused for good with 404 "not issued by this deployment", though it was.

:class:`PeerLogs` reads, before each feedback is judged, what the other servers' files in the
folder gained since it last looked (each byte once: an offset per file, taken at its last whole
line before start-up read the folder; a listing of the folder and an open per writer's newest
file when nothing was added), and adds their predictions and
labels of this deployment to the index: an id the old server answered is taken, one it
labelled meanwhile is refused without ``"replaces": true``. Lines of other deployments are
skipped unparsed, a torn last line (a record being written) is read next time, and a bad line
is skipped as at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import BinaryIO

from pomlia_hpc.serve.issued import IssuedIds, other_deployment_filter
from pomlia_hpc.serve.logfiles import (
    CLOCK_SKEW_S,
    WholeLines,
    file_start_time,
    labels_up_to,
    whole_lines_end,
    writer_of,
)
from pomlia_hpc.serve.records import BadLineError, FeedbackLine, PredictionLine, parse_line

log = logging.getLogger("pomlia.serve")


class PeerLogs:
    """The log files of other servers in ``directory`` and how far each has been read.

    Made with :meth:`snapshot` before start-up reads the folder (bytes appended while it reads
    are read again: adding an id twice changes nothing); ``own``, the name start of this
    server's files (:attr:`~.predlog.PredictionLog.stem`), is set once its log exists.

    Only files that can still grow are looked at (an open each per pass; the size from the open
    file, which NFS revalidates on open, not a stat its attribute cache may answer): the newest
    file of each writer (``<stem>-<seq>.jsonl``; one it rotated away from is read to its end
    once, then left alone) whose writer did not start before ``created`` (the deployment's
    creation, epoch s, less :data:`~.logfiles.CLOCK_SKEW_S`), so a month of rotated files and
    of other deployments' servers costs each pass a directory listing, not an open per file."""

    def __init__(
        self,
        directory: Path,
        deployment: int | None,
        offsets: dict[str, int],
        *,
        created: float | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.deployment = deployment
        self.own: str | None = None
        self._offsets = offsets  # file name -> bytes read (whole lines), files that may grow
        self._done: set[str] = set()  # files their writer rotated away from, read to their end
        self._cutoff = None if created is None else created - CLOCK_SKEW_S
        self._other = other_deployment_filter(deployment)
        self._lock = threading.Lock()

    @classmethod
    def snapshot(
        cls, directory: Path, deployment: int | None, *, created: float | None = None
    ) -> PeerLogs:
        """The folder's log files as they are now, taken as read up to their last whole line
        (a record being written is read once it is whole)."""
        peers = cls(directory, deployment, {}, created=created)
        for name, newest in peers._listing().items():
            if not newest:
                peers._done.add(name)  # its writer moved on: it gains nothing more
                continue
            path = peers.directory / name
            try:
                peers._offsets[name] = whole_lines_end(path, path.stat().st_size)
            except OSError:  # pruned meanwhile (or unreadable: read, and refused, from 0)
                continue
        return peers

    def _listing(self) -> dict[str, bool]:
        """The names of the folder's log files that may hold records of the deployment but
        this server's own, each with whether it is its writer's newest file. Names only (no
        stat): a file whose writer started before the cutoff is left out by its name."""
        stems: dict[str, int] = {}
        files: list[tuple[str, str, int]] = []
        try:
            names = [e.name for e in os.scandir(self.directory) if e.name.endswith(".jsonl")]
        except FileNotFoundError:  # no record yet
            return {}
        for name in names:
            stem, seq = writer_of(name)
            if stem == self.own:
                continue  # this server's own answers are in the index already
            started = file_start_time(Path(name))
            if self._cutoff is not None and started is not None and started < self._cutoff:
                continue  # its writer started before the deployment existed
            files.append((name, stem, seq))
            stems[stem] = max(seq, stems.get(stem, seq))
        return {name: seq == stems[stem] for name, stem, seq in sorted(files)}

    def catch_up(self, issued: IssuedIds) -> int:
        """Read what the other servers' files gained since the last call and add their
        predictions (and labels) of this deployment to ``issued``; returns the number of
        prediction ids added. Blocking (file reads): call it from a worker thread."""
        with self._lock:
            ids: list[str] = []
            labelled: list[tuple[str, int]] = []
            listing = self._listing()
            for name, newest in listing.items():
                if name in self._done:
                    continue
                path = self.directory / name
                try:
                    f = path.open("rb")
                except FileNotFoundError:  # deleted since the listing
                    continue
                except OSError:  # unreadable (its mode): nothing read from it
                    f = None
                with f or contextlib.nullcontext():
                    # The size of the open file, not a stat of its name: on NFS an open
                    # revalidates the file's attributes (close-to-open) while a stat may answer
                    # from the client's attribute cache, seconds old, and a label another node
                    # logged before it let the feedback lock go was not read in the turn.
                    size = os.fstat(f.fileno()).st_size if f is not None else 0
                    # Shorter than read: its writer cut back a write that failed (not answered).
                    offset = min(self._offsets.get(name, 0), size)
                    if f is not None and size > offset:
                        offset = self._read(f, path, offset, ids, labelled)
                if newest:
                    self._offsets[name] = offset
                else:  # rotated away from: what it gained before is read, nothing comes after
                    self._offsets.pop(name, None)
                    self._done.add(name)
            # Deleted (retention): nothing more to read, nothing to remember.
            for name in set(self._offsets) - listing.keys():
                del self._offsets[name]
            self._done.intersection_update(listing)
            # Noted before the lock goes: a feedback's turn that reads the files meanwhile
            # (the reader thread's pass holds the lock) must find what this pass read in the
            # index, not a read file and an id still unlabelled (a second label accepted).
            if ids:
                issued.add(ids)
            for pid, revision in labelled:
                issued.mark_labelled(pid, revision)
        return len(ids)

    def _read(
        self,
        f: BinaryIO,
        path: Path,
        offset: int,
        ids: list[str],
        labelled: list[tuple[str, int]],
    ) -> int:
        """Collect the records of whole lines of ``f`` (log file ``path``, open) after byte
        ``offset``; returns the offset after the last whole line read."""
        bad = 0
        try:
            lines = WholeLines(f, offset=offset)  # a record being written: read next time
            for _lineno, raw in lines:
                offset = lines.end
                if self._other(raw):
                    continue
                try:
                    rec = parse_line(raw)
                except BadLineError:
                    bad += 1
                    continue
                if rec.deployment != self.deployment:
                    continue
                if isinstance(rec, PredictionLine):
                    if _ID.fullmatch(rec.id) is None:  # not issued by a server: never taken
                        bad += 1
                        continue
                    ids.append(rec.id)
                elif isinstance(rec, FeedbackLine):
                    labelled.append((rec.prediction_id, labels_up_to(rec)))
        except OSError:  # an I/O error mid-read: the rest is read next time
            return offset
        if bad:
            log.warning(
                "prediction log %s: %d bad line(s) skipped (their ids cannot take feedback)",
                path,
                bad,
            )
        return offset


class PeerReader:
    """Calls :meth:`PeerLogs.catch_up` every ``interval_s`` on a thread of its own, so that a
    feedback reads only what the other servers logged since the last pass. Why: a feedback
    read everything they logged since the previous feedback, and a server that took none
    for hours parsed a busy replica's hours of predictions inside one request (about 19 s
    per million lines). A pass that fails (an unreadable file) is logged; the next one tries
    again."""

    def __init__(self, peers: PeerLogs, issued: IssuedIds, interval_s: float) -> None:
        self.peers = peers
        self.issued = issued
        self.interval_s = interval_s
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the pass in progress (if any); blocking."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peers.catch_up(self.issued)
            except Exception:  # a pass must not end the reader: the next feedback reads it
                log.exception("reading the other servers' log files in %s", self.peers.directory)
            self.passes += 1


#: A prediction id as the server issues it (another one would fail the index's add).
_ID = re.compile(r"[0-9a-fA-F]{32}")
