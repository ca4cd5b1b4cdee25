"""Labelled production inputs: feedback labels joined with kept inputs by prediction id.

What the harvest (:mod:`pomlia_hpc.loop.harvest`) and the gate read. A prediction counts when
its feedback arrived inside the window (``since`` <= feedback time < ``until``) and its input
was kept (``pomlia serve --keep-inputs``); of several labels of one id the latest (by
revision, else by feedback time) holds, as in the monitor (:func:`.logfiles.later_label`).
Counts of what was left out, and why, come back with the rows, so nothing is dropped
without a trace (nor what the log's retention deleted: ``deleted_through``): a label whose
index names no class (below 0, or at or above the model's classes or labels when the caller
gives them: a multi-label row of 0/1 would silently drop it, a single-label one would be
harvested with a class the data set does not have) is ``label_out_of_range``, a key present
only when some are. A log line that is not a valid record stops the join with one error
naming the file, line and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pomlia_hpc.serve.inbox import inputs_dir, read_inputs
from pomlia_hpc.serve.logfiles import (
    CLOCK_SKEW_S,
    LabelOrder,
    files_since,
    later_label,
    read_file,
)
from pomlia_hpc.serve.records import FeedbackLine, PredictionLine
from pomlia_hpc.serve.retention import missing_since


@dataclass
class LabelledInputs:
    """Rows in prediction-time order: ids, uint8 images (n, H, W, C), label indices (n, L),
    the model version that answered each, and counts of what was left out."""

    ids: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    feedback_times: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    #: The latest last write of the log files retention deleted, when at or after ``since``:
    #: labels of the window up to then may be gone (:mod:`.retention`).
    deleted_through: datetime | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def image_array(self) -> np.ndarray:
        return np.stack(self.images) if self.images else np.zeros((0, 0, 0, 0), np.uint8)

    def label_array(self) -> np.ndarray:
        if not self.labels:  # numpy cannot infer the width of (0, -1)
            return np.zeros((0, 1), np.int64)
        return np.asarray(self.labels, dtype=np.int64).reshape(len(self.labels), -1)

    def last_time(self) -> str | None:
        return max(self.feedback_times) if self.feedback_times else None


def retention_warning(got: LabelledInputs) -> str | None:
    """What the log's retention deleted from the window asked for, in words; None if nothing."""
    if got.deleted_through is None:
        return None
    when = got.deleted_through.isoformat(timespec="seconds")
    return (
        f"log retention (log_retention_days) deleted prediction log files last written up to "
        f"{when}: feedback labels of the window up to then may be missing, and cannot be "
        "harvested"
    )


def _when(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def labelled_inputs(
    log_dir: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    multi_label_width: int | None = None,
    n_classes: int | None = None,
) -> LabelledInputs:
    """Join the feedback under ``log_dir`` with the inputs kept there (see module docstring).
    ``multi_label_width``: for multi-label models, the label list becomes a 0/1 row.
    ``n_classes``: a single-label model's classes; a label index at or above it names none.

    Reads what the window needs, not the whole log (a day's harvest read a month's 1 GB
    twice: 58 s): feedback only in files last written at or after ``since`` (less the clock
    margin; older files are counted as ``log_files_before_window``), and the predictions of
    the harvested ids newest file first, until each is found."""
    gone = missing_since([log_dir], since, margin_s=CLOCK_SKEW_S)
    out = LabelledInputs(deleted_through=gone)
    counts = {"feedback": 0, "outside_window": 0, "no_input": 0, "used": 0}
    chosen = files_since(Path(log_dir), since)
    if chosen.before:
        counts["log_files_before_window"] = chosen.before
    labels: dict[str, tuple[list[int], LabelOrder]] = {}
    for path in chosen.files:
        for rec in read_file(path):
            if not isinstance(rec, FeedbackLine):
                continue
            counts["feedback"] += 1
            t = _when(rec.time)
            if t is None or (since is not None and t < since) or (until is not None and t >= until):
                counts["outside_window"] += 1
                continue
            have, order = labels.get(rec.prediction_id), LabelOrder.of(rec)
            if have is not None and not later_label(order, have[1]):
                continue  # a correction read before the label it corrects (files interleave)
            idx = rec.label_index
            labels[rec.prediction_id] = (idx if isinstance(idx, list) else [idx], order)
    width = multi_label_width if multi_label_width is not None else n_classes
    bad = [pid for pid, (idx, _) in labels.items() if not _in_range(idx, width)]
    if bad:  # the latest label holds, and names no class: the image is left out
        counts["label_out_of_range"] = len(bad)
        for pid in bad:
            del labels[pid]
    seen: set[str] = set()
    for kept in read_inputs(inputs_dir(log_dir), ids=labels):
        if kept.id in seen:  # an id is kept once; a copied chunk file must not count twice
            continue
        seen.add(kept.id)
        idx, when = labels[kept.id]
        row = idx
        if multi_label_width is not None:
            row = [1 if i in idx else 0 for i in range(multi_label_width)]
        out.ids.append(kept.id)
        out.images.append(kept.as_uint8())
        out.labels.append(row)
        out.feedback_times.append(when.time)
    versions = _versions(Path(log_dir), set(out.ids))
    out.versions = [versions.get(pid, "") for pid in out.ids]
    counts["no_input"] = len(labels) - len(out.ids)
    counts["used"] = len(out.ids)
    out.counts = counts
    return out


def _in_range(indices: list[int], width: int | None) -> bool:
    """Whether every label index is one of a class: at least 0 and below ``width`` (the
    model's labels or classes; None: not known, only negative indices name none)."""
    return all(i >= 0 and (width is None or i < width) for i in indices)


def _versions(log_dir: Path, ids: set[str]) -> dict[str, str]:
    """The model version that answered each of ``ids``: the files read newest first (last
    change), stopping once every id is found (a prediction precedes its feedback, so they
    are near the window, whatever the log's length)."""
    found: dict[str, str] = {}
    if not ids:
        return found
    for path in files_since(log_dir, None, newest_first=True).files:
        for rec in read_file(path):
            if isinstance(rec, PredictionLine) and rec.id in ids:
                found[rec.id] = rec.model_version
        if len(found) == len(ids):
            break
    return found
