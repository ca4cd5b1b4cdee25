"""Which feedback labels a monitor window tests: those that *arrived* in it.

Production labels come hours or days after the prediction. A window's accuracy is therefore
tested on the labels whose feedback record is timed inside the window (``since <= time <
until``, the receiving server's clock), whatever the time of the prediction they name; the
prediction is looked up in the window's own records and, for the others, in the log files
written since ``label_lookback`` before the window's start (a second, cheap pass that parses
only the lines of the predictions it looks for). Consecutive windows (``--window`` equal to
the chain's period) split the time line, so every label is tested in exactly one of them,
the nightly run sees every label of its window (they all arrived before it), and a rerun of a
window tests the same labels.

A label the window cannot test is counted, by why:

* ``unknown``: its prediction id is in no log file of the model within the look-back (a
  prediction older than the look-back, or an id this model never returned);
* ``other_model``: its prediction was made by another model or model version (a slot's
  server that took a label after a promotion or a redeploy: the feedback record names the
  model serving then, the prediction the model that made it), by ``model version``;
* ``corrected``: a replacement (``"replaces": true``) of a label that arrived before the
  window, which an earlier window tested: each prediction counts once, in the window of its
  first label (a replacement within one window just wins over the label it replaces);
* ``out_of_range``: a label (the one that holds, of a prediction's labels) whose
  ``label_index`` is not one of the model's classes (below 0 or at or above their number; a
  list for a single-label model): written by something other than the server, which refuses
  such feedback; it was scored as a wrong answer (a multi-label score even went below 0).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pomlia_hpc.serve.ids import issued_at
from pomlia_hpc.serve.logfiles import (
    CLOCK_SKEW_S,
    LabelOrder,
    WholeLines,
    file_start_time,
    files_since,
    later_label,
)
from pomlia_hpc.serve.records import BadLineError, FeedbackLine, PredictionLine, read_line

#: How far before a window's start its labels' predictions are looked up, when not told.
#: Labels typically come within days; a server forgets ids after ``feedback_window``
#: predictions anyway (its feedback answers 404 then).
DEFAULT_LOOKBACK = timedelta(days=7)

# The record's own id (not "prediction_id", whose key does not start with a quote): lines
# without a wanted id are skipped without parsing them.
_ID = re.compile(rb'"id"\s*:\s*"([0-9A-Fa-f]+)"')


@dataclass
class _Arrival:
    """The labels of one prediction that arrived in the window."""

    first: LabelOrder
    first_replaces: bool
    last: LabelOrder
    label: Any
    #: (log file name, line, label) of ``label`` when it names no class of the model.
    out_of_range: tuple[str, int, Any] | None = None


@dataclass
class Arrivals:
    """Feedback records timed inside the window, by prediction id (see the module docstring).
    ``classes``: the model's number of classes (labels of a multi-label model), which a label
    index must be below; None: not checked."""

    by_prediction: dict[str, _Arrival] = field(default_factory=dict)
    classes: int | None = None
    multi_label: bool = False

    def add(self, rec: FeedbackLine, file: str = "", line: int = 0) -> None:
        """Note one feedback record of the window (any order: files interleave), read at
        ``line`` of the log file named ``file``."""
        order, label = LabelOrder.of(rec), rec.label_index
        bad = None if self._fits(label) else (file, line, label)
        have = self.by_prediction.get(rec.prediction_id)
        if have is None:
            self.by_prediction[rec.prediction_id] = _Arrival(order, rec.replaces, order, label, bad)
            return
        if not later_label(order, have.first):  # strictly earlier
            have.first, have.first_replaces = order, rec.replaces
        if later_label(order, have.last):  # the harvest's rule too
            have.last, have.label, have.out_of_range = order, label, bad

    def _fits(self, label: int | list[int]) -> bool:
        """Whether ``label`` is one of the model's class indices (a multi-label model's: a
        list of them, or one)."""
        n = self.classes
        if n is None:
            return True
        if isinstance(label, int):
            return 0 <= label < n
        return self.multi_label and all(0 <= i < n for i in label)


@dataclass
class LabelJoin:
    """The window's labels: tested ones as (predicted, true label, feedback time), and counts
    of those not tested, by why (module docstring)."""

    tested: list[tuple[Any, Any, str]] = field(default_factory=list)
    #: Tested labels whose prediction lies outside the window (before it, or after it on a
    #: replica whose clock runs ahead).
    outside_window: int = 0
    unknown: int = 0
    other_model: Counter[str] = field(default_factory=Counter)
    corrected: int = 0
    #: Labels that name no class of the model, and where the first of them is
    #: (``file:line: label_index 99``, the first by file name and line).
    out_of_range: int = 0
    out_of_range_first: str | None = None
    #: The tested labels' predicted probabilities, in the order of ``tested``; empty unless
    #: asked for (:func:`join_labels`'s ``probabilities``: an AUC task's test).
    probabilities: list[list[float]] = field(default_factory=list)


def join_labels(
    arrivals: Arrivals,
    in_window: dict[str, Any],
    folders: Sequence[Path],
    *,
    model: str,
    version: str,
    since: datetime,
    lookback: timedelta,
    deployment: int | None = None,
    probabilities: dict[str, list[float]] | None = None,
) -> LabelJoin:
    """Join the window's labels to predictions: ``in_window`` maps the ids of the window's
    predictions (of ``model`` at ``version``) to their predicted label; the others are
    looked up in ``folders``' files that may hold records from ``lookback`` before
    ``since``. ``probabilities``: the window's predictions' probabilities by id, when the
    tested labels' probabilities are wanted (``LabelJoin.probabilities``)."""
    out = LabelJoin()
    pending: dict[str, _Arrival] = {}
    bad: list[tuple[str, int, Any]] = []
    for pid, got in arrivals.by_prediction.items():
        if got.first_replaces:
            out.corrected += 1  # its first label came before the window and counted there
        elif got.out_of_range is not None:
            bad.append(got.out_of_range)  # not one of the model's answers: no score
        elif pid in in_window:
            out.tested.append((in_window[pid], got.label, got.last.time))
            if probabilities is not None:
                out.probabilities.append(probabilities[pid])
        else:
            pending[pid] = got
    if bad:
        file, line, label = min(bad, key=lambda b: (b[0], b[1]))
        out.out_of_range, out.out_of_range_first = len(bad), f"{file}:{line}: label_index {label}"
    if not pending:
        return out
    found = _find_predictions(folders, set(pending), since - lookback, deployment)
    for pid, got in pending.items():
        rec = found.get(pid)
        if rec is None:
            out.unknown += 1
        elif rec.model != model or rec.model_version != version:
            out.other_model[f"{rec.model} {rec.model_version}"] += 1
        else:
            out.tested.append((rec.output.label_index, got.label, got.last.time))
            if probabilities is not None:
                out.probabilities.append(rec.output.probabilities)
            out.outside_window += 1
    return out


