"""Helpers shared by the fingerprint tests: small look-alike dataset versions in a workspace.

Stores are written in the layout documented in :mod:`pomlia_hpc.data.store` and registered as
Dataset/DatasetVersion rows, with a chosen (small) chunk size so that sharding and chunk
alignment are exercised on tiny data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from pomlia_hpc.data.store import store_path
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig
from pomlia_hpc.fingerprint.train import (
    TrainConfig,
    encoder_dir,
    register_encoder,
    write_checkpoint,
)
from pomlia_hpc.registry import Dataset, DatasetVersion, Encoder, Registry
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
    """Write a look-alike of ``flag`` with (train, val, test) sizes as dataset ``name``;
    returns its ``name@version`` ref."""
    xs, ys = [], []
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        x, y = make_split(flag, n, seed=seed, size=size, split=split)
        xs.append(x if x.ndim == 4 else x[..., None])
        ys.append(y.astype(np.int32))
    images, labels = np.concatenate(xs), np.concatenate(ys)
    split = np.repeat(np.arange(3, dtype=np.int8), sizes)
    version = hashlib.sha256(images.tobytes()).hexdigest()[:12]
    path = store_path(workspace, name, version)
    g = zarr.open_group(str(path), mode="w")
    codec = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=1)
    arr = g.create_array(
        "images",
        shape=images.shape,
        chunks=(chunk_rows, *images.shape[1:]),
        dtype="uint8",
        compressors=codec,
    )
    arr[:] = images
    g.create_array("labels", shape=labels.shape, dtype="int32")[:] = labels
    g.create_array("split", shape=split.shape, dtype="int8")[:] = split
    bounds = np.cumsum((0, *sizes))
    splits = {
        s: [int(bounds[i]), int(bounds[i + 1])] for i, s in enumerate(("train", "val", "test"))
    }
    h, w, c = images.shape[1:]
    meta = {
        "name": name,
        "version": version,
        "task_type": "multi-class",
        "channels": int(c),
        "height": int(h),
        "width": int(w),
        "size": int(h),
        "n_images": len(images),
        "chunk_rows": chunk_rows,
        "splits": splits,
        "class_names": [],
        "n_classes": 0,
    }
    mean = float(images.mean())
    fingerprint = {
        "n_images": len(images),
        "channels": int(c),
        "size": int(h),
        "intensity": {"mean": mean},
    }
    g.attrs["pomlia"] = meta
    g.attrs["fingerprint"] = fingerprint
    with registry.session() as s:
        ds = Dataset(name=name)
        s.add(ds)
        s.flush()
        s.add(
            DatasetVersion(
                dataset_id=ds.id,
                version=version,
                store_path=str(path),
                n_images=len(images),
                meta=meta,
                fingerprint=fingerprint,
            )
        )
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
