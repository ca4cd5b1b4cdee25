"""The encoder training job: what runs on the cluster, from the job's entry to each epoch.

:class:`TrainJob` is the callable :func:`~pomlia_hpc.fingerprint.train.train_encoder` submits.
Inside the job, ``processes`` data-parallel ranks train with DeepSpeed (NCCL on GPUs, gloo on
CPU). A job launched with several Slurm tasks uses them as ranks (RANK/WORLD_SIZE from
``SLURM_*``); otherwise the job spawns ``processes`` local ranks itself. After every epoch all
ranks write a DeepSpeed checkpoint (``<out>/checkpoints/epoch-NNNN``) and rank 0 then points
``latest.json`` at it by atomic rename (:mod:`pomlia_hpc.fingerprint.trainstate`); a restarted
job (Slurm requeue after preemption, or the same command run again) resumes from there. When
all epochs are done (or early stopping ends the training) rank 0 writes ``<out>/encoder.pt``
(fp32 weights of the epoch with the best held-out loss + config + loss curve).

The loss is a pluggable :class:`~pomlia_hpc.fingerprint.objectives.Objective` (``objective``:
``mse``, ``style``, ``contrastive``): DeepSpeed wraps the objective module (autoencoder plus
any head) and steps on ``objective(batch)``; only the autoencoder is saved. ``holdout`` of each
dataset's rows never train; their loss after every epoch drives early stopping (``patience``)
and the kept weights; the learning rate follows ``lr_schedule`` per epoch.
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from pomlia_hpc.cluster import Checkpointable, apply_distributed_env
from pomlia_hpc.curves import CURVES_DIR, Curves
from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.autoencoder import Autoencoder
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
from pomlia_hpc.fingerprint.objectives import NEEDS, build_objective
from pomlia_hpc.fingerprint.trainconfig import TrainConfig
from pomlia_hpc.fingerprint.trainstate import (
    EncoderState,
    encoder_checkpoints,
    is_finished,
    read_result,
    start_state,
)
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
from pomlia_hpc.processes import cpus_available
from pomlia_hpc.progress import say
from pomlia_hpc.training import initialize, resume_note

__all__ = ["TrainJob"]


class TrainJob(Checkpointable):
    """The training job: ``TrainJob(config, sources, out_dir)()`` → result dict.

    Progress lives in files under ``out_dir``, so the callable pickled again by submitit on a
    requeue (see :class:`~pomlia_hpc.cluster.Checkpointable`) needs no state of its own.
    """

    # Imported lazily: at set-up (DeepSpeed, the event writer, torchvision for the network), at
    # an epoch's end (the curves).
    preload = ("deepspeed", "torch.utils.tensorboard", "torchvision", *CURVE_MODULES)

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
    return read_result(Path(out_dir))


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


def _train_rank(
    config: TrainConfig, sources: list[Source], out_dir: str, *, cpu_share: int
) -> dict[str, Any]:
    """Train on this rank (RANK/WORLD_SIZE/... already in the environment); ``cpu_share``
    ranks share this process's CPUs.

    Every rank computes the same held-out loss (the same fixed batches), so all ranks take
    the same early-stopping decision without communicating."""
    out = Path(out_dir)
    if is_finished(out, config.epochs):  # run again to register it: its checkpoints may be gone
        return read_result(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    engine = _rank_engine(config, world, cpu_share)
    checkpoints = encoder_checkpoints(out, rank, world)
    restored = checkpoints.restore(engine)
    state = start_state(restored)
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
        note = resume_note(resumed_from, ckpt, Checkpointable.restart_count() + 1)
        to_go = f"{n_rows} images, {config.epochs - resumed_from} epochs to go"
        say(f"training into {out}: {note + ', ' if note else ''}{to_go}")
    # beside checkpoints/ (pomlia_hpc.curves); from the first epoch this attempt trains. Its
    # writer (a thread) is closed when an epoch raises too.
    with Curves(out / CURVES_DIR, enabled=rank == 0, first_step=resumed_from + 1) as curves:
        for epoch in range(int(state["epoch"]), config.epochs):
            if state["stopped_early"]:
                break
            t0 = time.perf_counter()
            lr = lr_at(epoch, config.epochs, config.lr, config.lr_schedule)
            loss, parts, images = _rank_epoch(engine, config, train_sources, epoch, lr, dtype)
            val = validation_loss(engine.module, val_batches, engine.device, dtype)
            refuse_divergence(epoch, loss, val, lr)  # before its checkpoint: resume from the last
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
    if rank == 0:
        best = out / "best.pt"
        if state["best_epoch"] is not None and best.exists():
            write_torch(out / "encoder.pt", with_curve(best, state["loss_curve"]))
        else:
            write_checkpoint(out / "encoder.pt", engine.module.model, config, state["loss_curve"])
        write_train_curves(out, config, state)
    if world > 1:
        torch.distributed.barrier()
    result = read_result(out)
    result["resumed_from"] = resumed_from
    return result


def refuse_divergence(epoch: int, loss: float, val: float | None, lr: float) -> None:
    """An :class:`InputError` when epoch ``epoch`` (from 0) ended with a non-finite training or
    held-out ``loss``: the weights diverged (at learning rate ``lr``), and an encoder of NaN
    weights, registered, made every distance, plot and index built from it fail. Every rank
    holds the same (all-reduced) losses, so all ranks stop together."""
    figures = {"loss": loss, "held-out loss": val}
    bad = [f"{k} {v}" for k, v in figures.items() if v is not None and not math.isfinite(v)]
    if bad:
        raise InputError(
            f"encoder training diverged in epoch {epoch + 1}: {', '.join(bad)} at learning "
            f"rate {lr:g}; expected finite losses; nothing is registered",
            hint="train again with a lower --lr",
        )


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
