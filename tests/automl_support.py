"""Helpers for the AutoML tests: a tiny look-alike dataset ingested into a workspace, a task on
it, and warm-start files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from pomlia_hpc.automl.tasks import add_task
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.medmnist_info import flag_info
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.nets import build_classifier
from pomlia_hpc.registry import Registry
from pomlia_hpc.serve.bundle import register_model, save_classifier
from pomlia_hpc.workspace import Workspace


def tiny_dataset(
    ws: Workspace,
    reg: Registry,
    name: str,
    flag: str = "bloodmnist",
    sizes: tuple[int, int, int] = (96, 32, 48),
    seed: int = 0,
    val_label: int | None = None,
) -> str:
    """Ingest a look-alike of ``flag`` (28 px) with (train, val, test) sizes; returns the ref.
    ``val_label``: give every validation image this label (a split where AUC is undefined)."""
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        x, y = make_split(flag, n, seed=seed, size=28, split=split)
        if split == "val" and val_label is not None:
            y = np.full_like(y, val_label)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    path = ws.tmp / f"{name}.npz"
    ws.tmp.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    info = flag_info(flag)
    rec = ingest(
        ws, reg, name, path, class_names=list(info.class_names), task_type=info.task_type, workers=1
    )
    path.unlink()
    return f"{name}@{rec.version}"


def tiny_task(
    ws: Workspace,
    reg: Registry,
    name: str = "blood",
    flag: str = "bloodmnist",
    metric: str = "acc",
    **kw: object,
) -> str:
    ref = tiny_dataset(ws, reg, f"{name}_data", flag, **kw)  # type: ignore[arg-type]
    add_task(reg, name, ref, metric)
    return name


#: A fast configuration (the small CNN, big steps) for warm starts.
FAST = {
    "arch": "small_cnn",
    "lr": 0.003,
    "batch_size": 32,
    "augmentation": "none",
    "optimizer": "adamw",
    "weight_decay": 0.0001,
}


def warm_file(path: Path, configs: list[dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump(configs))
    return path


def donor_model(ws: Workspace, reg: Registry, name: str = "donor") -> str:
    """A registered 8-class small CNN (untrained) to start from; returns its name."""
    path = ws.path("models", f"{name}.pt")
    save_classifier(
        path,
        build_classifier("small_cnn", 8, 3),
        arch="small_cnn",
        num_classes=8,
        in_channels=3,
        image_size=28,
        task_type="multi-class",
        label_names=[str(i) for i in range(8)],
    )
    register_model(reg, name, path)
    return name
