"""Two-sample tests of a monitoring window against the reference, and the combined alarm.

Each test returns a :class:`CheckResult` with a p-value that is valid under "the window comes
from the reference distribution" (checked by ``scripts/bench/monitor.py``: false-alarm rate per
test and overall, with Wilson intervals, over hundreds of no-drift windows):

* :func:`mmd_test` - kernel MMD on standardised fingerprints, Gaussian kernel with the median
  heuristic, p-value from ``n_perm`` permutations with the +1 correction. The kernel matrix is
  computed once; each permutation only re-weights it (one matrix product for all of them).
* :func:`ks_test` - Kolmogorov-Smirnov per dimension, Bonferroni over dimensions.
* :func:`classifier_test` - a logistic regression learns to tell window from reference on one
  half; its accuracy on the other (held-out) half is compared with chance by an exact binomial
  test (no fixed AUC threshold).
* :func:`label_test` - predicted-label counts, :func:`confidence_test` - the model's
  confidence. Both are *reference-tolerant*: see below.

The reference is one fixed sample (the validation data recorded at export), and every window of
every night is compared with the same one. A plain two-sample test is calibrated on average over
references, not for the one a user has: conditional on it, the reference's own sampling error is
a fixed bias shared by all windows. For the high-dimensional input tests the bias is spread over
many directions and matters little; for a one-dimensional statistic (the confidence) it can
dominate: a 1,000-image reference that is off by 1.7 standard errors (1 reference in 200) made
the two-sample KS test of the confidence ring in 18.8 % of no-drift windows of 200
(``docs/BENCHMARKS.md``). The two prediction tests therefore bound the reference's error with
probability ``1 - delta`` (:data:`REFERENCE_DELTA`) and test the window against the *least
favourable* distribution within that bound, using the window's own one-sample null
distribution. For all but a ``delta`` share of references their false-alarm rate is then at most
alpha for every window; the price is power at small references (the margin shrinks as
1/sqrt(reference size)), reported in each result's ``detail``.
* :func:`performance_test` - accuracy on feedback labels with a Wilson interval and a one-sided
  two-proportion z-test for a drop below the validation accuracy.

:func:`combine` runs a weighted Holm procedure over the tests: the alarm rings when any test is
rejected, which happens with probability at most ``alpha`` when nothing changed, whatever the
dependence between the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

#: Permutations of the MMD test (the +1-corrected p-value cannot go below 1 / (n_perm + 1)).
N_PERM = 1000
#: Chance that the reference sample is farther from its distribution than the prediction tests'
#: margin allows (then their false-alarm rate can exceed alpha for that reference).
REFERENCE_DELTA = 0.05
#: Decimals of the probabilities in the prediction log (``pomlia_hpc.serve.predictor``); the
#: confidence test rounds both sides so, or a saturated model's 0.99999994 (reference, float32)
#: and 1.0 (log) would count as a shift.
PROB_DECIMALS = 6


@dataclass
class CheckResult:
    """One test: ``p_value`` in (0, 1]; ``weight`` its share of alpha in :func:`combine`."""

    name: str
    family: str
    statistic: float
    p_value: float
    detail: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    rejected: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "statistic": _finite(self.statistic),
            "p_value": _finite(self.p_value),
            "weight": self.weight,
            "rejected": self.rejected,
            "detail": self.detail,
        }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def standardise(ref: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both by the reference's per-dimension mean and std; dimensions constant in the
    reference keep a unit scale (so a change there still counts)."""
    mu = ref.mean(axis=0)
    sd = ref.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    return ((ref - mu) / sd).astype(np.float32), ((win - mu) / sd).astype(np.float32)


def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", z, z)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)
    return d2


