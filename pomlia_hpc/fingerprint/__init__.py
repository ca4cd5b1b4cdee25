"""Fingerprints: find the known datasets and images most similar to a new one.

Stages (each a library call; the ``pomlia`` CLI only wraps them)::

    train_encoder(registry, workspace, "ae16", ["pathmnist", "bloodmnist"], TrainConfig(...))
        ResNet-18 encoder trained as one resumable cluster job with DeepSpeed under one of the
        objectives of ``objectives`` (mse = the paper's autoencoder, style, contrastive), with
        a held-out part per dataset for early stopping and a cosine LR schedule; registers an
        Encoder row (config incl. objective, dataset versions, loss per epoch, checkpoint)
    extract.extract(registry, workspace, "ae16", ["pathmnist", "newset@3fa2c1"], shards=8)
        embeddings as an array job of chunk-aligned shards -> one FingerprintSet per version,
        with summary statistics stored beside it (``summary``) for fast distances
    build_index(registry, workspace, "ae16", factory=None, metric="l2")
        FAISS index over all embeddings of the encoder (new datasets are added, not rebuilt)
    similar_datasets(registry, "ae16", "newset", k=5, distance="combined")
    nearest_images(registry, workspace, "ae16", "newset", n=1000)
    plots.plot_encoder_latent(registry, "ae16", None, out_dir)  # the paper's Figures 5, 6

For other rooms (AutoML, strategy):

* ``load_encoder(registry, encoder_id_or_name) -> (Autoencoder, EncoderConfig)`` — the trained
  model in eval mode; ``backbone_state_dict(model, in_channels)`` gives its ResNet-18 weights
  without the latent layer, to initialise a classifier (``nets.build_classifier`` with
  ``"resnet18_imagenet"``, or ``"resnet18"`` for an encoder trained with ``stem="small"``).
* ``nearest_images(registry, workspace, encoder, dataset_ref, n)`` → ``[NearestImage(ref,
  split, row, distance)]``: images of *other* datasets nearest to the dataset, nearest first
  (read one with ``open_version(registry, hit.ref).read_rows(hit.row, hit.row + 1)``).
* ``similar_datasets(registry, encoder, dataset_ref, k, distance)`` → ``[SimilarDataset(ref,
  distance, n_vectors, components)]`` nearest first; ``distance`` in
  :data:`ranking.DISTANCE_NAMES` (``combined`` = latent + explicit fingerprint, the default;
  ``trimmed``; ``mean`` = the paper's mean-embedding distance; ``frechet``, ``mmd``, ``kl``,
  ``marginal``, ``explicit``), computed from the stored summaries.
* ``dataset_fingerprint(registry, encoder, dataset_ref)`` → mean embedding + explicit
  fingerprint JSON; ``embedding_sample(...)`` → an (n, d) sample of a dataset's embeddings.

Modules: ``autoencoder`` (model, input conversion), ``objectives`` (pluggable losses: batch →
loss), ``augment`` (acquisition-like views), ``loader`` (chunk-wise shuffled batches from
Zarr), ``validation`` (hold-out, early stopping, LR schedule, loss curves), ``train``
(submission, registry), ``trainconfig`` (its settings), ``trainjob`` (the job: ranks, epochs),
``trainstate`` (``latest.json``, resume), ``extract`` (shards as an array job), ``layout`` (the
embeddings group and its shard plan), ``markers`` (``.done`` files and the weights digest,
without torch), ``usable`` (which sets a reader may use), ``planning`` (what an extraction will
run), ``summary`` (per-version statistics), ``index`` (FAISS), ``distances`` (sample
distances), ``ranking`` (distances over summaries), ``candidates`` (which sets a reader compares),
``similar`` (similar datasets), ``nearest`` (nearest images), ``sample`` (embedding samples),
``plots``, ``io`` (atomic
files), ``refresh`` (retraining on new data), ``current`` (the default encoder, without torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pomlia_hpc.fingerprint.autoencoder import Autoencoder, EncoderConfig, backbone_state_dict
    from pomlia_hpc.fingerprint.distances import DISTANCES
    from pomlia_hpc.fingerprint.index import build_index, load_index
    from pomlia_hpc.fingerprint.nearest import NearestImage, nearest_images
    from pomlia_hpc.fingerprint.sample import embedding_sample
    from pomlia_hpc.fingerprint.similar import SimilarDataset, dataset_fingerprint, similar_datasets
    from pomlia_hpc.fingerprint.train import TrainConfig, load_encoder, train_encoder

# Names resolved on first use (PEP 562): importing a torch-free module of this package (the
# distances from stored summaries behind `pomlia similar`, say) does not load torch and
# DeepSpeed, which the training and extraction modules need (several seconds). `extract` is
# not among them: once its submodule `extract` is imported, the package attribute of that name
# is the module, and a lazy name cannot win over it; import it from `fingerprint.extract`.
_HOMES: dict[str, str] = {
    "Autoencoder": "autoencoder",
    "EncoderConfig": "autoencoder",
    "backbone_state_dict": "autoencoder",
    "DISTANCES": "distances",
    "build_index": "index",
    "load_index": "index",
    "NearestImage": "nearest",
    "SimilarDataset": "similar",
    "dataset_fingerprint": "similar",
    "embedding_sample": "sample",
    "nearest_images": "nearest",
    "similar_datasets": "similar",
    "TrainConfig": "train",
    "load_encoder": "train",
    "train_encoder": "train",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "DISTANCES",
    "Autoencoder",
    "EncoderConfig",
    "NearestImage",
    "SimilarDataset",
    "TrainConfig",
    "backbone_state_dict",
    "build_index",
    "dataset_fingerprint",
    "embedding_sample",
    "load_encoder",
    "load_index",
    "nearest_images",
    "similar_datasets",
    "train_encoder",
]
