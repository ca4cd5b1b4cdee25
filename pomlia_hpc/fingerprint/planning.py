"""Planning an extraction: resolve the datasets, create (or reuse) each embeddings group and
its shard plan, list the shards still to run, and record each fingerprint set as running.
Nothing is submitted here (:mod:`.extract` does that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.data.store import DatasetStore, find_version, open_store
from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.fingerprint.aside import SetAside, move_aside, recover, remember, restoring
from pomlia_hpc.fingerprint.layout import (
    check_patch_grid,
    check_sharding,
    create_embeddings,
    embeddings_path,
    plan_shards,
    stored_plan,
)
from pomlia_hpc.fingerprint.markers import checkpoint_digest, done_record
from pomlia_hpc.fingerprint.shards import ShardSpec
from pomlia_hpc.fingerprint.train import get_encoder, load_checkpoint
from pomlia_hpc.fingerprint.usable import record_set
from pomlia_hpc.registry import DatasetVersion, Encoder, Registry
from pomlia_hpc.workspace import Workspace


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset version of an extraction: its shard plan and its fingerprint-set row.
    ``note`` says why the plan has fewer shards than asked for (else empty)."""

    ref: str
    version_id: int
    fs_id: int
    out: Path
    shards: list[tuple[int, int]]
    missing: list[int]
    note: str = ""


@dataclass(frozen=True)
class ExtractionPlan:
    """What :func:`plan_extraction` prepared: per dataset, and the array tasks to run.
    ``warnings``: what the user should know before trusting the vectors (channel mismatch)."""

    encoder: Encoder
    datasets: list[DatasetPlan]
    specs: list[ShardSpec]
    warnings: list[str] = field(default_factory=list)
    #: Embeddings replaced by this plan, moved aside until its array job is submitted, and the
    #: records of those it reuses: all put back as they were if that job is not submitted.
    aside: list[SetAside] = field(default_factory=list)


def resolve_versions(
    registry: Registry, refs: list[str]
) -> list[tuple[DatasetVersion, DatasetStore]]:
    """The versions and stores of ``refs``, each version once, in the order first given (a
    name given twice, or as name and name@version, would be embedded and listed twice)."""
    seen: dict[int, tuple[DatasetVersion, DatasetStore]] = {}
    for ref in refs:
        row = find_version(registry, ref)
        if row.id not in seen:
            seen[row.id] = (row, open_store(row.store_path))
    return list(seen.values())


def channel_warnings(registry: Registry, encoder: Encoder, stores: list[DatasetStore]) -> list[str]:
    """One warning when ``encoder`` was trained only on gray images and ``stores`` hold colour
    ones, or the reverse: the vectors of those datasets are less comparable with the others."""
    with registry.session() as s:
        paths = list(
            s.scalars(
                select(DatasetVersion.store_path).where(
                    DatasetVersion.id.in_(list(encoder.dataset_version_ids or []))
                )
            )
        )
    trained: set[int] = set()
    for path in paths:
        # A warning never fails the command: a moved or removed store is left out.
        try:
            trained.add(open_store(path, verify=False).image_shape[2])
        except (PomliaError, OSError, ValueError):
            continue
    if len(trained) != 1:
        return []  # trained on both kinds (or unknown): either is what it has seen
    gray = trained == {1}
    other = [st.ref for st in stores if (st.image_shape[2] == 1) != gray]
    if not other:
        return []
    if gray:
        how = (
            "colour images are embedded with their three channels as they are, which this "
            "encoder never saw differ"
        )
    else:
        how = "gray images are repeated to three channels first"
    kind = "gray" if gray else "colour (RGB)"
    return [
        f"encoder '{encoder.name}' was trained on {kind} images only, and "
        f"{', '.join(other)} {'is' if len(other) == 1 else 'are'} "
        f"{'colour' if gray else 'gray'}: {how}; their distances to the other datasets may "
        "reflect the colour difference more than the content"
    ]


def _shard_note(store: DatasetStore, asked: int | None, planned: int) -> str:
    """Why ``planned`` shards, not the ``asked`` number (empty when as asked)."""
    if asked is None or planned == asked:
        return ""
    n_chunks = max(1, math.ceil(store.n_images / store.chunk_rows))
    if planned == min(asked, n_chunks):
        return (
            f"{planned} shard(s), not {asked}: a shard holds whole chunks of the store, and "
            f"its {store.n_images} images are {n_chunks} chunk(s) of {store.chunk_rows} rows"
        )
    return f"{planned} shard(s), not {asked}: the existing plan was kept (--force plans again)"


