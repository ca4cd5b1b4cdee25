"""The classifier checkpoint format, and registering a checkpoint as a registry ``Model``.

A checkpoint is one ``torch.save`` file holding a format tag, a JSON-able ``meta`` dict (see
:class:`ClassifierMeta`) and the ``state_dict``. Serving rebuilds the network with
:func:`pomlia_hpc.nets.build_classifier` from ``meta`` and loads the weights, so the file never
pickles code and is read with ``weights_only=True``.

Task types: ``multi-class``, ``binary``, ``multi-label`` (one sigmoid per label, e.g. ChestMNIST)
and ``ordinal`` (served like multi-class). MedMNIST's names (``binary-class``,
``multi-label, binary-class``, ``ordinal-regression``) are accepted and normalised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from torch import nn

from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.names import validate_name
from pomlia_hpc.nets import build_classifier
from pomlia_hpc.registry import Model, Registry

FORMAT = "pomlia-classifier/1"

TASK_TYPES = ("multi-class", "binary", "multi-label", "ordinal")
_TASK_ALIASES = {
    "multiclass": "multi-class",
    "binary-class": "binary",
    "multi-label, binary-class": "multi-label",
    "multilabel": "multi-label",
    "ordinal-regression": "ordinal",
}

#: Longest model name: room for a study's best model, ``<study name (<= 96)>-best``.
MODEL_NAME_MAX = 128

#: Default input normalisation: pixels scaled to [0, 1], then (x - 0.5) / 0.5 per channel,
#: the transform MedMNIST's reference training uses.
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5


def normalize_task_type(task_type: str) -> str:
    """Map a task type (ours or MedMNIST's spelling) to one of :data:`TASK_TYPES`."""
    key = task_type.strip().lower()
    key = _TASK_ALIASES.get(key, key)
    if key not in TASK_TYPES:
        raise InputError(
            f"task type '{task_type}' is not supported; expected one of: {', '.join(TASK_TYPES)}"
        )
    return key


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


@dataclass(frozen=True)
class LoadedClassifier:
    """A network in eval mode and the metadata it was saved with."""

    model: nn.Module
    meta: ClassifierMeta
    path: Path


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_classifier(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    task_type: str,
    label_names: Sequence[str],
    metrics: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    preprocessing: Preprocessing | None = None,
) -> ClassifierMeta:
    """Write ``model``'s weights and metadata to ``path`` (atomically: temp name, then rename).

    ``model`` must be what ``build_classifier(arch, num_classes, in_channels,
    image_size=image_size)`` builds; this is checked by loading the weights into a fresh copy.
    ``preprocessing`` defaults to :meth:`Preprocessing.default`.
    """
    meta = ClassifierMeta.from_dict(
        {
            "arch": arch,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": image_size,
            "task_type": task_type,
            "label_names": list(label_names),
            "preprocessing": (preprocessing or Preprocessing.default(in_channels)).to_dict(),
            "metrics": dict(metrics or {}),
            "lineage": dict(lineage or {}),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        f"save_classifier({path})",
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fresh = build_classifier(arch, num_classes, in_channels, image_size=image_size)
    try:
        fresh.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"save_classifier({path}): the model's weights do not fit arch '{arch}' with "
            f"num_classes={num_classes}, in_channels={in_channels}, image_size={image_size}"
        ) from exc
    _atomic_torch_save({"format": FORMAT, "meta": meta.to_dict(), "state_dict": state}, Path(path))
    return meta


def read_meta(path: str | Path) -> ClassifierMeta:
    """Read only the metadata of a checkpoint (still loads the file; weights are small)."""
    return _load_raw(Path(path))[0]


def _load_raw(path: Path) -> tuple[ClassifierMeta, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise NotFoundError(f"classifier checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable classifier checkpoint ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f"{path}: field 'format' should be '{FORMAT}'")
    return ClassifierMeta.from_dict(raw.get("meta") or {}, f"{path} [meta]"), raw["state_dict"]


def load_classifier(path: str | Path) -> LoadedClassifier:
    """Rebuild the network saved at ``path`` and load its weights; the model is in eval mode."""
    p = Path(path)
    meta, state = _load_raw(p)
    model = build_classifier(
        meta.arch, meta.num_classes, meta.in_channels, image_size=meta.image_size
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{p}: weights do not match arch '{meta.arch}' ({exc})") from exc
    model.eval()
    return LoadedClassifier(model=model, meta=meta, path=p)


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
            if meta.task_type == "multi-label"
            else "softmax probabilities over the labels; the argmax is the label"
        ),
        "metrics": dict(meta.metrics),
        "lineage": dict(meta.lineage),
        "created_at": meta.created_at,
    }


def register_model(
    registry: Registry,
    name: str,
    path: str | Path,
    task_id: int | None = None,
    run_id: int | None = None,
    card: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> Model:
    """Create the registry ``Model`` row for the checkpoint at ``path`` and return it.

    ``card`` defaults to :func:`model_card` of the checkpoint's metadata; ``lineage`` is merged
    over the checkpoint's own lineage, with ``task_id`` and ``run_id``. A name already taken
    is an error (names identify served models and their logs). ``name`` must follow
    :func:`pomlia_hpc.names.validate_name`: it becomes part of paths.
    """
    validate_name("model", name, max_len=MODEL_NAME_MAX)
    p = Path(path).resolve()
    meta = read_meta(p)
    full_lineage = {**meta.lineage, **dict(lineage or {})}
    if task_id is not None:
        full_lineage["task_id"] = task_id
    if run_id is not None:
        full_lineage["run_id"] = run_id
    card_dict = dict(card) if card is not None else model_card(meta, name=name)
    card_dict.setdefault("lineage", full_lineage)
    with registry.session() as s:
        existing = s.scalar(select(Model).where(Model.name == name))
        if existing is not None:
            raise PomliaError(
                f"model name '{name}' is already registered (id {existing.id}); expected a new name"
            )
        row = Model(
            name=name,
            task_id=task_id,
            run_id=run_id,
            path=str(p),
            card=card_dict,
            lineage=full_lineage,
        )
        s.add(row)
        s.flush()
        return row


def resolve_model(registry: Registry, ref: str) -> Model:
    """The ``Model`` row named ``ref`` (or with id ``ref``); :class:`NotFoundError` otherwise."""
    with registry.session() as s:
        row = s.scalar(select(Model).where(Model.name == ref))
        if row is None and ref.isdigit():
            row = s.get(Model, int(ref))
        if row is None:
            names = list(s.scalars(select(Model.name).order_by(Model.id.desc()).limit(10)))
            raise NotFoundError(
                f"model '{ref}' is not in the registry; known models: "
                f"{', '.join(names) if names else '(none)'}"
            )
        return row


def update_card(registry: Registry, model_id: int, card: Mapping[str, Any]) -> None:
    """Replace the card of model ``model_id`` (a new dict, so SQLAlchemy sees the change)."""
    with registry.session() as s:
        row = s.get(Model, model_id)
        if row is None:
            raise NotFoundError(f"model id {model_id} is not in the registry")
        row.card = dict(card)
