"""Helpers for the loop tests: untrained classifiers whose predictions serve as labels, a
served-model log with kept inputs written directly (the server itself is tested elsewhere)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.models.checkpoint import save_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.serve.inbox import Inbox, encode_image, inputs_dir
from pomlia_hpc.serve.predlog import PredictionLog
from tests.fixtures.factories import log_line

CLASSES = [f"c{i}" for i in range(4)]


def make_model(registry: Registry, root: Path, name: str, seed: int, version_id: int) -> Model:
    """An untrained small CNN (28 px, 3 channels, 4 classes) registered with its training
    dataset version in its lineage."""
    torch.manual_seed(seed)
    net = build_classifier("small_cnn", len(CLASSES), 3, image_size=28)
    return register_small_cnn(registry, root, name, net, version_id, "multi-class", CLASSES)


def register_small_cnn(
    registry: Registry,
    root: Path,
    name: str,
    net: torch.nn.Module,
    version_id: int,
    task_type: str,
    labels: list[str],
    task_id: int | None = None,
) -> Model:
    """``net`` (a small CNN on 28 px, 3 channels, one output per label) saved as
    ``root/<name>.pt`` and registered as model ``name`` (of task ``task_id``) with its
    training dataset version and configuration in its lineage."""
    path = root / f"{name}.pt"
    save_classifier(
        path,
        net,
        arch="small_cnn",
        num_classes=len(labels),
        in_channels=3,
        image_size=28,
        task_type=task_type,
        label_names=labels,
    )
    # As a study registers it: its training version and configuration (trained from scratch).
    lineage = {"dataset_version_id": version_id, "config": {"init": "scratch"}}
    return register_model(registry, name, path, task_id=task_id, lineage=lineage)


def readout_net(channel: int, slope: float, bias: float) -> torch.nn.Module:
    """A binary small CNN (28 px, 3 channels) whose class-1 logit is ``slope * f + bias`` and
    class-0 logit 0, where ``f`` is image channel ``channel``'s normalised value (2 p / 255 - 1
    for a constant channel of pixel value p >= 128; negative values read as 0): each conv
    passes one channel through its centre tap, every other weight is zero. So a test sets
    each image's score exactly through its pixels."""
    net = build_classifier("small_cnn", 2, 3, image_size=28)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        for i, conv in enumerate(convs):
            conv.weight[0, channel if i == 0 else 0, 1, 1] = 1.0
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)  # eval: x / sqrt(1 + eps), running mean 0, var 1
        net.head.weight[1, 0] = slope
        net.head.bias[1] = bias
    return net


def predict(model: Model, images: np.ndarray) -> np.ndarray:
    """Class indices ``model`` predicts for uint8 NHWC ``images``."""
    from pomlia_hpc.models.checkpoint import load_classifier

    loaded = load_classifier(model.path)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        return loaded.model((x - 0.5) / 0.5).argmax(1).numpy()


def write_production(
    log_dir: Path, images: np.ndarray, labels: np.ndarray, *, when: str | None = None
) -> list[str]:
    """Predictions with kept inputs and one feedback label each, as a server would log them."""
    when = when or datetime.now(UTC).isoformat()
    plog = PredictionLog(log_dir, sidecar=Inbox(inputs_dir(log_dir)))
    ids = [
        f"{np.random.default_rng([i, len(images)]).integers(1 << 62):032x}"
        for i in range(len(images))
    ]
    for pid, img in zip(ids, images, strict=True):
        rec = log_line("prediction", id=pid, time=when, input_kept=True)
        plog.append([rec], inputs=encode_image(pid, when, img.astype(np.float32) / 255))
    plog.append(
        [
            log_line("feedback", prediction_id=pid, label_index=int(y), time=when)
            for pid, y in zip(ids, labels, strict=True)
        ]
    )
    plog.close()
    return ids