def plan_extraction(
    registry: Registry,
    workspace: Workspace,
    encoder: int | str | Encoder,
    datasets: list[str],
    *,
    shards: int | None = None,
    shard_rows: int | None = None,
    batch_size: int = 256,
    patch_grid: int = 1,
    threads: int | None = None,
    force: bool = False,
) -> ExtractionPlan:
    """Create the embeddings arrays (or reuse them and their shard plans) and list the shards
    that have no ``.done`` file yet. Records each version's fingerprint set as running.

    Every dataset and option is checked before anything is written or removed."""
    if not datasets:
        raise InputError("no datasets given: expected at least one dataset (name or name@version)")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected an integer >= 1")
    check_sharding(shards, shard_rows)
    enc = get_encoder(registry, encoder)
    if not enc.checkpoint_path:
        raise InputError(f"encoder '{enc.name}' has no checkpoint: train it first")
    resolved = resolve_versions(registry, datasets)
    for _row, store in resolved:
        check_patch_grid(patch_grid, store)
    warnings = channel_warnings(registry, enc, [st for _r, st in resolved])
    latent_dim = int(load_checkpoint(enc.checkpoint_path)[1].latent_dim)
    digest = checkpoint_digest(enc.checkpoint_path)
    specs: list[ShardSpec] = []
    plans: list[DatasetPlan] = []
    aside: list[SetAside] = []
    with restoring(registry, aside, enc.id):  # a failure puts back what was set aside
        for row, store in resolved:
            out = embeddings_path(workspace, enc.name, store)
            recover(out)  # set aside by a run that was killed before submitting
            stored = None if force else stored_plan(out, store, latent_dim, patch_grid, digest)
            if stored is None:
                # Marked running before the old vectors are moved aside, so no reader (or crash
                # in between) ever sees "complete" over a new, NaN-filled array.
                aside.append(kept := remember(registry, out, enc.id, row.id))
                record_set(registry, enc.id, row.id, out, status="running")
                move_aside(kept)  # put back if the array job is not submitted (extract)
                stored = plan_shards(store, shards, shard_rows)
                create_embeddings(out, store, enc, digest, latent_dim, stored, patch_grid)
            else:
                # Kept in place; only its record (marked running below) is put back as it was
                # if the array job is not submitted: no record claims shards nothing runs.
                aside.append(remember(registry, out, enc.id, row.id))
            ranges = stored
            missing = [i for i, r in enumerate(ranges) if done_record(out, i, r) is None]
            specs.extend(
                ShardSpec(
                    store_path=str(store.path),
                    out_path=str(out),
                    checkpoint=enc.checkpoint_path,
                    shard=i,
                    start=ranges[i][0],
                    stop=ranges[i][1],
                    batch_size=batch_size,
                    patch_grid=patch_grid,
                    threads=threads,
                )
                for i in missing
            )
            fs_id = record_set(
                registry, enc.id, row.id, out, status="running" if missing else "complete"
            )
            note = _shard_note(store, shards, len(ranges))
            plans.append(DatasetPlan(store.ref, row.id, fs_id, out, ranges, missing, note))
    return ExtractionPlan(enc, plans, specs, warnings, aside)


def all_embedded(
    registry: Registry,
    workspace: Workspace,
    encoder: int | str | Encoder,
    datasets: list[str],
    patch_grid: int = 1,
) -> bool:
    """Whether every shard of ``datasets`` (refs) is embedded already with ``encoder``'s
    current weights, so :func:`extract` would submit nothing. Reads only (planning writes);
    False also when a dataset or the encoder is not found (planning then says why)."""
    try:
        enc = get_encoder(registry, encoder)
        if not enc.checkpoint_path:
            return False
        latent_dim = int(load_checkpoint(enc.checkpoint_path)[1].latent_dim)
        digest = checkpoint_digest(enc.checkpoint_path)
        for _row, store in resolve_versions(registry, datasets):
            out = embeddings_path(workspace, enc.name, store)
            ranges = stored_plan(out, store, latent_dim, patch_grid, digest)
            if ranges is None or any(done_record(out, i, r) is None for i, r in enumerate(ranges)):
                return False
    except PomliaError:
        return False
    return bool(datasets)
