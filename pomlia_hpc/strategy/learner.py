"""Meta-features, the data set x strategy matrix, and the learner that ranks strategies.

The learner (``kernel-regret``): a strategy's expected regret on a new data set is the
similarity-weighted mean of its regrets on the known data sets, regret being the distance in
metric points (x 100) to the best strategy known on that data set. Weights are
``exp(-d^2 / (2 h^2))`` over a distance ``d`` between standardised meta-features, combined,
when fingerprint distances are given, with the fingerprint distance: ``d^2 = d_meta^2 +
(s d_fp)^2``, ``s`` scaling the fingerprint distances' median over the training pairs to the
meta-feature distances' (the two sources count alike; a pair without fingerprints counts as
typical, the median). The bandwidth ``h`` is chosen by leave-one-dataset-out over the
training data sets only (nested: the data set being recommended for never takes part), from
:data:`BANDWIDTHS`, on the same combined distances as the answer; ``h = inf`` is the plain
mean, so the learner can fall back on "best mean". The same nested leave-one-out decides
whether the fingerprints count at all: they do only when they lower its loss below that of
the meta-features alone; otherwise they are unreliable for ranking strategies (say, an
encoder that never saw these modalities) and the answer rests on metadata alone.

Missing cells (a strategy never tried on a data set) count as that data set's median regret, a
typical strategy; failed runs move a strategy's regret towards the data set's worst in
proportion to its failure rate (at least the typical worst: :func:`failure_regret`). numpy
only: this package never imports torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pomlia_hpc.strategy.kb import KnowledgeBase

LEARNER = "kernel-regret"
LEARNER_VERSION = "6"
BANDWIDTHS: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, math.inf)
FEATURES: tuple[str, ...] = (
    "log10_n_train",
    "rgb",
    "log_n_classes",
    "binary",
    "multi_label",
    "ordinal",
    "log2_image_size",
    "dims3",
    "balance_entropy",
    "intensity_mean",
    "intensity_std",
)


def meta_vector(meta: Mapping[str, Any]) -> np.ndarray:
    """The numeric meta-features (:data:`FEATURES`) of one data set; NaN where unknown."""
    t = str(meta.get("task_type", ""))

    def num(key: str, f: Any = float) -> float:
        v = meta.get(key)
        return float(f(float(v))) if v is not None else math.nan

    return np.array(
        [
            num("n_train", lambda v: math.log10(max(v, 1.0))),
            num("n_channels", lambda v: float(v >= 3)),
            num("n_classes", lambda v: math.log(max(v, 1.0))),
            float(t == "binary"),
            float(t == "multi-label"),
            float(t == "ordinal"),
            num("image_size", lambda v: math.log2(max(v, 1.0))),
            num("dims", lambda v: float(v == 3)),
            num("balance_entropy"),
            num("intensity_mean", lambda v: v / 255.0),
            num("intensity_std", lambda v: v / 255.0),
        ],
        dtype=np.float64,
    )


@dataclass
class Matrix:
    """Data sets x strategies: ``values`` in [0, 1] (NaN: not tried or only failures),
    ``fail`` the failure rate, ``features`` the meta-vectors."""

    datasets: list[str]
    keys: list[str]
    strategies: list[dict[str, Any]]
    values: np.ndarray
    fail: np.ndarray
    std: np.ndarray
    cost_s: np.ndarray
    features: np.ndarray
    evidence: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)
    sources: dict[tuple[int, int], str] = field(default_factory=dict)  # per cell
    # per cell, seconds of ``cost_s`` that are start-up (not scaled by epochs); NaN: unknown
    startup_s: np.ndarray | None = None

    def subset(self, rows: Sequence[int]) -> Matrix:
        idx = list(rows)
        return Matrix(
            [self.datasets[i] for i in idx],
            self.keys,
            self.strategies,
            self.values[idx],
            self.fail[idx],
            self.std[idx],
            self.cost_s[idx],
            self.features[idx],
            {},
            {},
        )


def build_matrix(kb: KnowledgeBase, *, min_datasets: int = 1) -> Matrix:
    """The matrix of ``kb``; data sets without meta-features are left out (the importer
    refuses them, so only registry tasks without a fingerprint can lack them)."""
    datasets = sorted({o.dataset for o in kb.observations if o.dataset in kb.meta})
    count: dict[str, int] = {}
    strat: dict[str, dict[str, Any]] = {}
    for o in kb.observations:
        if o.dataset in kb.meta:
            count[o.key] = count.get(o.key, 0) + 1
            strat.setdefault(o.key, o.strategy)
    keys = sorted(k for k, c in count.items() if c >= min_datasets)
    di = {d: i for i, d in enumerate(datasets)}
    si = {k: j for j, k in enumerate(keys)}
    shape = (len(datasets), len(keys))
    values, fail = np.full(shape, np.nan), np.zeros(shape)
    std, cost = np.full(shape, np.nan), np.full(shape, np.nan)
    startup = np.full(shape, np.nan)
    evidence: dict[tuple[int, int], tuple[int, ...]] = {}
    sources: dict[tuple[int, int], str] = {}
    for o in kb.observations:
        if o.dataset not in di or o.key not in si:
            continue
        i, j = di[o.dataset], si[o.key]
        sources[(i, j)] = o.source
        if o.value is not None:
            values[i, j] = o.value
        fail[i, j] = o.n_failed / max(o.n_runs, 1)
        std[i, j] = o.std if o.std is not None else np.nan
        cost[i, j] = o.cost_s if o.cost_s is not None else np.nan
        startup[i, j] = o.startup_s if o.startup_s is not None else np.nan
        if o.evidence:
            evidence[(i, j)] = o.evidence
    features = (
        np.stack([meta_vector(kb.meta[d]) for d in datasets])
        if datasets
        else np.zeros((0, len(FEATURES)))
    )
    return Matrix(
        datasets,
        keys,
        [strat[k] for k in keys],
        values,
        fail,
        std,
        cost,
        features,
        evidence,
        sources,
        startup,
    )


def supported(train: Matrix, features: np.ndarray) -> np.ndarray:
    """Per strategy, whether it has evidence (a value, or failed runs) on a training data set
    of the same dimensionality (2D/3D) as the data set with meta-vector ``features``: a
    strategy never run there, or run on 3D volumes only for a 2D data set, has no evidence to
    be ranked by. Without any such strategy: those with evidence on any data set."""
    dims = FEATURES.index("dims3")
    evidence = np.isfinite(train.values) | (train.fail > 0)
    if train.features.shape[1] > dims:
        same = np.nan_to_num(train.features[:, dims]) == np.nan_to_num(features[dims])
    else:  # features without a dimensionality (other feature sets): all alike
        same = np.ones(len(train.datasets), bool)
    mask = evidence[same].any(axis=0) if same.any() else np.zeros(len(train.keys), bool)
    return mask if mask.any() else evidence.any(axis=0)


def _ordered(score: np.ndarray, cand: np.ndarray, backed: np.ndarray) -> np.ndarray:
    """The candidates by ``score`` (lower first), those with evidence (``backed``) before
    those without: the median regret a strategy gets where it was never tried must not rank
    it above ones measured there."""
    order = np.lexsort((score, ~backed))
    return order[cand[order]]


def failure_regret(values: np.ndarray) -> np.ndarray:
    """What a strategy that failed on every run costs on each data set (points, per row): the
    regret of the worst strategy that ran there, but at least the median of that worst over
    the data sets where two or more strategies ran: on a data set where only one strategy ran
    (or a few close ones), failing would otherwise cost nothing. With no such data set, the
    whole best value (a failed run yields no model)."""
    ok = np.isfinite(values)
    filled = np.where(ok, values, np.nan)
    with warnings.catch_warnings():  # rows without any value: NaN here, 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.nanmax(filled, axis=1)
        worst = 100.0 * (best - np.nanmin(filled, axis=1))
    several = ok.sum(axis=1) >= 2
    typical = float(np.median(worst[several])) if several.any() else None
    floor = np.full(len(values), typical) if typical is not None else 100.0 * best
    return np.nan_to_num(np.fmax(worst, floor), nan=0.0)


def regrets(values: np.ndarray, fail: np.ndarray | None = None) -> np.ndarray:
    """Regret in metric points (x 100) per cell; missing cells get the row's median regret,
    failures move a cell towards :func:`failure_regret` in proportion to the failure rate (see
    the module docstring). A row without any value (every run on that data set failed) has no
    best to measure from: it gets regret 0 everywhere, which leaves the order of the
    strategies to the other rows."""
    empty = ~np.isfinite(values).any(axis=1, keepdims=True)
    vals = np.where(empty, 0.0, values)
    best = np.nanmax(np.where(np.isnan(vals), -np.inf, vals), axis=1, keepdims=True)
    r = 100.0 * (best - vals)
    med = np.nanmedian(r, axis=1, keepdims=True)
    r = np.where(np.isnan(r), np.broadcast_to(med, r.shape), r)
    if fail is not None:
        worst = np.where(empty[:, 0], 0.0, failure_regret(values))[:, None]
        all_failed = np.isnan(vals) & (fail > 0)
        r = np.where(all_failed, np.broadcast_to(worst, r.shape), (1 - fail) * r + fail * worst)
    return np.asarray(r)


class Standardizer:
    """Scales meta-features by the spread over the training data sets; a distance averages
    over the features both data sets have (NaN-aware), times the number of features."""

    def __init__(self, features: np.ndarray) -> None:
        with warnings.catch_warnings():  # all-NaN feature columns: "unknown", not an error
            warnings.simplefilter("ignore", RuntimeWarning)
            self.mean = np.nanmean(features, axis=0) if len(features) else 0.0
            sd = np.nanstd(features, axis=0) if len(features) else 1.0
        self.sd = np.where(np.isfinite(sd) & (sd > 1e-9), sd, np.nan)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between each row of ``a`` (m, F) and each row of ``b`` (n, F)."""
        za = (a - self.mean) / self.sd
        zb = (b - self.mean) / self.sd
        diff = za[:, None, :] - zb[None, :, :]
        both = np.isfinite(diff)
        n = both.sum(axis=2)
        sq = np.where(both, diff**2, 0.0).sum(axis=2)
        usable = int(np.isfinite(self.sd).sum()) or 1
        with np.errstate(all="ignore"):
            d2 = np.where(n > 0, sq / np.maximum(n, 1) * usable, np.inf)
        return np.sqrt(d2)


