"""The monitoring reference of a bundle: what the server would have logged for the model's
validation images, kept beside the bundle as ``monitor-reference.npz``.

The monitor compares a window of the prediction log with this reference, so it must be computed
with exactly the server's functions: the same fingerprint function and rounding
(:func:`pomlia_hpc.serve.fingerprint.bundle_fingerprint`, :func:`logged_vectors`), the same
pixel scaling (uint8 / 255), normalisation and runtime (onnxruntime on CPU). It also holds the
true labels and the model's predictions on them, so the monitor knows the validation accuracy,
the predicted-label distribution and the confidence distribution to expect.

Written atomically (temporary name, then rename) into the bundle directory; the bundle's card
is not changed (its version is a hash of the weights, and the reference depends on data too).
"""

from __future__ import annotations

import json
import re
import shlex
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.config import Record, validate_model
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.files import write_npz
from pomlia_hpc.registry import DatasetVersion, Model, Registry, Task
from pomlia_hpc.serve.exported import ExportedBundle
from pomlia_hpc.serve.fingerprint import bundle_fingerprint, logged_vectors
from pomlia_hpc.serve.runtime import (
    LOGGED_DECIMALS,
    load_runtime,
    normalize_,
    probabilities,
    to_nchw,
)
from pomlia_hpc.vocab import MULTI_LABEL_THRESHOLD

REFERENCE_FILE = "monitor-reference.npz"
FORMAT = "pomlia-monitor-reference/1"
#: Validation images used at most (a seeded random subset beyond it): 5,000 vectors estimate
#: the reference distribution far more tightly than any monitoring window of a few hundred.
MAX_IMAGES = 5000
BATCH = 256
#: A reference of fewer images is written with a warning: the drift tests compare a window of
#: a few hundred with it, and below about a hundred the reference's own sampling noise (and
#: its rough label and confidence shares) weighs as much as the window's.
FEW_IMAGES = 100


class ReferenceMeta(Record):
    """The ``meta`` entry of a reference file (JSON inside the npz, beside the arrays): the
    reference's :data:`META_FIELDS`, its format tag, size and accuracy."""

    format: str
    model: str
    model_version: str
    fingerprint_kind: str
    task_type: str
    label_names: list[str]
    source: str
    created_at: str
    n: int
    accuracy: float  # NaN when undefined


#: The fields of :class:`Reference` that its file keeps in ``meta``: those of
#: :class:`ReferenceMeta` but the ones derived on writing.
META_FIELDS = tuple(k for k in ReferenceMeta.model_fields if k not in {"format", "n", "accuracy"})


@dataclass(frozen=True)
class Reference:
    """Reference vectors and outputs of one model version.

    ``fingerprints`` float32 (n, d); ``labels`` true label index (n,) (multi-label: (n, L) 0/1);
    ``pred_index`` predicted index (n,) (multi-label: (n, L) 0/1); ``confidence`` the top
    probability (n,) (multi-label: the mean distance of each probability from 0.5, times 2);
    ``probabilities`` the model's output float32 (n, C), what the server logs (rounded in
    float64 before the cast, so ``np.round(p.astype(np.float64), 6)`` is the logged value;
    None in a reference written before it was kept: the monitor cannot test AUC then).
    """

    model: str
    model_version: str
    fingerprint_kind: str
    task_type: str
    label_names: list[str]
    source: str
    fingerprints: np.ndarray
    labels: np.ndarray
    pred_index: np.ndarray
    confidence: np.ndarray
    created_at: str
    path: Path | None = None
    probabilities: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.fingerprints)

    @property
    def split(self) -> str | None:
        """The data split the reference images came from (``val``, ``test``, ...), as its
        ``source`` names it (``name@version [split]``); None when it names none."""
        m = re.search(r" \[([^\]]+)\]$", self.source)
        return m.group(1) if m else None

    @property
    def image_scores(self) -> np.ndarray:
        """Per-image accuracy, float64 (n,): 1.0 or 0.0 (right or wrong); for multi-label
        the share of the image's labels predicted right (MedMNIST's label-wise ACC is their
        mean)."""
        if self.task_type == "multi-label":
            right = self.pred_index.reshape(self.n, -1) == self.labels.reshape(self.n, -1)
            return np.asarray(right.mean(axis=1), dtype=np.float64)
        return np.asarray(self.pred_index == self.labels, dtype=np.float64)

    @property
    def accuracy(self) -> float:
        """Accuracy of the model on the reference images, as the task's ACC: for multi-label
        label-wise (the mean over images and labels), not exact match."""
        return float(np.mean(self.image_scores)) if self.n else float("nan")


