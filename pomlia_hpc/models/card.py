"""What a classifier is, without its weights: :class:`ClassifierMeta` (stored in every
checkpoint), its input :class:`Preprocessing`, and the model card built from them.

No torch here: the card is read by servers, the CLI and the strategy room without loading a
network. Task types come from :mod:`pomlia_hpc.vocab`.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator

from pomlia_hpc.config import Record, validate_model
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
        "as ingest scaled the training images when input.intensity_scaling records their "
        "16-bit maximum: min(x, max) * 255 / max rounded to 8 bits, then / 255 (values above "
        "the maximum saturate); else x / 65535, the full 16-bit range"
    ),
    "float": (
        "as ingest stores float images: round(x * 255) / 255; must be finite and in [0, 1], "
        "else the request is refused (400)"
    ),
}


class Preprocessing(Record):
    """How pixels become the network's input: pixels scaled to [0, 1] as
    :data:`INPUT_SCALING` says, then ``(x - mean[c]) / std[c]``, NCHW float32."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "NCHW"

    @model_validator(mode="before")
    @classmethod
    def _settings_only(cls, data: Any) -> Any:
        # Not settings: 'input_scaling' is what to_dict writes for readers (always today's
        # text), 'scale' is an old checkpoint's (always 1/255, never applied).
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in ("input_scaling", "scale")}
        return data

    def to_dict(self) -> dict[str, Any]:
        return {"input_scaling": dict(INPUT_SCALING), **self.model_dump(mode="json")}

    @classmethod
    def default(cls, channels: int) -> Preprocessing:
        return cls(mean=(DEFAULT_MEAN,) * channels, std=(DEFAULT_STD,) * channels)


#: Unicode categories a class or label name may not hold: control characters (escape sequences
#: that rewrite a terminal, newlines that break tables and logs) and line separators. The
#: rule `pomlia data add` applies to class folders.
_CONTROL = ("Cc", "Zl", "Zp")


