"""The images a registered model has trained on, as far as the registry records them.

A model's lineage names its training dataset version (``dataset_version_id``, whose train
split it learnt from), the extra images of similar datasets it trained on
(``extra_data``: the study's npz of fitted images, and ``extra_n``: how many of its first
rows), the fingerprint encoder its weights started from (``encoder_id`` with ``init`` =
``encoder`` in its ``config``: every image that encoder's self-supervised training read),
and the model whose weights it started from (``init_model_id``: everything that model
saw, and so on up its chain). A model is scored fairly only on images none of these hold:
``automl run --init-model`` (and ``--encoder``) refuses weights that saw the task's val or
test images, and the loop's gate leaves the images either model saw out of its comparison.

What the registry cannot tell is said, never taken for "nothing seen": a model registered by
hand (no training version, or no training ``config``: a checkpoint written before trials
recorded what they learn from in it), one registered before a lineage field existed (its ``config``
says it started from a model or an encoder, or took extra images, that its lineage does not
name), one whose init model, encoder or training version is no longer registered, or one
that started from an encoder recording no training data sets, and the models of an init
chain longer than :data:`MAX_CHAIN` past it, are *lineage unknown*
(:attr:`Seen.unknown`, one reason each; an encoder's own gaps read ``encoder E: ...``); a
model whose extra images' file is gone is refused (:class:`~pomlia_hpc.errors.InputError`):
it did train on them, and which they were cannot be told.

Pixels are compared by :func:`~pomlia_hpc.data.explicit_fingerprint.image_hashes` (a copy
of an image in another dataset counts as the same image). No torch here: the registry and
the stores only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.data.explicit_fingerprint import image_hashes
from pomlia_hpc.data.store import open_store
from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import DatasetVersion, Encoder, Model, Registry

#: Deepest chain of init models followed (a cycle in hand-edited lineages must end); the
#: models past it are a lineage gap.
MAX_CHAIN = 32

_NONE = np.zeros(0, np.uint64)


@dataclass
class Seen:
    """Sorted unique pixel hashes (uint64) a model trained on, and where they come from."""

    hashes: np.ndarray
    versions: list[int] = field(default_factory=list)
    """Dataset version ids whose images (a model's train split, an encoder's rows) are in
    ``hashes``."""
    models: list[str] = field(default_factory=list)
    """The model and the init models up its chain whose training data was read."""
    unknown: list[str] = field(default_factory=list)
    """Why part of what the chain saw is not known, one line per gap (``model M: ...``):
    nothing was read for it, so ``hashes`` may be short."""
    encoders: list[str] = field(default_factory=list)
    """The encoders whose training images are in ``hashes`` (a model started from one)."""


def split_hashes(version: DatasetVersion, split: str) -> np.ndarray:
    """Pixel hashes (uint64, store order) of ``split`` of ``version``'s store, read a chunk
    at a time."""
    store = open_store(version.store_path)
    return _range_hashes(version, *store.split_range(split))


def _range_hashes(version: DatasetVersion, lo: int, hi: int) -> np.ndarray:
    """Pixel hashes (uint64, store order) of rows [lo, hi) of ``version``'s store."""
    store = open_store(version.store_path)
    parts = [image_hashes(store.read_rows(a, b)) for a, b in store.chunk_ranges(lo, hi)]
    return np.concatenate(parts or [_NONE])


def encoder_rows(encoder: Encoder, version: DatasetVersion) -> tuple[int, int]:
    """Rows [lo, hi) of ``version``'s store that ``encoder``'s training read: its ``split``
    (``all``: every row), the first ``max_images_per_dataset`` of them when set. The rows it
    held out for early stopping are counted too: they picked its weights."""
    config = dict(encoder.config or {})
    cap = config.get("max_images_per_dataset")
    # The trainer's own rule (fingerprint.rows.train_range), which this room cannot import.
    store = open_store(version.store_path)
    return store.first_rows(
        str(config.get("split") or "train"), cap if isinstance(cap, int) else None
    )


def encoder_seen(
    registry: Registry, encoder: Encoder, *, skip_versions: tuple[int | None, ...] = ()
) -> Seen:
    """The images ``encoder``'s self-supervised training read (:func:`encoder_rows` of each
    of its dataset versions), less the train split of ``skip_versions`` (see
    :func:`seen_images`); ``unknown`` names its versions no longer registered, or says that
    it records none."""
    out = Seen(_NONE, encoders=[encoder.name])
    parts: list[np.ndarray] = []
    config = dict(encoder.config or {})
    if not encoder.dataset_version_ids:
        # Every encoder `fingerprint train` registers names what it read: none is a gap (a
        # row written by hand or by a tool that kept no record), not "it read nothing".
        out.unknown.append(f"encoder {encoder.name}: no training data sets recorded")
    for vid in encoder.dataset_version_ids or []:
        with registry.session() as s:
            row = s.get(DatasetVersion, int(vid))
        if row is None:
            out.unknown.append(f"encoder {encoder.name}: its dataset version id {vid} is gone")
        elif not (vid in skip_versions and (config.get("split") or "train") == "train"):
            parts.append(_range_hashes(row, *encoder_rows(encoder, row)))
            out.versions.append(int(vid))
    out.hashes = np.unique(np.concatenate(parts or [_NONE]))
    return out


