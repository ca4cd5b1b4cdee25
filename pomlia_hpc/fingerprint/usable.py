"""Which fingerprint sets a reader may use: the one rule behind ``similar`` (datasets and
``--images``), ``index build``, ``plot latent`` and ``fingerprint show``.

A set is usable when its registry record is complete, its embeddings group is on disk and it
was made with the encoder's *current* weights (:func:`~.markers.made_with`, the rule by which
an extraction decides to embed again): an encoder retrained under the same name leaves the
vectors of its earlier weights behind, and they must not be mixed with new ones.

A set whose record still says running (its driver was killed, yet its array job finished) is
used as found on disk when every shard of its plan left its ``.done`` marker and the group was
made with the current weights: an in-memory copy of its record with the count and mean the
driver would have recorded (:func:`finished_copy`; the copy keeps the record's status, which
is how :func:`unrecorded` tells such a set). A reader writes nothing, neither the record nor the
summary file: the extraction command records it (:func:`record_finished`, which the driver
calls), and readers name such sets in one note (:func:`unrecorded_note`). Every other set is
left out, as a :class:`LeftOut` that says why and what to run; readers name them in one note.

Torch-free: ``pomlia similar`` and the other registry queries import this module.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from pomlia_hpc.data.store import current_versions, find_version, open_store
from pomlia_hpc.errors import NotFoundError
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.markers import (
    checkpoint_digest,
    done_record,
    made_with,
    stored_meta,
)
from pomlia_hpc.fingerprint.summary import compute_summary, summary_path, write_summary
from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, FingerprintSet, Registry


def record_set(
    registry: Registry, encoder_id: int, version_id: int, path: Path, **fields: Any
) -> int:
    """Create or update the fingerprint set of (``encoder_id``, ``version_id``) at ``path``
    with ``fields`` (``status``, ``n_vectors``, ``mean``); returns its id."""
    with registry.session() as s:
        q = select(FingerprintSet).where(
            FingerprintSet.encoder_id == encoder_id,
            FingerprintSet.dataset_version_id == version_id,
        )
        row = s.scalar(q) or FingerprintSet(
            encoder_id=encoder_id, dataset_version_id=version_id, embeddings_path=str(path)
        )
        row.embeddings_path = str(path)
        for k, v in fields.items():
            setattr(row, k, v)
        s.add(row)
        s.flush()
        return int(row.id)


def shard_plan(meta: dict[str, Any]) -> list[tuple[int, int]]:
    """The shard plan (row ranges) of an embeddings group's ``attrs["pomlia"]``."""
    return [(int(a), int(b)) for a, b in meta.get("shards") or []]


def shards_done(out: str | Path, plan: list[tuple[int, int]]) -> list[dict[str, Any] | None]:
    """The ``.done`` record of every shard of ``plan`` (None where it has none)."""
    return [done_record(out, i, r) for i, r in enumerate(plan)]


def record_finished(
    registry: Registry,
    encoder_id: int,
    version_id: int,
    out: Path,
    plan: list[tuple[int, int]],
    ref: str,
) -> bool:
    """Record the set at ``out`` as complete, with its mean embedding (from the shards' sums)
    and its summary (:mod:`.summary`) written first, if every shard of ``plan`` is done;
    False (nothing written) otherwise."""
    found = _finished(out, plan)
    if found is None:
        return False
    n, mean = found
    if not summary_path(out).exists():  # before "complete": complete sets have one
        fp = open_store(find_version(registry, ref).store_path).fingerprint
        write_summary(out, compute_summary(out, fp))
    record_set(registry, encoder_id, version_id, out, status="complete", n_vectors=n, mean=mean)
    return True


def _finished(out: Path, plan: list[tuple[int, int]]) -> tuple[int, list[float]] | None:
    """The vector count and mean embedding of the group at ``out`` (from its shards' sums)
    if every shard of ``plan`` is done, else None."""
    done = shards_done(out, plan)
    if not plan or any(d is None for d in done):
        return None
    n = plan[-1][1]
    total = np.sum([d["sum"] for d in done if d is not None], axis=0)
    return n, (np.asarray(total) / max(n, 1)).tolist()


