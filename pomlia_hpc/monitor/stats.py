"""Two-sample tests of a monitoring window against the reference, and the combined alarm.

Each test returns a :class:`CheckResult` with a p-value that is valid under "the window comes
from the reference distribution" (checked by ``scripts/bench/monitor.py``: false-alarm rate per
test and overall, with Wilson intervals, over hundreds of no-drift windows and six references):

* :func:`mmd_test` - kernel MMD on standardised fingerprints, Gaussian kernel with the median
  heuristic; p-value from a double bootstrap (reference resamples x window resamples, +1
  corrected), reference-tolerant (below). The reference's kernel matrix is computed once; all
  resamples are one matrix product.
* :func:`ks_test` - Kolmogorov-Smirnov per dimension, Bonferroni over dimensions.
* :func:`classifier_test` - a logistic regression learns to tell window from reference on one
  half of each (the reference's halves fixed); its held-out calls on the window are tested by
  an exact binomial tail at a rate bounded from the never-trained-on reference half
  (reference-tolerant, no fixed AUC threshold).
* :func:`label_test` - predicted-label counts, :func:`confidence_test` - the model's
  confidence. Both reference-tolerant.

The reference is one fixed sample (the validation data recorded at export), and every window of
every night is compared with the same one. A plain two-sample test is calibrated on average over
references, not for the one a user has: conditional on it, the reference's own sampling error is
a fixed bias shared by all windows. For a one-dimensional statistic (the confidence) it can
dominate: a 1,000-image reference that is off by 1.7 standard errors (1 reference in 200) made
the two-sample KS test of the confidence ring in 18.8 % of no-drift windows of 200
(``docs/BENCHMARKS.md``). For the multivariate MMD and domain classifier it is smaller but
real (a plain permutation MMD and the earlier classifier rang in 5.2-6.5 % of no-drift windows
for some 1,000-image references in one run, up to 8 % in a later one). Every drift test but KS
therefore bounds the reference's error with probability ``1 - delta`` (:data:`REFERENCE_DELTA`)
and tests the window against the *least favourable* case within that bound: the confidence by a
DKW margin, the labels by simultaneous Clopper-Pearson intervals, the classifier by a one-sided
Clopper-Pearson bound from the held-out reference half, the MMD by the (1 - delta) quantile of
its p-value over bootstrap resamples of the reference. For all but a ``delta`` share of
references their false-alarm rate is then at most alpha (the KS test's Bonferroni correction
leaves it conservative enough without); the price is power at small references, reported in
each result's ``detail`` with the plain p-value beside it.
* :func:`performance_test` - accuracy on feedback labels with a Wilson interval and a one-sided
  two-proportion z-test for a drop below the reference's accuracy;
  :func:`labelwise_performance_test` the same for multi-label models (a Welch t test), on each
  image's label-wise accuracy (images are the unit: the labels of one image are not
  independent).

:func:`combine` runs a weighted Holm procedure over the tests: the alarm rings when any test is
rejected, which happens with probability at most ``alpha`` when nothing changed, whatever the
dependence between the tests.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

#: Window resamples of the MMD test, per reference resample (the +1-corrected p-value cannot go
#: below 1 / (n_perm + 1)).
N_PERM = 1000
#: Reference resamples of the MMD test (the p-value is a quantile over them).
N_REFERENCE_RESAMPLES = 200
#: Seed of the domain classifier's split of the reference (fixed: the held-out half must be the
#: same for every window, never trained on).
CLASSIFIER_SPLIT_SEED = 20261202
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


def _resample_weights(rng: np.random.Generator, n: int, draws: int, size: int) -> np.ndarray:
    """(n, draws) float32: column j is the share of each of the n rows in draw j, a sample of
    ``size`` rows with replacement (a bootstrap sample's counts / size)."""
    idx = rng.integers(n, size=(draws, size)) + n * np.arange(draws)[:, None]
    counts = np.bincount(idx.ravel(), minlength=n * draws).reshape(draws, n)
    return (counts.T / np.float32(size)).astype(np.float32)


def mmd_test(
    ref: np.ndarray,
    win: np.ndarray,
    *,
    n_perm: int = N_PERM,
    n_ref_boot: int = N_REFERENCE_RESAMPLES,
    delta: float = REFERENCE_DELTA,
    seed: int = 0,
) -> CheckResult:
    """Kernel MMD² (biased V-statistic) of standardised ``ref`` (n, d) vs ``win`` (m, d), with
    a reference-tolerant bootstrap p-value.

    Why not a plain permutation p-value: it is exact on average over references, but every
    night is tested against the same reference, whose own error e = mean embedding of the
    reference - that of its distribution is a bias all windows share: MMD² = |e + b|² with b the
    window's error. A reference with a large |e| rings more often than alpha (measured: 5.2-5.5%
    at n = 100-200 for some 1,000-image references); the share of e in the statistic grows as
    m / (n + m), so large windows and small references suffer most.

    The test instead estimates how the null distribution of MMD² varies from one reference to
    another, by a double bootstrap in the world whose truth is the reference's own empirical
    distribution: ``n_ref_boot`` reference resamples R* (n draws from the reference) and
    ``n_perm`` window resamples W* (m draws from it), MMD²(R*_i, W*_j) for every pair. For each
    R*_i, p_i is the +1-corrected share of its windows at or above the observed MMD²; the test's
    p-value is the (1 - ``delta``) quantile of the p_i: it is at most alpha only when the window
    would be rejected against 95% of the references the data could have given. So for all but
    a ``delta`` share of references the false-alarm rate is at most alpha, like the prediction
    tests (the bootstrap of a mean in a Hilbert space is consistent, so this holds
    asymptotically, not exactly). ``detail.plain_p_value`` is the ordinary bootstrap two-sample
    p-value (the mean of the p_i), for comparison.

    Cost: the kernel matrix of the reference once, and one matrix product with the
    ``n_ref_boot + n_perm`` resample weights; MMD²(R*_i, W*_j) = a_i + 2 G_ij + c_j from the
    reference-side and window-side quadratic forms a, c and the cross products G."""
    n, m = len(ref), len(win)
    r, w = standardise(ref, win)
    z = np.concatenate([r, w])
    d2 = _sq_dists(z)
    off = d2[~np.eye(n + m, dtype=bool)]
    bandwidth = float(np.median(off)) or 1.0
    kernel = np.exp(-d2 / bandwidth).astype(np.float32)
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)]).astype(np.float32)
    observed = float(base @ kernel @ base)
    del d2, off
    k_ref = np.ascontiguousarray(kernel[:n, :n])
    del kernel
    rng = np.random.default_rng(seed)
    # Weights over the reference rows: e_i = R*_i - R (reference-side error), b_j = R - W*_j
    # (window-side error), so MMD²(R*_i, W*_j) = (e_i + b_j)^T K (e_i + b_j).
    uniform = np.float32(1.0 / n)
    e = _resample_weights(rng, n, n_ref_boot, n) - uniform
    b = uniform - _resample_weights(rng, n, n_perm, m)
    ke = k_ref @ e
    kb = k_ref @ b
    a = np.einsum("ip,ip->p", e, ke)
    c = np.einsum("ip,ip->p", b, kb)
    values = a[:, None] + 2.0 * (e.T @ kb) + c[None, :]
    # Ties within float32 rounding count as exceeding (MMD² of a kernel in [0, 1] lies in
    # [0, 2]): a purely relative tolerance would let rounding noise decide when the observed
    # value is about 0, e.g. for identical constant fingerprints.
    exceed = np.sum(values >= observed - (1e-6 + 1e-6 * abs(observed)), axis=1)
    p_each = np.sort((1 + exceed) / (1 + n_perm))
    # A conservative order statistic: the ceil((1 - delta) * B)-th smallest p_i.
    rank = min(n_ref_boot, math.ceil((1.0 - delta) * n_ref_boot)) - 1
    return CheckResult(
        "mmd",
        "input",
        observed,
        float(p_each[rank]),
        {
            "n_reference": n,
            "n_window": m,
            "window_resamples": n_perm,
            "reference_resamples": n_ref_boot,
            "bandwidth": bandwidth,
            "reference_delta": delta,
            "plain_p_value": float(p_each.mean()),
            "method": "MMD² against the bootstrap null of each of the reference's resamples; "
            f"p = the {1 - delta:.0%} quantile over them",
        },
    )