def confidence_of(probs: np.ndarray, task_type: str) -> np.ndarray:
    """Per-image confidence: top probability, or for multi-label 2 * mean |p - 0.5|."""
    if task_type == "multi-label":
        return np.asarray(2.0 * np.abs(probs - 0.5).mean(axis=1), dtype=np.float32)
    return np.asarray(probs.max(axis=1), dtype=np.float32)


def compute_reference(
    bundle: ExportedBundle,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    threads: int | None = None,
) -> Reference:
    """Reference of ``bundle`` on uint8 NHWC ``images`` with true ``labels`` (n, L) or (n,).

    Raises :class:`InputError` when the images do not fit the model (size, channels)."""
    if images.ndim != 4 or images.shape[1:] != (
        bundle.image_size,
        bundle.image_size,
        bundle.channels,
    ):
        raise InputError(
            f"reference data from {source}: images of shape {tuple(images.shape[1:])}, expected "
            f"({bundle.image_size}, {bundle.image_size}, {bundle.channels}) for model "
            f"'{bundle.name}'"
        )
    if len(images) == 0:
        raise InputError(f"reference data from {source}: the split holds no images")
    if images.dtype != np.uint8:
        raise InputError(f"reference data from {source}: expected uint8 pixels, got {images.dtype}")
    fp_fn, kind = bundle_fingerprint(bundle.encoder_file)
    runtime = load_runtime(bundle, "onnx", threads)
    mean = np.asarray(bundle.mean, dtype=np.float32)
    std = np.asarray(bundle.std, dtype=np.float32)
    fps, probs, bad = [], [], 0
    for lo in range(0, len(images), BATCH):
        # Exactly the server's path: uint8 / 255 (decode), NCHW, fingerprint, normalise, run.
        x = to_nchw(images[lo : lo + BATCH].astype(np.float32) / 255.0)
        fps.append(logged_vectors(fp_fn, x))
        logits = runtime.logits(normalize_(x, mean, std))
        bad += int((~np.isfinite(logits).all(axis=1)).sum())
        if not bad:  # else refused below: no softmax of infinities (a NumPy warning)
            probs.append(probabilities(logits, bundle.task_type))  # float64, as served
    if bad:
        # The server refuses such an image (a 500, no class): a reference that counted the
        # argmax of NaN (class 0) as the model's answer would compare the log with answers
        # the model never gives.
        raise InputError(
            f"model '{bundle.name}' produced non-finite outputs (NaN or infinity) for {bad} of "
            f"the {len(images)} reference images from {source}: expected finite outputs (a "
            "diverged or overflowing model; retrain it); no monitoring reference was written"
        )
    p64 = np.concatenate(probs)
    p = p64.astype(np.float32)
    y = np.asarray(labels)
    if bundle.task_type == "multi-label":
        pred = (p > MULTI_LABEL_THRESHOLD).astype(np.int8)
        y = y.reshape(len(y), -1).astype(np.int8)
    else:
        pred = p.argmax(axis=1).astype(np.int32)
        y = y.reshape(len(y), -1)[:, 0].astype(np.int32)
    return Reference(
        model=bundle.name,
        model_version=bundle.version,
        fingerprint_kind=kind,
        task_type=bundle.task_type,
        label_names=bundle.labels,
        source=source,
        fingerprints=np.concatenate(fps),
        labels=y,
        pred_index=pred,
        confidence=confidence_of(p, bundle.task_type),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        # Rounded as the server rounds (float64): float32 rounding gave other 6-decimal values.
        probabilities=np.round(p64, LOGGED_DECIMALS),
    )


