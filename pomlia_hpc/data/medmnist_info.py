"""MedMNIST's dataset table (``medmnist.info.INFO``), read without importing torch.

``import medmnist`` imports torch and torchvision (about 6 s); the table itself is a plain
module, so it is loaded from its file directly. Only the 12 2D datasets are exposed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from pomlia_hpc.errors import InputError

FLAGS_2D: tuple[str, ...] = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)
SIZES: tuple[int, ...] = (28, 64, 128, 224)


@cache
def _info_module() -> ModuleType:
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the 'medmnist' package is not installed: expected `pip install medmnist`")
    path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_pomlia_medmnist_info", path)
    assert info_spec is not None and info_spec.loader is not None
    mod = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(mod)
    return mod


def raw_info() -> dict[str, dict[str, Any]]:
    """MedMNIST's INFO dict, as shipped by the installed ``medmnist`` package."""
    info: dict[str, dict[str, Any]] = _info_module().INFO
    return info


def default_root() -> Path:
    """medmnist's default data folder (``~/.medmnist``)."""
    return Path(str(_info_module().DEFAULT_ROOT)).expanduser()


@dataclass(frozen=True)
class FlagInfo:
    """What pomlia needs to know about one MedMNIST 2D dataset."""

    flag: str
    task_type: str
    channels: int
    class_names: tuple[str, ...]
    n_samples: dict[str, int]
    description: str
    license: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def multi_label(self) -> bool:
        return self.task_type.startswith("multi-label")

    @property
    def label_width(self) -> int:
        """L of the (N, L) label array: n_classes for multi-label, else 1."""
        return self.n_classes if self.multi_label else 1

    def file_name(self, size: int = 28) -> str:
        """``{flag}.npz`` at 28 px, ``{flag}_{size}.npz`` otherwise."""
        check_size(size)
        return f"{self.flag}.npz" if size == 28 else f"{self.flag}_{size}.npz"

    def url(self, size: int = 28) -> str:
        entry = raw_info()[self.flag]
        return str(entry["url"] if size == 28 else entry[f"url_{size}"])

    def md5(self, size: int = 28) -> str:
        entry = raw_info()[self.flag]
        return str(entry["MD5"] if size == 28 else entry[f"MD5_{size}"])


def check_size(size: int) -> int:
    if size not in SIZES:
        raise InputError(
            f"MedMNIST size {size} is not available: expected one of {', '.join(map(str, SIZES))}"
        )
    return size


def flag_info(flag: str) -> FlagInfo:
    """The :class:`FlagInfo` of a 2D MedMNIST flag (e.g. ``"pathmnist"``)."""
    if flag not in FLAGS_2D:
        raise InputError(
            f"'{flag}' is not a MedMNIST 2D dataset: expected one of {', '.join(FLAGS_2D)}"
        )
    e = raw_info()[flag]
    labels = e["label"]
    names = tuple(str(labels[str(i)]) for i in range(len(labels)))
    return FlagInfo(
        flag=flag,
        task_type=str(e["task"]),
        channels=int(e["n_channels"]),
        class_names=names,
        n_samples={k: int(v) for k, v in e["n_samples"].items()},
        description=str(e.get("description", "")),
        license=str(e.get("license", "")),
    )


def is_flag(name: str) -> bool:
    return name in FLAGS_2D
