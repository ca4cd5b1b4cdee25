"""Where pretrained weights and extra images come from: three small plug-in functions.

The study driver calls them once (they need the registry) and hands the trial jobs plain files:

* :func:`encoder_weights` — the fingerprint autoencoder's ResNet-18 encoder
  (:func:`pomlia_hpc.fingerprint.train.load_encoder`), as a state dict for the classifier of the
  same stem (``resnet18`` for ``stem="small"``, ``resnet18_imagenet`` otherwise);
* :func:`model_weights` — a registered model's classifier weights;
* :func:`nearest_extra` — the N nearest images in other datasets
  (:func:`pomlia_hpc.fingerprint.nearest.nearest_images`), each labelled like its nearest
  training image in the encoder's latent space, resized to the task's image shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pomlia_hpc.automl.options import WeightSource
from pomlia_hpc.data.store import DatasetStore, open_store
from pomlia_hpc.errors import NotFoundError
from pomlia_hpc.files import write_npz
from pomlia_hpc.models.checkpoint import write_torch
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

if TYPE_CHECKING:
    from pomlia_hpc.fingerprint.nearest import NearestImage


def _save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    write_torch(path, state)


def encoder_weights(registry: Registry, encoder: str, in_channels: int, out: Path) -> WeightSource:
    """Save the encoder's backbone weights for an ``in_channels`` classifier to ``out``."""
    from pomlia_hpc.fingerprint.autoencoder import backbone_state_dict
    from pomlia_hpc.fingerprint.train import get_encoder, load_encoder

    row = get_encoder(registry, encoder)
    model, cfg = load_encoder(registry, row)
    _save_state(backbone_state_dict(model, in_channels=in_channels), out)
    arch = "resnet18" if getattr(cfg, "stem", "imagenet") == "small" else "resnet18_imagenet"
    return WeightSource(path=str(out), arch=arch, id=int(row.id), name=row.name)


def model_weights(registry: Registry, model: str, out: Path) -> WeightSource:
    """Save a registered model's weights to ``out``."""
    from pomlia_hpc.models.catalog import resolve_model
    from pomlia_hpc.models.checkpoint import load_classifier

    row = resolve_model(registry, model)
    loaded = load_classifier(row.path)
    _save_state(loaded.model.state_dict(), out)
    return WeightSource(path=str(out), arch=loaded.meta.arch, id=int(row.id), name=row.name)


