"""Training the fingerprint autoencoder as a (resumable) cluster job with DeepSpeed.

:func:`train_encoder` resolves the dataset versions, submits one :class:`TrainJob` through the
cluster layer, waits, and registers the :class:`~pomlia_hpc.registry.Encoder` (config, dataset
version ids, loss per epoch, checkpoint, job). The job itself never writes to the registry.

Inside the job, ``processes`` data-parallel ranks train with DeepSpeed (NCCL on GPUs, gloo on
CPU). A job launched with several Slurm tasks uses them as ranks (RANK/WORLD_SIZE from
``SLURM_*``); otherwise the job spawns ``processes`` local ranks itself. After every epoch all
ranks write a DeepSpeed checkpoint (``<out>/checkpoints/epoch-NNNN``) and rank 0 then points
``latest.json`` at it by atomic rename; a restarted job (Slurm requeue after preemption, or the
same command run again) resumes from there. When all epochs are done (or early stopping ends
the training) rank 0 writes ``<out>/encoder.pt`` (fp32 weights of the epoch with the best
held-out loss + config + loss curve), which :func:`load_encoder` reads.

The loss is a pluggable :class:`~pomlia_hpc.fingerprint.objectives.Objective` (``objective``:
``mse``, ``style``, ``contrastive``): DeepSpeed wraps the objective module (autoencoder plus
any head) and steps on ``objective(batch)``; only the autoencoder is saved. ``holdout`` of each
dataset's rows never train; their loss after every epoch drives early stopping (``patience``)
and the kept weights; the learning rate follows ``lr_schedule`` per epoch.

Files under ``<home>/models/encoders/<name>/``::

    config.json         {"config": TrainConfig, "datasets": [name@version, ...], "pipeline":
                        name (a pipeline's encoder only)}, written at submission: once an epoch
                        is checkpointed, a re-run under the same name must ask for the same
                        (before, a new start replaces it), or be the pipeline that owns it
                        (its retrain runs in ``../.<name>.next/``: fingerprint.staging)
    encoder.pt          final weights (written last: its presence means "trained")
    latest.json         {"epoch": k, "tag": "epoch-000k", "loss_curve": [...], "val_curve": [...],
                         "best_epoch": b, "bad_epochs": n, "stopped_early": bool, ...}
    best.pt             weights of the best held-out epoch so far
    checkpoints/        DeepSpeed checkpoints (the last two epochs are kept)
    train_log.jsonl     one line per epoch: epoch, loss, val_loss, lr, parts, images, seconds
                        (written before the epoch's latest.json; a resume trims it to that)
    loss_curves.json    train / held-out loss and LR per epoch, best epoch (and a .png of it)
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from pomlia_hpc.cluster import (
    Checkpointable,
    Executor,
    JobFailedError,
    JobHandle,
    apply_distributed_env,
)
from pomlia_hpc.cluster.handle import RequeueWatch
from pomlia_hpc.cluster.resources import check_local_gpus, with_overrides
from pomlia_hpc.curves import CURVES_DIR, Curves
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import ClusterError, InputError, integrity_failure
from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig
from pomlia_hpc.fingerprint.busy import one_training, training_job_name
from pomlia_hpc.fingerprint.encoders import (
    get_encoder,
    load_checkpoint,
    load_encoder,
    register_encoder,
)
from pomlia_hpc.fingerprint.epochlog import (
    EPOCH_LOG,
    append_epoch_line,
    epoch_line,
    trim_epoch_log,
)
from pomlia_hpc.fingerprint.loader import (
    Source,
    StoreStream,
    check_one_batch,
    iterate,
    make_loader,
)
from pomlia_hpc.fingerprint.objectives import (
    DEFAULT_OBJECTIVE,
    NEEDS,
    ObjectiveName,
    build_objective,
)
from pomlia_hpc.fingerprint.rows import train_range
from pomlia_hpc.fingerprint.staging import start_record, swap_in, training_target, undone_if_refused
from pomlia_hpc.fingerprint.validation import (
    CURVE_MODULES,
    lr_at,
    split_holdout,
    to_device,
    validation_batches,
    validation_loss,
    with_curve,
    write_checkpoint,
    write_train_curves,
)
from pomlia_hpc.models.checkpoint import write_torch
from pomlia_hpc.names import validate_name
from pomlia_hpc.processes import cpus_available
from pomlia_hpc.progress import say
from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, Registry
from pomlia_hpc.training import EpochCheckpoints, EpochState, initialize
from pomlia_hpc.workspace import Workspace

__all__ = [
    "TrainConfig",
    "TrainJob",
    "encoder_dir",
    "get_encoder",
    "load_checkpoint",
    "load_encoder",
    "register_encoder",
    "train_encoder",
    "write_checkpoint",
]


class TrainConfig(BaseModel):
    """Hyper-parameters of one encoder training (stored in the registry with the encoder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: EncoderConfig = EncoderConfig()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1, description="images per process per step")
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    split: Literal["train", "val", "test", "all"] = "train"
    max_images_per_dataset: int | None = Field(None, ge=1)
    processes: int = Field(1, ge=1, description="data-parallel ranks the job spawns")
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes per rank")
    precision: Literal["fp32", "bf16"] = "fp32"
    zero_stage: int = Field(0, ge=0, le=2)
    objective: ObjectiveName = Field(
        DEFAULT_OBJECTIVE, description="loss: mse (paper), style or contrastive"
    )
    holdout: float = Field(
        0.1, ge=0.0, lt=0.5, description="fraction of each dataset held out for early stopping"
    )
    patience: int = Field(3, ge=1, description="epochs without a better held-out loss to stop")
    lr_schedule: Literal["cosine", "constant"] = "cosine"


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored training config with every field: configs written before a field existed get
    the value they were trained with (``objective`` ``mse``, no hold-out, constant LR), not
    today's default."""
    legacy = {"objective": "mse", "holdout": 0.0, "lr_schedule": "constant"}
    return TrainConfig.model_validate(legacy | dict(config)).model_dump(mode="json")


