"""What a classifier is, without its weights: :class:`ClassifierMeta` (stored in every
checkpoint), its input :class:`Preprocessing`, and the model card built from them.

No torch here: the card is read by servers, the CLI and the strategy room without loading a
network. Task types come from :mod:`pomlia_hpc.vocab`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field, model_validator

from pomlia_hpc.config import Record
from pomlia_hpc.errors import InputError
from pomlia_hpc.vocab import TASK_TYPES, TaskType, normalize_task_type

#: Longest model name: room for a study's best model, ``<study name (<= 96)>-best``.
MODEL_NAME_MAX = 128

#: Default input normalisation: pixels scaled to [0, 1], then (x - 0.5) / 0.5 per channel,
#: the transform MedMNIST's reference training uses.
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5

#: How the server scales uploaded pixels to [0, 1] (:mod:`pomlia_hpc.serve.decode`), written
#: into every model card so a client can match what the network saw in training.
INPUT_SCALING = {
    "uint8": "x / 255",
    "uint16": (
        "x / 65535, the full 16-bit range; ingest scaled 16-bit training images by the "
        "dataset's own maximum (its intensity_scaling metadata), so for such data send "
        "float32 x / max in [0, 1] instead"
    ),
    "float": "as sent; must be finite and in [0, 1], else the request is refused (400)",
}


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the network's input: pixels scaled to [0, 1] as
    :data:`INPUT_SCALING` says, then ``(x - mean[c]) / std[c]``, NCHW float32."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_scaling": dict(INPUT_SCALING),
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
        }

    @classmethod
    def default(cls, channels: int) -> Preprocessing:
        return cls(mean=(DEFAULT_MEAN,) * channels, std=(DEFAULT_STD,) * channels)


@dataclass(frozen=True)
class ClassifierMeta:
    """Everything needed to rebuild, serve and describe a classifier (stored in its checkpoint)."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    task_type: str
    label_names: tuple[str, ...]
    preprocessing: Preprocessing
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label_names"] = list(self.label_names)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> ClassifierMeta:
        """Validate ``data``; a missing or wrong field is an :class:`InputError` naming
        ``source`` and the field."""

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise InputError(f"{source}: field '{key}' is missing")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise InputError(
                    f"{source}: field '{key}' should be {getattr(kind, '__name__', kind)}, "
                    f"got {type(value).__name__}"
                )
            return value

        labels = tuple(str(x) for x in need("label_names", (list, tuple)))
        num_classes = need("num_classes", int)
        if len(labels) != num_classes:
            raise InputError(
                f"{source}: field 'label_names' has {len(labels)} names, expected num_classes="
                f"{num_classes}"
            )
        channels = need("in_channels", int)
        pre = data.get("preprocessing") or Preprocessing.default(channels).to_dict()
        try:
            prep = Preprocessing(
                mean=tuple(float(x) for x in pre["mean"]),
                std=tuple(float(x) for x in pre["std"]),
            )  # an old checkpoint's 'scale' (always 1/255, never applied) is ignored
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{source}: field 'preprocessing' should hold lists 'mean' and 'std' ({exc})"
            ) from exc
        if len(prep.mean) != channels or len(prep.std) != channels or min(prep.std) <= 0:
            raise InputError(
                f"{source}: field 'preprocessing' needs {channels} means and {channels} positive "
                f"stds, got {list(prep.mean)} / {list(prep.std)}"
            )
        return cls(
            arch=need("arch", str),
            num_classes=num_classes,
            in_channels=channels,
            image_size=need("image_size", int),
            task_type=normalize_task_type(need("task_type", str)),
            label_names=labels,
            preprocessing=prep,
            metrics=dict(data.get("metrics") or {}),
            lineage=dict(data.get("lineage") or {}),
            created_at=str(data.get("created_at", "")),
        )


class CardInput(Record):
    """The ``input`` section of a model card."""

    image_size: int = Field(ge=1)
    channels: int = Field(ge=1)
    layout: str = "HWC (NHWC for a batch) as uploaded; NCHW float32 into the network"


class CardPreprocessing(Record):
    """The ``preprocessing`` section of a model card (see :class:`Preprocessing`)."""

    input_scaling: dict[str, str] = Field(default_factory=lambda: dict(INPUT_SCALING))
    mean: list[float]
    std: list[float]
    layout: str = "NCHW"


class ModelCard(Record):
    """An exported bundle's ``card.json``: the card :func:`model_card` builds, plus what the
    export adds (``model_version``, ``checkpoint_sha256``, ``fingerprint``, ``export``, and
    ``files``: bundle file name -> SHA-256)."""

    name: str
    task: dict[str, Any]
    architecture: str
    label_names: list[str] = Field(min_length=1)
    input: CardInput
    preprocessing: CardPreprocessing
    output: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    created_at: str = ""
    model_version: str
    checkpoint_sha256: str = ""
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    export: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str]

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.task.get("type") not in TASK_TYPES:
            raise ValueError(f"'task.type' should be one of {', '.join(TASK_TYPES)}")
        n = self.input.channels
        for key in ("mean", "std"):
            if len(getattr(self.preprocessing, key)) != n:
                raise ValueError(f"'preprocessing.{key}' needs {n} values (input.channels)")
        return self


def model_card(
    meta: ClassifierMeta, *, name: str, task: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The model card: what a user of the served model needs to know (JSON-able)."""
    return {
        "name": name,
        "task": {"type": meta.task_type, **dict(task or {})},
        "architecture": meta.arch,
        "label_names": list(meta.label_names),
        "input": {
            "image_size": meta.image_size,
            "channels": meta.in_channels,
            "layout": "HWC (NHWC for a batch) as uploaded; NCHW float32 into the network",
        },
        "preprocessing": meta.preprocessing.to_dict(),
        "output": (
            "one sigmoid probability per label; labels with p >= 0.5 are predicted"
            if meta.task_type == TaskType.MULTI_LABEL
            else "softmax probabilities over the labels; the argmax is the label"
        ),
        "metrics": dict(meta.metrics),
        "lineage": dict(meta.lineage),
        "created_at": meta.created_at,
    }
