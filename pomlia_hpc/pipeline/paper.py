"""How well do dataset fingerprints recover known groups of datasets?

The paper (MedMNIST 2D, d = 2) shows the per-dataset mean embeddings falling into four groups:
{Blood, Derma, Path}, {OrganA, OrganC, OrganS, Pneumonia, Chest}, {Breast, Retina},
{Tissue, OCT}. It gives no number for it; this module gives one: cluster the datasets'
mean embeddings (their fingerprints) agglomeratively into as many clusters as there are
groups, and compare with the groups by the adjusted Rand index (1 = the same partition,
about 0 = no better than chance). A baseline clusters the *explicit* fingerprints (channels,
intensity mean and spread, number of classes) the same way, so a learned fingerprint has a
trivial competitor in the same run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.errors import InputError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.registry import Registry

#: The paper's four groups, by MedMNIST flag.
PAPER_GROUPS: tuple[tuple[str, ...], ...] = (
    ("bloodmnist", "dermamnist", "pathmnist"),
    ("organamnist", "organcmnist", "organsmnist", "pneumoniamnist", "chestmnist"),
    ("breastmnist", "retinamnist"),
    ("tissuemnist", "octmnist"),
)


def cluster_labels(vectors: np.ndarray, k: int, linkage: str = "average") -> np.ndarray:
    """Agglomerative clustering of the rows of ``vectors`` (Euclidean) into ``k`` clusters."""
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=int)
    tree = scipy_linkage(vectors, method=linkage, metric="euclidean")
    return np.asarray(fcluster(tree, t=k, criterion="maxclust"), dtype=int)


def groups_ari(
    vectors: Mapping[str, np.ndarray], groups: Sequence[Sequence[str]], linkage: str = "average"
) -> tuple[float, dict[str, int]]:
    """ARI between the agglomerative clustering of ``vectors`` (name → vector) into
    ``len(groups)`` clusters and ``groups``; also the cluster of each name."""
    from sklearn.metrics import adjusted_rand_score

    truth = {name: gi for gi, group in enumerate(groups) for name in group}
    names = [n for n in vectors if n in truth]
    missing = sorted(set(truth) - set(names))
    if missing:
        raise InputError(f"no fingerprint for grouped dataset(s) {', '.join(missing)}")
    x = np.stack([np.asarray(vectors[n], float) for n in names])
    labels = cluster_labels(x, len(groups), linkage)
    ari = float(adjusted_rand_score([truth[n] for n in names], labels))
    return ari, {n: int(c) for n, c in zip(names, labels, strict=True)}


def explicit_vector(fingerprint: Mapping[str, Any]) -> np.ndarray:
    """A small vector from an explicit fingerprint: channels, mean and spread of intensity
    (over channels), log number of classes."""
    inten = fingerprint.get("intensity") or [{"mean": 0.0, "std": 0.0}]
    return np.array(
        [
            float(fingerprint.get("channels", 1)),
            float(np.mean([c["mean"] for c in inten])) / 255.0,
            float(np.mean([c["std"] for c in inten])) / 255.0,
            float(np.log(max(int(fingerprint.get("n_classes", 1)), 1))),
        ]
    )


def _standardise(vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = np.stack(list(vectors.values()))
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0
    z = (x - x.mean(axis=0)) / sd
    return dict(zip(vectors, z, strict=True))


def dataset_groups_ari(
    registry: Registry,
    encoder: str,
    versions: Mapping[str, str],
    groups: Sequence[Sequence[str]],
    linkage: str,
    out_dir: Path,
) -> dict[str, Any]:
    """ARI of the mean-embedding clustering (and of the explicit-fingerprint baseline) of the
    datasets ``versions`` (pipeline name → ref) against ``groups`` (pipeline names); also
    writes ``clustering.json`` into ``out_dir``."""
    from pomlia_hpc.data.store import find_version
    from pomlia_hpc.fingerprint.candidates import fingerprint_set

    learned: dict[str, np.ndarray] = {}
    explicit: dict[str, np.ndarray] = {}
    for name, ref in versions.items():
        fs, _ = fingerprint_set(registry, encoder, ref)
        learned[name] = np.asarray(fs.mean, float)
        explicit[name] = explicit_vector(find_version(registry, ref).fingerprint)
    ari, clusters = groups_ari(learned, groups, linkage)
    base, base_clusters = groups_ari(_standardise(explicit), groups, linkage)
    result = {
        "encoder": encoder,
        "linkage": linkage,
        "groups": [list(g) for g in groups],
        "ari": ari,
        "clusters": clusters,
        "baseline_ari": base,
        "baseline_clusters": base_clusters,
        "latent_dim": len(next(iter(learned.values()))),
    }
    write_json_atomic(out_dir / "clustering.json", result)
    return result
