"""Sharded extraction: embed dataset versions with a trained encoder as an array job.

Layout, one Zarr group per (encoder, dataset version)::

    <home>/embeddings/<encoder>/<dataset>/<version>.zarr
        z         float32 (N, d)          chunk = (chunk_rows of the image store, d)
        patches   float32 (N, g*g, d)     only with patch_grid = g > 1: one vector per tile
        attrs["pomlia"]  {encoder, encoder_sha256, dataset, version, latent_dim,
                          shards: [[start, stop], ...]}
    <home>/embeddings/<encoder>/<dataset>/<version>.shards/NNNN.done   one JSON per finished shard
    <home>/embeddings/<encoder>/<dataset>/<version>.summary.npz  statistics (``summary``)

Shard ``i`` owns rows ``shards[i]`` (whole chunks of the image store, so also whole chunks of
``z``): it reads those chunks (the next one is read on a thread while the current one is being
embedded), writes only its own aligned region of ``z``, and finally writes its ``.done`` file by
atomic rename. The plan (``shards``) is fixed when the array is created, so a re-run submits
only the shards without a ``.done`` file (one whose rows differ from the plan's does not count,
and a task whose rows differ is refused). The group is reused only while the encoder file
(SHA-256), latent size, patch grid and image count are unchanged; otherwise, or with
``force``, the set is marked running before the group is recreated. A shard killed half-way
(even with SIGKILL, in the middle of a chunk write) simply runs again and rewrites its whole
region. Each chunk is embedded in batches that start at the chunk start, so the vectors do not
depend on how rows are grouped into shards or runs: a resumed extraction is bitwise identical
to an uninterrupted one (with the same number of threads and the same device).

Small shards (several small datasets) are packed into one array task of about
``shard_rows`` images (:func:`group_shards`), so a job start-up is paid per task, not per
dataset. The submitting process records one :class:`~pomlia_hpc.registry.FingerprintSet` per version
(``status``: running → complete, ``mean`` = the mean embedding, the paper's dataset
fingerprint); jobs never write to the registry.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from sqlalchemy import select

from pomlia_hpc.cluster import Executor, JobHandle
from pomlia_hpc.cluster.resources import check_local_gpus, with_overrides
from pomlia_hpc.data.store import DatasetStore, find_version, open_store
from pomlia_hpc.errors import (
    ClusterError,
    DataIntegrityError,
    InputError,
    PomliaError,
    integrity_failure,
)
from pomlia_hpc.fingerprint.aside import SetAside, drop, move_aside, recover, remember, restoring
from pomlia_hpc.fingerprint.io import group_meta
from pomlia_hpc.fingerprint.shards import (
    ShardSpec,
    checkpoint_digest,
    done_record,
    marker_dir,
    run_shard,
)
from pomlia_hpc.fingerprint.summary import compute_summary, summary_path, write_summary
from pomlia_hpc.fingerprint.train import get_encoder, load_checkpoint
from pomlia_hpc.registry import DatasetVersion, Encoder, FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace

#: Default images per shard when neither ``shards`` nor ``shard_rows`` is given.
DEFAULT_SHARD_ROWS = 200_000


def embeddings_path(workspace: Workspace, encoder: str, store: DatasetStore) -> Path:
    """Where the embeddings of ``store`` under ``encoder`` live."""
    return workspace.path("embeddings", encoder, store.name, f"{store.version}.zarr")


# ----------------------------------------------------------------------------- planning


def check_sharding(n_shards: int | None, shard_rows: int | None) -> None:
    """Refuse a shard count or shard size below 1, or both at once."""
    if n_shards is not None and shard_rows is not None:
        raise InputError(
            f"--shards {n_shards} and --shard-rows {shard_rows}: expected at most one of them "
            "(a number of shards per dataset, or about so many images per shard)"
        )
    for flag, value in (("--shards", n_shards), ("--shard-rows", shard_rows)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: expected an integer >= 1")


#: A patch tile must be at least this many pixels wide and high (smaller tiles are noise
#: once resized to the encoder's input, and a tile of 0 px cannot be embedded at all).
MIN_TILE_PX = 4


def check_patch_grid(patch_grid: int, store: DatasetStore) -> None:
    """Refuse a patch grid below 1, or one whose tiles of ``store``'s images would be smaller
    than :data:`MIN_TILE_PX` pixels."""
    h, w, _ = store.image_shape
    most = max(1, min(h, w) // MIN_TILE_PX)
    if patch_grid < 1 or patch_grid > most:
        raise InputError(
            f"--patch-grid {patch_grid} for '{store.ref}' ({h}x{w} px images): expected an "
            f"integer from 1 (no patches) to {most} (tiles of at least {MIN_TILE_PX} px)"
        )


def plan_shards(
    store: DatasetStore, n_shards: int | None, shard_rows: int | None
) -> list[tuple[int, int]]:
    """Split all rows of ``store`` into at most ``n_shards`` ranges of whole chunks (or ranges
    of about ``shard_rows`` images)."""
    check_sharding(n_shards, shard_rows)
    n, step = store.n_images, store.chunk_rows
    n_chunks = max(1, math.ceil(n / step))
    if n_shards is None:
        n_shards = math.ceil(n / (shard_rows or DEFAULT_SHARD_ROWS))
    n_shards = max(1, min(n_shards, n_chunks))
    bounds = [round(i * n_chunks / n_shards) * step for i in range(n_shards + 1)]
    return [(a, min(b, n)) for a, b in itertools.pairwise(bounds) if a < min(b, n)]


def _stored_plan(
    out: Path, store: DatasetStore, latent_dim: int, patch_grid: int, digest: str
) -> list[tuple[int, int]] | None:
    """The shard plan of the embeddings group at ``out`` if it can be reused (same encoder
    weights, latent size, patch grid and image count), else None."""
    if not (out / "zarr.json").exists():
        return None
    meta = group_meta(out)
    fits = (
        meta.get("encoder_sha256") == digest
        and meta.get("latent_dim") == latent_dim
        and meta.get("patch_grid", 1) == patch_grid
        and meta.get("n_images") == store.n_images
    )
    return [(int(a), int(b)) for a, b in meta["shards"]] if fits else None


def create_embeddings(
    out: Path,
    store: DatasetStore,
    encoder: Encoder,
    digest: str,
    latent_dim: int,
    plan: list[tuple[int, int]],
    patch_grid: int,
) -> None:
    """(Re)create the embeddings group at ``out``: NaN-filled, no shard done."""
    # The .done files go first: a crash between the two removals must not leave markers of
    # the old vectors next to a new, empty group.
    shutil.rmtree(marker_dir(out), ignore_errors=True)
    summary_path(out).unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(out), mode="w")
    n, rows = store.n_images, store.chunk_rows
    g.create_array(
        "z", shape=(n, latent_dim), chunks=(rows, latent_dim), dtype="float32", fill_value=np.nan
    )
    if patch_grid > 1:
        k = patch_grid * patch_grid
        g.create_array(
            "patches",
            shape=(n, k, latent_dim),
            chunks=(rows, k, latent_dim),
            dtype="float32",
            fill_value=np.nan,
        )
    g.attrs["pomlia"] = {
        "encoder": encoder.name,
        "encoder_id": encoder.id,
        "encoder_sha256": digest,
        "dataset": store.name,
        "version": store.version,
        "latent_dim": latent_dim,
        "n_images": n,
        "patch_grid": patch_grid,
        "splits": store.meta.get("splits", {}),
        "shards": [list(p) for p in plan],
    }
    marker_dir(out).mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- submission


@dataclass(frozen=True)
class ExtractResult:
    """What one ``extract`` call did for one dataset version."""

    ref: str
    fingerprint_set_id: int
    n_vectors: int
    shards: int
    shards_run: int
    status: str
    note: str = ""


def _record(registry: Registry, encoder_id: int, version_id: int, path: Path, **fields: Any) -> int:
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
    #: Embeddings replaced by this plan, moved aside until its array job is submitted.
    aside: list[SetAside] = field(default_factory=list)


def _resolve(registry: Registry, refs: list[str]) -> list[tuple[DatasetVersion, DatasetStore]]:
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
    resolved = _resolve(registry, datasets)
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
            stored = None if force else _stored_plan(out, store, latent_dim, patch_grid, digest)
            if stored is None:
                # Marked running before the old vectors are moved aside, so no reader (or crash
                # in between) ever sees "complete" over a new, NaN-filled array.
                aside.append(kept := remember(registry, out, enc.id, row.id))
                _record(registry, enc.id, row.id, out, status="running")
                move_aside(kept)  # put back if the array job is not submitted (extract)
                stored = plan_shards(store, shards, shard_rows)
                create_embeddings(out, store, enc, digest, latent_dim, stored, patch_grid)
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
            fs_id = _record(
                registry, enc.id, row.id, out, status="running" if missing else "complete"
            )
            note = _shard_note(store, shards, len(ranges))
            plans.append(DatasetPlan(store.ref, row.id, fs_id, out, ranges, missing, note))
    return ExtractionPlan(enc, plans, specs, warnings, aside)


def finish_extraction(registry: Registry, plan: ExtractionPlan) -> list[ExtractResult]:
    """Record every dataset of ``plan`` whose shards are all done as complete (with its mean
    embedding, from the shards' sums), the others as failed."""
    results = []
    for ds in plan.datasets:
        done = [done_record(ds.out, i, r) for i, r in enumerate(ds.shards)]
        n = ds.shards[-1][1] if ds.shards else 0
        if all(d is not None for d in done):
            total = np.sum([d["sum"] for d in done if d is not None], axis=0)
            mean = (np.asarray(total) / max(n, 1)).tolist()
            status = "complete"
            if not summary_path(ds.out).exists():  # before "complete": complete sets have one
                fp = open_store(find_version(registry, ds.ref).store_path).fingerprint
                write_summary(ds.out, compute_summary(ds.out, fp))
            _record(
                registry,
                plan.encoder.id,
                ds.version_id,
                ds.out,
                status=status,
                n_vectors=n,
                mean=mean,
            )
        else:
            status = "failed"
            _record(registry, plan.encoder.id, ds.version_id, ds.out, status=status)
        results.append(
            ExtractResult(ds.ref, ds.fs_id, n, len(ds.shards), len(ds.missing), status, ds.note)
        )
    return results


def extract(
    registry: Registry,
    workspace: Workspace,
    encoder: int | str | Encoder,
    datasets: list[str],
    *,
    executor: Executor | None = None,
    shards: int | None = None,
    shard_rows: int | None = None,
    batch_size: int = 256,
    patch_grid: int = 1,
    threads: int | None = None,
    force: bool = False,
    resources: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> list[ExtractResult]:
    """Embed ``datasets`` (refs ``name[@version]``) with ``encoder`` as one array job of shards.

    Complete shards are skipped; a finished dataset version is a no-op unless ``force``.
    ``threads`` (default: the CPUs the job was given) sets torch's threads in each shard.
    With ``shards`` each shard is one array task; otherwise shards of about ``shard_rows``
    images (default :data:`DEFAULT_SHARD_ROWS`) are packed into tasks of about that many
    images (giving both, or a value below 1, raises :class:`InputError`).
    ``progress(done, total)`` is called as tasks finish. Raises :class:`ClusterError` naming
    the failed shards (the others stay done; running again retries only the failed ones).
    ``say(line)`` gets each warning (an encoder trained on other channels) before any job.

    The cluster profile and ``resources`` are checked first: with ``force`` the finished
    vectors are removed, and a refusal after that would leave nothing in their place.
    """
    ex = executor or Executor.from_profile(workspace.cluster_profile, workspace.jobs, registry)
    shard = with_overrides(ex.profile, resources)
    # A shard embeds on the CPU when it gets no GPU: a GPU asked for but missing is refused,
    # unless every embedding is complete already and no shard would be submitted to get it.
    try:
        check_local_gpus(shard, what=f"--gpus {shard.gpus_per_node}")
    except InputError:
        if force or not all_embedded(registry, workspace, encoder, datasets, patch_grid):
            raise
    plan = plan_extraction(
        registry,
        workspace,
        encoder,
        datasets,
        shards=shards,
        shard_rows=shard_rows,
        batch_size=batch_size,
        patch_grid=patch_grid,
        threads=threads,
        force=force,
    )
    for line in plan.warnings:
        if say is not None:
            say(line)
    with restoring(registry, plan.aside, plan.encoder.id):  # nothing runs: keep old vectors
        rows = None if shards is not None else (shard_rows or DEFAULT_SHARD_ROWS)
        tasks = group_shards(plan.specs, rows)
        handles = _submit(tasks, ex, resources)
    drop(plan.aside)
    outcomes = _run(handles, tasks, progress)
    results = finish_extraction(registry, plan)
    # A shard failed if it left no .done file: a failed task may hold shards that succeeded.
    failed = [
        s
        for task in tasks
        for s in task
        if done_record(s.out_path, s.shard, (s.start, s.stop)) is None
    ]
    if failed:
        names = ", ".join(s.name for s in failed)
        causes = [str(o) for o in outcomes if isinstance(o, Exception)] or ["no .done file"]
        for o in outcomes:  # running again would fail the same way: name the damage instead
            damage = integrity_failure(getattr(o, "traceback", None) or str(o))
            if damage is not None:
                raise DataIntegrityError(
                    f"{len(failed)} extraction shard(s) failed ({names}): {damage}"
                )
        raise ClusterError(
            f"{len(failed)} extraction shard(s) failed ({names}): {causes[0]}",
            hint="run the same command again to retry only the failed shards",
        )
    return results


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
        for _row, store in _resolve(registry, datasets):
            out = embeddings_path(workspace, enc.name, store)
            ranges = _stored_plan(out, store, latent_dim, patch_grid, digest)
            if ranges is None or any(done_record(out, i, r) is None for i, r in enumerate(ranges)):
                return False
    except PomliaError:
        return False
    return bool(datasets)


def group_shards(specs: list[ShardSpec], target_rows: int | None) -> list[list[ShardSpec]]:
    """Pack shards into array tasks. With ``target_rows``, consecutive shards share a task while
    it holds at most ``target_rows`` images (a shard is never split), so many small datasets do
    not cost one job start-up each; with ``None`` (the caller fixed the shard count), one shard
    per task."""
    if target_rows is None:
        return [[s] for s in specs]
    tasks: list[list[ShardSpec]] = []
    current: list[ShardSpec] = []
    rows = 0
    for spec in specs:
        n = spec.stop - spec.start
        if current and rows + n > target_rows:
            tasks.append(current)
            current, rows = [], 0
        current.append(spec)
        rows += n
    if current:
        tasks.append(current)
    return tasks


def run_shards(specs: list[ShardSpec]) -> list[dict[str, Any]]:
    """Run several shards one after the other (one array task; the encoder is loaded once).

    Shards of other datasets packed into the same task still run when one fails; the task
    then raises one error naming every failed shard."""
    records, errors = [], []
    for spec in specs:
        try:
            records.append(run_shard(spec))
        except Exception as exc:
            errors.append(f"{spec.name}: {type(exc).__name__}: {exc}")
    if errors:
        raise PomliaError(f"{len(errors)} of {len(specs)} shard(s) failed: {'; '.join(errors)}")
    return records


def _submit(
    specs: list[list[ShardSpec]], ex: Executor, resources: dict[str, Any] | None
) -> list[JobHandle]:
    if not specs:
        return []
    return ex.map_array(run_shards, specs, name="fingerprint-extract", resources=resources)


def _run(
    handles: list[JobHandle],
    tasks: list[list[ShardSpec]],
    progress: Callable[[int, int], None] | None,
) -> list[Any]:
    if not handles:
        return []
    while True:
        ended = [h.done() for h in handles]
        if progress is not None:  # tasks that succeeded: a failed one is named in the error
            progress(sum(e and _succeeded(tasks[i]) for i, e in enumerate(ended)), len(handles))
        if all(ended):
            break
        time.sleep(0.5)
    out: list[Any] = []
    for h in handles:
        try:
            out.append(h.result())
        except ClusterError as exc:
            out.append(exc)
    return out


def _succeeded(task: list[ShardSpec]) -> bool:
    """Whether every shard of an ended array task left its ``.done`` file."""
    return all(done_record(s.out_path, s.shard, (s.start, s.stop)) is not None for s in task)