def check_label_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first label name that holds a control character."""
    for i, name in enumerate(names, 1):
        bad = [c for c in name if unicodedata.category(c) in _CONTROL]
        if bad:
            raise ValueError(
                f"'label_names' name {i} of {len(names)} ({name!r}) has a control character "
                f"({bad[0]!r}): expected names without newlines, tabs or other control characters"
            )


#: Ceilings of a checkpoint's sizes, far above any real model (`data add --max-classes` and
#: `--max-side-px` may raise the ingest's defaults): past them, building the network overflowed,
#: a traceback at export.
MAX_META_CLASSES = 1_000_000
MAX_META_SIDE = 65_536
MAX_META_CHANNELS = 1024


def usable_stats(pre: Preprocessing | CardPreprocessing) -> bool:
    """Whether ``pre``'s means are finite and its stds positive and finite (NaN passes a
    plain ``<= 0``: a NaN std made every output NaN, blamed on the model at export)."""
    finite = all(math.isfinite(v) for v in (*pre.mean, *pre.std))
    return finite and bool(pre.std) and min(pre.std) > 0


class ClassifierMeta(Record):
    """Everything needed to rebuild, serve and describe a classifier (stored in its checkpoint;
    read back with :meth:`from_dict`, which refuses unknown keys)."""

    arch: str
    num_classes: int = Field(ge=1, le=MAX_META_CLASSES)
    in_channels: int = Field(ge=1, le=MAX_META_CHANNELS)
    image_size: int = Field(ge=1, le=MAX_META_SIDE)
    task_type: str
    label_names: tuple[str, ...]
    preprocessing: Preprocessing | None = None  # None: Preprocessing.default(in_channels)
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    created_at: str = ""

    @field_validator("task_type")
    @classmethod
    def _task_type(cls, value: str) -> str:
        try:
            return normalize_task_type(value)
        except InputError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _consistent(self) -> ClassifierMeta:
        check_label_names(self.label_names)
        n, channels = len(self.label_names), self.in_channels
        if n != self.num_classes:
            raise ValueError(
                f"'label_names' has {n} names, expected num_classes={self.num_classes}"
            )
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", Preprocessing.default(channels))
        pre = self.pre
        if len(pre.mean) != channels or len(pre.std) != channels or not usable_stats(pre):
            raise ValueError(
                f"'preprocessing' needs {channels} finite means and {channels} positive finite "
                f"stds, got {list(pre.mean)} / {list(pre.std)}"
            )
        return self

    @property
    def pre(self) -> Preprocessing:
        """The preprocessing (always set after validation)."""
        assert self.preprocessing is not None
        return self.preprocessing

    def to_dict(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json"), "preprocessing": self.pre.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> ClassifierMeta:
        """Validate ``data``; an unknown, missing or wrong field is one :class:`InputError`
        line naming ``source`` and the field."""
        return validate_model(cls, data, source, error=InputError)


class CardInput(Record):
    """The ``input`` section of a model card."""

    image_size: int = Field(ge=1)
    channels: int = Field(ge=1)
    layout: str = "HWC (NHWC for a batch) as uploaded; NCHW float32 into the network"
    #: The training data set's ``meta["intensity_scaling"]`` (how ingest turned its pixels
    #: into 8 bits), which the server applies to uploads; None for 8-bit data and old cards.
    intensity_scaling: dict[str, Any] | None = None


class CardPreprocessing(Record):
    """The ``preprocessing`` section of a model card (see :class:`Preprocessing`)."""

    input_scaling: dict[str, str] = Field(default_factory=lambda: dict(INPUT_SCALING))
    mean: list[float]
    std: list[float]
    layout: str = "NCHW"

    @model_validator(mode="before")
    @classmethod
    def _drop_old_scale(cls, data: Any) -> Any:
        # Bundles exported before the card was strict carry 'scale' (always 1/255, never
        # applied); they must keep serving.
        if isinstance(data, dict) and "scale" in data:
            return {k: v for k, v in data.items() if k != "scale"}
        return data

    @model_validator(mode="after")
    def _finite(self) -> CardPreprocessing:
        # As a checkpoint's (ClassifierMeta): a NaN std of a hand-edited card made every
        # answer NaN.
        if not usable_stats(self):
            raise ValueError(
                f"'preprocessing' needs finite means and positive finite stds, got "
                f"{self.mean} / {self.std}"
            )
        return self


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
        check_label_names(self.label_names)  # a bundle made elsewhere: the checkpoint's rule
        if self.task.get("type") not in TASK_TYPES:
            raise ValueError(f"'task.type' should be one of {', '.join(TASK_TYPES)}")
        n = self.input.channels
        for key in ("mean", "std"):
            if len(getattr(self.preprocessing, key)) != n:
                raise ValueError(f"'preprocessing.{key}' needs {n} values (input.channels)")
        return self


def model_card(
    meta: ClassifierMeta,
    *,
    name: str,
    task: Mapping[str, Any] | None = None,
    intensity_scaling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card: what a user of the served model needs to know (JSON-able).
    ``task``: extra task fields (id, metric); ``intensity_scaling``: the training data set's
    ``meta["intensity_scaling"]``, recorded as ``input.intensity_scaling`` when given."""
    card_input: dict[str, Any] = {
        "image_size": meta.image_size,
        "channels": meta.in_channels,
        "layout": "HWC (NHWC for a batch) as uploaded; NCHW float32 into the network",
    }
    if intensity_scaling:
        card_input["intensity_scaling"] = dict(intensity_scaling)
    return {
        "name": name,
        "task": {"type": meta.task_type, **dict(task or {})},
        "architecture": meta.arch,
        "label_names": list(meta.label_names),
        "input": card_input,
        "preprocessing": meta.pre.to_dict(),
        "output": (
            "one sigmoid probability per label; labels with p > 0.5 are predicted"
            if meta.task_type == TaskType.MULTI_LABEL
            else "softmax probabilities over the labels; the argmax is the label"
        ),
        "metrics": dict(meta.metrics),
        "lineage": dict(meta.lineage),
        "created_at": meta.created_at,
    }