def finished_copy(fs: FingerprintSet, plan: list[tuple[int, int]]) -> FingerprintSet | None:
    """A copy of ``fs`` (never added to a session: nothing is written) with the count and
    mean embedding its extraction left on disk, if every shard of ``plan`` is done (else
    None). It keeps ``fs``'s status, so :func:`unrecorded` tells it from a recorded set."""
    found = _finished(Path(fs.embeddings_path), plan)
    if found is None:
        return None
    n, mean = found
    return FingerprintSet(
        id=fs.id,
        encoder_id=fs.encoder_id,
        dataset_version_id=fs.dataset_version_id,
        embeddings_path=fs.embeddings_path,
        n_vectors=n,
        mean=mean,
        status=fs.status,
        created_at=fs.created_at,
    )


def fingerprint_sets(
    registry: Registry, encoder_id: int, *, complete: bool = True
) -> list[tuple[FingerprintSet, str]]:
    """The fingerprint sets of an encoder (only the complete ones unless ``complete=False``)
    with their ``name@version``, by id."""
    with registry.session() as s:
        q = (
            select(FingerprintSet, Dataset.name, DatasetVersion.version)
            .join(DatasetVersion, DatasetVersion.id == FingerprintSet.dataset_version_id)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(FingerprintSet.encoder_id == encoder_id)
            .order_by(FingerprintSet.id)
        )
        if complete:
            q = q.where(FingerprintSet.status == "complete")
        out = []
        for fs, name, version in s.execute(q):
            s.expunge(fs)
            out.append((fs, f"{name}@{version}"))
        return out


@dataclass(frozen=True)
class LeftOut:
    """A dataset version a reader did not use: ``why``, and the command that would make it
    usable (``run``; empty when none would, e.g. an exact copy of the query)."""

    ref: str
    why: str
    run: str = ""
    #: The dataset version's and the fingerprint set's registry ids (0: not known).
    version_id: int = 0
    set_id: int = 0

    def __str__(self) -> str:
        return f"{self.ref} ({self.why}{f'; run {self.run}' if self.run else ''})"


def left_out_note(left: list[LeftOut]) -> str:
    """The one note naming every left-out version (empty when none)."""
    return f"left out: {', '.join(str(x) for x in left)}" if left else ""


@dataclass(frozen=True)
class Unrecorded:
    """A set a reader used as its finished extraction left it on disk, its record not saying
    so yet (:func:`finished_copy`): ``run`` records it."""

    ref: str
    run: str
    set_id: int = 0

    def __str__(self) -> str:
        return f"{self.ref} (run {self.run} to record it)"


def unrecorded(
    used: Iterable[tuple[FingerprintSet, str]], encoder: str | Encoder
) -> list[Unrecorded]:
    """Of the sets a reader used (``(set, ref)`` pairs from :func:`usable_sets` or
    :func:`usable_set`), those whose finished extraction is not recorded, once each."""
    name = encoder if isinstance(encoder, str) else encoder.name
    out: dict[int, Unrecorded] = {}
    for fs, ref in used:
        if fs.status != "complete" and fs.id not in out:
            out[fs.id] = Unrecorded(ref, record_command(fs, ref, name), fs.id)
    return list(out.values())


def unrecorded_note(sets: list[Unrecorded]) -> str:
    """The one note naming every set used unrecorded (empty when none)."""
    if not sets:
        return ""
    named = ", ".join(dict.fromkeys(str(x) for x in sets))
    return f"used as found on disk, extraction finished but not recorded: {named}"


def record_command(fs: FingerprintSet, ref: str, encoder: str) -> str:
    """The extraction command that records ``fs``'s finished extraction without embedding
    again: with its ``--patch-grid``, since a plan of another grid is not reused."""
    grid = int((stored_meta(fs.embeddings_path) or {}).get("patch_grid", 1))
    return extract_command(ref, encoder) + (f" --patch-grid {grid}" if grid > 1 else "")


def extract_command(ref: str, encoder: str) -> str:
    """The command that embeds dataset ``ref`` with ``encoder``'s current weights."""
    return f"pomlia fingerprint extract {shlex.quote(ref)} -e {shlex.quote(encoder)}"


def patch_extract_command(ref: str, encoder: str) -> str:
    """The command that embeds dataset ``ref`` again, with patches (``--patch-grid 2``)."""
    return f"{extract_command(ref, encoder)} --force --patch-grid 2"


def index_build_command(encoder: str) -> str:
    """The command that brings ``encoder``'s index up to date with its usable sets."""
    return f"pomlia index build -e {shlex.quote(encoder)}"


