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
``d* > 0`` for each. The metrics are the task's, computed on each resample by
:mod:`pomlia_hpc.automl.resampled` (which the monitor's performance test shares): a resample is
integer weights on the images, an AUC a weighted Mann-Whitney count, an F1 a weighted confusion
count; a non-finite output is a missing answer, counted wrong.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from pomlia_hpc.automl.resampled import (
    CHUNK,
    FEW_CLASS_IMAGES,
    RESAMPLED_METRICS,
    SEED,
    draw_weights,
    metric_of,
    resamples_for,
    sparse_classes,
)
from pomlia_hpc.loop.stats import GateResult
from pomlia_hpc.vocab import TaskType, normalize_task_type

#: The test's name in a gate's evidence (``test``): ``paired bootstrap (auc)``.
BOOTSTRAP = "paired bootstrap"
#: Metrics the bootstrap gates on (accuracy keeps McNemar's and the paired t test).
BOOTSTRAP_METRICS = RESAMPLED_METRICS
#: Fewest images the bootstrap runs on: a resample of a handful of images is mostly copies of
#: a few, and its quantiles say little. With fewer the test is not run and does not pass.
MIN_BOOTSTRAP_IMAGES = 10


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
    #: Classes (by index, as text) entering the macro mean from fewer than
    #: :data:`~pomlia_hpc.automl.resampled.FEW_CLASS_IMAGES` images, with that count.
    few_image_classes: dict[str, int] = field(default_factory=dict)

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
    the module docstring), with the classes that enter its macro mean from few images."""
    got = _bootstrap(metric, task_type, truth, champion_logits, challenger_logits, alpha, seed)
    width = np.asarray(champion_logits).reshape(len(truth), -1).shape[1] if len(truth) else 0
    few = sparse_classes(metric, task_type, np.asarray(truth), width) if width else {}
    return replace(got, few_image_classes={str(k): v for k, v in few.items()})


def _bootstrap(
    metric: str,
    task_type: str,
    truth: np.ndarray,
    champion_logits: np.ndarray,
    challenger_logits: np.ndarray,
    alpha: float,
    seed: int,
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
    for lo in range(0, total, CHUNK):
        w = draw_weights(rng, n, min(CHUNK, total - lo))
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
    if s.few_image_classes:
        few = ", ".join(f"{c} ({k})" for c, k in s.few_image_classes.items())
        text += (
            f"; classes entering the mean from fewer than {FEW_CLASS_IMAGES} images, each with "
            f"full weight: {few}"
        )
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
