"""The training engine: one classifier for one task under one configuration, with DeepSpeed.

:func:`train` reads the task's dataset store (:mod:`.trainset`), builds the network
(:mod:`pomlia_hpc.models.nets`), sets its initial weights (scratch, the fingerprint encoder's,
a registered model's), trains it in the configuration's mode (full fine-tune, linear probe,
freeze then unfreeze) with the configuration's optimizer, augmentation and extra images, and
evaluates it on the validation and test splits
(:mod:`pomlia_hpc.automl.metrics`).

DeepSpeed runs it (``deepspeed.initialize`` with a torch optimizer, so no DeepSpeed op has to be
compiled for the optimizer): ZeRO stage and bf16 come from :class:`EngineOptions`; on CPU the
process group is gloo with the rank/world of :func:`pomlia_hpc.cluster.apply_distributed_env`.

Checkpoints and resume. After every epoch the engine writes a DeepSpeed checkpoint (weights and
optimizer state) under ``workdir/ckpt/epoch-E`` and then, atomically, ``workdir/state.json``
naming it; only then is the previous epoch's checkpoint deleted, so a kill at any moment leaves
one complete checkpoint. A call with ``epochs`` larger than the checkpoint's epoch continues from
it: that is how a configuration promoted by Hyperband to a larger budget resumes instead of
starting again, and how a job requeued by Slurm picks up where it stopped. The learning rates do
not depend on the total number of epochs (no schedule to the end), so training for 3 epochs and
then 6 more equals training for 9.

Freezing is done with per-group learning rates (the body's group gets lr 0) rather than by
toggling ``requires_grad``: ZeRO partitions only the parameters that require gradients when it is
initialised, so parameters unfrozen later would never be updated. Only the linear probe, which
never unfreezes, sets ``requires_grad=False`` on the body (cheaper backward).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.nn.modules.batchnorm import _BatchNorm

from pomlia_hpc.automl.batchnorm import recalibrate_batchnorm
from pomlia_hpc.automl.metrics import evaluate
from pomlia_hpc.automl.options import EngineOptions, check_engine_options
from pomlia_hpc.automl.sampling import epoch_order
from pomlia_hpc.automl.space import TrainConfig
from pomlia_hpc.automl.trainset import Split, TrainData, augment, normalize, read_train_data
from pomlia_hpc.cluster import apply_distributed_env
from pomlia_hpc.config import Record
from pomlia_hpc.curves import CURVES_DIR, Curves
from pomlia_hpc.errors import InputError
from pomlia_hpc.models.checkpoint import save_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.progress import say
from pomlia_hpc.provenance import software
from pomlia_hpc.training import EpochCheckpoints, EpochState, initialize
from pomlia_hpc.vocab import TaskType, normalize_task_type

STATE_FILE = "state.json"
CKPT_DIR = "ckpt"

#: Parameter-name prefix of each architecture's classification head.
HEAD_PREFIX = {
    "small_cnn": "head.",
    "resnet18": "fc.",
    "resnet18_imagenet": "fc.",
    "resnet34": "fc.",
    "mobilenet_v3_small": "classifier.",
}


@dataclass(frozen=True)
class TrainRequest:
    """Everything one training call needs; plain data, so it pickles into a cluster job.

    ``workdir`` holds this configuration's checkpoints (shared by its budgets); ``model_path``
    is where the trained classifier is written
    (:func:`pomlia_hpc.models.checkpoint.save_classifier`).
    ``init_weights``: a ``torch.save``-d state dict (required unless ``config.init`` is
    ``scratch``); ``extra_data``: an npz with ``images`` (N, H, W, C) uint8 and ``labels`` (N, L)
    in the task's label space, of which the first ``config.extra_n`` rows (all N if fewer) are
    added to training (:attr:`TrainResult.n_extra` says how many). ``recent_rows``: the last
    rows of the training split that are recent (harvested production images), of which each
    epoch draws ``recent_share`` (:mod:`pomlia_hpc.automl.sampling`); 0 or ``None``: plain.
    """

    store_path: str
    task_type: str
    config: TrainConfig
    epochs: int
    workdir: str
    model_path: str
    config_key: str = ""
    init_weights: str | None = None
    extra_data: str | None = None
    options: EngineOptions = field(default_factory=EngineOptions)
    lineage: dict[str, Any] = field(default_factory=dict)
    recent_rows: int = 0
    recent_share: float | None = None


class TrainResult(Record):
    """What a training call reports (a trial's ``result.json``). Times in seconds;
    ``gpu_hours`` is 0 on CPU."""

    #: Per split; the counts (``n``, ``missing``, ``*_classes``) stay ints: displays show
    #: ``(n=8)`` only for an int. None: undefined on that split.
    metrics: dict[str, dict[str, int | float | None]]
    epochs: int
    start_epoch: int
    cost_s: float
    gpu_hours: float
    device: str
    model_path: str
    history: list[dict[str, float]]
    init_loaded: int = 0
    n_train: int = 0
    n_extra: int = 0  # extra images trained on: fewer than asked when the pool had fewer
    #: What the job trained with (:func:`pomlia_hpc.provenance.software`): a node's versions.
    software: dict[str, Any] = {}


# ----------------------------------------------------------------------------- model


def head_prefix(arch: str) -> str:
    """Parameter-name prefix of the classification head of ``arch``."""
    return HEAD_PREFIX.get(arch, "fc.")


def load_initial_weights(model: nn.Module, path: str, head: str) -> int:
    """Copy the tensors of the state dict at ``path`` whose names and shapes match ``model``
    (the head is skipped when its shape differs, e.g. another number of classes). Returns how
    many tensors were copied; none is an :class:`InputError` (the weights fit another network)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"initial weights '{path}' cannot be read ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"initial weights '{path}': expected a state dict")
    own = model.state_dict()
    take = {
        k: v
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
    }
    # Weights, not counters: a BatchNorm's num_batches_tracked (0-d, integer) has the same
    # shape in every network with that layer name, so it says nothing about the fit.
    body = [k for k, v in take.items() if not k.startswith(head) and v.is_floating_point()]
    if not body:
        raise InputError(
            f"initial weights '{path}': no tensor matches the network's names and shapes "
            f"(expected e.g. {next(iter(own))} {tuple(own[next(iter(own))].shape)})"
        )
    model.load_state_dict(take, strict=False)
    return len(take)


def _param_groups(model: nn.Module, head: str, cfg: TrainConfig) -> list[dict[str, Any]]:
    body = [p for n, p in model.named_parameters() if not n.startswith(head)]
    top = [p for n, p in model.named_parameters() if n.startswith(head)]
    if cfg.mode == "linear_probe":
        for p in body:
            p.requires_grad_(False)
        return [{"params": top, "name": "head"}]
    return [{"params": body, "name": "body"}, {"params": top, "name": "head"}]


def _lrs(cfg: TrainConfig, epoch: int) -> tuple[float, float]:
    """(body lr, head lr) for ``epoch`` (0-based)."""
    if cfg.mode == "linear_probe":
        return 0.0, cfg.lr_head
    if cfg.mode == "freeze_unfreeze" and epoch < cfg.unfreeze_epoch:
        return 0.0, cfg.lr_head
    return cfg.lr, cfg.lr


def _body_frozen(cfg: TrainConfig, epoch: int) -> bool:
    return cfg.mode == "linear_probe" or (
        cfg.mode == "freeze_unfreeze" and epoch < cfg.unfreeze_epoch
    )


def _torch_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise InputError(f"optimizer '{cfg.optimizer}' is not known: expected adamw or sgd")


def _set_train_mode(model: nn.Module, head: str, body_frozen: bool) -> None:
    model.train()
    if body_frozen:  # a frozen body keeps its BatchNorm statistics too
        for name, mod in model.named_modules():
            if isinstance(mod, _BatchNorm) and not f"{name}.".startswith(head):
                mod.eval()


# ----------------------------------------------------------------------------- checkpoints


class ClassifierState(EpochState):
    """``workdir/state.json``: the last complete epoch checkpoint of one configuration, its
    configuration key and the per-epoch records so far."""

    config_key: str = ""
    history: list[dict[str, float]] = []


def _checkpoints(
    workdir: str | Path, rank: int = 0, world: int = 1
) -> EpochCheckpoints[ClassifierState]:
    return EpochCheckpoints(
        workdir, ClassifierState, record=STATE_FILE, subdir=CKPT_DIR, rank=rank, world=world
    )


def read_state(workdir: str | Path) -> dict[str, Any] | None:
    """The last complete checkpoint's record in ``workdir``, where a trial of this configuration
    goes on (``None``: no checkpoint yet, or removed when the study finished: from scratch)."""
    state = _checkpoints(workdir).resume_point()
    return state.to_dict() if state is not None else None


def _resolve_device(opt: EngineOptions) -> str:
    if opt.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if opt.device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device cuda: torch sees no CUDA device in this trial's job; expected a job "
            "with a GPU (--gpus 1), or --device auto or cpu"
        )
    return opt.device


