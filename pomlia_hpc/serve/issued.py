"""Which prediction ids this deployment issued, so feedback can refuse the others.

``/v1/feedback`` answers 404 for an id this deployment never returned (a made-up or mistyped
id would otherwise be logged as a label and count in the monitor's metrics) and 409 for a
second label of one prediction unless the request says ``"replaces": true``.

Memory is bounded: the newest ``capacity`` ids are kept (16 bytes each in an ordered dict,
about 120 bytes per id with Python's overhead, so 24 MB for the default 200,000); older ones
fall out first, and their feedback gets a 404 that says so. At start-up the index is rebuilt
from the prediction log beside it (its newest files first, the records of this deployment
only), so a restarted server still takes feedback for what it answered before.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from pomlia_hpc.serve.decode import RequestError
from pomlia_hpc.serve.predlog import read_file
from pomlia_hpc.serve.records import FeedbackLine, PredictionLine

log = logging.getLogger(__name__)

#: Default number of recent prediction ids remembered for feedback.
DEFAULT_CAPACITY = 200_000


class Claim(Enum):
    """Outcome of :meth:`IssuedIds.claim`."""

    OK = "ok"
    UNKNOWN = "unknown"
    LABELLED = "labelled"


class IssuedIds:
    """The newest ``capacity`` prediction ids (32 hex digits) and whether each has a label.
    Thread-safe: the batcher thread adds, the event loop claims."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Iterable[str], labelled: bool = False) -> None:
        """Remember newly issued ``ids`` (the oldest fall out beyond ``capacity``)."""
        with self._lock:
            for pid in ids:
                key = bytes.fromhex(pid)
                self._ids[key] = labelled or self._ids.get(key, False)
                self._ids.move_to_end(key)
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)

    def claim(self, pid: str, *, replaces: bool) -> Claim:
        """Reserve the label of ``pid``: UNKNOWN if not issued (or forgotten), LABELLED if it
        has one and ``replaces`` is false, else OK (and it is marked labelled)."""
        key = bytes.fromhex(pid)
        with self._lock:
            had = self._ids.get(key)
            if had is None:
                return Claim.UNKNOWN
            if had and not replaces:
                return Claim.LABELLED
            self._ids[key] = True
            return Claim.OK

    def release(self, pid: str, *, had_label: bool) -> None:
        """Undo a claim whose feedback could not be written."""
        key = bytes.fromhex(pid)
        with self._lock:
            if key in self._ids:
                self._ids[key] = had_label

    def labelled(self, pid: str) -> bool:
        with self._lock:
            return bool(self._ids.get(bytes.fromhex(pid)))

    @classmethod
    def from_log(
        cls, directory: Path, deployment: int | None, capacity: int = DEFAULT_CAPACITY
    ) -> IssuedIds:
        """Rebuild the index from the prediction log files in ``directory``: the newest
        ``capacity`` predictions of ``deployment`` and the feedback already given for them."""
        files = sorted(Path(directory).glob("*.jsonl"), reverse=True)  # newest first
        chunks: list[list[str]] = []
        labelled: set[str] = set()
        bad: list[str] = []
        n = 0
        for path in files:
            ids: list[str] = []
            # A bad line (e.g. a NaN the JSON writer turned into null, or a file copied in
            # from elsewhere) must not keep the server from starting: skip it and say so.
            for rec in read_file(path, bad):
                if rec.deployment != deployment:
                    continue
                if isinstance(rec, PredictionLine):
                    ids.append(rec.id)
                elif isinstance(rec, FeedbackLine):
                    labelled.add(rec.prediction_id)
            chunks.append(ids)
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
        for ids in reversed(chunks):  # oldest first, so the newest stay
            out.add(ids)
        for pid in labelled:
            try:
                key = bytes.fromhex(pid)
            except ValueError:
                continue
            if key in out._ids:
                out._ids[key] = True
        return out


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
