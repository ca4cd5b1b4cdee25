"""Warnings on duplicate images of a dataset version, from its explicit fingerprint.

A val or test image whose pixels also occur in train lets a model be judged on what it was
trained on (the val metric picks configurations, the test metric is reported: both come out
inflated); the same pixels under two labels teach a model a contradiction. The fingerprint
counts both (``duplicates.across_splits`` and ``duplicates.conflicting_labels``,
:mod:`~pomlia_hpc.data.explicit_fingerprint`); ``data add`` and ``task add`` print the
warning. The same images registered under another name (``pixel_set``), split otherwise, put
one name's val/test images in the other's train: ``data add`` warns of that too
(:func:`copies_elsewhere`). No heavy imports here: ``task add`` reads only the registry.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from pomlia_hpc.registry import Dataset, DatasetVersion, Registry


def _counts(fingerprint: dict[str, Any]) -> tuple[dict[str, int], int]:
    """Val/test images that are copies of training images, per split, and duplicates with
    conflicting labels, as ``fingerprint`` records them (none when it predates the counts)."""
    dup = fingerprint.get("duplicates") or {}
    across = {s: int(n) for s, n in (dup.get("across_splits") or {}).items() if int(n) > 0}
    return across, int(dup.get("conflicting_labels") or 0)


def _copies(across: dict[str, int]) -> str:
    counts = " and ".join(f"{n} {s}" for s, n in across.items())
    return (
        f"{counts} image(s) are pixel copies of training images (leakage: "
        f"{' and '.join(across)} metrics come out inflated)"
    )


_CONFLICTING = (
    "duplicate image(s) carry a label other than their copy's (the same pixels under two classes)"
)


def duplicate_warning(fingerprint: dict[str, Any]) -> str | None:
    """One warning sentence on the duplicates a version's ``fingerprint`` records (val/test
    images that are copies of training images, duplicates with conflicting labels), or None
    when there are none (or the fingerprint predates the counts)."""
    across, conflicting = _counts(fingerprint)
    parts = [_copies(across)] if across else []
    if conflicting:
        parts.append(f"{conflicting} {_CONFLICTING}")
    if not parts:
        return None
    return "; ".join(parts) + "; remove the copies from the source and run `pomlia data add` again"


def harvest_warning(
    fingerprint: dict[str, Any], parent_fingerprint: dict[str, Any], parent_ref: str
) -> str | None:
    """:func:`duplicate_warning` for a harvested version (``fingerprint``) of the version
    ``parent_ref`` (``parent_fingerprint``): a harvest has no source to fix and keeps every row
    of its parent, so the parent's own duplicates are said to be inherited from it (up to its
    counts), and new conflicting labels point at the feedback that gave them. None when there
    are none."""
    across, conflicting = _counts(fingerprint)
    old_across, old_conflicting = _counts(parent_fingerprint)
    added = {s: n - old_across.get(s, 0) for s, n in across.items() if n > old_across.get(s, 0)}
    kept = {s: min(n, old_across.get(s, 0)) for s, n in across.items() if old_across.get(s, 0)}
    parts = [_copies(added)] if added else []
    if conflicting > old_conflicting:
        parts.append(
            f"{conflicting - old_conflicting} {_CONFLICTING}: check the feedback labels of "
            'those images (a corrected label sent again with `"replaces": true` replaces the '
            "harvested one at the next harvest)"
        )
    inherited = [_copies(kept)] if kept else []
    if min(conflicting, old_conflicting):
        inherited.append(f"{min(conflicting, old_conflicting)} {_CONFLICTING}")
    if inherited:
        parts.append(
            f"inherited from the parent {parent_ref} (a harvest keeps its parent's rows; "
            f"retrain from a version without them to be rid of them): {' and '.join(inherited)}"
        )
    return "; ".join(parts) or None


def _splits(fingerprint: dict[str, Any]) -> str:
    counts = fingerprint.get("counts") or {}
    return ", ".join(f"{s} {n}" for s, n in counts.items())


def _same_split(own: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two fingerprints of the same distinct images split them the same way: each
    split's digest (``split_pixel_sets``) equal, whatever the order of the images or their
    labels. False where either was fingerprinted before the field existed (not told)."""
    mine, theirs = own.get("split_pixel_sets"), other.get("split_pixel_sets")
    return bool(mine) and mine == theirs


def copies_elsewhere(registry: Registry, name: str, version: str) -> list[tuple[str, str]]:
    """(level, text) lines for ``data add`` on version ``version`` of ``name``: the versions
    of other data set names that hold exactly its images (the fingerprint's ``pixel_set``;
    versions fingerprinted before it are not found). The same split (each split's
    ``split_pixel_sets`` digest equal, whatever the order or the labels) is a note (the same
    content under two names); another split a warning, as a model trained on one has learnt
    the other's val/test images. Only whole copies are found: a partial one needs every
    store read, which the leakage checks do by pixels when a model is used."""
    with registry.session() as s:
        rows = s.execute(
            select(Dataset.name, DatasetVersion.version, DatasetVersion.fingerprint)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .order_by(DatasetVersion.id)
        ).all()
    own = next((fp for n, v, fp in rows if n == name and v == version), None) or {}
    digest = own.get("pixel_set")
    out: list[tuple[str, str]] = []
    for other, v, fp in rows:
        if digest is None or other == name or (fp or {}).get("pixel_set") != digest:
            continue
        if v == version:  # the version is a content hash: the same images, order and labels
            out.append(("note", f"the same images, labels and split as {other}@{v}"))
            continue
        if _same_split(own, fp):
            out.append(("note", f"the same images and split as {other}@{v}"))
            continue
        out.append(
            (
                "warning",
                f"the same images as {other}@{v}, split otherwise ({_splits(fp)} there, "
                f"{_splits(own)} here): a model trained on either has learnt val/test images "
                f"of the other, so do not compare the two names' models on either's val/test "
                "(`automl run --init-model/--encoder` and the loop's gate compare by pixels "
                "and refuse or leave them out)",
            )
        )
    return out