def write_reference(bundle: ExportedBundle, ref: Reference) -> Path:
    """Write ``ref`` to ``<bundle>/monitor-reference.npz`` atomically; returns the path."""
    shared = {k: getattr(ref, k) for k in META_FIELDS}
    meta = ReferenceMeta(format=FORMAT, n=ref.n, accuracy=ref.accuracy, **shared).to_dict()
    path = bundle.root / REFERENCE_FILE
    arrays = {
        "meta": np.asarray(json.dumps(meta)),
        "fingerprints": ref.fingerprints,
        "labels": ref.labels,
        "pred_index": ref.pred_index,
        "confidence": ref.confidence,
    }
    if ref.probabilities is not None:
        # Optional, so a reference written before it still reads (format unchanged).
        arrays["probabilities"] = np.asarray(ref.probabilities, np.float32)
    return write_npz(path, arrays)


def read_reference(path: Path) -> Reference:
    """Read a reference file; a missing or malformed file is a clear error naming it."""
    if not path.is_file():
        raise NotFoundError(f"monitoring reference {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            raw_meta = json.loads(str(z["meta"]))
            arrays = {k: np.asarray(z[k]) for k in ("fingerprints", "labels", "pred_index")}
            conf = np.asarray(z["confidence"])
            probs = np.asarray(z["probabilities"]) if "probabilities" in z.files else None
    except KeyError as exc:
        raise InputError(
            f"monitoring reference {path} is damaged: it has no array {exc}; expected "
            "meta, fingerprints, labels, pred_index and confidence"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # numpy reads a file that is not an npz archive as a pickle and, refused one, talks
        # of loading it "unsafely": the user needs to hear that the file is damaged.
        why = "not an npz archive" if "pickle" in str(exc) else str(exc).splitlines()[0]
        raise InputError(f"monitoring reference {path} is damaged ({why})") from None
    if not isinstance(raw_meta, dict) or raw_meta.get("format") != FORMAT:
        raise InputError(f"monitoring reference {path}: field 'format' should be '{FORMAT}'")
    # Strict from the parsed dict: the accuracy may be NaN, which JSON parsers refuse.
    meta = validate_model(
        ReferenceMeta, raw_meta, f"monitoring reference {path}", error=InputError, strict=True
    )
    n = len(arrays["fingerprints"])
    if probs is not None and (probs.ndim != 2 or len(probs) != n):
        raise InputError(
            f"monitoring reference {path} is damaged: its probabilities are of shape "
            f"{probs.shape}, expected ({n}, outputs): one row per reference image"
        )
    return Reference(
        **meta.model_dump(include=set(META_FIELDS)),
        fingerprints=arrays["fingerprints"].astype(np.float32),
        labels=arrays["labels"],
        pred_index=arrays["pred_index"],
        confidence=conf.astype(np.float32),
        path=path,
        probabilities=probs.astype(np.float32) if probs is not None else None,
    )


def few_images_warning(path: Path | None, model: str) -> str | None:
    """The warning for a reference at ``path`` of fewer than :data:`FEW_IMAGES` images, or
    None (no file, or enough images). Every command that writes a reference (`monitor
    reference`, `model export`, `deploy`, the pipeline) says it with these words."""
    if path is None or not path.is_file():
        return None
    try:
        ref = read_reference(path)
    except InputError:
        return None  # an unreadable reference is the monitor's to refuse, with its fix
    if ref.n >= FEW_IMAGES:
        return None
    return (
        f"the monitoring reference of {model} holds only {ref.n} image(s) ({ref.source}); "
        f"drift tests against fewer than {FEW_IMAGES} are weak: expected a larger split or "
        f"data set (pomlia monitor reference {shlex.quote(model)} --split SPLIT or --data DATASET)"
    )


def subsample(n: int, limit: int = MAX_IMAGES, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all ``n`` rows, or a seeded random ``limit`` of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def model_dataset_store(registry: Registry, model: Model) -> str | None:
    """Store path of the dataset version ``model`` was trained on: its lineage's
    ``dataset_version_id``, else its task's dataset version; None when neither is known."""
    row = _model_dataset_row(registry, model)
    return row[0] if row is not None else None


def model_dataset_meta(registry: Registry, model: Model) -> dict[str, Any] | None:
    """The registry ``meta`` of the dataset version ``model`` was trained on (found as
    :func:`model_dataset_store` finds it); None when it is not known."""
    row = _model_dataset_row(registry, model)
    return row[1] if row is not None else None


def _model_dataset_row(registry: Registry, model: Model) -> tuple[str, dict[str, Any]] | None:
    with registry.session() as s:
        dv_id = (model.lineage or {}).get("dataset_version_id")
        if not isinstance(dv_id, int) and model.task_id is not None:
            task = s.get(Task, model.task_id)
            dv_id = task.dataset_version_id if task is not None else None
        if not isinstance(dv_id, int):
            return None
        row = s.get(DatasetVersion, dv_id)
        return (row.store_path, dict(row.meta or {})) if row is not None else None


def _named(names: list[str]) -> bool:
    """Whether ``names`` are real class names, not the indices given when none were known."""
    return names != [str(i) for i in range(len(names))]


def check_reference_classes(bundle: ExportedBundle, meta: dict[str, Any], source: str) -> None:
    """One :class:`InputError` when the data set ``source`` (its store ``meta``) has another
    class set than ``bundle``'s model: another count, or other names where both have real
    names. Its labels would be read as the model's classes, so accuracy and label shares
    would be compared with nonsense (a 2-class set passed for an 8-class model did)."""
    classes = [str(c) for c in meta.get("class_names", [])]
    labels = bundle.labels
    if len(classes) != len(labels):
        raise InputError(
            f"reference data {source} has {len(classes)} classes but model '{bundle.name}' "
            f"has {len(labels)} ({', '.join(labels[:10])}): expected a data set with the "
            "model's classes; the monitoring reference is unchanged"
        )
    if _named(classes) and _named(labels) and classes != labels:
        raise InputError(
            f"reference data {source} has classes {classes[:10]} but model '{bundle.name}' "
            f"has labels {labels[:10]}: expected the same names in the same order; the "
            "monitoring reference is unchanged"
        )


def reference_for_model(
    registry: Registry,
    bundle: ExportedBundle,
    model: Model,
    *,
    data: str | None = None,
    split: str = "val",
    limit: int = MAX_IMAGES,
) -> Path | None:
    """Compute and write the reference of ``bundle`` from the ``split`` of dataset ``data``
    (``name[@version]``; default: the dataset the model was trained on; one given must have
    the model's classes, :func:`check_reference_classes`). Returns the file, or None when no
    dataset is given and none is recorded for the model."""
    from pomlia_hpc.data.store import open_store, open_version

    if data is not None:
        store = open_version(registry, data)
        # Only a data set chosen here: the model's own training data defines its classes.
        check_reference_classes(bundle, store.meta, store.ref)
    else:
        path = model_dataset_store(registry, model)
        if path is None:
            return None
        store = open_store(path)
    lo, hi = store.split_range(split)
    if hi <= lo:
        raise InputError(
            f"dataset {store.ref} has no '{split}' images to build the monitoring reference "
            "from; expected a split with images (choose another with --split)"
        )
    rows = lo + subsample(hi - lo, limit)
    images = np.asarray(store.images.get_orthogonal_selection((rows,)))
    labels = np.asarray(store.labels.get_orthogonal_selection((rows,)))
    ref = compute_reference(bundle, images, labels, source=f"{store.ref} [{split}]")
    return write_reference(bundle, ref)
