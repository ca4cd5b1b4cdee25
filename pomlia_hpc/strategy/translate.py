"""What a recommended strategy means on this installation: the initial weights a task could
start from (:func:`available_sources`: an encoder with the task's embeddings, a similar task's
registered model, ImageNet weights on local disk) and the strategy as values of the AutoML
space (:func:`to_automl`, :func:`with_hparams`), with a note on what was substituted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.registry import Encoder, FingerprintSet, Model, Registry, Task
from pomlia_hpc.strategy import cost as costs

#: Architectures of the AutoML space, by :func:`pomlia_hpc.strategy.cost.arch_key`.
SPACE_ARCHS = {
    "smallcnn": "small_cnn",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "mobilenetv3small": "mobilenet_v3_small",
    "resnet18imagenet": "resnet18_imagenet",
}
FROZEN = ("linear_probe", "knn")


def canonical_arch(arch: str) -> str:
    """The AutoML space's name of an architecture it has, however spelled (``ResNet-18``,
    ``resnet-18`` -> ``resnet18``); other architectures as given."""
    return SPACE_ARCHS.get(costs.arch_key(arch), arch)


@dataclass(frozen=True)
class Sources:
    """Initial weights available for this task."""

    encoder: str | None = None  # encoder name
    encoder_arch: str | None = None
    model: str | None = None  # a registered model of a similar task
    model_arch: str | None = None
    model_task: str | None = None
    imagenet: tuple[str, ...] = ()  # architectures with ImageNet weights on local disk


def _imagenet_local() -> tuple[str, ...]:
    """Architectures whose torchvision ImageNet weights are in the local torch hub cache."""
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    folder = home / "hub" / "checkpoints"
    found = []
    if folder.is_dir():
        for prefix, arch in (("resnet18-", "resnet18"), ("resnet34-", "resnet34")):
            if any(p.name.startswith(prefix) for p in folder.iterdir()):
                found.append(arch)
    return tuple(found)


def available_sources(
    registry: Registry, task_id: int, dataset_version_id: int, similar_tasks: list[str]
) -> Sources:
    """Initial weights this task could start from: an encoder with the task's embeddings, the
    best registered model of the most similar task, ImageNet weights on local disk."""
    with registry.session() as s:
        enc = s.execute(
            select(Encoder.name, Encoder.config)
            .join(FingerprintSet, FingerprintSet.encoder_id == Encoder.id)
            .where(
                FingerprintSet.dataset_version_id == dataset_version_id,
                FingerprintSet.status == "complete",
            )
            .order_by(Encoder.id.desc())
            .limit(1)
        ).first()
        model = None
        tasks = dict(s.execute(select(Task.name, Task.id)).all())
        for name in similar_tasks:
            tid = tasks.get(name)
            if tid is None or tid == task_id:
                continue
            row = s.execute(
                select(Model.name, Model.lineage)
                .where(Model.task_id == tid)
                .order_by(Model.id.desc())
                .limit(1)
            ).first()
            if row is not None:
                arch = (row[1] or {}).get("config", {}).get("arch")
                model = (row[0], arch, name)
                break
    encoder_arch = None
    if enc is not None:
        stem = (enc[1] or {}).get("stem", "imagenet")
        encoder_arch = "resnet18" if stem == "small" else "resnet18_imagenet"
    return Sources(
        encoder=enc[0] if enc else None,
        encoder_arch=encoder_arch,
        model=model[0] if model else None,
        model_arch=model[1] if model else None,
        model_task=model[2] if model else None,
        imagenet=_imagenet_local(),
    )


def to_automl(
    strategy: dict[str, Any], src: Sources, image_size: int | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The strategy as AutoML hyperparameter values (``None`` if the space cannot express it)
    and a note on what was substituted. ``image_size``: the task's input size (px); the space
    trains at that size, so a strategy of another input size is noted as changed."""
    arch = SPACE_ARCHS.get(costs.arch_key(str(strategy.get("arch", ""))))
    mode = str(strategy.get("mode", "full"))
    init = str(strategy.get("init", "scratch"))
    if mode not in ("full", "linear_probe", "freeze_unfreeze", "knn"):
        return None, f"training mode '{mode}' is not in the AutoML space"
    if arch is None:
        return None, f"architecture '{strategy.get('arch')}' is not in the AutoML space"
    notes = []
    values: dict[str, Any] = {"arch": arch}
    if init == "scratch":
        if mode in FROZEN:
            return None, "frozen features need pretrained weights"
    else:
        if src.encoder_arch and costs.arch_key(src.encoder_arch).startswith(costs.arch_key(arch)):
            values.update(arch=src.encoder_arch, init="encoder")
            notes.append(f"pretrained weights: the fingerprint encoder '{src.encoder}'")
        elif src.model_arch and costs.arch_key(src.model_arch).startswith(costs.arch_key(arch)):
            values.update(arch=src.model_arch, init="model")
            notes.append(f"pretrained weights: model '{src.model}' of task '{src.model_task}'")
        elif mode in FROZEN:
            return None, "no pretrained weights of this architecture are available here"
        else:
            notes.append("no pretrained weights of this architecture here: trained from scratch")
    if "init" in values:
        values["mode"] = "linear_probe" if mode in FROZEN else mode
        if mode == "knn":
            notes.append("k-NN on frozen features mapped to a linear probe")
    if strategy.get("extra_data") == "nearest":
        if src.encoder:  # the nearest images are found with the encoder's index
            values["extra_data"] = "nearest"
        else:
            notes.append("no fingerprint encoder with this task's embeddings: no extra images")
    px = strategy.get("img_size")
    if image_size and px and int(px) != int(image_size):
        notes.append(f"input size: the task's {image_size} px, not {px} px (no resizing here)")
    return values, "; ".join(notes)


def with_hparams(values: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """``values`` plus the hyperparameters of a run that are active for them (conditions of
    :func:`pomlia_hpc.automl.space.build_space`)."""
    out = dict(values)
    mode = values.get("mode", "full")
    for key, v in hparams.items():
        if v is None or key in out:
            continue
        if key == "lr" and mode == "linear_probe":
            continue
        if key == "lr_head" and mode not in ("linear_probe", "freeze_unfreeze"):
            continue
        if key == "unfreeze_epoch" and mode != "freeze_unfreeze":
            continue
        if key == "momentum" and hparams.get("optimizer") != "sgd":
            continue
        if key == "extra_n" and values.get("extra_data") != "nearest":
            continue
        out[key] = v
    return out
