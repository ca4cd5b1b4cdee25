"""Re-registering dataset stores from their own metadata, when the registry is lost.

Every published store keeps the metadata ingest recorded (``attrs["pomlia"]``: name, version,
chunk hashes, splits, classes, ingest time) and its explicit fingerprint, so the image DB can
be rebuilt from ``<home>/stores/`` alone: ``pomlia registry recover``. Versions of one dataset
are registered each after its parent, oldest ingest first, and each one's parent is the version
its metadata names, as it was (not the one recovered before it: a harvest's version grows from
the model's training version, not from the newest). What a dataset's plain name means is left
as it was for a dataset the registry still lists; for one recovered whole, it is the version
ingested last. Encoders, embeddings, models and AutoML runs are not in the stores: they are not
recovered (their files stay under ``models/``, ``embeddings/`` and ``runs/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.data.store import STORE_SUFFIX, current_versions, open_store
from pomlia_hpc.data.versioning import record_version
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.registry import Dataset, DatasetVersion, Registry
from pomlia_hpc.workspace import Workspace


def store_dirs(workspace: Workspace) -> list[Path]:
    """Published stores on disk: ``<home>/stores/<name>/<version>.zarr`` with a zarr.json."""
    root = workspace.stores
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/*{STORE_SUFFIX}/zarr.json"))


@dataclass
class RecoverResult:
    """What :func:`recover_stores` did: refs registered anew, already known, and skipped
    stores with the reason."""

    registered: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _lineage_order(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Each version after the parent its metadata names (ingest times have one-second
    resolution, so two quick ingests tie); then oldest ingest, name, version."""
    todo = sorted(found, key=lambda t: (str(t[0]), str(t[1]), str(t[2])))
    present = {(t[1], t[2]) for t in todo}
    done: set[tuple[str, str]] = set()
    out: list[tuple[Any, ...]] = []
    while todo:
        ready = [
            i
            for i, t in enumerate(todo)
            if (t[1], t[5].get("parent")) in done or (t[1], t[5].get("parent")) not in present
        ]
        # A cycle cannot come from ingest; if one did, take the oldest rather than loop.
        t = todo.pop(ready[0] if ready else 0)
        done.add((t[1], t[2]))
        out.append(t)
    return out


def recover_stores(workspace: Workspace, registry: Registry) -> RecoverResult:
    """Register every store under ``workspace.stores`` that the registry does not list."""
    out = RecoverResult()
    found = []
    for path in store_dirs(workspace):
        try:
            store = open_store(path)
            meta, fingerprint = store.meta, store.fingerprint
            name, version = str(meta["name"]), str(meta["version"])
            n_images = store.n_images
        except (PomliaError, KeyError, OSError, ValueError) as exc:
            out.skipped.append((path, f"unreadable metadata ({type(exc).__name__}: {exc})"))
            continue
        if path.parent.name != name or path.name != f"{version}{STORE_SUFFIX}":
            out.skipped.append((path, f"its metadata names {name}@{version}, not this path"))
            continue
        found.append(
            (str(meta.get("ingested_at", "")), name, version, path, n_images, meta, fingerprint)
        )
    before = current_versions(registry)
    for _when, name, version, path, n_images, meta, fingerprint in _lineage_order(found):
        rec = record_version(
            registry, name, version, path, n_images, meta, fingerprint, recovered=True
        )
        (out.registered if rec.created else out.known).append(rec.ref)
    _keep_current(registry, {r.split("@")[0] for r in out.registered}, before)
    return out


def _keep_current(registry: Registry, names: set[str], before: dict[str, DatasetVersion]) -> None:
    """Pin what the plain names of ``names`` meant ``before`` the recovery where the dataset
    records no current version (it means the newest registered, which a recovered older
    version would otherwise become)."""
    with registry.session() as s:
        for ds in s.scalars(select(Dataset).where(Dataset.name.in_(names & before.keys()))):
            if ds.current_version_id is None:
                ds.current_version_id = before[ds.name].id
