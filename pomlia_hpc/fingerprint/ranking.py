"""Dataset distances over stored summaries (:mod:`.summary`): rank candidates for a query.

==========  =================================================================================
name        what (all symmetric, 0 for identical summaries)
==========  =================================================================================
mean        Euclidean distance between the exact mean embeddings (the paper)
frechet     Fréchet distance between Gaussians with the exact means and covariances
mmd, kl     as in :mod:`.distances`, on the stored samples
marginal    binned marginals: mean over latent axes of the mean |difference| of the stored
            quantiles (a 1-D Wasserstein-1 per axis)
trimmed     Fréchet distance between the *typical* rows of the samples (the least typical
            10 % by k-nearest-neighbour distance dropped, :func:`.summary.typical_rows`), so a
            few foreign images mixed into a dataset barely move it
explicit    distance between explicit fingerprints (:func:`.summary.explicit_features`): mean
            |difference| of the per-channel intensity statistics (0..1) that
            :data:`EXPLICIT_STATS` names (``robust``, the default: std and quartiles) plus
            |differences| of RGB-ness, log image size, log class count and class-balance
            entropy
combined    ``w`` x latent / median latent + (1 - ``w``) x explicit / median explicit, medians
            over the candidates being ranked (so both parts are on one scale); latent =
            :data:`COMBINED_LATENT`, ``w`` = :data:`COMBINED_WEIGHT`, both chosen on the tuning
            sets of ``scripts/bench/fingerprint_quality.py`` (docs/BENCHMARKS.md). A Fréchet-type
            latent (``frechet``, ``trimmed``, squared units) enters as its square root, the
            2-Wasserstein distance between the Gaussians, so that both parts grow linearly
==========  =================================================================================

``mean``, ``frechet``, ``marginal``, ``trimmed``, ``explicit`` and ``combined`` are vectorised
over the candidates; ``mmd`` and ``kl`` cost O(sample^2) per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.distances import binned_kl, mmd
from pomlia_hpc.fingerprint.summary import Stats, Summary

LATENT_DISTANCES: tuple[str, ...] = ("mean", "frechet", "mmd", "kl", "marginal", "trimmed")
DISTANCE_NAMES: tuple[str, ...] = (*LATENT_DISTANCES, "explicit", "combined")
DEFAULT_DISTANCE = "combined"
#: The latent part of ``combined`` and its weight (the explicit part gets 1 - weight).
COMBINED_LATENT = "trimmed"
COMBINED_WEIGHT = 0.6
#: Which of the 11 per-channel intensity statistics of :func:`.summary.explicit_features`
#: (mean, std, percentiles 0.5, 1, 5, 25, 50, 75, 95, 99, 99.5) the explicit distance compares.
#: ``robust`` (std and the quartiles) leaves out the mean and the tail percentiles, which a few
#: foreign images mixed into a dataset move the most; chosen on the tuning sets of the
#: fingerprint quality benchmark (docs/BENCHMARKS.md).
EXPLICIT_STATS: dict[str, tuple[int, ...]] = {"all": tuple(range(11)), "robust": (1, 5, 6, 7)}
DEFAULT_EXPLICIT = "robust"


#: The summary fields (:class:`~.summary.Stats`) each distance reads.
_FIELDS: dict[str, frozenset[str]] = {
    "mean": frozenset({"mean"}),
    "frechet": frozenset({"mean", "cov"}),
    "mmd": frozenset({"sample"}),
    "kl": frozenset({"sample"}),
    "marginal": frozenset({"quantiles"}),
    "trimmed": frozenset({"trim_mean", "trim_cov"}),
    "explicit": frozenset(),
}


def fields_for(distance: str, latent: str = COMBINED_LATENT) -> frozenset[str]:
    """The summary fields that ``distance`` needs (``combined``: those of its latent part)."""
    return _FIELDS[latent if distance == "combined" else check_distance(distance)]


def check_distance(name: str) -> str:
    """``name`` if it is a known dataset distance, else :class:`InputError`."""
    if name not in DISTANCE_NAMES:
        raise InputError(
            f"distance '{name}' is not known: expected one of {', '.join(DISTANCE_NAMES)}"
        )
    return name


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2.0)
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_many(mu: np.ndarray, cov: np.ndarray, mus: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """Fréchet distances (m,) between N(mu, cov) and each N(mus[i], covs[i]).

    tr((A B)^(1/2)) = sum of sqrt(eigenvalues of A^(1/2) B A^(1/2)), a symmetric matrix, so one
    batched ``eigvalsh`` serves all candidates."""
    if len(mus) == 0:
        return np.zeros(0)
    root = _sqrt_psd(cov)
    inner = root[None] @ covs @ root[None]
    eig = np.linalg.eigvalsh((inner + np.swapaxes(inner, 1, 2)) / 2.0)
    tr_sqrt = np.sqrt(np.maximum(eig, 0.0)).sum(1)
    diff = mus - mu[None]
    value = (diff * diff).sum(1) + np.trace(cov) + np.trace(covs, axis1=1, axis2=2) - 2 * tr_sqrt
    return np.maximum(value, 0.0)


#: Weights of the non-intensity parts of the explicit distance (intensity: mean |diff|).
_EXPLICIT_TAIL = np.array([1.0, 1.0, 1.0, 0.5])


#: Per-channel intensity statistics in an explicit feature vector (3 channels of 11 each).
_PER_CHANNEL = 11


def _explicit_columns(n_features: int, stats: str) -> np.ndarray:
    if stats not in EXPLICIT_STATS:
        raise InputError(
            f"explicit statistics '{stats}' are not known: expected one of "
            f"{', '.join(EXPLICIT_STATS)}"
        )
    n_int = n_features - len(_EXPLICIT_TAIL)
    return np.array(
        [c + i for c in range(0, n_int, _PER_CHANNEL) for i in EXPLICIT_STATS[stats]], int
    )


def explicit_many(q: np.ndarray, others: np.ndarray, stats: str = DEFAULT_EXPLICIT) -> np.ndarray:
    """Explicit-fingerprint distances (m,) between feature vectors ``q`` and ``others`` (m, f),
    comparing the intensity statistics named by ``stats`` (:data:`EXPLICIT_STATS`)."""
    cols = _explicit_columns(len(q), stats)
    if len(others) == 0:
        return np.zeros(0)
    n_int = len(q) - len(_EXPLICIT_TAIL)
    diff = np.abs(others - q[None])
    return diff[:, cols].mean(1) + diff[:, n_int:] @ _EXPLICIT_TAIL


def _stats(s: Summary, patches: bool) -> Stats:
    if not patches:
        return s.images
    if s.patches is None:
        raise InputError(
            "a dataset has no patch embeddings: expected every dataset extracted with "
            "--patch-grid > 1 when comparing patches"
        )
    return s.patches


def latent_many(name: str, q: Stats, others: list[Stats]) -> np.ndarray:
    """Latent distance ``name`` (one of :data:`LATENT_DISTANCES`) from ``q`` to each other."""
    if not others:
        return np.zeros(0)
    if name == "mean":
        return np.linalg.norm(np.stack([o.mean for o in others]) - q.mean[None], axis=1)
    if name == "frechet":
        return frechet_many(
            q.mean, q.cov, np.stack([o.mean for o in others]), np.stack([o.cov for o in others])
        )
    if name == "trimmed":
        return frechet_many(
            q.trim_mean,
            q.trim_cov,
            np.stack([o.trim_mean for o in others]),
            np.stack([o.trim_cov for o in others]),
        )
    if name == "marginal":
        qs = np.stack([o.quantiles for o in others])
        return np.abs(qs - q.quantiles[None]).mean(axis=(1, 2))
    if name == "mmd":
        return np.array([mmd(q.sample, o.sample) for o in others])
    if name == "kl":
        return np.array([binned_kl(q.sample, o.sample) for o in others])
    raise InputError(f"latent distance '{name}' is not known: expected one of {LATENT_DISTANCES}")


@dataclass(frozen=True)
class Scored:
    """One candidate's distance and the parts it was made of."""

    distance: float
    components: dict[str, float]