def _extra_hashes(name: str, lineage: dict[str, Any]) -> np.ndarray:
    """Hashes of the first ``extra_n`` rows of the lineage's ``extra_data`` npz (empty when
    none). Refused when the file is gone: the model trained on those images, and which they
    were cannot be told (the gate would score it on them, an init check would pass it)."""
    path, n = lineage.get("extra_data"), lineage.get("extra_n")
    if not isinstance(path, str) or not isinstance(n, int) or n <= 0:
        return _NONE
    if not Path(path).is_file():
        raise InputError(
            f"model {name} trained on {n} extra image(s) from {path}, which no longer exists "
            "(its study folder was removed or moved): which images it saw cannot be told, so "
            "whether it saw this task's val/test images cannot be checked; expected that file "
            "as its study wrote it: restore it, or use a model whose lineage is whole"
        )
    with np.load(path) as z:
        images = np.asarray(z["images"][:n])
    return image_hashes(images) if len(images) else _NONE


def _config(lineage: dict[str, Any]) -> dict[str, Any]:
    """The training configuration a lineage records (``config``; empty when none)."""
    config = lineage.get("config")
    return dict(config) if isinstance(config, dict) else {}


def lineage_gaps(registry: Registry, model: Model) -> list[str]:
    """Why ``model``'s own lineage (not its init chain) cannot say all it trained on: no
    training version (registered by hand), a ``config`` that names a start or extra images
    the lineage does not (registered before those fields), a referenced row since removed."""
    lineage = dict(model.lineage or {})
    config = _config(lineage)
    gaps: list[str] = []
    vid = lineage.get("dataset_version_id")
    with registry.session() as s:
        if not isinstance(vid, int):
            gaps.append("no training dataset version recorded (registered by hand?)")
        elif s.get(DatasetVersion, vid) is None:
            gaps.append(f"its training dataset version id {vid} is no longer registered")
        parent = lineage.get("init_model_id")
        if config.get("init") == "model" and not isinstance(parent, int):
            gaps.append("started from a model its lineage does not name (registered before it did)")
        elif isinstance(parent, int) and s.get(Model, parent) is None:
            gaps.append(f"its init model id {parent} is no longer registered")
        enc = lineage.get("encoder_id")
        if config.get("init") == "encoder" and not isinstance(enc, int):
            gaps.append("started from an encoder its lineage does not name")
        elif config.get("init") == "encoder" and s.get(Encoder, enc) is None:
            gaps.append(f"its init encoder id {enc} is no longer registered")
    if isinstance(vid, int) and "config" not in lineage:
        # A checkpoint registered by hand that recorded none (written before trials did):
        # whether it started from other weights or took extra images cannot be told.
        gaps.append("no training configuration recorded (registered by hand?)")
    if int(config.get("extra_n") or 0) > 0 and "extra_data" not in lineage:
        gaps.append("trained on extra images its lineage does not name (registered before it did)")
    return [f"model {model.name}: {g}" for g in gaps]


def _encoder_part(
    registry: Registry, lineage: dict[str, Any], skip_versions: tuple[int | None, ...]
) -> Seen | None:
    """What the encoder a model started from (``init=encoder``) saw, or None if it did not."""
    config = _config(lineage)
    enc_id = lineage.get("encoder_id")
    if config.get("init") != "encoder" or not isinstance(enc_id, int):
        return None
    with registry.session() as s:
        enc = s.get(Encoder, enc_id)
    return encoder_seen(registry, enc, skip_versions=skip_versions) if enc else None


def seen_images(
    registry: Registry, model: Model, *, skip_versions: tuple[int | None, ...] = ()
) -> Seen:
    """What ``model`` trained on (see the module docstring): the train split of its
    training version unless that version is one of ``skip_versions`` (whose train split the
    caller knows to be apart from what it scores), its extra images, the images of the
    encoder it started from, and the same for each model up its ``init_model_id`` chain.
    :class:`InputError` when a model's extra images' file is gone."""
    parts: list[np.ndarray] = []
    out = Seen(_NONE)
    current: Model | None = model
    while current is not None and len(out.models) < MAX_CHAIN:
        lineage = dict(current.lineage or {})
        out.models.append(current.name)
        out.unknown += lineage_gaps(registry, current)
        vid = lineage.get("dataset_version_id")
        if isinstance(vid, int) and vid not in skip_versions and vid not in out.versions:
            with registry.session() as s:
                row = s.get(DatasetVersion, vid)
            if row is not None:
                parts.append(split_hashes(row, "train"))
                out.versions.append(vid)
        parts.append(_extra_hashes(current.name, lineage))
        enc = _encoder_part(registry, lineage, skip_versions)
        if enc is not None:
            parts.append(enc.hashes)
            out.encoders += enc.encoders
            out.unknown += enc.unknown
            out.versions += [v for v in enc.versions if v not in out.versions]
        parent = lineage.get("init_model_id")
        with registry.session() as s:
            current = s.get(Model, parent) if isinstance(parent, int) else None
        if current is not None and current.name in out.models:
            current = None  # a cycle
    if current is not None:
        # The chain goes on (a loop that fine-tunes each champion from the last adds one
        # model per promotion): what the models past the limit saw was not read.
        out.unknown.append(
            f"model {out.models[-1]}: its init model {current.name} and the models before it "
            f"were not read (only {MAX_CHAIN} models of a chain are followed)"
        )
    out.hashes = np.unique(np.concatenate(parts or [_NONE]))
    return out
