"""Warnings on duplicate images of a dataset version, from its explicit fingerprint.

A val or test image whose pixels also occur in train lets a model be judged on what it was
trained on (the val metric picks configurations, the test metric is reported: both come out
inflated); the same pixels under two labels teach a model a contradiction. The fingerprint
counts both (``duplicates.across_splits`` and ``duplicates.conflicting_labels``,
:mod:`~pomlia_hpc.data.explicit_fingerprint`); ``data add`` and ``task add`` print the
warning. No heavy imports here: ``task add`` reads only the registry.
"""

from __future__ import annotations

from typing import Any


def duplicate_warning(fingerprint: dict[str, Any]) -> str | None:
    """One warning sentence on the duplicates a version's ``fingerprint`` records (val/test
    images that are copies of training images, duplicates with conflicting labels), or None
    when there are none (or the fingerprint predates the counts)."""
    dup = fingerprint.get("duplicates") or {}
    across = {s: int(n) for s, n in (dup.get("across_splits") or {}).items() if int(n) > 0}
    conflicting = int(dup.get("conflicting_labels") or 0)
    parts = []
    if across:
        counts = " and ".join(f"{n} {s}" for s, n in across.items())
        parts.append(
            f"{counts} image(s) are pixel copies of training images (leakage: "
            f"{' and '.join(across)} metrics come out inflated)"
        )
    if conflicting:
        parts.append(
            f"{conflicting} duplicate image(s) carry a label other than their copy's "
            "(the same pixels under two classes)"
        )
    if not parts:
        return None
    return "; ".join(parts) + "; remove the copies from the source and run `pomlia data add` again"