def mmd_test(
    ref: np.ndarray, win: np.ndarray, *, n_perm: int = N_PERM, seed: int = 0
) -> CheckResult:
    """Kernel MMD² (biased V-statistic) of standardised ``ref`` (n, d) vs ``win`` (m, d)."""
    n, m = len(ref), len(win)
    r, w = standardise(ref, win)
    z = np.concatenate([r, w])
    d2 = _sq_dists(z)
    off = d2[~np.eye(n + m, dtype=bool)]
    bandwidth = float(np.median(off)) or 1.0
    kernel = np.exp(-d2 / bandwidth).astype(np.float32)
    rng = np.random.default_rng(seed)
    # Column 0 is the observed split; columns 1.. are permutations of it. Weights +1/n on the
    # reference side, -1/m on the window side: MMD² = a^T K a.
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)]).astype(np.float32)
    weights = np.empty((n + m, n_perm + 1), dtype=np.float32)
    weights[:, 0] = base
    for j in range(1, n_perm + 1):
        weights[:, j] = base[rng.permutation(n + m)]
    values = np.einsum("ip,ip->p", weights, kernel @ weights)
    observed = float(values[0])
    exceed = int(np.sum(values[1:] >= observed - 1e-7 * abs(observed)))
    return CheckResult(
        "mmd",
        "input",
        observed,
        (1 + exceed) / (1 + n_perm),
        {"n_reference": n, "n_window": m, "permutations": n_perm, "bandwidth": bandwidth},
    )


