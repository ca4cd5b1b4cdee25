"""Helpers shared by the fingerprint tests: small look-alike dataset versions in a workspace,
and an untrained registered encoder.

Stores are written by the data room's :class:`~pomlia_hpc.data.writer.StoreWriter` with a
chosen (small) chunk size, so that sharding and chunk alignment are exercised on tiny data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from pomlia_hpc.data.explicit_fingerprint import compute_fingerprint
from pomlia_hpc.data.medmnist_info import flag_info
from pomlia_hpc.data.store import FINGERPRINT_ATTR, META_ATTR, SPLITS, DatasetStore, store_path
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.data.versioning import record_version
from pomlia_hpc.data.writer import StoreWriter
from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    register_encoder,
    write_checkpoint,
)
from pomlia_hpc.registry import Encoder, Registry
from pomlia_hpc.workspace import Workspace


def make_dataset(
    workspace: Workspace,
    registry: Registry,
    name: str,
    flag: str = "bloodmnist",
    sizes: tuple[int, int, int] = (48, 8, 24),
    *,
    chunk_rows: int = 16,
    size: int = 28,
    seed: int = 0,
) -> str:
    """Write a look-alike of ``flag`` with (train, val, test) sizes as dataset ``name``, with
    the data room's own writer, explicit fingerprint and registry record but ``chunk_rows``
    images per chunk (ingest picks ~8 MB chunks: one chunk for a tiny set); returns its
    ``name@version`` ref."""
    info = flag_info(flag)
    xs, ys = [], []
    for split, n in zip(SPLITS, sizes, strict=True):
        x, y = make_split(flag, n, seed=seed, size=size, split=split)
        xs.append(x if x.ndim == 4 else x[..., None])
        ys.append(y.astype(np.int32))
    images, labels = np.concatenate(xs), np.concatenate(ys)
    split = np.repeat(np.arange(3, dtype=np.int8), sizes)
    version = hashlib.sha256(images.tobytes()).hexdigest()[:12]
    path = store_path(workspace, name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, c = images.shape[1:]
    writer = StoreWriter(path, len(images), (h, w, c), labels.shape[1], chunk_rows=chunk_rows)
    writer.put(0, images)
    writer.finish(labels, split)
    bounds = np.cumsum((0, *sizes))
    meta = {
        "name": name,
        "version": version,
        "task_type": info.task_type,
        "class_names": list(info.class_names),
        "n_classes": info.n_classes,
        "label_width": info.label_width,
        "channels": int(c),
        "height": int(h),
        "width": int(w),
        "size": int(h),
        "n_images": len(images),
        "chunk_rows": chunk_rows,
        "splits": {s: [int(bounds[i]), int(bounds[i + 1])] for i, s in enumerate(SPLITS)},
    }
    writer.group.attrs[META_ATTR] = meta
    fingerprint = compute_fingerprint(DatasetStore(path), workers=1)
    writer.group.attrs[FINGERPRINT_ATTR] = fingerprint
    record_version(registry, name, version, path, len(images), meta, fingerprint)
    return f"{name}@{version}"


def make_encoder(
    workspace: Workspace, registry: Registry, name: str = "enc", latent_dim: int = 4, seed: int = 0
) -> Encoder:
    """Register an untrained (seeded random) encoder: enough for extraction/index tests, which
    do not depend on what the weights learned."""
    torch.manual_seed(seed)
    config = TrainConfig(encoder=EncoderConfig(latent_dim=latent_dim), epochs=1)
    model = Autoencoder(config.encoder).eval()
    path = encoder_dir(workspace, name) / "encoder.pt"
    write_checkpoint(path, model, config, [])
    return register_encoder(registry, name, config, [], [], path)
