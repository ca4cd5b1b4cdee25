"""Expected training cost of a strategy on a data set of a given size.

Two sources, best first:

1. **Measured**: the registry's own runs of the strategy (start-up once, measured as a run's
   cost, its job's wall time from start to end, less the seconds of its epochs: the job's
   scheduler start, imports, data loading, model build and evaluation, what
   :data:`OVERHEAD_S` assumes for an estimate, so the two compare; plus seconds per epoch of
   its successful runs times the epochs of a full run: AutoML's default largest budget, which
   shrinks as the data set grows), the epochs' part scaled linearly by training-set size
   (images per epoch) and by the full run's epochs on this data set; a published table's cost
   of one run, by size alone.
2. **Estimated** from compute: forward multiply-adds per image at 224 px (published figures of
   the architectures, :data:`GMACS_224`) scaled by ``(img_size / 224)^2``; training costs 3x a
   forward pass (forward + backward) per image and epoch; frozen features (``linear_probe``,
   ``knn``) cost one forward pass per image (the head's training is negligible). Epochs:
   :func:`full_epochs`, as for measured costs, so the two compare. The device rate
   :data:`DEVICE_TMACS` is an assumption (an A100-class GPU at mixed precision, effective,
   not peak) and every estimate says so (``basis = "estimate"``). At small inputs the
   multiply-adds are not what takes the time: loading, batching and kernel launches per image
   are. So no image trains faster than :data:`TRAIN_IMG_PER_S` nor passes forward faster
   than :data:`FORWARD_IMG_PER_S` (one GPU's measured rates at 28 px): without that floor a
   ResNet-18 at 28 px on 100,000 images for 9 epochs was estimated at 34 s, start-up
   included, where the measured rate gives ~140 s, and the estimate hardly grew with the
   data set's size.

GPU hours = wall seconds / 3600 on one GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pomlia_hpc.automl.budget import default_budget

#: Forward GMACs per 224 px RGB image (the architectures' published figures).
GMACS_224: dict[str, float] = {
    "vgg16": 15.5,
    "alexnet": 0.71,
    "resnet18": 1.82,
    "resnet34": 3.67,
    "resnet50": 4.11,
    "densenet121": 2.87,
    "efficientnetb4": 1.55,
    "vitb16": 17.6,
    "clipvitb16": 17.6,
    "eva02vitb16": 17.6,
    "dinovitb16": 17.6,
    "samvitb16": 17.6,
    "mobilenetv3small": 0.06,
    "smallcnn": 0.35,  # 3 conv blocks at 224 px, computed from the layer sizes
}
#: Passes over the data of frozen features (one forward pass each; the head's training is
#: negligible); the other modes train for :func:`full_epochs`.
FROZEN_EPOCHS = {"linear_probe": 1.0, "knn": 1.0}
#: Effective tera multiply-accumulates per second of the assumed device.
DEVICE_TMACS = 20.0
#: Images per second one GPU trains at, at most, whatever the model (a pass forward and
#: backward): the fingerprint autoencoder's DeepSpeed bf16 epoch at 28 px, batch 512, on one
#: H200, 8,323 img/s (docs/BENCHMARKS.md, "GPU check"). The per-image work outside the
#: multiply-adds sets this pace at small inputs.
TRAIN_IMG_PER_S = 8323.0
#: Images per second of a forward pass of frozen features, at most: extraction on the same
#: GPU at 28 px, 62,244 img/s (the same section).
FORWARD_IMG_PER_S = 62244.0
#: Fixed start-up seconds of a job (scheduler, data loading, model build): the part of a
#: measured run's cost (its job's wall time) outside its epochs.
OVERHEAD_S = 30.0


def full_epochs(n_train: int) -> int:
    """The epochs of a full training run on ``n_train`` images: AutoML's default largest
    budget for that size (fewer epochs on more images), the basis of every cost here."""
    return default_budget(max(int(n_train), 1))[1]


def arch_key(arch: str) -> str:
    """``ResNet-18`` / ``resnet18`` / ``DINO-ViT-B/16`` → the key of :data:`GMACS_224`."""
    return re.sub(r"[^a-z0-9]", "", arch.lower())


@dataclass(frozen=True)
class Cost:
    wall_s: float
    gpu_hours: float
    basis: str  # "measured" (registry runs) or "estimate" (compute model)

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "gpu_hours": self.gpu_hours, "basis": self.basis}


def estimate(strategy: Mapping[str, Any], n_train: int) -> Cost:
    """Compute-model estimate for ``strategy`` on ``n_train`` training images."""
    key = arch_key(str(strategy.get("arch", "")))
    gmacs = GMACS_224.get(key, GMACS_224.get(re.sub(r"\d+$", "", key), 2.0))
    size = float(strategy.get("img_size") or 224)
    mode = str(strategy.get("mode", "full"))
    frozen = mode in FROZEN_EPOCHS
    epochs = FROZEN_EPOCHS[mode] if frozen else float(full_epochs(n_train))
    passes_per_image = 1.0 if frozen else 3.0  # forward only; forward + backward (~3x)
    floor_s = 1.0 / (FORWARD_IMG_PER_S if frozen else TRAIN_IMG_PER_S)
    compute_s = gmacs * 1e9 * (size / 224.0) ** 2 * passes_per_image / (DEVICE_TMACS * 1e12)
    wall = OVERHEAD_S + max(compute_s, floor_s) * epochs * max(n_train, 1)
    return Cost(wall, wall / 3600.0, "estimate")


def measured(
    cost_s: float,
    n_train_then: int,
    n_train_now: int,
    epochs: tuple[int, int] | None = None,
    startup_s: float = 0.0,
) -> Cost:
    """A measured run time (seconds) scaled linearly by training-set size and, given
    ``epochs`` (the epochs of the measured run, those of the run asked for), by epochs; of
    it, ``startup_s`` seconds are start-up, paid once per run whatever its size and epochs."""
    startup = min(max(float(startup_s), 0.0), float(cost_s))
    wall = (float(cost_s) - startup) * max(n_train_now, 1) / max(n_train_then, 1)
    if epochs is not None:
        wall *= epochs[1] / max(epochs[0], 1)
    wall += startup
    return Cost(wall, wall / 3600.0, "measured")


#: Costs that differ by at most this share (1 %) or :data:`COST_TIE_S` count as equal on the
#: recommender's Pareto front: strategies costing 30.00004 s and 30.06 s are not a trade-off
#: (both read "30 s"), so only the better expected metric of the two stays on it.
COST_TIE_REL = 0.01
#: ... or by at most this many seconds (the front shows whole seconds).
COST_TIE_S = 1.0


def pareto_front(
    costs: list[float], values: list[float], *, rel_tol: float = 0.0, abs_tol: float = 0.0
) -> list[int]:
    """Indices of the points that no other point beats on both cost (lower) and value
    (higher), cheapest first. Costs within ``rel_tol`` (a share) or ``abs_tol`` (cost units)
    of the cheapest point of a group count as equal: of such a group, only the point of the
    highest value stays (the cheapest of those on a tie), so the front lists only trade-offs
    of a meaningful cost. The defaults compare costs exactly."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -values[i]))
    front: list[int] = []
    best, anchor = -math.inf, -math.inf  # best value so far; cost that opened the last group
    for i in order:
        if values[i] <= best + 1e-12:
            continue  # no better than a point that costs as much or less
        if front and costs[i] - anchor <= max(rel_tol * abs(anchor), abs_tol):
            front[-1] = i  # the same cost as the last point on the front, a better value
        else:
            front.append(i)
            anchor = costs[i]
        best = values[i]
    return front