def ks_statistics(ref: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS statistic and asymptotic p-value of every column, vectorised: one sort of
    the pooled columns instead of a test per column (ties handled: the ECDF difference is only
    read after the last of equal values)."""
    n, m = len(ref), len(win)
    pooled = np.concatenate([ref, win]).astype(np.float64)
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    steps = np.where(order < n, 1.0 / n, -1.0 / m)
    diff = np.abs(np.cumsum(steps, axis=0))
    last_of_tie = np.ones_like(values, dtype=bool)
    last_of_tie[:-1] = values[1:] != values[:-1]
    stat = np.where(last_of_tie, diff, 0.0).max(axis=0)
    p = stats.kstwo.sf(stat, round(n * m / (n + m)))
    return stat, np.clip(p, 0.0, 1.0)


def ks_test(ref: np.ndarray, win: np.ndarray, top: int = 10) -> CheckResult:
    """KS per dimension, Bonferroni-corrected minimum p; ``detail.top`` the ``top`` most
    drifting dimensions (largest KS statistic) with their p-values."""
    d = ref.shape[1]
    stat, pvals = ks_statistics(ref, win)
    order = np.argsort(-stat)[:top]
    return CheckResult(
        "ks",
        "input",
        float(stat.max()) if d else 0.0,
        float(min(1.0, d * pvals.min())) if d else 1.0,
        {
            "dimensions": d,
            "correction": "bonferroni",
            "top": [
                {"dim": int(i), "ks": float(stat[i]), "p_value": float(pvals[i])} for i in order
            ],
        },
    )


def classifier_test(ref: np.ndarray, win: np.ndarray, *, seed: int = 0) -> CheckResult:
    """Domain classifier: held-out accuracy of a logistic regression, exact binomial p-value
    against 0.5 (balanced classes, so chance is exactly one half)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    k = min(len(ref), len(win))
    r = ref[rng.choice(len(ref), k, replace=False)]
    w = win[rng.choice(len(win), k, replace=False)]
    rs, ws = standardise(r, w)
    # Each class split in halves: train on one half of each, test on the other.
    pr, pw = rng.permutation(k), rng.permutation(k)
    h = k // 2
    x_train = np.concatenate([rs[pr[:h]], ws[pw[:h]]])
    y_train = np.r_[np.zeros(h), np.ones(h)]
    x_test = np.concatenate([rs[pr[h:]], ws[pw[h:]]])
    y_test = np.r_[np.zeros(k - h), np.ones(k - h)]
    if h < 2:
        return CheckResult("classifier", "input", float("nan"), 1.0, {"note": "too few samples"})
    clf = LogisticRegression(C=0.1, max_iter=300)
    clf.fit(x_train, y_train)
    correct = int(np.sum(clf.predict(x_test) == y_test))
    p = float(stats.binomtest(correct, len(y_test), 0.5, alternative="greater").pvalue)
    return CheckResult(
        "classifier",
        "input",
        correct / len(y_test),
        p,
        {"held_out": len(y_test), "correct": correct, "model": "logistic regression, C=0.1"},
    )


def reference_margin(n_ref: int, delta: float = REFERENCE_DELTA) -> float:
    """Dvoretzky-Kiefer-Wolfowitz bound (Massart's constant): the empirical CDF of ``n_ref``
    draws is farther than this from the true CDF (sup distance) with probability at most
    ``delta``, for any distribution (ties included)."""
    return math.sqrt(math.log(2.0 / delta) / (2.0 * max(1, n_ref)))


def _clopper_pearson(k: np.ndarray, n: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact (conservative) binomial intervals for proportions ``k / n`` at ``level``."""
    tail = (1.0 - level) / 2.0
    lo = np.where(k > 0, stats.beta.ppf(tail, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1.0 - tail, k + 1, n - k), 1.0)
    return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)


def least_favourable_chi2(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Smallest Pearson statistic sum (b - m p)^2 / (m p) of window ``counts`` b over class
    distributions p with ``lo <= p <= hi`` and sum(p) = 1 (needs sum(lo) <= 1 <= sum(hi)).

    Each term is convex in p; at the optimum p_k = clip(b_k / t, lo_k, hi_k) for one t > 0
    (from the Lagrange condition), found by bisection on log t."""
    b = counts.astype(np.float64)
    m = float(b.sum())

    def probs(t: float) -> np.ndarray:
        return np.clip(b / t, lo, hi)

    if probs(1e-12).sum() < 1.0:
        # Even at the upper bounds the seen classes leave mass over: the unseen ones take it
        # (any split costs the same, m times their total).
        p = np.where(b > 0, hi, lo)
        free = b == 0
        p[free] += (1.0 - p.sum()) * (hi[free] - lo[free]) / max(1e-12, (hi[free] - lo[free]).sum())
    else:
        lo_t, hi_t = math.log(1e-12), math.log(1e12)
        for _ in range(200):
            mid = (lo_t + hi_t) / 2.0
            if probs(math.exp(mid)).sum() > 1.0:
                lo_t = mid
            else:
                hi_t = mid
        p = probs(math.exp((lo_t + hi_t) / 2.0))
        p /= p.sum()
    p = np.maximum(p, 1e-300)
    return float(np.sum((b - m * p) ** 2 / (m * p)))


def label_test(
    ref_labels: np.ndarray,
    win_labels: np.ndarray,
    n_labels: int,
    *,
    delta: float = REFERENCE_DELTA,
) -> CheckResult:
    """Predicted-label distribution of the window against the reference's, reference-tolerant:
    the class shares p lie in simultaneous exact intervals around the reference's shares
    (Clopper-Pearson at level 1 - delta / classes each, so all hold with probability >= 1 -
    delta); the statistic is the window's Pearson chi-square goodness of fit against the p in
    that box that fits it best, and the p-value is chi-square with classes - 1 degrees of
    freedom (classes: those predicted on either side; labels outside 0..n_labels-1 are left
    out)."""
    ref = ref_labels.astype(int)
    win = win_labels.astype(int)
    a = np.bincount(ref[(ref >= 0) & (ref < n_labels)], minlength=n_labels)[:n_labels]
    b = np.bincount(win[(win >= 0) & (win < n_labels)], minlength=n_labels)[:n_labels]
    keep = (a + b) > 0
    detail: dict[str, Any] = {
        "reference_share": (a / max(1, a.sum())).round(4).tolist(),
        "window_share": (b / max(1, b.sum())).round(4).tolist(),
    }
    if keep.sum() < 2 or b.sum() == 0 or a.sum() == 0:
        return CheckResult("labels", "prediction", 0.0, 1.0, detail)
    k = int(keep.sum())
    lo, hi = _clopper_pearson(a[keep], int(a.sum()), 1.0 - delta / k)
    chi2 = least_favourable_chi2(b[keep], lo, hi)
    plain = stats.chi2_contingency(np.stack([a[keep], b[keep]]), correction=False)
    detail.update(
        dof=k - 1,
        method=f"chi-square against the best-fitting class shares within the reference's "
        f"{1 - delta:.0%} simultaneous intervals",
        reference_delta=delta,
        plain_two_sample_p=float(plain[1]),
    )
    return CheckResult("labels", "prediction", chi2, float(stats.chi2.sf(chi2, k - 1)), detail)


def confidence_test(
    ref_conf: np.ndarray, win_conf: np.ndarray, *, delta: float = REFERENCE_DELTA
) -> CheckResult:
    """Distribution of the model's confidence, window vs reference, reference-tolerant.

    Statistic: the KS distance D between the two empirical CDFs (both rounded as the log rounds
    probabilities; ties handled). The reference's CDF is within e = :func:`reference_margin`
    of the truth with probability >= 1 - delta, so under no drift D - e exceeds the window's
    own one-sample KS distance only with that small probability; the p-value is the exact
    one-sample KS tail of max(D - e, 0) at the window size (conservative for discrete
    confidences)."""
    r = np.asarray(ref_conf, dtype=np.float64)
    w = np.asarray(win_conf, dtype=np.float64)
    r = np.round(r[np.isfinite(r)], PROB_DECIMALS)
    w = np.round(w[np.isfinite(w)], PROB_DECIMALS)
    if len(w) == 0 or len(r) == 0:
        return CheckResult("confidence", "prediction", 0.0, 1.0, {"note": "no confidences"})
    d = float(ks_statistics(r[:, None], w[:, None])[0][0])
    margin = reference_margin(len(r), delta)
    p = float(stats.kstwo.sf(d - margin, len(w))) if d > margin else 1.0
    return CheckResult(
        "confidence",
        "prediction",
        d,
        min(1.0, p),
        {
            "reference_mean": float(np.mean(r)),
            "window_mean": float(np.mean(w)),
            "reference_margin": margin,
            "reference_delta": delta,
            "method": "KS distance minus the reference's DKW margin, one-sample KS tail",
        },
    )


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``."""
    if n == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def performance_test(correct: int, n: int, ref_correct: int, ref_n: int) -> CheckResult:
    """One-sided pooled two-proportion z-test of "window accuracy < validation accuracy"."""
    acc = correct / n if n else float("nan")
    ref_acc = ref_correct / ref_n
    lo, hi = wilson(correct, n)
    pooled = (correct + ref_correct) / (n + ref_n)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n + 1 / ref_n))
    z = (ref_acc - acc) / se
    return CheckResult(
        "accuracy",
        "performance",
        acc,
        float(stats.norm.sf(z)),
        {
            "labels": n,
            "correct": correct,
            "interval_95": [lo, hi],
            "validation_accuracy": ref_acc,
            "validation_n": ref_n,
            "drop": ref_acc - acc,
            "z": z,
        },
    )


def combine(results: Sequence[CheckResult], alpha: float = 0.05) -> bool:
    """Weighted Holm over ``results`` (uses each ``weight``; sets ``rejected``); True when any
    test is rejected. Family-wise error rate <= ``alpha`` under any dependence."""
    live = [r for r in results if r.weight > 0]
    total = sum(r.weight for r in live)
    for r in results:
        r.rejected = False
    remaining = total
    for r in sorted(live, key=lambda r: r.p_value / r.weight):
        if r.p_value <= alpha * r.weight / remaining:
            r.rejected = True
            remaining -= r.weight
        else:
            break
    return any(r.rejected for r in results)
