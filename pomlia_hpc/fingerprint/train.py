"""Training the fingerprint autoencoder as a (resumable) cluster job with DeepSpeed.

:func:`train_encoder` resolves the dataset versions, submits one :class:`TrainJob` through the
cluster layer, waits, and registers the :class:`~pomlia_hpc.registry.Encoder` (config, dataset
version ids, loss per epoch, checkpoint, job). The job itself never writes to the registry.
This module holds that submission; the rest of the training lives beside it:
:mod:`~pomlia_hpc.fingerprint.trainconfig` (:class:`TrainConfig`, the settings),
:mod:`~pomlia_hpc.fingerprint.trainjob` (:class:`TrainJob`: the ranks, the epoch loop, early
stopping) and :mod:`~pomlia_hpc.fingerprint.trainstate` (``latest.json``, what a restart
resumes from). Their public names, and those of :mod:`~pomlia_hpc.fingerprint.encoders`
(:func:`load_encoder` reads ``encoder.pt``), are importable from here too.

Files under ``<home>/models/encoders/<name>/``::

    config.json         {"config": TrainConfig, "datasets": [name@version, ...], "pipeline":
                        name (a pipeline's encoder only)}, written at submission: once an epoch
                        is checkpointed, a re-run under the same name must ask for the same
                        (before, a new start replaces it), or be the pipeline that owns it
                        (its retrain runs in ``../.<name>.next/``: fingerprint.staging)
    encoder.pt          final weights (written last: its presence means "trained")
    latest.json         {"epoch": k, "tag": "epoch-000k", "loss_curve": [...], "val_curve": [...],
                         "best_epoch": b, "bad_epochs": n, "stopped_early": bool, ...}
    best.pt             weights of the best held-out epoch so far (while training)
    checkpoints/        DeepSpeed checkpoints (the last two epochs are kept while training;
                        both removed once the encoder is registered: fingerprint.trainstate)
    train_log.jsonl     one line per epoch: epoch, loss, val_loss, lr, parts, images, seconds
                        (written before the epoch's latest.json; a resume trims it to that)
    loss_curves.json    train / held-out loss and LR per epoch, best epoch (and a .png of it)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.cluster import Executor, JobFailedError, JobHandle
from pomlia_hpc.cluster.handle import RequeueWatch
from pomlia_hpc.cluster.resources import check_local_gpus, with_overrides
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import ClusterError, InputError, integrity_failure
from pomlia_hpc.fingerprint.busy import one_training, training_job_name
from pomlia_hpc.fingerprint.encoders import (
    get_encoder,
    load_checkpoint,
    load_encoder,
    register_encoder,
)
from pomlia_hpc.fingerprint.loader import Source, check_one_batch
from pomlia_hpc.fingerprint.rows import train_range
from pomlia_hpc.fingerprint.staging import start_record, swap_in, training_target, undone_if_refused
from pomlia_hpc.fingerprint.trainconfig import TrainConfig, normalise_config
from pomlia_hpc.fingerprint.trainjob import TrainJob
from pomlia_hpc.fingerprint.trainstate import EncoderState, drop_resume_state, read_latest
from pomlia_hpc.fingerprint.validation import split_holdout, write_checkpoint
from pomlia_hpc.names import validate_name
from pomlia_hpc.progress import say
from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, Registry
from pomlia_hpc.workspace import Workspace

__all__ = [
    "EncoderState",
    "TrainConfig",
    "TrainJob",
    "encoder_dir",
    "get_encoder",
    "load_checkpoint",
    "load_encoder",
    "normalise_config",
    "register_encoder",
    "train_encoder",
    "write_checkpoint",
]


def encoder_dir(workspace: Workspace, name: str) -> Path:
    """Folder of the encoder called ``name`` (weights, checkpoints, log)."""
    return workspace.path("models", "encoders", name)


def _sources(
    registry: Registry, refs: list[str], config: TrainConfig
) -> tuple[list[Source], list[DatasetVersion]]:
    if not refs:
        raise InputError("no datasets given: expected at least one dataset (name or name@version)")
    sources: list[Source] = []
    rows: list[DatasetVersion] = []
    for ref in refs:
        row = find_version(registry, ref)
        store = open_store(row.store_path)
        lo, hi = train_range(store, config.split, config.max_images_per_dataset)
        if hi <= lo:
            raise InputError(f"dataset '{ref}' has no '{config.split}' images to train on")
        sources.append(Source(str(store.path), lo, hi))
        rows.append(row)
    return sources, rows


def train_encoder(
    registry: Registry,
    workspace: Workspace,
    name: str,
    datasets: list[str],
    config: TrainConfig | None = None,
    *,
    executor: Executor | None = None,
    resources: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    pipeline: str | None = None,
    owned: bool = False,
    refresh_of: int | None = None,
) -> Encoder:
    """Train (or finish training) the encoder ``name`` on ``datasets`` as one cluster job, wait
    for it, and register it. Re-running with the same name, datasets and ``config`` resumes
    an unfinished training and returns the registered encoder of a finished one (no job, no
    cluster profile needed); other datasets or options raise :class:`InputError` naming the
    first setting that differs.
    ``pipeline``: the pipeline whose encoder stage trains it; its record names the pipeline,
    and that pipeline (only) retrains the encoder under its name when its settings change
    (``owned``: it trained the registered weights, whose older record does not say so). A
    retrain runs in a staging folder and replaces the old weights only once its job succeeded
    (:mod:`pomlia_hpc.fingerprint.staging`); embeddings of the old weights are then re-made by
    ``extract``, which compares the weights' digest.
    ``progress(epochs_done, epochs)`` is called while the job runs (from its ``latest.json``).
    ``refresh_of``: the id of the encoder a ``fingerprint refresh`` trains this one from (its
    lineage, recorded with the row; None: trained on its own).
    """
    validate_name("encoder", name, max_len=128)
    config = config or TrainConfig()
    sources, rows = _sources(registry, datasets, config)
    wanted = {"config": config.model_dump(mode="json"), "datasets": _refs(registry, rows)}
    out = encoder_dir(workspace, name)
    kept, held = split_holdout(sources, config.holdout)
    n_rows = sum(s.stop - s.start for s in kept)
    n_held = sum(s.stop - s.start for s in held)
    check_one_batch(n_rows, config.batch_size, config.processes, n_held)
    with registry.session() as s:
        existing = s.scalar(select(Encoder).where(Encoder.name == name))
    target = out
    if existing and existing.checkpoint_path and Path(existing.checkpoint_path).exists():
        trained = {
            "config": normalise_config(existing.config),
            "datasets": _refs(registry, existing.dataset_version_ids),
        }
        # A retrain is staged: the old weights stay registered until the new ones exist.
        staged = training_target(name, out, trained, wanted, pipeline, owned, normalise_config)
        if staged is None:
            drop_resume_state(out)  # left by a release that kept them
            return existing
        target = staged
    # Everything is checked before a replaced training is removed or a job submitted.
    ex = executor or Executor.from_profile(workspace.cluster_profile, workspace.jobs, registry)
    # The job trains on the CPU when it gets no GPU: a GPU asked for but missing is refused.
    job_profile = with_overrides(ex.profile, resources)
    check_local_gpus(job_profile, what=f"--gpus {job_profile.gpus_per_node}")
    job = TrainJob(config, sources, str(target))
    # One job trains `name` at a time; a refused job leaves the folder as it was.
    with one_training(registry, out.parent, name), undone_if_refused(target):
        resumable = read_latest(target) is not None
        start_record(name, target, wanted, pipeline, resumable, normalise_config)
        handle = ex.submit(job, name=training_job_name(name), resources=resources)
    if handle.backend != "debug":  # where to look: a stage's log names the job it started
        # a note for people: stderr, so a driver's stdout holds only results
        say(
            f"training job {handle.name} submitted; its log: {handle.job().paths.stdout}",
            sys.stderr,
        )
    result, job_id = _wait_training(handle, job, progress)
    if progress is not None:
        progress(len(result["loss_curve"]), config.epochs)
    if target != out:
        swap_in(target, out)  # the new weights exist: now they replace the old ones
    row = register_encoder(
        registry,
        name,
        config,
        [r.id for r in rows],
        list(result["loss_curve"]),
        out / Path(result["checkpoint_path"]).name,
        job_id=job_id,
        refresh_of=refresh_of,
    )
    drop_resume_state(out)  # registered: nothing resumes this training any more
    return row


def _wait_training(
    handle: JobHandle, job: TrainJob, progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, Any], int | None]:
    """Wait for the submitted ``job``: (its result, the registry's job id)."""
    out = Path(job.out_dir)
    requeues = RequeueWatch(handle, "training job")
    while not handle.done():
        if (line := requeues.poll()) is not None:
            say(line, sys.stderr)
        if progress is not None:
            progress(int((read_latest(out) or {}).get("epoch", 0)), job.config.epochs)
        time.sleep(1.0)
    try:
        return handle.result(), handle.record_id
    except JobFailedError as exc:
        damage = integrity_failure(exc.traceback or str(exc))
        if damage is not None:  # a damaged chunk: running again would fail the same way
            raise damage from exc
        if "timed out" in exc.detail:  # how far it got, at that time limit
            done = int((read_latest(out) or {}).get("epoch", 0))
            got = f"{done} of {job.config.epochs} epochs finished" if done else "no epoch finished"
            raise ClusterError(f"{exc}; {got}") from exc
        raise


def _refs(registry: Registry, version_ids: list[int] | list[DatasetVersion]) -> list[str]:
    """``name@version`` of dataset versions (rows or ids), in the given order."""
    ids = [v if isinstance(v, int) else v.id for v in version_ids]
    with registry.session() as s:
        q = select(DatasetVersion.id, Dataset.name, DatasetVersion.version).join(
            Dataset, Dataset.id == DatasetVersion.dataset_id
        )
        known = {i: f"{n}@{v}" for i, n, v in s.execute(q.where(DatasetVersion.id.in_(ids)))}
    return [known.get(i, f"dataset version id {i}") for i in ids]
