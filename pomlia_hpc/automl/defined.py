"""Whether a task's metric can be computed on the splits AutoML judges by (val picks, test
reports), told from the class counts a store records at ingest, before any job starts.

AUC ranks the images of one class against the others: on a split that holds a single class
(single-label), or where no label is both present and absent (multi-label), it is undefined
for every class. A study of a task whose val split is such a split used to run all its trials
and then register no model ("validation auc is undefined"); :func:`require_defined_metric`
refuses it up front instead. On the test split the study still picks and registers a model
and only its test AUC is undefined (n/a, never NaN): :func:`undefined_on_test` says why, for
`task add` to warn. Accuracy and macro F1 are defined on any non-empty split.
"""

from __future__ import annotations

from typing import Any

from pomlia_hpc.errors import InputError

#: The splits AutoML evaluates every trial on.
EVAL_SPLITS: tuple[str, ...] = ("val", "test")
#: Metrics that need both outcomes of a class (label) among a split's images.
RANKING_METRICS: frozenset[str] = frozenset({"auc"})


def _counts(meta: dict[str, Any], split: str) -> list[int]:
    dist = meta.get("label_distribution") or {}
    return [int(c) for c in dist.get(split, [])]


def _size(meta: dict[str, Any], split: str) -> int:
    sizes = meta.get("split_sizes") or {}
    if split in sizes:
        return int(sizes[split])
    ranges = (meta.get("splits") or {}).get(split)
    return int(ranges[1]) - int(ranges[0]) if ranges else 0


def _multi_label(meta: dict[str, Any]) -> bool:
    return str(meta.get("task_type", "")).startswith("multi-label")


def _why_undefined(meta: dict[str, Any], split: str) -> str | None:
    """Why AUC is undefined for every class (label) of ``split``, or None when it is defined
    for at least one (or the store recorded no class counts to judge by)."""
    counts, size = _counts(meta, split), _size(meta, split)
    if not counts or size == 0:
        return None  # an empty split has its own error (data.splits)
    names = [str(n) for n in meta.get("class_names", [])]
    if _multi_label(meta):
        if any(0 < c < size for c in counts):
            return None
        every = [n for n, c in zip(names, counts, strict=False) if c == size]
        return f"{split} ({size} images): every label is on all of them or on none" + (
            f" (on all: {', '.join(repr(n) for n in every)})" if every else ""
        )
    present = [f"'{n}' ({c})" for n, c in zip(names, counts, strict=False) if c > 0]
    if len(present) >= 2:
        return None
    return f"{split} ({size} images) holds only class {', '.join(present) or 'none'}"


def _too_few_to_split(meta: dict[str, Any]) -> str:
    """``class 'b' has 1 image`` for the classes with images but fewer than 3 in all (a
    stratified carve keeps such a class out of val or test), or ``""``."""
    names = [str(n) for n in meta.get("class_names", [])]
    per_split = [_counts(meta, s) for s in ("train", *EVAL_SPLITS)]
    totals = [sum(c) for c in zip(*per_split, strict=False)] if all(per_split) else []
    few = [(n, t) for n, t in zip(names, totals, strict=False) if 0 < t < 3]
    return "; ".join(f"class '{n}' has {t} image{'s' if t > 1 else ''}" for n, t in few)


def _need(meta: dict[str, Any], split: str) -> str:
    if _multi_label(meta):
        return f"at least one label present on some and absent from other images of {split}"
    return f"images of at least 2 classes in {split}"


def require_defined_metric(meta: dict[str, Any], metric: str, ref: str) -> None:
    """Refuse ``metric`` for dataset version ``ref`` (its store's ``meta``) when it is
    undefined on the val split for every class: one :class:`InputError` naming the classes
    val holds and what would make it defined."""
    if metric not in RANKING_METRICS or (why := _why_undefined(meta, "val")) is None:
        return
    if not _multi_label(meta) and (few := _too_few_to_split(meta)):
        why += f"; {few} in all"
    raise InputError(
        f"dataset '{ref}': metric {metric} is undefined on its val split: {why}: expected "
        f"{_need(meta, 'val')} (AUC ranks the images of one class against the others, and "
        "AutoML picks its trials by val); choose --metric acc or f1_macro, or ingest a "
        "version whose val split holds more classes (where the split is carved, each class "
        "of 3 or more images gives val and test one image each)"
    )


def undefined_on_test(meta: dict[str, Any], metric: str) -> str | None:
    """Why ``metric`` is undefined on the test split of a store's ``meta`` for every class
    (every trial's test value will read n/a), or None when it is defined there."""
    if metric not in RANKING_METRICS or (why := _why_undefined(meta, "test")) is None:
        return None
    return f"metric {metric} is undefined on the test split: {why}; expected {_need(meta, 'test')}"


def _left_out(meta: dict[str, Any], split: str) -> list[str]:
    """The classes (labels) of ``split`` whose AUC is undefined there, each with why."""
    counts, size = _counts(meta, split), _size(meta, split)
    names = [str(n) for n in meta.get("class_names", [])]
    if _multi_label(meta):
        return [
            f"'{n}' (on {'every' if c else 'no'} {split} image)"
            for n, c in zip(names, counts, strict=False)
            if c in (0, size)
        ]
    return [f"'{n}' (no {split} image)" for n, c in zip(names, counts, strict=False) if c == 0]


def classes_left_out(meta: dict[str, Any], metric: str) -> str | None:
    """Which classes (labels) ``metric`` leaves out of its mean on val and on test, where it is
    defined for others (a class with no val image has no AUC there: the mean is over the rest,
    and ``auc_classes`` in a run's metrics says how many), or None when it leaves none out."""
    if metric not in RANKING_METRICS:
        return None
    kind = "labels" if _multi_label(meta) else "classes"
    n = len(meta.get("class_names", []))
    parts = []
    for split in EVAL_SPLITS:
        if not _counts(meta, split) or _size(meta, split) == 0:
            continue
        if _why_undefined(meta, split) is not None:
            continue  # undefined for every class: require_defined_metric / undefined_on_test
        out = _left_out(meta, split)
        if out:
            parts.append(f"on {split} over {n - len(out)} of {n} {kind}, without {', '.join(out)}")
    if not parts:
        return None
    return f"metric {metric} is the mean {'; '.join(parts)}: no trial is picked or judged on them"


def one_class_splits(meta: dict[str, Any], metric: str) -> str | None:
    """For a metric defined on a split of one class (acc, f1_macro), which of val and test
    hold a single class (single-label): there a model that gives that class to every image
    scores 1, so the metric picks (or reports) nothing; None when neither does."""
    if metric in RANKING_METRICS or _multi_label(meta):
        return None  # undefined there instead: require_defined_metric, undefined_on_test
    names = [str(n) for n in meta.get("class_names", [])]
    parts = []
    for split in EVAL_SPLITS:
        counts = _counts(meta, split)
        present = [n for n, c in zip(names, counts, strict=False) if c > 0]
        if len(present) == 1 and len(names) > 1:
            parts.append(f"{split} holds only class '{present[0]}'")
    if not parts:
        return None
    return (
        f"{' and '.join(parts)}: there {metric} cannot tell a model from one that gives that "
        "class to every image (expected images of at least 2 classes in val and test)"
    )