def kernel_weights(d: np.ndarray, h: float) -> np.ndarray:
    """Weights ``exp(-d^2 / (2 h^2))`` normalised to sum 1 (uniform for ``h = inf`` or when
    every weight underflows)."""
    if math.isinf(h):
        w = np.ones_like(d)
    else:
        dd = np.where(np.isfinite(d), d, 1e6)
        w = np.exp(-(dd**2) / (2 * h * h) + (dd.min() ** 2) / (2 * h * h))
    s = w.sum()
    return w / s if s > 0 else np.full_like(d, 1.0 / len(d))


@dataclass(frozen=True)
class Ranking:
    """The learner's answer for one data set: strategies best first."""

    order: np.ndarray  # strategy indices, best first
    expected_regret: np.ndarray  # per strategy, points
    expected_value: np.ndarray  # per strategy, [0, 1]
    value_sd: np.ndarray  # per strategy, [0, 1]
    weights: np.ndarray  # per training data set
    bandwidth: float
    # per strategy: the similarity weight of the data sets with a value of it (sum 0..1), and
    # their effective number (Kish: (sum w)^2 / sum w^2; 1 when one data set carries it all)
    evidence_weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_eff: np.ndarray = field(default_factory=lambda: np.zeros(0))
    supported: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def top_k_regret(
    values: np.ndarray,
    order: Sequence[int] | np.ndarray,
    k: int,
    candidates: np.ndarray,
    fail: np.ndarray | None = None,
    failure: float = math.nan,
) -> float:
    """Regret (points) of the best of the first ``k`` of ``order`` against the best candidate,
    on one data set's ``values``. A cell without a value is skipped (never tried there), but
    one whose runs all failed there (``fail`` > 0) is a pick that costs ``failure`` points
    (:func:`failure_regret`): skipping it would score the next pick in its place."""
    known = candidates & np.isfinite(values)
    if not known.any():
        return math.nan
    failed = candidates & ~known & (fail > 0) if fail is not None else np.zeros_like(known)
    best = float(values[known].max())
    picks = [j for j in order if known[j] or failed[j]][:k]
    costs = [100.0 * (best - float(values[j])) if known[j] else failure for j in picks]
    return min(costs) if costs else math.nan


