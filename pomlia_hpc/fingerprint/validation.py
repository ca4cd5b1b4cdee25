"""Small-data training support for the encoder: held-out rows, validation loss, early stopping,
the learning-rate schedule, and the recorded loss curves.

* :func:`split_holdout` keeps the last ``fraction`` of every dataset's rows apart (at least one
  row when the fraction is above 0), so each dataset is represented in the validation loss.
* :func:`validation_batches` reads up to :data:`VAL_MAX_PER_SOURCE` held-out rows per dataset,
  mixed in a fixed order, with fixed augmented views: the validation loss of two epochs differs
  only because the weights did.
* :func:`lr_at` is the per-epoch learning rate (cosine decay to 5 % of ``lr``, or constant).
* :func:`write_curves` writes ``loss_curves.json`` and ``loss_curves.png`` beside the checkpoint
  (:func:`write_train_curves` from a training's state); :func:`write_checkpoint` writes the
  final ``encoder.pt``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pomlia_hpc.data.store import open_store
from pomlia_hpc.files import write_atomic
from pomlia_hpc.fingerprint.augment import acquisition_view
from pomlia_hpc.fingerprint.autoencoder import to_input
from pomlia_hpc.fingerprint.loader import Source, to_uint8
from pomlia_hpc.fingerprint.objectives import Objective
from pomlia_hpc.fingerprint.rows import held_out
from pomlia_hpc.fingerprint.staging import read_record
from pomlia_hpc.models.checkpoint import write_torch
from pomlia_hpc.plotting import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pomlia_hpc.fingerprint.train import TrainConfig

#: At most this many held-out rows per dataset are used for the validation loss.
VAL_MAX_PER_SOURCE = 256
#: Cosine schedule: the learning rate falls from ``lr`` to this fraction of it.
LR_FLOOR = 0.05
CURVES_JSON = "loss_curves.json"
CURVES_PNG = "loss_curves.png"
#: What :func:`write_curves` imports on its first call (pyplot, and the Agg backend that
#: ``matplotlib.use("Agg")`` loads only then): a job writing curves preloads them
#: (:class:`~pomlia_hpc.cluster.Checkpointable`'s ``preload``).
CURVE_MODULES = ("matplotlib.pyplot", "matplotlib.backends.backend_agg")


def split_holdout(sources: list[Source], fraction: float) -> tuple[list[Source], list[Source]]:
    """(training sources, held-out sources): the last ``fraction`` of each source's rows (at
    least 1 when ``fraction`` > 0 and the source has 2 rows or more) are held out."""
    train, val = [], []
    for s in sources:
        k = held_out(s.stop - s.start, fraction)
        train.append(Source(s.path, s.start, s.stop - k))
        if k:
            val.append(Source(s.path, s.stop - k, s.stop))
    return train, val


def validation_batches(
    sources: list[Source],
    *,
    batch_size: int,
    image_size: int,
    views: int,
    seed: int,
) -> list[dict[str, torch.Tensor]]:
    """The fixed validation batches (dicts with ``x``, ``source`` and, with ``views``, the
    augmented ``views``) of up to :data:`VAL_MAX_PER_SOURCE` rows per held-out source."""
    images, ids = [], []
    for i, s in enumerate(sources):
        stop = min(s.stop, s.start + VAL_MAX_PER_SOURCE)
        # As floats at the encoder's size first: gray and RGB datasets of any size mix.
        images.append(to_uint8(to_input(open_store(s.path).read_rows(s.start, stop), image_size)))
        ids.append(np.full(stop - s.start, i, np.int64))
    if not images:
        return []
    rng = np.random.default_rng([seed, 7919])
    x, y = np.concatenate(images), np.concatenate(ids)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    out = []
    for lo in range(0, len(x), batch_size):
        part = x[lo : lo + batch_size]
        batch = {
            "x": to_input(part, image_size),
            "source": torch.from_numpy(y[lo : lo + batch_size]),
        }
        if views:
            batch["views"] = torch.stack(
                [to_input(acquisition_view(part, rng), image_size) for _ in range(views)]
            )
        out.append(batch)
    return out


def lr_at(epoch: int, epochs: int, lr: float, schedule: str) -> float:
    """Learning rate of ``epoch`` (0-based) of ``epochs``: cosine from ``lr`` down to
    ``LR_FLOOR * lr`` at the last epoch, or ``lr`` for ``schedule="constant"``."""
    if schedule == "constant" or epochs <= 1:
        return lr
    t = epoch / (epochs - 1)
    return lr * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))


def curves_title(curves: dict[str, Any]) -> str:
    """Title of the loss-curves figure: the encoder, its objective and the data sets it was
    trained on (up to four by name, else their count); what ``curves`` lacks is left out."""
    head = f"encoder {curves['encoder']}" if curves.get("encoder") else "encoder"
    if curves.get("objective"):
        head += f", objective {curves['objective']}"
    refs = [str(r) for r in curves.get("datasets") or []]
    if not refs:
        return head
    count = f"{len(refs)} data set{'' if len(refs) == 1 else 's'}"
    if len(refs) > 4:
        return f"{head}\n{count}"
    return f"{head}\n{count}: {', '.join(r.split('@')[0] for r in refs)}"


def curves_figure(curves: dict[str, Any]) -> Figure:
    """The train and held-out loss per epoch of ``curves`` (as in ``loss_curves.json``), the
    kept epoch marked, titled by :func:`curves_title`. Close it when done."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.ticker import FixedLocator, MaxNLocator

    with new_figure(figsize=(5, 3.4), dpi=100) as (fig, ax):
        train, val = curves.get("train", []), curves.get("val", [])
        # Epochs are whole: few get a tick each (a locator falls back to 0.96, 0.98, ... around
        # one epoch), more integer ticks only.
        n = max(len(train), len(val))
        few = FixedLocator(range(1, n + 1)) if 0 < n <= 12 else MaxNLocator(integer=True)
        ax.xaxis.set_major_locator(few)
        ax.plot(range(1, len(train) + 1), train, marker="o", label="train")
        if val:
            ax.plot(range(1, len(val) + 1), val, marker="s", label="held-out")
        best = curves.get("best_epoch")
        if best:
            ax.axvline(best, color="grey", linestyle=":", label=f"best (epoch {best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{curves.get('objective', '')} loss")
        ax.set_title(curves_title(curves), fontsize=9)
        ax.legend()
        fig.tight_layout()
        return fig