def _digest(enc: Encoder) -> str:
    path = Path(enc.checkpoint_path or "")
    if not enc.checkpoint_path or not path.is_file():
        raise NotFoundError(
            f"encoder '{enc.name}' has no weights file"
            f"{f' ({path} is missing)' if enc.checkpoint_path else ''}: expected a trained "
            "encoder",
            hint=f"run `pomlia fingerprint train ... -n {shlex.quote(enc.name)}`",
        )
    return checkpoint_digest(path)


def check_set(
    enc: Encoder, fs: FingerprintSet, ref: str, digest: str
) -> tuple[FingerprintSet, LeftOut | None]:
    """``fs`` as a reader may use it (an in-memory copy, :func:`finished_copy`, if its
    extraction finished unrecorded), or why it may not (with ``ref`` as the note shows it).
    Writes nothing."""
    out = Path(fs.embeddings_path)
    run = extract_command(ref, enc.name)
    vid = fs.dataset_version_id
    meta = stored_meta(out)
    if meta is None:
        why = "not extracted" if fs.status == "pending" else f"embeddings folder {out} is missing"
        return fs, LeftOut(ref, why, run, vid, fs.id)
    if not made_with(meta, digest):
        return fs, LeftOut(ref, f"embedded with earlier weights of {enc.name}", run, vid, fs.id)
    if fs.status == "complete":
        return fs, None
    plan = shard_plan(meta)
    # Used, not recorded: a query must not write (the reader may not even be allowed to);
    # the extraction command records it, with its summary file.
    found = finished_copy(fs, plan)
    if found is not None:
        return found, None
    done = sum(d is not None for d in shards_done(out, plan))
    # A reader cannot tell a running extraction from one whose driver was killed (that needs
    # the scheduler, and a reader asks nothing): "running" would mislead for the second.
    state = "unfinished (running, or stopped)" if fs.status == "running" else fs.status
    why = f"extraction {state}, {done} of {len(plan)} shard(s) done"
    return fs, LeftOut(ref, why, run, vid, fs.id)


@dataclass(frozen=True)
class Usable:
    """The sets a reader may use (``(set, name@version)``, by id) and those it may not."""

    sets: list[tuple[FingerprintSet, str]]
    left_out: list[LeftOut]


def usable_sets(registry: Registry, encoder: int | str | Encoder) -> Usable:
    """Every fingerprint set of ``encoder``, split into usable and left out (module
    docstring). A left-out version is named as a user names it: ``name`` for the version the
    plain name means, else ``name@version``."""
    enc = get_encoder(registry, encoder)
    digest = _digest(enc)
    current = {v.id for v in current_versions(registry).values()}
    sets: list[tuple[FingerprintSet, str]] = []
    left: list[LeftOut] = []
    for fs, ref in fingerprint_sets(registry, enc.id, complete=False):
        shown = ref.split("@")[0] if fs.dataset_version_id in current else ref
        fs, why = check_set(enc, fs, shown, digest)
        if why is None:
            sets.append((fs, ref))
        else:
            left.append(why)
    return Usable(sets, left)


def usable_set(
    registry: Registry, encoder: int | str | Encoder, ref: str
) -> tuple[FingerprintSet, str]:
    """The usable set of dataset ``ref`` (``name`` or ``name@version``) under ``encoder``,
    with its ``name@version``; else one :class:`NotFoundError` saying why, with the command
    that would make it usable."""
    enc = get_encoder(registry, encoder)
    version = find_version(registry, ref)
    with registry.session() as s:
        fs = s.scalar(
            select(FingerprintSet).where(
                FingerprintSet.encoder_id == enc.id,
                FingerprintSet.dataset_version_id == version.id,
            )
        )
        name = s.scalar(select(Dataset.name).where(Dataset.id == version.dataset_id))
        if fs is not None:
            s.expunge(fs)
    full = f"{name}@{version.version}"
    if fs is None:
        raise NotFoundError(
            f"dataset '{full}' has no embeddings under encoder '{enc.name}' (not extracted)",
            hint=f"run `{extract_command(ref, enc.name)}`",
        )
    fs, why = check_set(enc, fs, ref, _digest(enc))
    if why is not None:
        raise NotFoundError(
            f"dataset '{full}' has no usable embeddings under encoder '{enc.name}' ({why.why})",
            hint=f"run `{why.run}`",
        )
    return fs, full