def similarity_label(encoder: str | None, offered: int, used: int) -> str:
    """What the learner compared data sets by, in words, for ``offered`` fits given the
    fingerprints of ``encoder`` of which ``used`` kept them (the others fell back on the
    meta-features: the fingerprints ranked the known data sets' strategies no better, or
    there were fewer than 3 known data sets to judge them by)."""
    if encoder is None or offered == 0:
        return "meta-features"
    if used == offered:
        return f"meta-features + fingerprint ({encoder})"
    if used == 0:
        return f"meta-features (fingerprints of {encoder} not used)"
    return f"meta-features + fingerprint ({encoder}) in {used} of {offered} fits"


def _median_off_diagonal(d: np.ndarray) -> float:
    """Median of the finite, positive off-diagonal entries of a square matrix (NaN if none)."""
    off = d[~np.eye(len(d), dtype=bool)]
    off = off[np.isfinite(off) & (off > 0)]
    return float(np.median(off)) if len(off) else math.nan


class KernelRegret:
    """The learner of the module docstring. ``fit`` picks the bandwidth by nested LOO."""

    name = LEARNER
    version = LEARNER_VERSION

    def __init__(self, bandwidths: Sequence[float] = BANDWIDTHS, k: int = 3) -> None:
        self.bandwidths = tuple(bandwidths)
        self.k = k
        self.h = math.inf
        self._train: Matrix | None = None
        self._fp_scale = math.nan  # fingerprint distance -> meta-feature distance units
        self._typical = math.nan  # a pair without fingerprints: the median distance
        # the fit was given fingerprint distances with a known pair among the training data
        # sets (whether it then kept them: uses_fingerprints)
        self.fingerprints_offered = False

    @property
    def uses_fingerprints(self) -> bool:
        """Whether fingerprint distances between training data sets entered the fit."""
        return math.isfinite(self._fp_scale)

    def _fp_term(self, fp: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        """The scaled fingerprint distances (``typical`` where unknown); zeros without
        fingerprints in the fit."""
        if not self.uses_fingerprints:
            return np.zeros(shape)
        raw = np.full(shape, np.nan) if fp is None else np.asarray(fp, np.float64)
        return np.where(np.isfinite(raw), raw * self._fp_scale, self._typical)

    def fit(
        self,
        train: Matrix,
        candidates: np.ndarray | None = None,
        fingerprints: np.ndarray | None = None,
    ) -> KernelRegret:
        """Remember ``train``; choose ``h`` minimising mean top-1 plus best-of-``k`` regret
        when each training data set in turn is left out. ``fingerprints``: fingerprint
        distances between the training data sets (n, n; NaN where unknown), combined with the
        meta-feature distance as the module docstring says (ignored when no pair is known, and
        when they do not lower that loss below the meta-features' alone)."""
        self._train = train
        self._r = regrets(train.values, train.fail)
        self._failure = failure_regret(train.values)
        self._std = Standardizer(train.features)
        n = len(train.datasets)
        cand = np.ones(len(train.keys), bool) if candidates is None else candidates
        d_meta = self._std.distances(train.features, train.features)
        self.fingerprints_offered = self._set_fingerprint_scale(fingerprints, d_meta)
        if n < 3:  # no leave-one-out to choose by: the plain mean, metadata alone
            self.h = self.bandwidths[0] if len(self.bandwidths) == 1 else math.inf
            self._drop_fingerprints()
            return self
        loss, self.h = self._choose_h(train, cand, d_meta)
        if self.fingerprints_offered:
            fp_loss, fp_h = self._choose_h(train, cand, self._combined(d_meta, fingerprints))
            # Fingerprints count only where they rank the known data sets' strategies better
            # than the meta-features alone do: otherwise they are unreliable for this choice
            # (an encoder that never saw these modalities), and the answer falls back on
            # metadata alone.
            if fp_loss < loss - 1e-9:
                self.h = fp_h
            else:
                self._drop_fingerprints()
        return self

    def _set_fingerprint_scale(self, fingerprints: np.ndarray | None, d_meta: np.ndarray) -> bool:
        """Scale the fingerprint distances to the meta-feature distances over the training
        pairs; whether that was possible (fingerprints given, and a known pair among them)."""
        self._drop_fingerprints()
        if fingerprints is None or len(d_meta) < 2:
            return False
        med_meta, med_fp = _median_off_diagonal(d_meta), _median_off_diagonal(fingerprints)
        if math.isfinite(med_fp) and math.isfinite(med_meta):
            self._fp_scale, self._typical = med_meta / med_fp, med_meta
        return self.uses_fingerprints

    def _drop_fingerprints(self) -> None:
        """Compare by meta-features alone from now on."""
        self._fp_scale = self._typical = math.nan

    def _combined(self, d_meta: np.ndarray, fingerprints: np.ndarray | None) -> np.ndarray:
        """The meta-feature distances ``d_meta`` combined with the scaled ``fingerprints``
        (the same shape; unknown ones typical; none in the fit: ``d_meta`` itself)."""
        extra = self._fp_term(fingerprints, d_meta.shape)
        if extra.ndim == 2:  # between the training data sets: a data set is 0 from itself
            np.fill_diagonal(extra, 0.0)
        return np.asarray(np.sqrt(d_meta**2 + extra**2))

    def _choose_h(self, train: Matrix, cand: np.ndarray, d_all: np.ndarray) -> tuple[float, float]:
        """(loss, h): the bandwidth of :data:`BANDWIDTHS` with the least summed top-1 plus
        best-of-``k`` regret when each training data set in turn is ranked from the others
        with distances ``d_all``."""
        n = len(train.datasets)
        best: tuple[float, float] | None = None
        outside = [[j for j in range(n) if j != i] for i in range(n)]
        backed = [supported(train.subset(outside[i]), train.features[i]) for i in range(n)]
        for h in self.bandwidths:
            loss = 0.0
            for i in range(n):
                others = outside[i]
                w = kernel_weights(d_all[i, others], h)
                order = _ordered(w @ self._r[others], cand, backed[i])
                v = train.values[i]
                if not np.isfinite(v[cand]).any():
                    continue
                fail, cost = train.fail[i], float(self._failure[i])
                loss += top_k_regret(v, order, 1, cand, fail, cost)
                loss += top_k_regret(v, order, self.k, cand, fail, cost)
            if best is None or loss < best[0] - 1e-9:
                best = (loss, h)
        assert best is not None
        return best

    def distances(self, features: np.ndarray, fingerprints: np.ndarray | None = None) -> np.ndarray:
        """Combined distances from a data set with meta-vector ``features`` (and fingerprint
        distances ``fingerprints`` to each training data set, NaN where unknown) to the
        training data sets."""
        assert self._train is not None
        d = self._std.distances(features[None, :], self._train.features)[0]
        return self._combined(d, fingerprints)

    def rank(
        self,
        features: np.ndarray,
        candidates: np.ndarray | None = None,
        fingerprints: np.ndarray | None = None,
    ) -> Ranking:
        """Rank the strategies for a data set with meta-vector ``features``; ``fingerprints``:
        its fingerprint distances to each training data set (NaN where unknown)."""
        train = self._train
        assert train is not None, "fit first"
        d = self.distances(features, fingerprints)
        w = kernel_weights(d, self.h)
        cand = np.ones(len(train.keys), bool) if candidates is None else candidates
        exp_r = w @ self._r
        backed = supported(train, features)
        order = _ordered(exp_r, cand, backed)
        vals = train.values
        known = np.isfinite(vals)
        wk = w[:, None] * known
        tot = wk.sum(axis=0)
        with np.errstate(all="ignore"):
            mean = np.where(tot > 0, (wk * np.nan_to_num(vals)).sum(axis=0) / tot, np.nan)
            var = np.where(
                tot > 0, (wk * (np.nan_to_num(vals) - mean) ** 2).sum(axis=0) / tot, np.nan
            )
            n_eff = np.where(tot > 0, tot**2 / (w[:, None] ** 2 * known).sum(axis=0), 0.0)
        return Ranking(order, exp_r, mean, np.sqrt(var), w, self.h, tot, n_eff, backed)