def ks_distances(ref: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic of every column, vectorised: one sort of the pooled columns
    instead of a test per column (ties handled: the ECDF difference is only read after the
    last of equal values)."""
    n, m = len(ref), len(win)
    pooled = np.concatenate([ref, win]).astype(np.float64)
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    steps = np.where(order < n, 1.0 / n, -1.0 / m)
    diff = np.abs(np.cumsum(steps, axis=0))
    last_of_tie = np.ones_like(values, dtype=bool)
    last_of_tie[:-1] = values[1:] != values[:-1]
    return np.asarray(np.where(last_of_tie, diff, 0.0).max(axis=0))


def ks_statistics(ref: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS statistic (:func:`ks_distances`) and p-value of every column. The p-value
    is scipy's ``ks_2samp`` with ``method="auto"``: exact up to 10,000 vectors a side (always,
    at the monitor's sizes), asymptotic beyond; the asymptotic tail alone is far off for small
    samples (0.45 for 11 against 5 where the exact one is 0.35)."""
    stat = ks_distances(ref, win)
    if not stat.size:
        return stat, np.ones_like(stat)
    with warnings.catch_warnings():
        # Where the exact computation fails scipy falls back to the asymptotic p and warns.
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ks_2samp(ref, win, axis=0, method="auto").pvalue
    return stat, np.clip(np.asarray(p, dtype=np.float64).reshape(stat.shape), 0.0, 1.0)


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


def classifier_test(
    ref: np.ndarray, win: np.ndarray, *, seed: int = 0, delta: float = REFERENCE_DELTA
) -> CheckResult:
    """Domain classifier, reference-tolerant: a logistic regression learns to tell window from
    reference; its p-value is an exact binomial test on held-out window vectors against a rate
    bounded from a held-out part of the reference (no fixed AUC threshold).

    The reference is split once, the same way for every window (a fixed seed): half A trains,
    half B is never trained on. The window is split in halves per window: one trains, one is
    held out. Given the trained classifier f, the held-out window vectors it calls "window"
    are binomial with rate q = P(f = window) under no drift. q is not known; half B estimates it
    without bias, because f never saw B. The test bounds q by the one-sided (1 - ``delta``)
    Clopper-Pearson upper limit of B's share called "window" and computes the exact binomial
    tail of the window's count at that bound.

    Why not the plain test (held-out accuracy vs 0.5, reference and window points sampled
    from the same fixed reference for training and testing): it is exact on average over
    references, but the reference's own error is shared by the training and the test points
    and by every night's window, so for an unlucky reference the classifier "finds" it again
    and again (measured: 6.5% false alarms at n = 200 with one of six 1,000-image references).
    Here B's error is independent of f; the Clopper-Pearson bound covers it for all but a
    ``delta`` share of references (per classifier; the classifiers of different windows point
    in nearly the same direction, the reference's training half's error, so the same share of
    references is affected across windows). The statistic is the balanced held-out accuracy."""
    from sklearn.linear_model import LogisticRegression

    n, m = len(ref), len(win)
    order = np.random.default_rng(CLASSIFIER_SPLIT_SEED).permutation(n)
    ref_a, ref_b = ref[order[: n // 2]], ref[order[n // 2 :]]
    rng = np.random.default_rng(seed)
    pw = rng.permutation(m)
    h = m // 2
    w_train, w_test = win[pw[:h]], win[pw[h:]]
    if h < 2 or len(ref_a) < 2 or len(ref_b) < 2:
        return CheckResult("classifier", "input", float("nan"), 1.0, {"note": "too few samples"})
    mu = ref_a.mean(axis=0)
    sd = ref_a.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)

    def scale(x: np.ndarray) -> np.ndarray:
        return ((x - mu) / sd).astype(np.float32)

    # All of half A against half of the window; "balanced" weights keep f's threshold central
    # (any f is valid; a central one has the most power).
    clf = LogisticRegression(C=0.1, max_iter=300, class_weight="balanced")
    clf.fit(np.concatenate([scale(ref_a), scale(w_train)]), np.r_[np.zeros(len(ref_a)), np.ones(h)])
    win_called = int(np.sum(clf.predict(scale(w_test)) == 1))
    ref_called = int(np.sum(clf.predict(scale(ref_b)) == 1))
    n_w, n_b = len(w_test), len(ref_b)
    q_up = (
        float(stats.beta.ppf(1.0 - delta, ref_called + 1, n_b - ref_called))
        if ref_called < n_b
        else 1.0
    )
    p = float(stats.binom.sf(win_called - 1, n_w, q_up))
    # Without the tolerance: a one-sided Fisher exact test of the two held-out rates.
    table = [[win_called, n_w - win_called], [ref_called, n_b - ref_called]]
    plain = float(stats.fisher_exact(table, alternative="greater").pvalue)
    return CheckResult(
        "classifier",
        "input",
        0.5 * (win_called / n_w + 1.0 - ref_called / n_b),
        min(1.0, p),
        {
            "held_out_window": n_w,
            "window_called_window": win_called,
            "held_out_reference": n_b,
            "reference_called_window": ref_called,
            "rate_bound": q_up,
            "reference_delta": delta,
            "plain_p_value": plain,
            "model": "logistic regression, C=0.1, balanced class weights",
            "method": "exact binomial tail of the held-out window's count at the "
            f"{1 - delta:.0%} upper bound of the held-out reference half's rate",
        },
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
    d = float(ks_distances(r[:, None], w[:, None])[0])
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
    # Exact ends at k = 0 and k = n: rounding put the bound a hair inside (5.6e-17 for 0 of
    # 3), above the accuracy 0 itself, and the report's error bar (accuracy - bound) failed.
    lo = 0.0 if k == 0 else max(0.0, mid - half)
    hi = 1.0 if k == n else min(1.0, mid + half)
    return (min(lo, p), max(hi, p))


def _reference_fields(ref_acc: float, ref_n: int) -> dict[str, Any]:
    # "validation_*" are the names of reports written before references could come from
    # another split (--split test): kept as aliases, with the same values.
    return {
        "reference_accuracy": ref_acc,
        "reference_n": ref_n,
        "validation_accuracy": ref_acc,
        "validation_n": ref_n,
    }


def performance_test(correct: int, n: int, ref_correct: int, ref_n: int) -> CheckResult:
    """One-sided pooled two-proportion z-test of "window accuracy < reference accuracy"."""
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
            "accuracy_kind": "top-1",
            "interval_95": [lo, hi],
            **_reference_fields(ref_acc, ref_n),
            "drop": ref_acc - acc,
            "z": z,
        },
    )


def labelwise_performance_test(
    scores: np.ndarray, ref_scores: np.ndarray, n_labels: int
) -> CheckResult:
    """One-sided test of "window accuracy < reference accuracy" for a multi-label model.

    ``scores`` / ``ref_scores``: each labelled image's label-wise accuracy (the share of its
    ``n_labels`` labels predicted right, in [0, 1]); their mean is the task's ACC (MedMNIST's
    label-wise mean). The image is the unit: the labels of one image are not independent (one
    bad image gets many wrong), so counting labels as trials would understate the variance. The
    standard error is that of a difference of two means, each from its own sample's variance
    (unpooled: valid whatever the two spreads), the p-value a Welch t test's. Each variance is
    at least that of independent labels, p(1 - p) / n_labels (p smoothed by half a label, so
    never 0): 30 images that all score 13/14 have a sample variance of 0, which made a zero-
    width interval and a z that any drop at all sent to infinity. The interval is the t 95%
    interval of the window's mean (n - 1 degrees of freedom), clipped to [0, 1]."""
    w = np.asarray(scores, dtype=np.float64)
    r = np.asarray(ref_scores, dtype=np.float64)
    n, ref_n = len(w), len(r)
    acc = float(w.mean()) if n else float("nan")
    ref_acc = float(r.mean())
    var_w = _score_variance(w, n_labels)
    var_r = _score_variance(r, n_labels)
    se_w2, se_r2 = var_w / max(n, 1), var_r / ref_n
    se = math.sqrt(se_w2 + se_r2)
    # Welch-Satterthwaite degrees of freedom (at least 1: one image).
    df = (se_w2 + se_r2) ** 2 / (se_w2**2 / max(n - 1, 1) + se_r2**2 / max(ref_n - 1, 1))
    t = (ref_acc - acc) / se
    half = float(stats.t.ppf(0.975, max(n - 1, 1))) * math.sqrt(se_w2)
    return CheckResult(
        "accuracy",
        "performance",
        acc,
        float(stats.t.sf(t, df)),
        {
            "labels": n,
            "unit": "image (label-wise accuracy per image)",
            "accuracy_kind": "label-wise",
            "interval_95": [max(0.0, acc - half), min(1.0, acc + half)],
            **_reference_fields(ref_acc, ref_n),
            "drop": ref_acc - acc,
            "z": t,  # the t statistic (kept under its old key)
            "df": df,
        },
    )


def _score_variance(scores: np.ndarray, n_labels: int) -> float:
    """The variance of per-image label-wise accuracies, at least that of ``n_labels``
    independent labels (see :func:`labelwise_performance_test`); 0.25 (the largest of [0, 1])
    for one image."""
    n = len(scores)
    if n < 2:
        return 0.25
    trials = n * max(n_labels, 1)
    p = (float(scores.sum()) * max(n_labels, 1) + 0.5) / (trials + 1)
    return max(float(scores.var(ddof=1)), p * (1 - p) / max(n_labels, 1))


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