def encoder_dir(workspace: Workspace, name: str) -> Path:
    """Folder of the encoder called ``name`` (weights, checkpoints, log)."""
    return workspace.path("models", "encoders", name)


# ----------------------------------------------------------------------------- the job


class TrainJob(Checkpointable):
    """The training job: ``TrainJob(config, sources, out_dir)()`` → result dict.

    Progress lives in files under ``out_dir``, so the callable pickled again by submitit on a
    requeue (see :class:`~pomlia_hpc.cluster.Checkpointable`) needs no state of its own.
    """

    # Imported lazily: at set-up (DeepSpeed, the event writer), at an epoch's end (the curves).
    preload = ("deepspeed", "torch.utils.tensorboard", *CURVE_MODULES)

    def __init__(self, config: TrainConfig, sources: list[Source], out_dir: str) -> None:
        self.config = config
        self.sources = sources
        self.out_dir = out_dir

    def __call__(self) -> dict[str, Any]:
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or self.config.processes == 1:
            apply_distributed_env()
            return _train_rank(self.config, self.sources, self.out_dir, cpu_share=1)
        return _spawn(self.config, self.sources, self.out_dir)


def _spawn(config: TrainConfig, sources: list[Source], out_dir: str) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(
        _spawned_rank,
        args=(config, sources, out_dir, config.processes, port),
        nprocs=config.processes,
        join=True,
    )
    return _read_result(Path(out_dir))