def _fit_images(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resize (bilinear) and convert channels (gray ↔ RGB) to ``shape`` = (H, W, C)."""
    h, w, c = shape
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    if x.ndim == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2)
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x[:, :1].expand(-1, c, -1, -1)
    if tuple(x.shape[2:]) != (h, w):
        x = torch.nn.functional.interpolate(
            x, size=(h, w), mode="bilinear", antialias=True, align_corners=False
        )
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_rows_at(store: DatasetStore, rows: np.ndarray) -> np.ndarray:
    """Images of the given rows (any order, repeats allowed), in that order.

    Rows are read chunk by chunk in ascending order, one slice per chunk spanning the rows
    needed there, so that each compressed chunk is decompressed once (a one-row read costs a
    whole chunk's decompression)."""
    rows = np.asarray(rows, dtype=np.int64)
    wanted = np.unique(rows)
    out = np.empty((len(wanted), *store.image_shape), dtype=np.uint8)
    chunk = wanted // store.chunk_rows
    for c in np.unique(chunk):
        sel = np.nonzero(chunk == c)[0]
        lo, hi = int(wanted[sel[0]]), int(wanted[sel[-1]]) + 1
        block = store.read_rows(lo, hi).reshape(hi - lo, *store.image_shape)
        out[sel] = block[wanted[sel] - lo]
    return out[np.searchsorted(wanted, rows)]


def held_out_hashes(store: DatasetStore) -> np.ndarray:
    """Sorted pixel hashes (uint64) of the val and test images of ``store``, read a chunk at
    a time: the images no training row may copy."""
    from pomlia_hpc.data.explicit_fingerprint import image_hashes

    lo, hi = store.split_range("val")[0], store.split_range("test")[1]
    parts = [image_hashes(store.read_rows(a, b)) for a, b in store.chunk_ranges(lo, hi)]
    return np.unique(np.concatenate(parts or [np.zeros(0, np.uint64)]))


def _fitted_hits(
    registry: Registry, hits: list[NearestImage], shape: tuple[int, int, int]
) -> np.ndarray:
    """The images of ``hits``, in their order, fitted to ``shape`` (:func:`_fit_images`)."""
    from pomlia_hpc.data.store import open_version

    extra = np.empty((len(hits), *shape), dtype=np.uint8)
    for ref in dict.fromkeys(hit.ref for hit in hits):  # each source dataset once, in order
        at = np.array([i for i, hit in enumerate(hits) if hit.ref == ref])
        src = open_version(registry, ref)
        extra[at] = _fit_images(read_rows_at(src, np.array([hits[i].row for i in at])), shape)
    return extra


def _nearest_not_held_out(
    registry: Registry, workspace: Workspace, encoder: str, store: DatasetStore, n: int
) -> tuple[np.ndarray, int]:
    """Up to ``n`` fitted images of other datasets nearest to ``store``'s training split,
    nearest first, none a pixel copy of one of its val or test images, and how many such
    copies were passed over. A copy (the same images under another dataset name, another
    split) would put val/test images into the training rows: the val metric that picks
    configurations and the reported test metric would come out inflated. More neighbours are
    asked for until ``n`` are kept or the index has no more."""
    from pomlia_hpc.data.explicit_fingerprint import image_hashes
    from pomlia_hpc.fingerprint.nearest import nearest_images

    held, asked = held_out_hashes(store), n
    while True:
        hits = nearest_images(registry, workspace, encoder, store.ref, asked, split="train")
        if not hits:
            raise NotFoundError(
                f"no nearest images for '{store.ref}' in encoder '{encoder}''s index "
                "(is another dataset indexed?)"
            )
        extra = _fitted_hits(registry, hits, store.image_shape)
        keep = ~np.isin(image_hashes(extra), held)
        dropped = int((~keep).sum())
        if len(hits) - dropped >= n or len(hits) < asked:
            return extra[keep][:n], dropped
        asked = len(hits) + (n - (len(hits) - dropped))


def nearest_extra(
    registry: Registry,
    workspace: Workspace,
    encoder: str,
    dataset: str,
    n: int,
    out: Path,
    *,
    max_train: int = 20_000,
) -> Path:
    """Write ``out`` (npz: ``images``, ``labels``, ``requested``, ``held_out_copies``) with the
    ``n`` images of other datasets nearest to the training split of ``dataset``
    (:func:`pomlia_hpc.fingerprint.nearest.nearest_images` over ``encoder``'s FAISS index),
    fitted to the dataset's image shape. Fewer than ``n`` rows when the index holds fewer:
    ``requested`` keeps ``n``, so a caller can tell an exhausted pool from a smaller request.

    No extra image is a pixel copy of one of the dataset's val or test images (after fitting,
    as the network sees it): those are passed over, and counted in ``held_out_copies``.

    Their labels come from the task itself: each image takes the label of its nearest training
    image in the encoder's latent space (1-NN over up to ``max_train`` evenly spaced training
    images), so extra images enter the task's label space. Rows are nearest first."""
    from pomlia_hpc.data.store import find_version
    from pomlia_hpc.fingerprint.shards import embed_images
    from pomlia_hpc.fingerprint.train import load_encoder

    store = open_store(find_version(registry, dataset).store_path)
    extra, dropped = _nearest_not_held_out(registry, workspace, encoder, store, n)
    lo, hi = store.split_range("train")
    rows = np.unique(np.linspace(lo, hi - 1, min(max_train, hi - lo)).round().astype(int))
    train_x = read_rows_at(store, rows)
    train_y = store.read_labels(lo, hi)[rows - lo]
    model, _cfg = load_encoder(registry, encoder)
    cpu = torch.device("cpu")
    z_train = torch.from_numpy(embed_images(model, train_x, 256, cpu))
    z_extra = torch.from_numpy(embed_images(model, extra, 256, cpu))
    nearest = torch.cdist(z_extra, z_train).argmin(dim=1).numpy()
    labels = train_y[nearest].astype(np.int32)
    arrays = {"images": extra, "labels": labels, "requested": np.int64(n)}
    write_npz(out, {**arrays, "held_out_copies": np.int64(dropped)}, compress=False)
    return out
