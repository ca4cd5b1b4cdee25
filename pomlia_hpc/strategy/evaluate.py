"""Leave-one-dataset-out evaluation of the recommender against baselines in the same run.

For each data set ``i``: the learner is fitted on the other data sets only (its bandwidth chosen
by a nested leave-one-out among them), ranks the strategies for ``i``'s meta-features, and the
regret of its first pick and of the best of its first ``k`` is measured on ``i``'s published
values, in metric points (x 100), against the best strategy on ``i``; a pick never tried on
``i`` is skipped, one whose runs all failed there costs what a failure costs the learner
(:func:`~pomlia_hpc.strategy.learner.failure_regret`). Given fingerprint
distances between the data sets (registry tasks sharing an encoder with complete embeddings),
the learner uses them as :func:`pomlia_hpc.strategy.recommend.recommend` does: between the
other data sets for its bandwidth, from ``i`` to them for its answer. Baselines, fitted on the
same other data sets:

- ``random``: a uniformly random strategy (the exact expectation: for the best of ``k`` distinct
  random picks, ``sum_r P(min rank = r) * regret_r``);
- ``best_mean``: the strategies with the best mean value over the other data sets (one without
  any result there last, as the learner ranks strategies without evidence last);
- ``best_rank``: the best mean rank (rank 1 = best on a data set; ties share their mean rank);
- ``nearest``: the ranking of the nearest data set by meta-features (standardised as for the
  learner).

``cheap``: the same with the candidates restricted to inputs <= 64 px or frozen features
(``linear_probe``, ``knn``); regret then against the best cheap strategy.

``dims``: each data set's dimensionality (2 or 3). The learner and every baseline then learn,
for a held-out data set, from the other data sets of its dimensionality only, as
:func:`pomlia_hpc.strategy.recommend.recommend` compares a task with those only; a data set
with fewer than 2 others of its dimensionality is left out (``recommend`` refuses such a task).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pomlia_hpc.errors import InputError
from pomlia_hpc.strategy.learner import (
    LEARNER,
    LEARNER_VERSION,
    KernelRegret,
    Matrix,
    Standardizer,
    failure_regret,
    similarity_label,
    top_k_regret,
)

METHODS: tuple[str, ...] = (LEARNER, "random", "best_mean", "best_rank", "nearest")
FROZEN_MODES: frozenset[str] = frozenset({"linear_probe", "knn"})


def cheap_mask(m: Matrix, max_px: int = 64) -> np.ndarray:
    """Strategies with inputs of at most ``max_px`` pixels or frozen features."""
    return np.array(
        [int(s.get("img_size", 0)) <= max_px or s.get("mode") in FROZEN_MODES for s in m.strategies]
    )


def random_regret(
    values: np.ndarray,
    cand: np.ndarray,
    k: int,
    fail: np.ndarray | None = None,
    failure: float = math.nan,
) -> float:
    """The expected regret (points) of the best of ``k`` distinct uniform picks among the
    candidates tried on this data set; one whose runs all failed costs ``failure``."""
    known = cand & np.isfinite(values)
    failed = cand & ~known & (fail > 0) if fail is not None else np.zeros_like(known)
    best = values[known].max()
    r = np.sort(np.concatenate([100.0 * (best - values[known]), np.full(failed.sum(), failure)]))
    n = len(r)
    k = min(k, n)
    # P(the best of k distinct uniform picks has rank j) = C(n-1-j, k-1) / C(n, k)
    p = np.array([math.comb(n - 1 - j, k - 1) for j in range(n)], float) / math.comb(n, k)
    return float((p * r).sum())


def _rank_rows(values: np.ndarray) -> np.ndarray:
    """Per row, rank 1 = best; ties get their mean rank; NaN cells stay NaN."""
    out = np.full(values.shape, np.nan)
    for i, row in enumerate(values):
        ok = np.isfinite(row)
        v = row[ok]
        order = np.argsort(-v, kind="stable")
        ranks = np.empty(len(v))
        ranks[order] = np.arange(1, len(v) + 1)
        for val in np.unique(v):  # mean rank for ties
            tie = v == val
            if tie.sum() > 1:
                ranks[tie] = ranks[tie].mean()
        out[i, ok] = ranks
    return out


def column_means(values: np.ndarray) -> np.ndarray:
    """Per column, the mean of its finite cells; NaN for a column without any (a strategy
    with no result on these data sets), without numpy's "Mean of empty slice" warning."""
    ok = np.isfinite(values)
    n = ok.sum(axis=0)
    total = np.where(ok, values, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _mean(xs: list[float]) -> float:
    """The mean of the finite ones of ``xs``; NaN when there are none."""
    finite = [x for x in xs if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def _order(score: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Indices of candidates by ``score`` descending (NaN last)."""
    s = np.where(cand & np.isfinite(score), score, -np.inf)
    o = np.argsort(-s, kind="stable")
    return o[cand[o]]


@dataclass
class MethodResult:
    top1: list[float] = field(default_factory=list)
    topk: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"top1_mean": _mean(self.top1), "topk_mean": _mean(self.topk)}


@dataclass
class EvalResult:
    """Per method, the per-data-set regrets (points) and their means."""

    metric: str
    k: int
    datasets: list[str]
    n_strategies: int
    restriction: str
    methods: dict[str, MethodResult]
    bandwidths: list[float]
    similarity: str = "meta-features"
    learner: str = LEARNER
    learner_version: str = LEARNER_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = {name: m.summary() for name, m in self.methods.items()}
        d["bandwidths"] = [None if math.isinf(h) else h for h in self.bandwidths]
        return d


def loo(
    m: Matrix,
    *,
    k: int = 3,
    cheap: bool = False,
    max_px: int = 64,
    fingerprints: np.ndarray | None = None,
    encoder: str | None = None,
    dims: Sequence[int] | None = None,
) -> EvalResult:
    """Leave-one-dataset-out over ``m`` (see the module docstring); ``fingerprints``: the
    fingerprint distances between ``m``'s data sets (n, n; NaN where unknown) under
    ``encoder``; ``dims``: their dimensionalities (none given: all alike)."""
    if k < 1:
        raise InputError(f"--k {k}: expected an integer >= 1")
    n = len(m.datasets)
    if n < 3:
        raise InputError(
            f"leave-one-dataset-out needs at least 3 data sets with results; this selection "
            f"has {n} ({', '.join(m.datasets) or 'none'})"
        )
    cand = cheap_mask(m, max_px) if cheap else np.ones(len(m.keys), bool)
    if cheap:
        # Said here: the data sets without a cheap result are skipped below, and the error
        # after the loop would blame their dimensionality.
        have = [x for x, v in zip(m.datasets, m.values, strict=True) if np.isfinite(v[cand]).any()]
        if len(have) < 3:
            raise InputError(
                f"--cheap: leave-one-dataset-out needs at least 3 data sets with results of "
                f"strategies with inputs <= {max_px} px or frozen features; this selection has "
                f"{len(have)} ({', '.join(have) or 'none'}); leave out --cheap to compare "
                "all strategies"
            )
    results = {name: MethodResult() for name in METHODS}
    # what a pick that failed there costs, per data set, measured as the regrets are: from
    # the best candidate (the best cheap one with --cheap)
    failure = failure_regret(np.where(cand, m.values, np.nan))
    hs: list[float] = []
    used: list[str] = []
    fp_fits = [0, 0]  # fits offered fingerprints, fits that kept them
    for i in range(n):
        v = m.values[i]
        if not np.isfinite(v[cand]).any():
            continue
        others = same_kind(i, dims, n)
        if len(others) < 2:
            continue
        used.append(m.datasets[i])
        train = m.subset(others)
        fp = fingerprints[np.ix_(others, others)] if fingerprints is not None else None
        learner = KernelRegret(k=k).fit(train, cand, fingerprints=fp)
        hs.append(learner.h)
        fp_fits[0] += learner.fingerprints_offered
        fp_fits[1] += learner.uses_fingerprints
        to_i = fingerprints[i, others] if fingerprints is not None else None
        orders = {
            LEARNER: learner.rank(m.features[i], cand, fingerprints=to_i).order,
            # a strategy without a result on the other data sets: NaN, ranked last
            "best_mean": _order(column_means(train.values), cand),
            "best_rank": _order(-column_means(_rank_rows(train.values)), cand),
        }
        d = Standardizer(train.features).distances(m.features[i][None, :], train.features)[0]
        orders["nearest"] = _order(train.values[int(np.argmin(d))], cand)
        score = {"fail": m.fail[i], "failure": float(failure[i])}
        for name, order in orders.items():
            results[name].top1.append(top_k_regret(v, order, 1, cand, **score))
            results[name].topk.append(top_k_regret(v, order, k, cand, **score))
        results["random"].top1.append(random_regret(v, cand, 1, **score))
        results["random"].topk.append(random_regret(v, cand, k, **score))
    if not used:
        raise InputError(
            "leave-one-dataset-out needs, for some data set with results, at least 2 others "
            "of its dimensionality (2D or 3D); this selection has none"
        )
    restriction = f"inputs <= {max_px} px or frozen features" if cheap else "all strategies"
    similarity = similarity_label(encoder, *fp_fits)
    return EvalResult("", k, used, int(cand.sum()), restriction, results, hs, similarity)


def same_kind(i: int, dims: Sequence[int] | None, n: int) -> list[int]:
    """The data sets (indices below ``n``) a held-out data set ``i`` is recommended from: the
    others of its dimensionality (all others when ``dims`` is None)."""
    if dims is None:
        return [j for j in range(n) if j != i]
    return [j for j in range(n) if j != i and dims[j] == dims[i]]
