"""Prediction ids that other servers of the same deployment log beside this one after it started.

A server learns the ids it takes feedback for from the log folder once, at start-up
(:meth:`~.issued.IssuedIds.from_log`), and from its own answers after that. Two servers of one
deployment share a folder while one replaces the other (a restart or a Slurm switch: the new
job starts, the address file names it once it is ready, then the old job is cancelled and
drains), and the old one answers on meanwhile: feedback sent to the new server for those answers
was refused for good with 404 "not issued by this deployment", though it was.

:class:`PeerLogs` reads, before each feedback is judged, what the other servers' files in the
folder gained since it last looked (each byte once: an offset per file, taken before start-up
read the folder; a stat per file when nothing was added), and adds their predictions and
labels of this deployment to the index: an id the old server answered is taken, one it
labelled meanwhile is refused without ``"replaces": true``. Lines of other deployments are
skipped unparsed, a torn last line (a record being written) is read next time, and a bad line
is skipped as at start-up.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pomlia_hpc.serve.issued import IssuedIds, other_deployment_filter
from pomlia_hpc.serve.records import BadLineError, FeedbackLine, PredictionLine, parse_line

log = logging.getLogger("pomlia.serve")


class PeerLogs:
    """The log files of other servers in ``directory`` and how far each has been read.

    Made with :meth:`snapshot` before start-up reads the folder (bytes appended while it reads
    are read again: adding an id twice changes nothing); ``own``, the name start of this
    server's files (:attr:`~.predlog.PredictionLog.stem`), is set once its log exists."""

    def __init__(self, directory: Path, deployment: int | None, offsets: dict[str, int]) -> None:
        self.directory = Path(directory)
        self.deployment = deployment
        self.own: str | None = None
        self._offsets = offsets  # file name -> bytes read (whole lines)
        self._other = other_deployment_filter(deployment)
        self._lock = threading.Lock()

    @classmethod
    def snapshot(cls, directory: Path, deployment: int | None) -> PeerLogs:
        """The folder's log files as they are now, taken as read up to their current size."""
        offsets: dict[str, int] = {}
        for path in Path(directory).glob("*.jsonl"):
            try:
                offsets[path.name] = path.stat().st_size
            except FileNotFoundError:  # pruned meanwhile
                continue
        return cls(directory, deployment, offsets)

    def catch_up(self, issued: IssuedIds) -> int:
        """Read what the other servers' files gained since the last call and add their
        predictions (and labels) of this deployment to ``issued``; returns the number of
        prediction ids added. Blocking (file reads): call it from a worker thread."""
        with self._lock:
            ids: list[str] = []
            labelled: list[str] = []
            seen: set[str] = set()
            for path in sorted(self.directory.glob("*.jsonl")):
                name = path.name
                seen.add(name)
                if self.own is not None and name.startswith(self.own):
                    continue  # this server's own answers are in the index already
                try:
                    size = path.stat().st_size
                except FileNotFoundError:  # deleted since the listing
                    continue
                # Shorter than read: its writer cut back a write that failed (not answered).
                offset = min(self._offsets.get(name, 0), size)
                if size > offset:
                    offset = self._read(path, offset, ids, labelled)
                self._offsets[name] = offset
            for name in set(self._offsets) - seen:  # deleted (retention): nothing more to read
                self._offsets.pop(name, None)
        if ids:
            issued.add(ids)
        for pid in labelled:
            issued.mark_labelled(pid)
        return len(ids)

    def _read(self, path: Path, offset: int, ids: list[str], labelled: list[str]) -> int:
        """Collect the records of whole lines of ``path`` after byte ``offset``; returns the
        offset after the last whole line read."""
        bad = 0
        try:
            with path.open("rb") as f:
                f.seek(offset)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # a record being written: read it whole next time
                    offset += len(raw)
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
                        ids.append(rec.id)
                    elif isinstance(rec, FeedbackLine):
                        labelled.append(rec.prediction_id)
        except FileNotFoundError:  # deleted between the listing and the read
            return offset
        if bad:
            log.warning(
                "prediction log %s: %d bad line(s) skipped (their ids cannot take feedback)",
                path,
                bad,
            )
        return offset
