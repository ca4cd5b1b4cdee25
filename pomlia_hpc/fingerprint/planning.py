"""Planning an extraction: resolve the datasets, create (or reuse) each embeddings group and
its shard plan, list the shards still to run, and record each fingerprint set as running.
Nothing is submitted here (:mod:`.extract` does that).

Each array task's job row names the shards it writes (``Job.meta["shards"]``,
:func:`shard_claim`). A run whose predecessor was killed (SIGKILL, a lost login node) while its
shard jobs ran on first waits for those still queued or running that write into the same
embeddings (:func:`wait_for_earlier_shards`): submitted again beside them, two jobs would write
the same regions (and take the GPUs twice). What they finish is then done, and only the rest
is planned. Two runs started at once would both find no such job and plan the same shards:
:mod:`.extract` plans and submits under a lock per encoder, and under it asks
:func:`recorded_shard_jobs` whether another run submitted meanwhile (then it waits again).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.cluster.records import FINAL_STATES, mark_lost, refresh_jobs, this_host
from pomlia_hpc.data.store import DatasetStore, find_version, open_store
from pomlia_hpc.errors import ClusterError, InputError, PomliaError
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
from pomlia_hpc.registry import DatasetVersion, Encoder, Job, Registry
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


#: The job name of extraction array tasks.
EXTRACT_JOB_NAME = "fingerprint-extract"
#: Seconds between two looks at the shard jobs of an earlier run that are still at work.
SHARD_WAIT_POLL_S = 2.0
#: Seconds without an answer from the scheduler after which a wait for earlier shard jobs
#: gives up (their registry state would otherwise keep it waiting for good).
SHARD_WAIT_UNANSWERED_S = 120.0


def shard_claim(out_path: str, shard: int) -> str:
    """How a task's job row names shard ``shard`` of the embeddings at ``out_path``."""
    return f"{out_path}#{shard}"


def _claiming(registry: Registry, outs: Collection[str]) -> list[Job]:
    """The extraction job rows recorded unfinished whose shards are in one of ``outs``."""
    with registry.session() as s:
        q = select(Job).where(Job.name == EXTRACT_JOB_NAME, Job.state.not_in(FINAL_STATES))
        rows = [
            r
            for r in s.scalars(q.order_by(Job.id))
            if any(str(c).rpartition("#")[0] in outs for c in (r.meta or {}).get("shards", []))
        ]
        s.expunge_all()
    return rows


def live_shard_jobs(registry: Registry, outs: Collection[str]) -> list[Job]:
    """The extraction jobs still queued or running that write into one of the embeddings
    ``outs`` (paths), oldest first. Their states are asked of the scheduler first (a local job
    lives while its controller process does; a Slurm job neither ``sacct`` nor ``squeue``
    knows is ``LOST``); when it cannot answer, the registry's state stands: a job that may be
    writing counts as writing."""
    return _live(registry, outs)[0]


def _live(registry: Registry, outs: Collection[str]) -> tuple[list[Job], bool]:
    """(:func:`live_shard_jobs`, whether the scheduler answered: False when it failed and the
    registry's states stood)."""
    rows = _claiming(registry, outs)
    answered = True
    if rows:
        try:
            refresh_jobs(registry, [r.id for r in rows])
            if any(r.backend == "slurm" for r in rows):
                mark_lost(registry, [r.id for r in rows])
        except ClusterError:
            answered = False
        rows = _claiming(registry, outs)
    return rows, answered


def wait_for_earlier_shards(
    registry: Registry,
    workspace: Workspace,
    encoder: int | str | Encoder,
    datasets: list[str],
    *,
    say: Callable[[str], None] | None = None,
    poll_s: float = SHARD_WAIT_POLL_S,
) -> None:
    """Wait (polling every ``poll_s`` seconds) until no extraction job of an earlier run that
    writes into the embeddings of ``datasets`` is queued or running; ``say`` gets one line
    naming them first. A local job of another host cannot be checked from here: a
    :class:`PomliaError` naming it and how to cancel it. Unknown names are left to planning."""
    outs = _outs(registry, workspace, encoder, datasets)
    said, unanswered = False, 0
    while True:
        live, answered = _live(registry, outs)
        if not live:
            return
        named = ", ".join(f"{j.id} ({j.state}, {j.backend} {j.scheduler_id})" for j in live)
        unanswered = 0 if answered else unanswered + 1
        if unanswered * poll_s >= SHARD_WAIT_UNANSWERED_S:
            # Without answers the registry's "running" would keep this waiting for good.
            raise PomliaError(
                f"extraction job(s) {named} of an earlier run may still write into these "
                f"embeddings, and the scheduler has not answered for {unanswered * poll_s:.0f} s "
                "(sacct/squeue failed): check it (`sinfo`), then run this again; if those jobs "
                f"are gone, `pomlia jobs cancel {live[0].id} --force` first"
            )
        away = [j for j in live if j.backend == "local" and _host(j) not in (None, this_host())]
        if away:
            raise PomliaError(
                f"extraction job(s) {named} of an earlier run still write into these "
                f"embeddings, {len(away)} of them on another host ({_host(away[0])}), which "
                "cannot be checked from here: wait for them, or cancel them there "
                f"(`pomlia jobs cancel {away[0].id}`; if that host is gone, `pomlia jobs cancel "
                f"{away[0].id} --force`) and run this again"
            )
        if not said and say is not None:
            say(
                f"extraction job(s) {named} of an earlier run still write into these "
                "embeddings: waiting for them, then only the shards they leave undone run "
                f"(to stop them instead: `pomlia jobs cancel {live[0].id}`, one id at a time)"
            )
            said = True
        time.sleep(poll_s)


def _outs(
    registry: Registry, workspace: Workspace, encoder: int | str | Encoder, datasets: list[str]
) -> set[str]:
    """The embeddings paths ``datasets`` have under ``encoder`` (empty where a name is unknown:
    planning names what is wrong)."""
    try:
        enc = get_encoder(registry, encoder)
        return {
            str(embeddings_path(workspace, enc.name, store))
            for _row, store in resolve_versions(registry, datasets)
        }
    except PomliaError:
        return set()


def recorded_shard_jobs(
    registry: Registry, workspace: Workspace, encoder: int | str | Encoder, datasets: list[str]
) -> list[Job]:
    """The extraction jobs the registry records as unfinished that write into the embeddings
    of ``datasets`` under ``encoder`` (the scheduler is not asked: :func:`live_shard_jobs`
    does that). Under the extraction lock, after :func:`wait_for_earlier_shards`, these are
    the jobs another run submitted meanwhile."""
    outs = _outs(registry, workspace, encoder, datasets)
    return _claiming(registry, outs) if outs else []


def _host(job: Job) -> str | None:
    host = (job.meta or {}).get("host")
    return None if host is None else str(host)
