"""Classes of a dataset version that no model could learn or be judged on, and what changed
between two versions of one dataset name.

A class with no images in a split (an empty class folder, an HDF5 label never used, a class
found only in the test folder) is kept as the source says (``data add`` and ``data show``
name it), but a classification task needs at least 2 classes with training images:
``task add`` refuses fewer (every AutoML trial crashed in scikit-learn's metrics before).
"""

from __future__ import annotations

from typing import Any

from pomlia_hpc.data.sources.label_forms import nfc, summarize
from pomlia_hpc.data.store import SPLITS
from pomlia_hpc.errors import InputError


def _counts(meta: dict[str, Any], split: str) -> list[int]:
    dist = meta.get("label_distribution") or {}
    return [int(c) for c in dist.get(split, [])]


def classes_without_images(meta: dict[str, Any]) -> dict[str, list[str]]:
    """Class name -> the splits (train, val, test order) where it has no image, for the
    classes of a store's ``meta`` missing from at least one split that has images."""
    names = [str(n) for n in meta.get("class_names", [])]
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        counts = _counts(meta, split)
        if not counts or sum(counts) == 0:
            continue  # an empty split has its own warning (pomlia_hpc.data.splits)
        for name, n in zip(names, counts, strict=False):
            if n == 0:
                out.setdefault(name, []).append(split)
    return out


def describe_missing(missing: dict[str, list[str]], shown: int | None = 5) -> str:
    """``'c' (train), 'x' (any split)`` for :func:`classes_without_images`' result; more than
    ``shown`` + 2 classes are cut to the first ``shown`` and a count (None: all of them)."""
    parts = []
    for name, splits in missing.items():
        where = "any split" if len(splits) == len(SPLITS) else ", ".join(splits)
        parts.append(f"'{name}' ({where})")
    return ", ".join(parts) if shown is None else summarize(parts, shown)


def train_classes(meta: dict[str, Any]) -> list[str]:
    """The classes of a store's ``meta`` with at least one training image."""
    names = [str(n) for n in meta.get("class_names", [])]
    return [n for n, c in zip(names, _counts(meta, "train"), strict=False) if c > 0]


def require_two_train_classes(meta: dict[str, Any], ref: str) -> None:
    """Refuse a single-label version (``ref``, its store's ``meta``) with fewer than 2
    classes that have training images: one :class:`InputError` naming them."""
    if str(meta.get("task_type", "")).startswith("multi-label"):
        return  # each label column is its own yes/no task
    if not _counts(meta, "train"):
        return  # no class counts recorded: nothing to judge by (the trials will tell)
    have = train_classes(meta)
    if len(have) >= 2:
        return
    n = int(meta.get("n_classes", 0))
    shown = ", ".join(f"'{c}'" for c in have) or "none"
    raise InputError(
        f"dataset '{ref}' has {len(have)} class(es) with training images ({shown}; "
        f"{n} class(es) in all): expected at least 2 for a classification task (add images "
        "of another class and run `pomlia data add` again)"
    )


def version_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two versions' ``meta`` in classes, channels and task type, one
    phrase each (``classes a, b -> x, y, z``); [] when none of them changed."""
    out = []
    old_names = [str(n) for n in old.get("class_names", [])]
    new_names = [str(n) for n in new.get("class_names", [])]
    if old_names != new_names:
        out.append(
            f"classes {summarize(old_names, 10)} -> {summarize(new_names, 10)}"
            + _why_names_changed(old_names, new_names, new)
        )
    if old.get("channels") != new.get("channels"):
        out.append(f"channels {old.get('channels')} -> {new.get('channels')}")
    if old.get("task_type") != new.get("task_type"):
        out.append(f"task type {old.get('task_type')} -> {new.get('task_type')}")
    return out


def _why_names_changed(old: list[str], new: list[str], new_meta: dict[str, Any]) -> str:
    """Why the same classes read differently in a new version: names now kept in Unicode NFC
    (they print alike), or integer class folders now ordered by value (labels renumbered)."""
    if old == new:
        return ""
    if [nfc(n) for n in old] == new:
        return (
            " (the same names, now kept in Unicode NFC form: they print alike, but a folder "
            "copied from a Mac spells them decomposed (NFD), which made other classes before)"
        )
    order = (new_meta.get("source") or {}).get("class_order")
    if sorted(old) == sorted(new) and order == "numeric" and old == sorted(old):
        return (
            " (the same classes, now in numeric order: class folders named by integers are "
            "ordered by value, so '10' comes after '9', not after '1'; the labels of the "
            "old version are numbered in text order)"
        )
    if sorted(old) == sorted(new):
        return " (the same classes in another order: the labels are numbered differently)"
    return ""