def _spawned_rank(
    rank: int, config: TrainConfig, sources: list[Source], out_dir: str, world: int, port: int
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    _train_rank(config, sources, out_dir, cpu_share=world)


class EncoderState(EpochState):
    """``latest.json``: the last complete epoch checkpoint of an encoder training and the
    curves and early-stopping state it carries across a restart."""

    loss_curve: list[float] = []
    val_curve: list[float] = []
    lr_curve: list[float] = []
    parts: list[dict[str, float]] = []
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    resumed_from: int = 0


def _checkpoints(out: Path, rank: int = 0, world: int = 1) -> EpochCheckpoints[EncoderState]:
    return EpochCheckpoints(
        out, EncoderState, record="latest.json", subdir="checkpoints", rank=rank, world=world
    )


def _read_latest(out: Path) -> dict[str, Any] | None:
    state = _checkpoints(out).read()
    return state.to_dict() if state is not None else None


def _read_result(out: Path) -> dict[str, Any]:
    latest = _read_latest(out) or {}
    return {
        "checkpoint_path": str(out / "encoder.pt"),
        "loss_curve": latest.get("loss_curve", []),
        "val_curve": latest.get("val_curve", []),
        "best_epoch": latest.get("best_epoch"),
        "stopped_early": latest.get("stopped_early", False),
        "epochs": latest.get("epoch", 0),
        "resumed_from": latest.get("resumed_from", 0),
    }


def _train_rank(
    config: TrainConfig, sources: list[Source], out_dir: str, *, cpu_share: int
) -> dict[str, Any]:
    """Train on this rank (RANK/WORLD_SIZE/... already in the environment); ``cpu_share``
    ranks share this process's CPUs.

    Every rank computes the same held-out loss (the same fixed batches), so all ranks take
    the same early-stopping decision without communicating."""
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    engine = _rank_engine(config, world, cpu_share)
    checkpoints = _checkpoints(out, rank, world)
    restored = checkpoints.restore(engine)
    state = _start_state(restored)
    resumed_from = int(state["epoch"])
    if rank == 0:
        # An epoch logged but stopped (preempted) before its checkpoint is trained again.
        trim_epoch_log(out / EPOCH_LOG, resumed_from)
    train_sources, val_sources = split_holdout(sources, config.holdout)
    n_rows = sum(s.stop - s.start for s in train_sources)
    check_one_batch(n_rows, config.batch_size, world)
    val_batches = validation_batches(
        val_sources,
        batch_size=config.batch_size,
        image_size=config.encoder.image_size,
        views=NEEDS[config.objective][1],
        seed=config.seed,
    )
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    if rank == 0:  # the output file is named by the job's id: say what it trains
        # After a requeue, say so: "54 epochs to go" alone left 6 epochs unexplained.
        ckpt = out / "checkpoints" / (restored.tag if restored else "")
        attempt = Checkpointable.restart_count() + 1
        resumed = f"resumed from epoch {resumed_from} (checkpoint {ckpt}, attempt {attempt}), "
        to_go = f"{n_rows} images, {config.epochs - resumed_from} epochs to go"
        say(f"training into {out}: {resumed if resumed_from else ''}{to_go}")
    curves = Curves(out / CURVES_DIR, enabled=rank == 0)  # beside checkpoints/ (pomlia_hpc.curves)
    for epoch in range(int(state["epoch"]), config.epochs):
        if state["stopped_early"]:
            break
        t0 = time.perf_counter()
        lr = lr_at(epoch, config.epochs, config.lr, config.lr_schedule)
        loss, parts, images = _rank_epoch(engine, config, train_sources, epoch, lr, dtype)
        val = validation_loss(engine.module, val_batches, engine.device, dtype)
        improved = _after_epoch(state, config, epoch, (loss, val, lr), parts)
        tag = f"epoch-{epoch + 1:04d}"
        checkpoints.save(engine, epoch + 1, tag)
        if rank == 0 and improved:  # the weights early stopping keeps (before latest.json)
            write_checkpoint(out / "best.pt", engine.module.model, config, state["loss_curve"])
        line = epoch_line(state, val, images, time.perf_counter() - t0)
        if rank == 0:  # before latest.json: a resume drops what no checkpoint backs (above)
            append_epoch_line(out / EPOCH_LOG, line)
        # The previous epoch's checkpoint stays too (one spare).
        checkpoints.commit(
            EncoderState(**state, tag=tag, resumed_from=resumed_from),
            keep=(f"epoch-{epoch:04d}",),
        )
        if rank == 0:
            _report_epoch(out, config, state, curves, line)
    curves.close()
    if rank == 0:
        best = out / "best.pt"
        if state["best_epoch"] is not None and best.exists():
            write_torch(out / "encoder.pt", with_curve(best, state["loss_curve"]))
        else:
            write_checkpoint(out / "encoder.pt", engine.module.model, config, state["loss_curve"])
        write_train_curves(out, config, state)
    if world > 1:
        torch.distributed.barrier()
    result = _read_result(out)
    result["resumed_from"] = resumed_from
    return result


def _rank_engine(config: TrainConfig, world: int, cpu_share: int) -> Any:
    """The objective (autoencoder and loss) under DeepSpeed, the same initial weights on every
    rank; its CPU threads this rank's share."""
    torch.set_num_threads(max(1, cpus_available() // cpu_share))
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    objective = build_objective(config.objective, Autoencoder(config.encoder))
    return initialize(
        objective,
        torch.optim.Adam(objective.parameters(), lr=config.lr),
        batch_size=config.batch_size,
        zero_stage=config.zero_stage,
        bf16=config.precision == "bf16",
        world=world,
    )


def _start_state(latest: EncoderState | None) -> dict[str, Any]:
    """The curves and early-stopping state to continue from: the last checkpoint's, or new."""
    state: dict[str, Any] = {
        "epoch": 0,
        "loss_curve": [],
        "val_curve": [],
        "lr_curve": [],
        "parts": [],
        "best": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "stopped_early": False,
    }
    if latest is not None:
        state |= {k: v for k, v in latest.to_dict().items() if k in state}
    return state


def _rank_epoch(
    engine: Any,
    config: TrainConfig,
    sources: list[Source],
    epoch: int,
    lr: float,
    dtype: torch.dtype,
) -> tuple[float, dict[str, float], int]:
    """One epoch over this rank's share of the rows at learning rate ``lr``: (mean loss over
    all ranks, the objective's loss parts per image, images seen by all ranks)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    with_sources, views = NEEDS[config.objective]
    stream = StoreStream(
        sources,
        batch_size=config.batch_size,
        image_size=config.encoder.image_size,
        epoch=epoch,
        seed=config.seed,
        rank=rank,
        world=world,
        with_sources=with_sources,
        views=views,
    )
    total = torch.zeros(2, dtype=torch.float64)
    parts: dict[str, float] = {}
    engine.train()
    for batch in iterate(make_loader(stream, config.num_workers)):
        batch = to_device(batch, engine.device, dtype)
        loss = engine(batch)
        engine.backward(loss)
        engine.step()
        n = len(batch["x"] if isinstance(batch, dict) else batch)
        total += torch.tensor([float(loss.detach()) * n, n], dtype=torch.float64)
        for k, v in engine.module.parts.items():
            parts[k] = parts.get(k, 0.0) + v * n
    if world > 1:
        torch.distributed.all_reduce(total)
    per_image = {k: v / float(total[1]) * world for k, v in parts.items()}
    return float(total[0] / total[1]), per_image, int(total[1])


def _after_epoch(
    state: dict[str, Any],
    config: TrainConfig,
    epoch: int,
    figures: tuple[float, float | None, float],
    parts: dict[str, float],
) -> bool:
    """Add the epoch's (loss, held-out loss, lr) and parts to ``state`` and take the early
    stopping decision; returns whether the held-out loss improved (the best weights)."""
    loss, val, lr = figures
    state["loss_curve"].append(loss)
    state["lr_curve"].append(lr)
    state["parts"].append(parts)
    improved = False
    if val is not None:
        state["val_curve"].append(val)
        improved = state["best"] is None or val < state["best"] * (1 - 1e-4)
        if improved:
            state["best"], state["best_epoch"], state["bad_epochs"] = val, epoch + 1, 0
        else:
            state["bad_epochs"] += 1
            state["stopped_early"] = state["bad_epochs"] >= config.patience
    state["epoch"] = epoch + 1
    return improved


def _report_epoch(
    out: Path, config: TrainConfig, state: dict[str, Any], curves: Curves, line: dict[str, Any]
) -> None:
    """Rank 0's report of the epoch of ``line`` (its log record) once it is checkpointed: the
    TensorBoard curves, ``loss_curves.*`` and a progress line on stdout."""
    epoch, loss, lr, val = line["epoch"], line["loss"], line["lr"], line["val_loss"]
    images, seconds = line["images"], line["seconds"]
    scalars = {
        "train/loss": loss,
        "train/lr": lr,
        "train/images_per_s": images / max(seconds, 1e-9),
    }
    if val is not None:
        scalars["val/loss"] = val
    curves.epoch(epoch, scalars)
    write_train_curves(out, config, state)
    val_text = f" held-out {val:.6f}" if val is not None else ""
    stop_text = " (early stop)" if state["stopped_early"] else ""
    say(
        f"epoch {epoch}/{config.epochs} {config.objective} loss {loss:.6f}"
        f"{val_text} lr {lr:.2e} ({images} images, {seconds:.1f} s){stop_text}"
    )


# ----------------------------------------------------------------------------- submission


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
    n_rows = sum(s.stop - s.start for s in split_holdout(sources, config.holdout)[0])
    check_one_batch(n_rows, config.batch_size, config.processes)
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
        resumable = _read_latest(target) is not None
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
    return register_encoder(
        registry,
        name,
        config,
        [r.id for r in rows],
        list(result["loss_curve"]),
        out / Path(result["checkpoint_path"]).name,
        job_id=job_id,
        refresh_of=refresh_of,
    )


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
            progress(int((_read_latest(out) or {}).get("epoch", 0)), job.config.epochs)
        time.sleep(1.0)
    try:
        return handle.result(), handle.record_id
    except JobFailedError as exc:
        damage = integrity_failure(exc.traceback or str(exc))
        if damage is not None:  # a damaged chunk: running again would fail the same way
            raise damage from exc
        if "timed out" in exc.detail:  # how far it got, at that time limit
            done = int((_read_latest(out) or {}).get("epoch", 0))
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