# ----------------------------------------------------------------------------- training


ProgressFn = Callable[[int, int, dict[str, float]], None]
"""progress(epoch done (1-based), epochs, epoch record)."""


@dataclass(frozen=True)
class _Run:
    """Where and how this process trains: device, precision, task kind, rank and world."""

    device: str
    bf16: bool
    task_type: str
    rank: int
    world: int

    @property
    def multilabel(self) -> bool:
        return self.task_type == TaskType.MULTI_LABEL

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32


def train(req: TrainRequest, progress: ProgressFn | None = None) -> TrainResult:
    """Train (or continue training) ``req.config`` to ``req.epochs`` epochs; evaluate; save.

    Raises :class:`InputError` for unusable inputs (store, weights, extra data) and lets
    training errors (out of memory, ...) propagate: the caller records them.
    """
    t0 = time.perf_counter()
    run = _prepare(req)
    workdir = Path(req.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = _checkpoints(workdir, run.rank, run.world)
    state = _resume_point(req, checkpoints.resume_point())
    dropped = checkpoints.read() if state is None and run.rank == 0 else None
    if dropped is not None:
        say(f"checkpoint {dropped.tag} is gone (removed when the study finished): from epoch 0")
    start_epoch = state.epoch if state else 0
    data = read_train_data(
        req.store_path,
        run.multilabel,
        extra=(req.extra_data, req.config.extra_n),
        recent=(req.recent_rows, req.recent_share),
    )
    engine, head, loaded = _build_engine(req, data, run, start_epoch)
    checkpoints.restore(engine)
    history: list[dict[str, float]] = list(state.history) if state else []
    # Curves beside the checkpoints (see pomlia_hpc.curves): one TensorBoard run per config,
    # its writer (a thread) closed when an epoch raises too.
    with Curves(workdir / CURVES_DIR, enabled=run.rank == 0, first_step=start_epoch + 1) as curves:
        for epoch in range(start_epoch, req.epochs):
            record, lrs = _train_epoch(engine, req, data, run, head, epoch)
            history.append(record)
            if curves.active:
                _epoch_curves(curves, engine, req, data, run, record, lrs)
            tag = f"epoch-{epoch + 1}"
            checkpoints.save(engine, epoch + 1, tag)
            done = ClassifierState(
                epoch=epoch + 1, tag=tag, config_key=req.config_key, history=history
            )
            checkpoints.commit(done)
            if progress:
                progress(epoch + 1, req.epochs, record)
    metrics = _final_metrics(engine, req, data, run)
    wall = time.perf_counter() - t0
    if run.rank == 0:
        h, _w, c = data.shape
        _save_model(
            req, engine.module, data.n_out, (h, c), data.class_names, metrics, run.task_type
        )
    return TrainResult(
        metrics=metrics,
        epochs=req.epochs,
        start_epoch=start_epoch,
        cost_s=wall,
        gpu_hours=wall / 3600.0 * run.world if run.device == "cuda" else 0.0,
        device=run.device,
        model_path=req.model_path,
        history=history,
        init_loaded=loaded,
        n_train=len(data.x),
        n_extra=data.n_extra,
        software=software(),
    )


def _prepare(req: TrainRequest) -> _Run:
    """Check the request's numbers, set threads and the distributed environment."""
    opt = req.options
    if req.epochs < 1:
        raise InputError(f"epochs={req.epochs}: expected at least 1")
    check_engine_options(opt)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = _resolve_device(opt)
    apply_distributed_env()
    return _Run(
        device=device,
        bf16=(device == "cuda") if opt.bf16 is None else bool(opt.bf16),
        task_type=normalize_task_type(req.task_type),
        rank=int(os.environ.get("RANK", "0")),
        world=int(os.environ.get("WORLD_SIZE", "1")),
    )


def _resume_point(req: TrainRequest, state: ClassifierState | None) -> ClassifierState | None:
    """The checkpoint record to continue from, refused when it is another configuration's or
    already past the requested epochs."""
    if state and req.config_key and state.config_key not in ("", req.config_key):
        raise InputError(
            f"checkpoint in '{Path(req.workdir)}' belongs to configuration "
            f"{state.config_key}, not {req.config_key}"
        )
    if state and state.epoch > req.epochs:
        raise InputError(
            f"checkpoint in '{Path(req.workdir)}' is at epoch {state.epoch}, beyond the "
            f"requested {req.epochs} epochs"
        )
    return state


def _build_engine(
    req: TrainRequest, data: TrainData, run: _Run, start_epoch: int
) -> tuple[Any, str, int]:
    """(DeepSpeed engine, head prefix, initial tensors loaded): the network with its initial
    weights (a fresh start only; a resume gets the checkpoint's) under DeepSpeed."""
    cfg = req.config
    h, _w, c = data.shape
    torch.manual_seed(req.options.seed)
    model = build_classifier(cfg.arch, data.n_out, c, image_size=h)
    head = head_prefix(cfg.arch)
    loaded = 0
    if cfg.init != "scratch" and start_epoch == 0:
        if not req.init_weights:
            raise InputError(f"init '{cfg.init}' needs initial weights; none were given")
        loaded = load_initial_weights(model, req.init_weights, head)
    engine = initialize(
        model,
        _torch_optimizer(_param_groups(model, head, cfg), cfg),
        batch_size=cfg.batch_size,
        zero_stage=req.options.zero_stage,
        bf16=run.bf16,
        world=run.world,
    )
    return engine, head, loaded


def _train_epoch(
    engine: Any, req: TrainRequest, data: TrainData, run: _Run, head: str, epoch: int
) -> tuple[dict[str, float], tuple[float, float]]:
    """One epoch over this rank's share of the rows: (its record, (body lr, head lr))."""
    cfg = req.config
    t_epoch = time.perf_counter()
    body_lr, head_lr = _lrs(cfg, epoch)
    for group in engine.optimizer.param_groups:
        group["lr"] = head_lr if group.get("name") == "head" else body_lr
    _set_train_mode(engine.module, head, _body_frozen(cfg, epoch))
    gen = torch.Generator().manual_seed(req.options.seed * 100_003 + epoch)
    # Dropout draws from torch's global generator: seeded per epoch too (another stream than
    # the data order's), so a trial resumed from a checkpoint draws the masks one that ran
    # through drew, not those of a process seeded once at its start.
    torch.manual_seed((req.options.seed * 100_003 + epoch) * 2 + 1)
    order = rank_share(epoch_order(len(data.x), data.recent, gen), run.rank, run.world)
    dev = engine.device
    total, seen = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        if len(idx) < 2:  # batch norm cannot train on one image
            continue
        xb = augment(normalize(data.x[idx]), cfg.augmentation, gen)
        yb = data.y[idx].to(dev)
        logits = engine(xb.to(dev, dtype=run.dtype)).float()
        if run.multilabel:
            loss = functional.binary_cross_entropy_with_logits(logits, yb)
        else:
            loss = functional.cross_entropy(logits, yb)
        engine.backward(loss)
        engine.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    record = {
        "epoch": epoch + 1,
        "train_loss": total / max(seen, 1),
        "seconds": time.perf_counter() - t_epoch,
    }
    if not math.isfinite(record["train_loss"]):
        raise FloatingPointError(
            f"training loss is {record['train_loss']} at epoch "
            f"{epoch + 1} (learning rate too large?)"
        )
    return record, (body_lr, head_lr)


def _epoch_curves(
    curves: Curves,
    engine: Any,
    req: TrainRequest,
    data: TrainData,
    run: _Run,
    record: dict[str, float],
    lrs: tuple[float, float],
) -> None:
    """The epoch's training figures and a validation pass (eval mode, no grad), for the
    curves only."""
    with torch.inference_mode():
        val = _evaluate(
            engine.module,
            data.splits["val"],
            run.task_type,
            engine.device,
            run.dtype,
            req.options.eval_batch_size,
        )
    curves.epoch(
        int(record["epoch"]),
        {
            "train/loss": record["train_loss"],
            "train/lr_body": lrs[0],
            "train/lr_head": lrs[1],
            "train/seconds": record["seconds"],
            **{f"val/{k}": v for k, v in val.items() if isinstance(v, int | float)},
        },
    )


def _final_metrics(
    engine: Any, req: TrainRequest, data: TrainData, run: _Run
) -> dict[str, dict[str, float | None]]:
    """Validation and test metrics of the trained network, its batch-norm statistics first
    recomputed over the training mix (unless the body stayed frozen;
    :mod:`pomlia_hpc.automl.batchnorm`)."""
    opt, dev = req.options, engine.device
    if not _body_frozen(req.config, req.epochs - 1):
        # Statistics of the mix the network was trained on (recent rows at their share).
        gen = torch.Generator().manual_seed(opt.seed)
        recent = data.recent
        bn_x = data.x if recent is None else data.x[epoch_order(len(data.x), recent, gen)]
        recalibrate_batchnorm(
            engine.module, bn_x, dev, run.dtype, opt.eval_batch_size, seed=opt.seed
        )
    return {
        s: _evaluate(
            engine.module, data.splits[s], run.task_type, dev, run.dtype, opt.eval_batch_size
        )
        for s in ("val", "test")
    }


def rank_share(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s share of the shuffled row indices ``order``: every ``world``-th row.
    The remainder (``len(order) % world`` rows) is dropped so that every rank runs the same
    number of batches: one extra step on one rank would wait forever in its all-reduce."""
    usable = len(order) - len(order) % world
    return order[:usable][rank::world]


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    split: Split,
    task_type: str,
    dev: torch.device,
    dtype: torch.dtype,
    batch: int,
) -> dict[str, float | None]:
    model.eval()
    scores = []
    for start in range(0, len(split.x), batch):
        logits = model(normalize(split.x[start : start + batch]).to(dev, dtype=dtype)).float()
        probs = torch.sigmoid(logits) if task_type == TaskType.MULTI_LABEL else logits.softmax(1)
        scores.append(probs.cpu().numpy())
    y_true = split.y.numpy()
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    return evaluate(task_type, y_true.astype(np.int64), np.concatenate(scores))


def _save_model(
    req: TrainRequest,
    model: nn.Module,
    n_out: int,
    hc: tuple[int, int],
    class_names: list[str],
    metrics: dict[str, dict[str, float | None]],
    task_type: str,
) -> None:
    h, c = hc
    fresh = build_classifier(req.config.arch, n_out, c, image_size=h)
    state = {
        k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    fresh.load_state_dict(state)
    labels = class_names if len(class_names) == n_out else [str(i) for i in range(n_out)]
    save_classifier(
        req.model_path,
        fresh,
        arch=req.config.arch,
        num_classes=n_out,
        in_channels=c,
        image_size=h,
        task_type=task_type,
        label_names=labels,
        metrics=metrics,
        lineage={**req.lineage, "config_key": req.config_key, "epochs": req.epochs},
    )
