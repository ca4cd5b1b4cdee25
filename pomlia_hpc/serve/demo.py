"""A registered, exported demo classifier, for trying the server, its tests and the benchmark
before any AutoML run exists. The network is untrained (random weights, fixed seed): serving
cost does not depend on what the weights learned."""

from __future__ import annotations

from pathlib import Path

import torch

from pomlia_hpc.data.sources.base import MAX_CLASSES, MAX_SIDE_PX
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_atomic
from pomlia_hpc.models.card import model_card
from pomlia_hpc.models.catalog import check_new_model_name, register_model
from pomlia_hpc.models.checkpoint import read_meta, save_classifier
from pomlia_hpc.models.nets import build_classifier
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.export import ExportResult, card_with_bundle, export_checkpoint
from pomlia_hpc.vocab import TaskType, normalize_task_type
from pomlia_hpc.workspace import Workspace


def demo_labels(task_type: str, num_classes: int) -> list[str]:
    """Readable label names: ``class_0 ..`` (``finding_0 ..`` for multi-label)."""
    stem = "finding" if task_type == "multi-label" else "class"
    return [f"{stem}_{i}" for i in range(num_classes)]


def save_demo_checkpoint(
    path: Path,
    *,
    arch: str = "small_cnn",
    image_size: int = 28,
    channels: int = 3,
    num_classes: int = 9,
    task_type: str = "multi-class",
    seed: int = 0,
) -> Path:
    """Write an untrained classifier checkpoint to ``path`` and return it. Settings no
    served image can meet are refused first: the server decodes grey (1 channel) or RGB (3);
    a binary task has 2 classes, a multi-class or ordinal one at least 2."""
    task_type = normalize_task_type(task_type)
    if channels not in (1, 3):
        raise InputError(f"--channels {channels}: expected 1 (grey) or 3 (RGB)")
    if task_type == TaskType.BINARY and num_classes != 2:
        raise InputError(f"--classes {num_classes}: a binary task has 2 classes")
    if task_type in (TaskType.MULTI_CLASS, TaskType.ORDINAL) and num_classes < 2:
        raise InputError(f"--classes {num_classes}: a {task_type} task has at least 2 classes")
    # An untrained stand-in: sizes of a real data set (a huge one overflowed building it).
    if not 1 <= num_classes <= MAX_CLASSES:
        raise InputError(f"--classes {num_classes}: expected 1 to {MAX_CLASSES}")
    if not 8 <= image_size <= MAX_SIDE_PX:
        raise InputError(f"--image-size {image_size}: expected 8 to {MAX_SIDE_PX} px")
    torch.manual_seed(seed)
    model = build_classifier(arch, num_classes, channels, image_size=image_size)
    save_classifier(
        path,
        model,
        arch=arch,
        num_classes=num_classes,
        in_channels=channels,
        image_size=image_size,
        task_type=task_type,
        label_names=demo_labels(task_type, num_classes),
        metrics={"note": "untrained demo model"},
        lineage={"source": "pomlia_hpc.serve.demo"},
    )
    return path


def demo_bundle(out_root: Path, *, name: str = "demo", **kwargs: object) -> ExportResult:
    """Checkpoint + export without a registry (for the benchmark): ``out_root/<version>/``."""
    ckpt = save_demo_checkpoint(out_root / f"{name}.pt", **kwargs)  # type: ignore[arg-type]
    return export_checkpoint(ckpt, out_root / "bundles", name=name)


def register_demo_model(
    registry: Registry, workspace: Workspace, name: str = "demo", **kwargs: object
) -> ExportResult:
    """Save, register and export a demo model named ``name`` in ``workspace``. A taken or
    invalid name is refused before the checkpoint is written (it would overwrite the
    registered model's, or leave a folder under a bad name).

    The bundle is exported before the model is registered, and the row is created with the
    bundle already in its card (one transaction): a run killed at any point leaves either no
    row, and running it again finishes it (the name is still free), or a complete one."""
    check_new_model_name(registry, name)
    ckpt = workspace.path("models", name, "checkpoint.pt")
    save_demo_checkpoint(ckpt, **kwargs)  # type: ignore[arg-type]
    result = export_checkpoint(ckpt, workspace.path("models", name, "bundles"), name=name, task={})
    card = card_with_bundle(model_card(read_meta(ckpt), name=name), result)
    register_model(registry, name, ckpt, card=card)
    return result


def cached_demo_bundle(cache_root: Path, **kwargs: object) -> Path:
    """The bundle dir of a demo model with these settings, exported once per ``cache_root``
    (tests share one export per pytest session this way)."""
    key = "-".join(f"{k}={v}" for k, v in sorted(kwargs.items())) or "default"
    root = cache_root / key
    marker = root / "bundle-path.txt"
    if marker.is_file():
        return Path(marker.read_text())
    res = demo_bundle(root, **kwargs)  # type: ignore[arg-type]
    write_atomic(marker, str(res.bundle.root))
    return res.bundle.root
