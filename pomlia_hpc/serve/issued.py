"""Which prediction ids this deployment issued, so feedback can refuse the others.

``/v1/feedback`` answers 404 for an id this deployment never returned (a made-up or mistyped
id would otherwise be logged as a label and count in the monitor's metrics) and 409 for a
second label of one prediction unless the request says ``"replaces": true``.

Memory is bounded: the newest ``capacity`` ids are kept (16 bytes each in an ordered dict,
about 120 bytes per id with Python's overhead, so 24 MB for the default 200,000); older ones
fall out first, and their feedback gets a 404 that says so. At start-up the index is rebuilt
from the prediction log beside it (the files last written last first, the records of this
deployment only), so a restarted server still takes feedback for what it answered before.
Start-up reads
no more than it needs whatever the folder holds: files that cannot hold a record of the
deployment (started or last written before it was created, with a margin for clock skew) are
not opened, reading stops once the window is full, and labels are looked up for the ids in the
window only (a second pass over the files read that had feedback).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from pomlia_hpc.serve.decode import RequestError
from pomlia_hpc.serve.logfiles import (
    CLOCK_SKEW_S,
    file_start_time,
    files_since,
    labels_up_to,
    log_files,
    read_file,
)
from pomlia_hpc.serve.records import FeedbackLine, PredictionLine

log = logging.getLogger(__name__)

#: Default number of recent prediction ids remembered for feedback.
DEFAULT_CAPACITY = 200_000
#: Labelled ids held while the window is read, per id of capacity (16 bytes each: at most half
#: the index's own memory); a log with more feedback than that is read twice.
LABEL_BUDGET = 4
#: Resolution of :meth:`IssuedIds.oldest_time`, s: one time mark per this much time.
MARK_S = 60.0


class Claim(Enum):
    """Outcome of :meth:`IssuedIds.claim`."""

    OK = "ok"
    UNKNOWN = "unknown"
    LABELLED = "labelled"


class IssuedIds:
    """The newest ``capacity`` prediction ids (32 hex digits) and how many labels each has
    had (0: none; the next label's ``revision`` is one more, see :mod:`.feedgate`).
    Thread-safe: the batcher thread adds, the event loop claims."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        # (time, ids added before it): a mark per MARK_S, so the time of the oldest id kept is
        # known to a minute (for the log's retention) at a few bytes per minute of traffic.
        self._marks: deque[tuple[float, int]] = deque()
        self._added = 0

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Iterable[str], labelled: bool = False, when: float | None = None) -> None:
        """Remember newly issued ``ids`` (the oldest fall out beyond ``capacity``), issued at
        ``when`` or later (epoch s; default now)."""
        when = time.time() if when is None else when
        with self._lock:
            if not self._marks or when - self._marks[-1][0] >= MARK_S:
                self._marks.append((when, self._added))
            for pid in ids:
                key = bytes.fromhex(pid)
                self._ids[key] = max(int(labelled), self._ids.get(key, 0))
                self._ids.move_to_end(key)
                self._added += 1
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
            first_kept = self._added - len(self._ids)
            while len(self._marks) > 1 and self._marks[1][1] <= first_kept:
                self._marks.popleft()

    def oldest_time(self) -> float | None:
        """No later than when the oldest remembered id was issued (epoch s); None if none is:
        log files last written before it hold no id that can still take feedback."""
        with self._lock:
            return self._marks[0][0] if self._ids and self._marks else None

    def claim(self, pid: str, *, replaces: bool) -> Claim:
        """Reserve the label of ``pid``: UNKNOWN if not issued (or forgotten), LABELLED if it
        has one and ``replaces`` is false, else OK (and its count of labels goes up by one:
        :meth:`revision` is then the new label's)."""
        key = bytes.fromhex(pid)
        with self._lock:
            had = self._ids.get(key)
            if had is None:
                return Claim.UNKNOWN
            if had and not replaces:
                return Claim.LABELLED
            self._ids[key] = had + 1
            return Claim.OK

    def release(self, pid: str, *, revision: int) -> None:
        """Undo a claim whose feedback could not be written: ``pid`` had ``revision`` labels."""
        key = bytes.fromhex(pid)
        with self._lock:
            if key in self._ids:
                self._ids[key] = revision

    def mark_labelled(self, pid: str, revision: int = 1) -> None:
        """Note that ``pid`` has had ``revision`` labels (logged by another server of this
        deployment); an id that is not remembered, or not 32 hex digits, is left out."""
        self._mark_labelled(_key(pid), revision)

    def labelled(self, pid: str) -> bool:
        return self.revision(pid) > 0

    def revision(self, pid: str) -> int:
        """How many labels ``pid`` has had that this server knows of (0: none, or unknown id)."""
        with self._lock:
            return self._ids.get(bytes.fromhex(pid), 0)

    @classmethod
    def from_log(
        cls,
        directory: Path,
        deployment: int | None,
        capacity: int = DEFAULT_CAPACITY,
        *,
        created: float | None = None,
    ) -> IssuedIds:
        """Rebuild the index from the prediction log files in ``directory``: the newest
        ``capacity`` predictions of ``deployment`` and the feedback already given for them.
        ``created``: when the deployment was created (epoch s, the registry's time); files
        started or last written more than :data:`CLOCK_SKEW_S` before it are not opened."""
        bad: list[str] = []
        other = other_deployment_filter(deployment)
        chunks: list[tuple[float, list[str]]] = []
        # Labelled ids met before their predictions (files are read newest first), 16 bytes
        # each, at most LABEL_BUDGET * ``capacity`` of them; the files past that budget are
        # read again for their labels once the window is known, so memory follows the window,
        # not the log.
        labels = bytearray()
        # ... and the counts of the replaced ones, few: the next label's revision follows them.
        replaced: dict[bytes, int] = {}
        reread: list[Path] = []
        n = 0
        for path in _candidates(Path(directory), created):
            ids: list[str] = []
            mark = len(labels)
            over = bool(reread)
            # A bad line (e.g. a NaN the JSON writer turned into null, or a file copied in
            # from elsewhere) must not keep the server from starting: skip it and say so.
            for rec in read_file(path, bad, skip=other):
                if rec.deployment != deployment:
                    continue
                if isinstance(rec, PredictionLine):
                    ids.append(rec.id)
                elif isinstance(rec, FeedbackLine) and not over:
                    labels += _key(rec.prediction_id)
                    if (n_labels := labels_up_to(rec)) > 1:
                        key = _key(rec.prediction_id)
                        replaced[key] = max(n_labels, replaced.get(key, 0))
                    over = len(labels) > 16 * LABEL_BUDGET * capacity
            if over:
                del labels[mark:]
                reread.append(path)
            # Issued no earlier than the file's start (0: unknown, so never pruned early).
            chunks.append((file_start_time(path) or 0.0, ids))
            n += len(ids)
            if n >= capacity:
                break
        if bad:
            log.warning(
                "%d bad line(s) in the prediction log skipped (their ids cannot take "
                "feedback); first: %s",
                len(bad),
                bad[0],
            )
        out = cls(capacity)
        for when, ids in reversed(chunks):  # oldest first, so the newest stay
            out.add(ids, when=when)
        for i in range(0, len(labels), 16):
            key = bytes(labels[i : i + 16])
            out._mark_labelled(key, replaced.get(key, 1))
        for path in reread:
            for rec in read_file(path, [], containing=b'"feedback"'):
                if isinstance(rec, FeedbackLine) and rec.deployment == deployment:
                    out._mark_labelled(_key(rec.prediction_id), labels_up_to(rec))
        return out

    def _mark_labelled(self, key: bytes, revision: int) -> None:
        with self._lock:
            if key in self._ids:
                self._ids[key] = max(self._ids[key], revision)


