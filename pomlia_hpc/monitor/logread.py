"""Reading a model's prediction log for one time window.

The server writes ``<logs>/predictions/<name>/<start>-<host>-<pid>-<seq>.jsonl``, one file per
server process and rotation (:mod:`pomlia_hpc.serve.predlog`); ``<name>`` is the model's, or the
deployment slot's when the server follows a slot (then the folder holds the records of every
model the slot served, each record naming its model). This reader goes through every such file
of the folders it is given once, streaming (a log of a million predictions is about 1.7 GB),
and keeps:

* for predictions of the reference's model version inside the window: the predicted label, the
  confidence and the time of every one, and the fingerprint of a uniform random sample of at
  most ``max_vectors`` of them (reservoir sampling; the drift tests need no more, see
  :mod:`pomlia_hpc.monitor.tests`);
* the feedback labels that arrived in the window, joined to their predictions by
  :mod:`pomlia_hpc.monitor.labels` (those of the window, or older ones within the look-back;
  a label that names no class of the model is counted, not tested);
* counts of everything it skipped, and why: records of other model versions (by version),
  records of other models (a file copied into the wrong folder), lines that are not a valid
  record (:mod:`pomlia_hpc.serve.records`: not JSON, an unknown or missing key, a mistyped
  value, a ``time`` that is no ISO 8601 time with a UTC offset; the first few are quoted
  with file, line and key, e.g. ``<file>:12: unknown key 'x'; valid keys: ...``), a torn
  last line (a writer that crashed mid-line), fingerprints of the wrong kind or length, and
  refused requests by reason (``rejection`` records);
* records of a newer server: keys this version does not know are ignored (the record is read,
  its known keys checked as strictly as ever) and counted by name; a record of a newer major
  log format (``format`` above :data:`~pomlia_hpc.serve.records.LOG_FORMAT`) is skipped and
  counted, not read, as its keys may mean what this version would misread (the rule:
  :mod:`pomlia_hpc.serve.records`).

Which files are opened, and how a torn last line is told, is the rule every log reader shares
(:mod:`pomlia_hpc.serve.logfiles`): files last changed before the window (by more than the
clock margin between machines, :data:`~pomlia_hpc.serve.logfiles.CLOCK_SKEW_S`) cannot hold
records of it and are not opened.
Files the server's log retention deleted are named by the marker it leaves
(:mod:`pomlia_hpc.serve.retention`): a window that reaches back to them says so.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pomlia_hpc.monitor.labels import DEFAULT_LOOKBACK, Arrivals, LabelJoin, join_labels
from pomlia_hpc.serve.logfiles import CLOCK_SKEW_S, WholeLines, files_since
from pomlia_hpc.serve.records import (
    TIMEOUT_REASON,
    BadLineError,
    FeedbackLine,
    LogLine,
    NewerFormatError,
    PredictionLine,
    RejectionLine,
    read_line,
)
from pomlia_hpc.serve.retention import missing_since

#: Bad lines quoted in the report at most (file, line number and what is wrong), so a broken
#: file does not flood it.
MAX_EXAMPLES = 5


@dataclass
class LogWindow:
    """What :func:`read_window` found; see the module docstring."""

    model: str
    version: str
    since: datetime
    until: datetime
    files_read: int = 0
    files_skipped_old: int = 0
    lines: int = 0
    torn_lines: int = 0
    corrupt_lines: int = 0
    corrupt_examples: list[str] = field(default_factory=list)
    #: Records read with keys this version does not know (a newer writer's), and how many
    #: records carried each key (dotted: ``output.x``).
    unknown_key_lines: int = 0
    unknown_keys: Counter[str] = field(default_factory=Counter)
    #: Records of a newer major log format, skipped, by format.
    newer_formats: Counter[int] = field(default_factory=Counter)
    unreadable_files: list[str] = field(default_factory=list)
    other_versions: Counter[str] = field(default_factory=Counter)
    other_models: Counter[str] = field(default_factory=Counter)
    bad_fingerprints: int = 0
    other_deployments: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    #: Per prediction of the window (version = reference's): predicted index and confidence
    #: (a compact array: a million predictions take 8 MB), and counts per hour.
    pred_index: list[Any] = field(default_factory=list)
    confidence: array[float] = field(default_factory=lambda: array("d"))
    per_hour: Counter[str] = field(default_factory=Counter)
    #: Sampled fingerprints (rows) and the ids of their predictions.
    vectors: list[np.ndarray] = field(default_factory=list)
    vector_ids: list[str] = field(default_factory=list)
    #: The labels that arrived in the window and their predictions; see
    #: :mod:`pomlia_hpc.monitor.labels` (which labels are tested, and why the others are not).
    labels: LabelJoin = field(default_factory=LabelJoin)
    #: How far before ``since`` the labels' predictions were looked up, s.
    label_lookback_s: float = DEFAULT_LOOKBACK.total_seconds()
    #: Answered requests of the window: a batch of images counts once, at its first record
    #: (the one with ``request_images``), a single image once; see :func:`read_window`.
    requests: int = 0
    #: Batches of the window with fewer records than images (a torn or corrupt line cut them).
    short_batches: int = 0
    #: The latest last write of the files log retention deleted, when at or after ``since``:
    #: the window's records up to then may be gone (:mod:`pomlia_hpc.serve.retention`).
    deleted_through: datetime | None = None

    @property
    def n_predictions(self) -> int:
        return len(self.pred_index)

    @property
    def feedback(self) -> list[tuple[Any, Any, str]]:
        """The tested labels: (predicted, true label, feedback time)."""
        return self.labels.tested

    @property
    def n_requests(self) -> int:
        """Answered requests of the window: a batch of images is one (as a refused one is)."""
        return self.requests

    def fingerprint_matrix(self, dim: int) -> np.ndarray:
        """The sampled fingerprints as float32 (m, dim)."""
        if not self.vectors:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack(self.vectors).astype(np.float32)


def iso(t: datetime) -> str:
    """``t`` in the log's format (UTC, microseconds), so times compare as strings."""
    return t.isoformat(timespec="microseconds")


