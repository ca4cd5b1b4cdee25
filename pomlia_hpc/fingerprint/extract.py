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

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pomlia_hpc.cluster import Executor, JobHandle
from pomlia_hpc.cluster.resources import check_local_gpus, with_overrides
from pomlia_hpc.cluster.waiting import settle
from pomlia_hpc.errors import (
    ClusterError,
    DataIntegrityError,
    InputError,
    PomliaError,
    integrity_failure,
)
from pomlia_hpc.files import held_lock
from pomlia_hpc.fingerprint.aside import drop, restoring
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.layout import DEFAULT_SHARD_ROWS
from pomlia_hpc.fingerprint.markers import done_record
from pomlia_hpc.fingerprint.planning import (
    EXTRACT_JOB_NAME,
    ExtractionPlan,
    all_embedded,
    plan_extraction,
    recorded_shard_jobs,
    shard_claim,
    wait_for_earlier_shards,
)
from pomlia_hpc.fingerprint.shards import ShardSpec, run_shard
from pomlia_hpc.fingerprint.usable import record_finished, record_set
from pomlia_hpc.registry import Encoder, Registry
from pomlia_hpc.workspace import Workspace

#: Defined with the layout and the planning, imported from here by the callers of ``extract``.
__all__ = [
    "DEFAULT_SHARD_ROWS",
    "ExtractResult",
    "extract",
    "finish_extraction",
    "group_shards",
    "plan_extraction",
    "run_shards",
]


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


def finish_extraction(registry: Registry, plan: ExtractionPlan) -> list[ExtractResult]:
    """Record every dataset of ``plan`` whose shards are all done as complete (with its mean
    embedding, from the shards' sums), the others as failed."""
    results = []
    for ds in plan.datasets:
        n = ds.shards[-1][1] if ds.shards else 0
        if record_finished(registry, plan.encoder.id, ds.version_id, ds.out, ds.shards, ds.ref):
            status = "complete"
        else:
            status = "failed"
            record_set(registry, plan.encoder.id, ds.version_id, ds.out, status=status)
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
    Shard jobs of an earlier run (killed before they ended, or started at the same moment)
    that are still queued or running and write into the same embeddings are waited for first
    (``say`` names them), so that no shard is submitted a second time beside its running job:
    planning and submitting hold a lock per encoder (``embeddings/<encoder>/.extract.lock``).

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
    options = {
        "shards": shards,
        "shard_rows": shard_rows,
        "batch_size": batch_size,
        "patch_grid": patch_grid,
        "threads": threads,
        "force": force,
    }
    plan, tasks, handles = _plan_and_submit(
        registry, workspace, encoder, datasets, options, ex, resources, say
    )
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


def _plan_and_submit(
    registry: Registry,
    workspace: Workspace,
    encoder: int | str | Encoder,
    datasets: list[str],
    options: dict[str, Any],
    ex: Executor,
    resources: dict[str, Any] | None,
    say: Callable[[str], None] | None,
) -> tuple[ExtractionPlan, list[list[ShardSpec]], list[JobHandle]]:
    """Plan ``datasets`` and submit their array job, never beside another run's shard jobs
    that write into the same embeddings (``options``: :func:`plan_extraction`'s keywords)."""
    try:
        enc = get_encoder(registry, encoder)
    except PomliaError:
        # Planning checks the options before the encoder: its error names the first problem.
        plan_extraction(registry, workspace, encoder, datasets, **options)
        raise
    lock = workspace.path("embeddings", enc.name, ".extract.lock")
    while True:
        # Shard jobs of an earlier run (killed meanwhile, or started just before this one) may
        # still write here: never a second writer. The scheduler is asked outside the lock.
        wait_for_earlier_shards(registry, workspace, enc, datasets, say=say)
        # Two runs started at once both passed the wait: planning and submitting is one step
        # per encoder, and a run that submitted first is found in the registry under the lock.
        with held_lock(lock, f"extraction with encoder '{enc.name}'"):
            if recorded_shard_jobs(registry, workspace, enc, datasets):
                continue  # another run submitted since the wait: wait for its jobs
            plan = plan_extraction(registry, workspace, enc, datasets, **options)
            for line in plan.warnings:
                if say is not None:
                    say(line)
            with restoring(registry, plan.aside, plan.encoder.id):  # nothing ran: keep vectors
                rows = options["shard_rows"] or DEFAULT_SHARD_ROWS
                tasks = group_shards(plan.specs, None if options["shards"] is not None else rows)
                handles = _submit(tasks, ex, resources)
        drop(plan.aside)
        return plan, tasks, handles


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
    # Each task's row names its shards: a later run waits for the tasks still at work.
    claims = [{"shards": [shard_claim(s.out_path, s.shard) for s in task]} for task in specs]
    return ex.map_array(
        run_shards, specs, name=EXTRACT_JOB_NAME, resources=resources, item_meta=claims
    )


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
    settle(handles)  # one sacct for all the tasks' ends, not one per task below
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