#: ``"deployment":<value>`` as a JSON writer without spaces (the server's) puts it on a line.
_DEPLOYMENT = re.compile(rb'"deployment":(-?[0-9]+|null)[,}]')


def other_deployment_filter(deployment: int | None) -> Callable[[bytes], bool]:
    """A test for a raw log line that is true when the line names another deployment than
    ``deployment``, so start-up skips it without validating its fingerprint (a new
    deployment's server read a month of other deployments' lines: 6.9 s of CPU for 0.6 M
    lines). A line it cannot tell about (another writer's spacing) is parsed as before. In a
    JSON line an unescaped ``"deployment":`` can only be a key: a string holds ``\\"``."""
    mine = b"null" if deployment is None else str(deployment).encode()

    def other(raw: bytes) -> bool:
        m = _DEPLOYMENT.search(raw)
        return m is not None and m.group(1) != mine

    return other


def _key(pid: str) -> bytes:
    """The 16-byte key of prediction id ``pid`` (b"" for one that is not 32 hex digits:
    never issued, so never in the index)."""
    try:
        key = bytes.fromhex(pid)
    except ValueError:
        return b""
    return key if len(key) == 16 else b""


def _candidates(directory: Path, created: float | None) -> list[Path]:
    """The log files that may hold records of a deployment created at ``created`` (epoch s;
    None: all), last written last first (:func:`.logfiles.files_since`: not by name, as a
    server that ran for weeks beside a newer one has its newest records in a file whose name
    sorts before the newer server's). Besides files last written before the deployment
    existed, a file whose writer started before it cannot hold its records (a server serves
    the deployment it started for); each with a margin for clock skew."""
    since = None if created is None else datetime.fromtimestamp(created, UTC)
    files = files_since(directory, since, newest_first=True).files
    if created is None:
        return files
    cutoff = created - CLOCK_SKEW_S
    kept = [p for p in files if (started := file_start_time(p)) is None or started >= cutoff]
    skipped = len(log_files(directory)) - len(kept)
    if skipped:
        log.info(
            "prediction log: %d file(s) older than the deployment not read at start-up", skipped
        )
    return kept


def card_time(card: Mapping[str, Any]) -> float | None:
    """When the checkpoint of a bundle with ``card`` was made (epoch s, its ``created_at``);
    None when the card has no valid time (a bundle made elsewhere)."""
    text = card.get("created_at")
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def feedback_refusal(claim: Claim, pid: str) -> RequestError | None:
    """The 404 or 409 for a feedback whose claim on ``pid`` failed; None if it may be logged."""
    if claim is Claim.UNKNOWN:
        return RequestError(
            404,
            f"prediction_id {pid} was not issued by this deployment (or is older than the "
            "newest predictions it remembers, see feedback_window): expected an id "
            "/v1/predict returned",
        )
    if claim is Claim.LABELLED:
        return RequestError(
            409,
            f'prediction {pid} already has a label: send "replaces": true to replace it',
        )
    return None