def _confidence(probs: list[float], multi_label: bool) -> float:
    if not probs:
        return float("nan")
    if multi_label:
        return float(2.0 * np.mean(np.abs(np.asarray(probs, dtype=np.float64) - 0.5)))
    return float(max(probs))


def read_window(
    directory: Path | Sequence[Path],
    *,
    model: str,
    version: str,
    kind: str,
    dim: int,
    since: datetime,
    until: datetime,
    multi_label: bool = False,
    classes: int | None = None,
    max_vectors: int = 1000,
    seed: int = 0,
    deployment: int | None = None,
    label_lookback: timedelta = DEFAULT_LOOKBACK,
    keep_probabilities: bool = False,
) -> LogWindow:
    """Read every log file under ``directory`` (one folder or several) for predictions of
    ``model`` at ``version`` with ``since <= time < until`` (aware datetimes), of ``deployment``
    when given, and the labels that arrived then (predictions looked up to ``label_lookback``
    before ``since``; their probabilities too when ``keep_probabilities``; a label whose index
    is not one of the model's ``classes``, when given, is counted, not tested): module docstring."""
    win = LogWindow(model, version, since, until, label_lookback_s=label_lookback.total_seconds())
    lo, hi = iso(since), iso(until)
    rng = np.random.default_rng(seed)
    seen_in_window = 0  # reservoir sampling over predictions with a valid fingerprint
    pred_of: dict[str, Any] = {}  # prediction id -> predicted index, for the feedback join
    probs_of: dict[str, list[float]] | None = {} if keep_probabilities else None
    arrivals = Arrivals(classes=classes, multi_label=multi_label)  # labels timed in the window
    folders = [directory] if isinstance(directory, Path) else list(directory)
    win.deleted_through = missing_since(folders, since, margin_s=CLOCK_SKEW_S)
    batch = _Batch()
    chosen = files_since(folders, since)
    win.files_skipped_old = chosen.before
    for path in chosen.files:
        if (fh := _open(path, win)) is None:
            continue
        batch.end(win)  # a batch never spans files (one commit, one file)
        with fh:
            lines = WholeLines(fh)
            for lineno, raw in lines:
                win.lines += 1
                rec = _record(raw, win, path, lineno)
                if rec is None:
                    batch.skip()  # most likely one of the batch's own records
                    continue
                # Before any filter: a batch's records share its model, version and time.
                follows = batch.follows(rec, win)
                if isinstance(rec, FeedbackLine):
                    # Not filtered by its model: a feedback record names the model serving
                    # when the label came (after a promotion, the new one), not the one that
                    # made the prediction; the join tells them apart.
                    if lo <= rec.time < hi and deployment in (None, rec.deployment):
                        arrivals.add(rec, path.name, lineno)
                    continue
                if rec.model != model:
                    win.other_models[rec.model] += 1
                    continue
                if deployment is not None and rec.deployment != deployment:
                    win.other_deployments += 1
                    continue
                if isinstance(rec, RejectionLine):
                    _count_rejection(rec, win, lo, hi)
                    continue
                if not lo <= (t := rec.time) < hi:
                    continue
                if rec.model_version != version:
                    win.other_versions[rec.model_version] += 1
                    continue
                out = rec.output
                pred_of[rec.id] = out.label_index
                if probs_of is not None:  # only for an AUC task: a list per prediction
                    probs_of[rec.id] = out.probabilities
                win.pred_index.append(out.label_index)
                win.confidence.append(_confidence(out.probabilities, multi_label))
                win.per_hour[t[:13]] += 1
                if not follows:
                    win.requests += 1
                    if rec.request_images > 1:
                        batch.start(rec, counted=True)
                fp = rec.fingerprint
                if rec.fingerprint_kind != kind or len(fp) != dim:
                    win.bad_fingerprints += 1
                    continue
                seen_in_window += 1
                _sample(win, rng, seen_in_window, max_vectors, rec.id, fp)
            win.torn_lines += lines.torn  # the last line of a crashed writer
    batch.end(win)
    win.labels = join_labels(
        arrivals,
        pred_of,
        folders,
        model=model,
        version=version,
        since=since,
        lookback=label_lookback,
        deployment=deployment,
        probabilities=probs_of,
    )
    return win