#: Latent distances in squared units: ``combined`` takes their square root (see the table).
SQUARED_LATENTS: frozenset[str] = frozenset({"frechet", "trimmed"})


def _scale(x: np.ndarray) -> float:
    med = float(np.median(x)) if len(x) else 1.0
    return med if med > 1e-12 else 1.0


def score(
    query: Summary,
    candidates: list[Summary],
    distance: str,
    *,
    patches: bool = False,
    weight: float = COMBINED_WEIGHT,
    latent: str = COMBINED_LATENT,
    explicit: str = DEFAULT_EXPLICIT,
) -> list[Scored]:
    """Distance ``distance`` from ``query`` to every candidate (in the candidates' order),
    with its components (``combined``: the raw latent and explicit parts, and the scaled parts
    that are summed, ``<latent>_scaled`` being the square root of a Fréchet-type latent over its
    median; ``explicit``: the intensity statistics of the explicit part, see
    :data:`EXPLICIT_STATS`)."""
    check_distance(distance)
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"combined weight {weight}: expected a number in [0, 1]")
    if distance == "explicit":
        e = explicit_many(query.explicit, np.stack([c.explicit for c in candidates]), explicit)
        return [Scored(float(v), {"explicit": float(v)}) for v in e]
    q = _stats(query, patches)
    others = [_stats(c, patches) for c in candidates]
    if distance != "combined":
        values = latent_many(distance, q, others)
        return [Scored(float(v), {distance: float(v)}) for v in values]
    raw = latent_many(latent, q, others)
    # Squared units (Fréchet) over the median would let the far candidates, whose squared
    # distances are huge, set the scale and squash the near ones together: the nearest
    # candidates, those that matter, would then be told apart by the explicit part alone.
    lat = np.sqrt(raw) if latent in SQUARED_LATENTS else raw
    exp = (
        explicit_many(query.explicit, np.stack([c.explicit for c in candidates]), explicit)
        if candidates
        else np.zeros(0)
    )
    ls, es = _scale(lat), _scale(exp)
    out = []
    for r, a, b in zip(raw, lat, exp, strict=True):
        total = weight * a / ls + (1.0 - weight) * b / es
        out.append(
            Scored(
                float(total),
                {
                    latent: float(r),
                    "explicit": float(b),
                    f"{latent}_scaled": float(a / ls),
                    "explicit_scaled": float(b / es),
                    "weight": weight,
                },
            )
        )
    return out