def _find_predictions(
    folders: Sequence[Path],
    wanted: set[str],
    not_before: datetime,
    deployment: int | None,
) -> dict[str, PredictionLine]:
    """The prediction records of the ``wanted`` ids timed at or after ``not_before``, from the
    files that may hold records of then or later, newest first (by last change), and no
    further once every id is found: labels mostly name predictions of the last days, and a
    look-back of a week of a busy model's log is gigabytes. An id that says when it was issued
    (:func:`~pomlia_hpc.serve.ids.issued_at`) is looked for only in the files that span that
    time, and not at all when that is before ``not_before``: a label whose prediction is not
    there made every run read the whole look-back. The files and the torn last line as every
    reader of the log takes them (:mod:`pomlia_hpc.serve.logfiles`)."""
    lo = not_before.isoformat(timespec="microseconds")
    timed = {pid: t for pid in wanted if (t := issued_at(pid)) is not None}
    # A timed id older than the look-back: its record would not count (it is before ``lo``).
    wanted = {pid for pid in wanted if timed.get(pid, float("inf")) >= not_before.timestamp()}
    found: dict[str, PredictionLine] = {}
    for path in files_since(folders, not_before, newest_first=True).files:
        if not wanted:
            break
        if not _may_hold(path, wanted, timed):
            continue
        try:
            fh = path.open("rb")
        except OSError:
            continue  # the window's own reading named it in the report
        with fh:
            for _lineno, raw in WholeLines(fh):
                m = _ID.search(raw)
                if m is None or m.group(1).decode() not in wanted:
                    continue
                rec = _prediction(raw)
                if rec is None:
                    continue
                wanted.discard(rec.id)  # ids are unique: found, whether it counts or not
                if rec.time >= lo and deployment in (None, rec.deployment):
                    found[rec.id] = rec
    return found


def _may_hold(path: Path, wanted: set[str], timed: dict[str, float]) -> bool:
    """Whether log file ``path`` may hold the prediction of one of the ``wanted`` ids: an id
    without a time may be in any file; a timed one only in a file whose writer started before
    and which was last changed after that time (both with the clock margin)."""
    try:
        changed = path.stat().st_mtime + CLOCK_SKEW_S
    except OSError:
        return True  # the open says what is wrong with it
    start = file_start_time(path)
    began = -math.inf if start is None else start - CLOCK_SKEW_S
    for pid in wanted:
        t = timed.get(pid)
        if t is None or began <= t <= changed:
            return True
    return False


def _prediction(raw: bytes) -> PredictionLine | None:
    """The prediction on the whole line ``raw``; None for another record or a line this
    version cannot read (the window's own reading counted it)."""
    try:
        rec, _unknown = read_line(raw)
    except BadLineError:  # NewerFormatError is one
        return None
    return rec if isinstance(rec, PredictionLine) else None


def label_notes(join: LabelJoin, lookback: timedelta) -> list[str]:
    """The report's notes on the window's labels that were not tested, in words."""
    notes = []
    if join.unknown:
        notes.append(
            f"{join.unknown} label(s) arrived for prediction ids not in this model's log "
            f"within the look-back ({_days(lookback)} before the window start): not tested "
            "(a prediction older than that, or an id this model never returned)"
        )
    if join.other_model:
        what = ", ".join(f"{k} ({n})" for k, n in join.other_model.most_common(5))
        notes.append(
            f"{sum(join.other_model.values())} label(s) arrived for predictions of another "
            f"model or version, not tested against this reference: {what}"
        )
    if join.corrected:
        notes.append(
            f"{join.corrected} label(s) replace a label that arrived before the window (an "
            "earlier window tested that prediction): not tested again"
        )
    if join.out_of_range:
        notes.append(
            f"{join.out_of_range} label(s) name no class of the model (a label_index below 0, "
            "or at or above the number of classes): not tested, as the model can never give "
            f"them; the first: {join.out_of_range_first}"
        )
    return notes


def _days(span: timedelta) -> str:
    """``span`` as days or hours, for a note."""
    hours = span.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 24 else f"{hours:g} h"