def write_curves(folder: Path, curves: dict[str, Any]) -> None:
    """Write ``loss_curves.json`` (``curves`` as is) and a PNG of it (:func:`curves_figure`)
    into ``folder`` (atomically)."""
    write_atomic(folder / CURVES_JSON, json.dumps(curves, indent=1))
    from matplotlib import pyplot as plt

    fig = curves_figure(curves)
    try:
        write_atomic(folder / CURVES_PNG, lambda f: fig.savefig(f, format="png"))
    finally:  # a figure that failed to save stays in pyplot's registry otherwise
        plt.close(fig)


def read_curves(folder: Path) -> dict[str, Any] | None:
    """``loss_curves.json`` of an encoder folder, or None (encoders trained before it existed)."""
    try:
        data = json.loads((folder / CURVES_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def to_device(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a batch (tensor or dict of tensors) to ``device``; float tensors to ``dtype``."""
    if isinstance(batch, dict):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    if batch.is_floating_point():
        return batch.to(device, dtype=dtype, non_blocking=True)
    return batch.to(device, non_blocking=True)


@torch.no_grad()
def validation_loss(
    objective: Objective,
    batches: list[dict[str, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype,
) -> float | None:
    """Mean objective loss over the fixed held-out batches (eval mode), or None without any."""
    if not batches:
        return None
    objective.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss = objective(to_device(batch, device, dtype))
        total += float(loss) * len(batch["x"])
        count += len(batch["x"])
    objective.train()
    return total / count


def with_curve(path: Path, loss_curve: list[float]) -> dict[str, Any]:
    """Checkpoint ``path``'s contents with its loss curve replaced by ``loss_curve``."""
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    payload["loss_curve"] = list(loss_curve)
    return payload


def write_train_curves(out: Path, config: TrainConfig, state: dict[str, Any]) -> None:
    """:func:`write_curves` of an encoder training's ``state`` (its curves and early stop)."""
    name = out.name
    if name.startswith(".") and name.endswith(".next"):  # a pipeline's retrain stages there
        name = name[1:-5]
    record = read_record(out) or {}  # written at submission: the data sets trained on
    write_curves(
        out,
        {
            "encoder": name,
            "datasets": list(record.get("datasets") or []),
            "objective": config.objective,
            "train": state["loss_curve"],
            "val": state["val_curve"],
            "lr": state["lr_curve"],
            "parts": state["parts"],
            "best_epoch": state["best_epoch"],
            "stopped_early": state["stopped_early"],
            "holdout": config.holdout,
        },
    )


def write_checkpoint(
    path: Path, model: torch.nn.Module, config: TrainConfig, loss_curve: list[float]
) -> Path:
    """Write the final ``encoder.pt`` (fp32 weights, encoder config, loss curve) atomically."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    payload = {
        "config": config.encoder.model_dump(),
        "state_dict": state,
        "loss_curve": list(loss_curve),
        "train_config": config.model_dump(),
    }
    return write_torch(path, payload)
