"""The gate's paired bootstrap, for a task scored by AUC or macro F1.

AUC and macro F1 are not means of per-image scores, so McNemar's test and the paired t test
(:mod:`pomlia_hpc.loop.stats`) cannot carry them. Instead the images are resampled with
replacement, the same resample for both models (the pairing), and the task's metric of each
model is computed on each resample; ``d* = challenger - champion`` per resample is the
bootstrap distribution of the difference.

- **Non-inferiority** (fixed test split): the (1 - alpha) lower bound is the alpha quantile of
  ``d*`` (percentile bootstrap); passed when above ``-margin`` (metric points: 0.02 is 2 AUC
  points).
- **Superiority** (production test rows): the one-sided p-value is
  ``(1 + #{d* <= 0}) / (1 + B)``, the share of resamples in which the challenger is not
  better; passed when below alpha (the test that inverts the same percentile bound).
- A resample on which the metric is undefined (a binary AUC whose resample drew no positive)
  counts as one where the challenger is not better, and as the lowest difference for the
  bound. Left out, the others would all hold the rare images: one positive image ranked
  higher by the challenger gave p < 0.001, though nothing was shown beyond that one image.

Every metric offered (:data:`pomlia_hpc.vocab.METRICS`) is higher-is-better, so "better" is
``d* > 0`` for each. The metrics are the task's (:mod:`pomlia_hpc.automl.metrics`): AUC is the
mean one-vs-rest AUC over the classes (binary: of p(class 1); multi-label: over the labels)
where it is defined, and macro F1 the mean F1 over the classes (labels) present in the truth or
the predictions; in a resample, both sets are those of the resampled images. A resample is
computed as integer weights on the images (how often each was drawn), so an AUC is a weighted
Mann-Whitney count and an F1 a weighted confusion count: no image arrays are copied.

A model's output that is not finite for an image is a missing answer, as in the task's metrics:
the image stays in the pairs, ranked on the wrong side of every other image for AUC; for F1 it
predicts no class (a multi-label image: every label wrong).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pomlia_hpc.loop.stats import GateResult
from pomlia_hpc.vocab import MULTI_LABEL_THRESHOLD, TaskType, normalize_task_type

#: The test's name in a gate's evidence (``test``): ``paired bootstrap (auc)``.
BOOTSTRAP = "paired bootstrap"
#: Metrics the bootstrap gates on (accuracy keeps McNemar's and the paired t test).
BOOTSTRAP_METRICS = ("auc", "f1_macro")
#: Resamples at least; more for a small alpha (20 / alpha), so that a p-value below alpha can
#: be observed at all (the smallest is 1 / (1 + B)), at most :data:`MAX_RESAMPLES`.
MIN_RESAMPLES = 2000
MAX_RESAMPLES = 200_000
#: Fewest images the bootstrap runs on: a resample of a handful of images is mostly copies of
#: a few, and its quantiles say little. With fewer the test is not run and does not pass.
MIN_BOOTSTRAP_IMAGES = 10
#: The random generator's seed: the same images and outputs give the same decision, in any
#: order (:func:`canonical_order`).
SEED = 0
#: Resamples computed at once (bounds the memory: a few (chunk, n) float arrays).
_CHUNK = 250


def resamples_for(alpha: float) -> int:
    """How many resamples a gate at level ``alpha`` draws (see :data:`MIN_RESAMPLES`)."""
    return int(min(MAX_RESAMPLES, max(MIN_RESAMPLES, math.ceil(20 / alpha))))


def probabilities(logits: np.ndarray, task_type: str) -> np.ndarray:
    """float64 probabilities from ``logits`` (n, C): a sigmoid per label for multi-label tasks,
    a softmax otherwise (what the task's metrics score); rows with a non-finite logit are NaN."""
    z = np.asarray(logits, np.float64)
    missing = np.asarray(~np.isfinite(z).all(axis=1))
    z = np.where(missing[:, None], 0.0, z)
    if normalize_task_type(task_type) == TaskType.MULTI_LABEL:
        p = 1.0 / (1.0 + np.exp(-z))
    else:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
    return np.where(missing[:, None], np.nan, p)


def _columns(task_type: str, truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """(T, P, A, S): per class or label, the 0/1 truth (n, K) and prediction (n, K; a missing
    output predicts no class, or every label wrong) macro F1 counts; per AUC column, the 0/1
    truth and the score ranked (+-inf for a missing output: on the wrong side of all others)."""
    task = normalize_task_type(task_type)
    missing = np.isnan(probs).any(axis=1)
    if task == TaskType.MULTI_LABEL:
        t = truth.reshape(len(truth), -1) > 0
        # A missing output gets every label wrong (a false positive where the truth is 0), as
        # the task's metrics count it.
        pred = np.where(missing[:, None], ~t, probs > MULTI_LABEL_THRESHOLD)
        t_auc, s = t, probs
    else:
        y = truth.reshape(len(truth), -1)[:, 0]
        classes = np.arange(probs.shape[1])[None, :]
        t = classes == y[:, None]
        if task == TaskType.BINARY:
            # MedMNIST's binary ACC and AUC read p(class 1) alone; its F1 covers both classes.
            chosen = (probs[:, -1] > 0.5).astype(np.int64)
            t_auc, s = t[:, -1:], probs[:, -1:]
        else:
            chosen = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
            t_auc, s = t, probs
        pred = (classes == chosen[:, None]) & ~missing[:, None]
    s = np.where(missing[:, None], np.where(t_auc, -np.inf, np.inf), s)
    return t, pred, t_auc, s


def weighted_auc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one column per resample: ``truth`` (n,) bool, ``score`` (n,), ``weights`` (B, n)
    how often each image was drawn. A positive ranked above a negative counts 1, a tie 1/2
    (the Mann-Whitney count, as scikit-learn's ``roc_auc_score``). NaN where a resample holds
    no positive or no negative."""
    order = np.argsort(score, kind="stable")
    s, t, w = score[order], truth[order], weights[:, order]
    neg = w * ~t
    cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(neg, axis=1)], axis=1)
    first = np.r_[True, s[1:] != s[:-1]]  # the first image of each group of equal scores
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    below, within = cum[:, starts], cum[:, ends] - cum[:, starts]
    pos = w * t
    count = (pos * (below[:, group] + 0.5 * within[:, group])).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, count / pairs, np.nan)


def weighted_f1(truth: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro F1 per resample: ``truth`` and ``pred`` (n, K) bool, ``weights`` (B, n); the mean
    over the classes present in the resample's truth or predictions (NaN with none)."""
    tp = weights @ (truth & pred)
    fp = weights @ (~truth & pred)
    fn = weights @ (truth & ~pred)
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(den > 0, 2 * tp / den, np.nan)
    present = np.isfinite(f1).any(axis=1)
    out = np.full(len(weights), np.nan)
    out[present] = np.nanmean(f1[present], axis=1)
    return out


def metric_of(
    metric: str, task_type: str, truth: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``metric`` (``auc`` or ``f1_macro``) of ``probs`` (n, C; NaN rows missing) against
    ``truth`` per row of ``weights`` (B, n); NaN where undefined (no class with both
    positives and negatives for AUC)."""
    t, pred, t_auc, s = _columns(task_type, truth, probs)
    w = np.asarray(weights, np.float64)
    if metric == "f1_macro":
        return weighted_f1(t, pred, w)
    if metric != "auc":
        raise ValueError(f"metric {metric!r}: the bootstrap gates on {BOOTSTRAP_METRICS}")
    per = np.stack([weighted_auc(t_auc[:, k], s[:, k], w) for k in range(s.shape[1])])
    out = np.full(len(w), np.nan)
    defined = np.isfinite(per).any(axis=0)
    out[defined] = np.nanmean(per[:, defined], axis=0)
    return out


@dataclass(frozen=True)
class PairedMetric:
    """A task metric of two models on the same ``n`` images, and the paired bootstrap of its
    difference (challenger - champion) at level ``alpha``."""

    metric: str
    n: int
    champion_value: float  # the metric on the images; NaN when undefined
    challenger_value: float
    difference: float
    lower_bound: float  # (1 - alpha) percentile bound of the difference; -inf when not run
    p_value: float  # one-sided, that the challenger is better; 1.0 when not run
    resamples: int
    undefined_resamples: int  # the metric undefined on them: counted as not better
    champion_missing: int  # images with a non-finite output (a missing answer)
    challenger_missing: int
    seed: int = SEED

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedMetric:
        """Read back from a gate's evidence (None for NaN and infinities)."""
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("champion_value", "challenger_value", "difference"):
            kw[k] = float("nan") if kw.get(k) is None else kw[k]
        kw["lower_bound"] = float("-inf") if kw.get("lower_bound") is None else kw["lower_bound"]
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tested(self) -> bool:
        """Whether the bootstrap ran (enough images, the metric defined for both models)."""
        return self.resamples > self.undefined_resamples


def paired_bootstrap(
    metric: str,
    task_type: str,
    truth: np.ndarray,
    champion_logits: np.ndarray,
    challenger_logits: np.ndarray,
    alpha: float,
    *,
    seed: int = SEED,
) -> PairedMetric:
    """Both models' ``metric`` on the images and the paired bootstrap of the difference (see
    the module docstring); below :data:`MIN_BOOTSTRAP_IMAGES` images, or with the metric
    undefined for a model on them, the bootstrap is not run (bound -inf, p 1)."""
    truth, champion_logits, challenger_logits = canonical_order(
        truth, champion_logits, challenger_logits
    )
    pa = probabilities(champion_logits, task_type)
    pb = probabilities(challenger_logits, task_type)
    n = len(truth)
    ones = np.ones((1, n))
    a = float(metric_of(metric, task_type, truth, pa, ones)[0]) if n else math.nan
    b = float(metric_of(metric, task_type, truth, pb, ones)[0]) if n else math.nan
    miss = (int(np.isnan(pa).any(axis=1).sum()), int(np.isnan(pb).any(axis=1).sum()))
    if n < MIN_BOOTSTRAP_IMAGES or not (math.isfinite(a) and math.isfinite(b)):
        return PairedMetric(metric, n, a, b, b - a, -math.inf, 1.0, 0, 0, *miss, seed)
    total = resamples_for(alpha)
    rng = np.random.default_rng(seed)
    diffs = []
    for lo in range(0, total, _CHUNK):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_CHUNK, total - lo))
        diffs.append(
            metric_of(metric, task_type, truth, pb, w) - metric_of(metric, task_type, truth, pa, w)
        )
    d = np.concatenate(diffs)
    undefined = int((~np.isfinite(d)).sum())
    if undefined == total:
        return PairedMetric(metric, n, a, b, b - a, -math.inf, 1.0, total, total, *miss, seed)
    # A resample on which the metric is undefined (it drew no positive of a binary task) is
    # one where the challenger is not shown better, and the lowest difference for the bound:
    # left out, the rest all held the rare images, and one positive ranked higher decided.
    d = np.where(np.isfinite(d), d, -np.inf)
    lower = float(np.quantile(d, alpha, method="lower"))
    p = (1 + int((d <= 0).sum())) / (1 + total)
    return PairedMetric(metric, n, a, b, b - a, lower, p, total, undefined, *miss, seed)


def canonical_order(
    truth: np.ndarray, champion_logits: np.ndarray, challenger_logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images sorted by their values (truth, then both models' outputs): a resample draws
    images by position, so without this the same images in another order (a harvest read in
    another file order, a version added again) drew other resamples and could get another
    decision. Images with equal values are interchangeable, so the order is one for any input
    order. A non-finite output sorts as its value (NaN last)."""
    n = len(truth)
    if n == 0:
        return truth, champion_logits, challenger_logits
    rows = [
        np.asarray(a, np.float64).reshape(n, -1)
        for a in (truth, champion_logits, challenger_logits)
    ]
    keys = np.concatenate(rows, axis=1)
    order = np.lexsort(keys.T[::-1])  # the first column the primary key
    return truth[order], champion_logits[order], challenger_logits[order]


def test_name(metric: str) -> str:
    """The evidence's ``test`` of a bootstrap gate on ``metric``: ``paired bootstrap (auc)``."""
    return f"{BOOTSTRAP} ({metric})"


def decide_bootstrap(
    fixed: PairedMetric, production: PairedMetric, *, margin: float, alpha: float
) -> GateResult:
    """Pass when the bootstrap bound of the difference on ``fixed`` is above ``-margin`` and
    its p-value on ``production`` below ``alpha`` (module docstring); both were drawn at
    ``alpha`` (:func:`paired_bootstrap`)."""
    if not (0 < alpha < 1) or margin < 0:
        raise ValueError("alpha must be in (0, 1) and margin >= 0")
    m = fixed.metric
    noninferior = fixed.tested and fixed.lower_bound > -margin
    superior = production.tested and production.p_value < alpha
    reasons = []
    if fixed.n == 0:
        reasons.append("no fixed test images")
    elif not fixed.tested:
        reasons.append(f"not shown non-inferior on the fixed test split: {_untested(fixed)}")
    elif not noninferior:
        reasons.append(
            f"not shown non-inferior on the fixed test split ({_text(fixed)}): lower bound "
            f"{fixed.lower_bound:+.3f} <= -margin {-margin:+.3f}"
        )
    if production.n == 0:
        reasons.append("no labelled production test images")
    elif not production.tested:
        reasons.append(f"not shown better on production data: {_untested(production)}")
    elif not superior:
        floor = 1 / (1 + production.resamples)
        why = f" (the smallest p of {production.resamples} resamples)" if alpha <= floor else ""
        reasons.append(
            f"not shown better on production data: bootstrap p = {production.p_value:.3g} >= "
            f"alpha {alpha:g}{why} ({_text(production)})"
        )
    reason = (
        "; ".join(reasons)
        if reasons
        else (
            f"non-inferior ({_text(fixed)}: lower bound {fixed.lower_bound:+.3f} > "
            f"{-margin:+.3f}) and better on production (bootstrap p = {production.p_value:.3g}"
            f" < {alpha:g}; {_text(production)})"
        )
    )
    return GateResult(
        noninferior and superior,
        noninferior,
        superior,
        margin,
        alpha,
        fixed,
        production,
        fixed.lower_bound,
        production.p_value,
        reason,
        test_name(m),
        m,
    )


def _text(s: PairedMetric) -> str:
    """``auc 0.912 → 0.874 over 60 images`` and the missing outputs."""
    text = (
        f"{s.metric} {s.champion_value:.3f} → {s.challenger_value:.3f} over {s.n} images, "
        f"paired bootstrap of {s.resamples} resamples"
    )
    if s.undefined_resamples:
        text += f" ({s.undefined_resamples} with {s.metric} undefined, counted as not better)"
    for who, k in (("champion", s.champion_missing), ("challenger", s.challenger_missing)):
        if k:
            text += f"; no output from the {who} for {k} (counted wrong)"
    return text


def _untested(s: PairedMetric) -> str:
    """Why the bootstrap did not run on ``s``'s images."""
    if s.n < MIN_BOOTSTRAP_IMAGES:
        return f"fewer than {MIN_BOOTSTRAP_IMAGES} images, not tested ({s.n})"
    if not (math.isfinite(s.champion_value) and math.isfinite(s.challenger_value)):
        return (
            f"{s.metric} is undefined on these {s.n} images (a class without both positive and "
            "negative images), not tested"
        )
    return f"{s.metric} undefined on every resample, not tested"
