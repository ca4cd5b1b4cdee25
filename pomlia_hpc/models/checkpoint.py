"""The classifier checkpoint format: writing and reading one trained network.

A checkpoint is one ``torch.save`` file holding a format tag, a JSON-able ``meta`` dict (see
:class:`~pomlia_hpc.models.card.ClassifierMeta`) and the ``state_dict``. Loading rebuilds the
network with :func:`pomlia_hpc.models.nets.build_classifier` from ``meta`` and loads the
weights, so the file never pickles code and is read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.files import write_atomic
from pomlia_hpc.models.card import ClassifierMeta, Preprocessing
from pomlia_hpc.models.nets import build_classifier

FORMAT = "pomlia-classifier/1"


def write_torch(path: str | Path, obj: Any, *, fsync: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`pomlia_hpc.files.write_atomic` (whole or
    not at all): every checkpoint and weights file is written this way; returns ``path``."""
    return write_atomic(path, lambda f: torch.save(obj, f), fsync=fsync)


@dataclass(frozen=True)
class LoadedClassifier:
    """A network in eval mode and the metadata it was saved with."""

    model: nn.Module
    meta: ClassifierMeta
    path: Path


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
    payload = {"format": FORMAT, "meta": meta.to_dict(), "state_dict": state}
    write_torch(path, payload)
    return meta


def read_meta(path: str | Path) -> ClassifierMeta:
    """Read only the metadata of a checkpoint (still loads the file; weights are small)."""
    return _load_raw(Path(path))[0]


def _load_raw(path: Path) -> tuple[ClassifierMeta, dict[str, torch.Tensor]]:
    if path.is_dir():
        raise InputError(f"{path} is a folder: expected a classifier checkpoint file")
    if not path.is_file():
        raise NotFoundError(f"classifier checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's text can run to a dozen lines (the weights_only advice): its first sentence
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        if isinstance(exc, KeyError | EOFError):  # a text or cut file: the bare key said "105"
            reason = "not a file torch.save wrote, or one cut short"
        raise InputError(
            f"{path}: not a readable classifier checkpoint ({reason}); expected a file written "
            "by save_classifier"
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f"{path}: field 'format' should be '{FORMAT}'")
    meta = ClassifierMeta.from_dict(raw.get("meta") or {}, f"{path} [meta]")
    state = raw.get("state_dict")
    # A file cut down by hand or by another tool: one line, not a KeyError or TypeError.
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(
            f"{path}: field 'state_dict' should map parameter names to tensors, got "
            f"{type(state).__name__ if state is not None else 'none'}; expected a file written "
            "by save_classifier"
        )
    return meta, state


def load_classifier(path: str | Path) -> LoadedClassifier:
    """Rebuild the network saved at ``path`` and load its weights; the model is in eval mode."""
    p = Path(path)
    meta, state = _load_raw(p)
    try:
        model = build_classifier(
            meta.arch, meta.num_classes, meta.in_channels, image_size=meta.image_size
        )
    except InputError as exc:  # an unknown architecture: name the file it came from
        raise InputError(f"{p}: {exc.message}", hint=exc.hint) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(
            f"{p}: weights do not match arch '{meta.arch}' ({_mismatch(model, state)})"
        ) from exc
    model.eval()
    return LoadedClassifier(model=model, meta=meta, path=p)


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """How ``state`` differs from ``model``'s own names and shapes, on one line (torch's
    error lists every missing key, one a line)."""
    own = model.state_dict()
    parts = []
    for what, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("of another shape", [k for k in own if k in state and state[k].shape != own[k].shape]),
    ):
        if keys:
            parts.append(f"{len(keys)} {what}, e.g. {keys[0]}")
    return "; ".join(parts) or "values torch could not load"