def _count_rejection(rec: RejectionLine, win: LogWindow, lo: str, hi: str) -> None:
    """Count ``rec`` in ``win`` by its reason when it is timed in [lo, hi)."""
    if lo <= rec.time < hi:
        # Older servers logged a body timeout (408) as "undecodable".
        reason = TIMEOUT_REASON if rec.status == 408 else rec.reason
        win.rejections[reason] += 1


def _open(path: Path, win: LogWindow) -> BinaryIO | None:
    """``path`` opened for reading, counted in ``win``; None for a file that cannot be read
    (counted too)."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        win.unreadable_files.append(f"{path.name}: {exc.strerror}")
        return None
    win.files_read += 1
    return fh


def _record(raw: bytes, win: LogWindow, path: Path, lineno: int) -> LogLine | None:
    """The record on the line ``raw`` (line ``lineno`` of ``path``), its unknown keys counted
    in ``win``; None for a line that is not one this version reads (counted in ``win``)."""
    try:
        rec, unknown = read_line(raw)
    except NewerFormatError as exc:
        win.newer_formats[exc.version] += 1
        return None
    except BadLineError as exc:
        win.corrupt_lines += 1
        if len(win.corrupt_examples) < MAX_EXAMPLES:
            win.corrupt_examples.append(f"{path.name}:{lineno}: {exc}")
        return None
    if unknown:
        win.unknown_key_lines += 1
        win.unknown_keys.update(unknown)
    return rec


def _sample(
    win: LogWindow,
    rng: np.random.Generator,
    seen: int,
    max_vectors: int,
    prediction_id: str,
    fingerprint: Sequence[float],
) -> None:
    """Reservoir sampling: keep the ``seen``-th fingerprint of the window with probability
    ``max_vectors / seen``, so that the kept ones are a uniform sample of all seen."""
    if len(win.vectors) < max_vectors:
        win.vectors.append(np.asarray(fingerprint, dtype=np.float32))
        win.vector_ids.append(prediction_id)
        return
    j = int(rng.integers(seen))
    if j < max_vectors:
        win.vectors[j] = np.asarray(fingerprint, dtype=np.float32)
        win.vector_ids[j] = prediction_id


class _Batch:
    """The batch whose records are being read. The server writes a request's records in one
    commit, its first record carrying ``request_images`` (k), so the k - 1 records after it
    in the same file are the batch's own: not requests of their own. A torn or corrupt line
    cuts a batch short (it was counted once all the same, at its first record): counting
    ``predictions - (k - 1)`` instead went negative."""

    def __init__(self) -> None:
        self.left = 0  # records of the batch still to come
        self.time = ""
        self.counted = False  # its first record was a prediction of the window

    def start(self, rec: PredictionLine, *, counted: bool) -> None:
        self.left, self.time, self.counted = rec.request_images - 1, rec.time, counted

    def skip(self) -> None:
        if self.left:
            self.left -= 1

    def end(self, win: LogWindow) -> None:
        if self.left and self.counted:
            win.short_batches += 1
        self.left, self.counted = 0, False

    def follows(self, rec: LogLine, win: LogWindow) -> bool:
        """Whether ``rec`` is one of the current batch's records after its first; a record
        that is not ends the batch (and a first record with ``request_images`` starts one,
        counted by the caller when it is a prediction of the window)."""
        if (
            self.left
            and isinstance(rec, PredictionLine)
            and rec.request_images == 1
            and rec.time == self.time
        ):
            self.left -= 1
            return True
        self.end(win)
        if isinstance(rec, PredictionLine) and rec.request_images > 1:
            self.start(rec, counted=False)
        return False
