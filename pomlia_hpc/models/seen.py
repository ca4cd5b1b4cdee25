"""The images a registered model has trained on, as far as the registry records them.

A model's lineage names its training dataset version (``dataset_version_id``, whose train
split it learnt from), the extra images of similar datasets it trained on
(``extra_data``: the study's npz of fitted images, and ``extra_n``: how many of its first
rows), and the model whose weights it started from (``init_model_id``: everything that model
saw, and so on up its chain). A model is scored fairly only on images none of these hold:
``automl run --init-model`` refuses a model that saw the task's val or test images, and the
loop's gate leaves the images either model saw out of its comparison.

Pixels are compared by :func:`~pomlia_hpc.data.explicit_fingerprint.image_hashes` (a copy
of an image in another dataset counts as the same image). No torch here: the registry and
the stores only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pomlia_hpc.data.explicit_fingerprint import image_hashes
from pomlia_hpc.data.store import open_store
from pomlia_hpc.registry import DatasetVersion, Model, Registry

#: Deepest chain of init models followed (a cycle in hand-edited lineages must end).
MAX_CHAIN = 32


@dataclass
class Seen:
    """Sorted unique pixel hashes (uint64) a model trained on, and where they come from."""

    hashes: np.ndarray
    versions: list[int] = field(default_factory=list)
    """Dataset version ids whose train split is in ``hashes``."""
    models: list[str] = field(default_factory=list)
    """The model and the init models up its chain whose training data was read."""
    unknown: list[str] = field(default_factory=list)
    """Models of the chain whose training version is not recorded (nothing read for them)."""


def split_hashes(version: DatasetVersion, split: str) -> np.ndarray:
    """Pixel hashes (uint64, store order) of ``split`` of ``version``'s store, read a chunk
    at a time."""
    store = open_store(version.store_path)
    lo, hi = store.split_range(split)
    parts = [image_hashes(store.read_rows(a, b)) for a, b in store.chunk_ranges(lo, hi)]
    return np.concatenate(parts or [np.zeros(0, np.uint64)])


def _extra_hashes(lineage: dict[str, object]) -> np.ndarray:
    """Hashes of the first ``extra_n`` rows of the lineage's ``extra_data`` npz (empty when
    none, or the file is gone: a study folder removed since)."""
    path, n = lineage.get("extra_data"), lineage.get("extra_n")
    if not isinstance(path, str) or not isinstance(n, int) or n <= 0 or not Path(path).is_file():
        return np.zeros(0, np.uint64)
    with np.load(path) as z:
        images = np.asarray(z["images"][:n])
    return image_hashes(images) if len(images) else np.zeros(0, np.uint64)


def seen_images(
    registry: Registry, model: Model, *, skip_versions: tuple[int | None, ...] = ()
) -> Seen:
    """What ``model`` trained on (see the module docstring): the train split of its
    training version unless that version is one of ``skip_versions`` (whose train split the
    caller knows to be apart from what it scores), its extra images, and the same for each
    model up its ``init_model_id`` chain."""
    parts: list[np.ndarray] = []
    out = Seen(np.zeros(0, np.uint64))
    current: Model | None = model
    while current is not None and len(out.models) < MAX_CHAIN:
        lineage = dict(current.lineage or {})
        out.models.append(current.name)
        vid = lineage.get("dataset_version_id")
        if not isinstance(vid, int):
            out.unknown.append(current.name)
        elif vid not in skip_versions and vid not in out.versions:
            with registry.session() as s:
                row = s.get(DatasetVersion, vid)
            if row is not None:
                parts.append(split_hashes(row, "train"))
                out.versions.append(vid)
        parts.append(_extra_hashes(lineage))
        parent = lineage.get("init_model_id")
        with registry.session() as s:
            current = s.get(Model, parent) if isinstance(parent, int) else None
        if current is not None and current.name in out.models:
            current = None  # a cycle
    out.hashes = np.unique(np.concatenate(parts or [np.zeros(0, np.uint64)]))
    return out
