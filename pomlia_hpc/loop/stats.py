"""The gate's two paired tests: on per-image correctness (single-label tasks) or on per-image
label-wise accuracy (multi-label tasks).

Champion and challenger are scored on the same images, so the tests use the pairs. For a
single-label task (:class:`PairedCounts`, :func:`decide`): ``b`` = images only the champion gets
right, ``c`` = images only the challenger gets right.

- **Non-inferiority** on the fixed test split: the challenger's accuracy minus the champion's,
  with a one-sided lower confidence bound at level 1 - alpha from the paired (Wald) variance of the
  difference, ``var = ((b + c) - (c - b)^2 / n) / n^2``; passed when the bound is above
  ``-margin``. (The normal approximation is what the margin's scale needs; on a few dozen
  images the bound is wide and the test rightly does not pass.)
- **Superiority** on recent labelled production data: McNemar's exact test, one-sided,
  ``p = P(X >= c)`` for ``X ~ Binomial(b + c, 1/2)``; passed when ``p < alpha``.

For a multi-label task (:class:`PairedScores`, :func:`decide_labelwise`) each image's score is
the fraction of its labels a model gets right (0..1), the per-image share of the task's ACC,
and both tests are one paired t test on the per-image differences ``d = challenger - champion``
(:func:`paired_t`): non-inferiority when its one-sided (1 - alpha) lower bound of the mean
difference is above ``-margin``, superiority when its one-sided p-value is below ``alpha`` (the
exact sign test's on the differing images when at most 20 differ). A t
test and not Wilcoxon's signed-rank test, because the quantity gated is the mean (the task's
ACC is the mean over images and labels): the signed-rank test is about the median-like centre
of the differences and can favour a challenger whose mean label-wise accuracy is lower (many
small gains, a few large losses).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from pomlia_hpc.errors import InputError

if TYPE_CHECKING:
    from pomlia_hpc.loop.bootstrap import PairedMetric


@dataclass(frozen=True)
class PairedCounts:
    """Per-image correctness of two models on the same ``n`` images."""

    n: int
    champion_correct: int
    challenger_correct: int
    only_champion: int  # b
    only_challenger: int  # c

    @classmethod
    def of(cls, champion: np.ndarray, challenger: np.ndarray) -> PairedCounts:
        a, b = np.asarray(champion, bool), np.asarray(challenger, bool)
        if a.shape != b.shape:
            raise ValueError(f"paired results of different lengths: {a.shape} vs {b.shape}")
        return cls(
            n=int(a.size),
            champion_correct=int(a.sum()),
            challenger_correct=int(b.sum()),
            only_champion=int((a & ~b).sum()),
            only_challenger=int((~a & b).sum()),
        )

    @property
    def champion_accuracy(self) -> float:
        return self.champion_correct / self.n if self.n else float("nan")

    @property
    def challenger_accuracy(self) -> float:
        return self.challenger_correct / self.n if self.n else float("nan")

    @property
    def difference(self) -> float:
        """Challenger accuracy minus champion accuracy."""
        return (self.only_challenger - self.only_champion) / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "champion_accuracy": self.champion_accuracy,
            "challenger_accuracy": self.challenger_accuracy,
            "difference": self.difference,
        }


def mcnemar_exact_p(only_champion: int, only_challenger: int) -> float:
    """One-sided exact McNemar p-value that the challenger is better (1.0 with no discordant
    pairs): ``P(X >= c)``, ``X ~ Binomial(b + c, 1/2)``."""
    b, c = only_champion, only_challenger
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(c, n + 1))
    return min(1.0, tail / 2.0**n)


def noninferiority_lower_bound(counts: PairedCounts, alpha: float) -> float:
    """One-sided (1 - ``alpha``) lower confidence bound of the accuracy difference."""
    n, b, c = counts.n, counts.only_champion, counts.only_challenger
    if n == 0:
        return float("-inf")
    var = max(((b + c) - (c - b) ** 2 / n) / n**2, 0.0)
    return (c - b) / n - NormalDist().inv_cdf(1 - alpha) * math.sqrt(var)


#: The test a gate used, recorded in its evidence as ``test`` (shown by ``deploy history``,
#: ``loop show`` and ``lineage``): single-label tasks (and every gate recorded before the
#: key existed), and multi-label tasks.
MCNEMAR = "McNemar"
PAIRED_T = "paired t (label-wise)"
#: ... of a forced promotion with no data to gate on (no test ran).
NO_TEST = "none"

#: Fewest images a label-wise test (:func:`paired_t`) runs on: the t test leans on a normal
#: approximation of the mean of bounded, discrete differences, which a handful of images
#: cannot carry (and 10 images that all favour one side are already p = 0.001 by the sign
#: test). With fewer the test is not run and does not pass.
MIN_LABELWISE_IMAGES = 10
#: Most images that differ (nonzero d) for which the superiority p-value is the exact sign
#: test's on them, not the t test's: a mean carried by a few differing images among many ties
#: is no normal mean (3 images one label better among 100 gave t p = 0.042, while McNemar's
#: exact test on the same 3-to-0 split of a single-label task gives 0.125).
SIGN_TEST_MAX_CHANGED = 20


@dataclass(frozen=True)
class PairedScores:
    """Per-image label-wise accuracy (fraction of the image's labels right, 0..1) of two
    models on the same ``n`` images; the accuracies are the means over the images."""

    n: int
    champion_accuracy: float
    challenger_accuracy: float
    difference: float  # mean of challenger - champion per image
    sd_difference: float  # sample standard deviation of those (ddof 1); NaN below 2 images
    challenger_better: int  # images where the challenger scores higher
    champion_better: int
    champion_missing: int  # images the model gave no usable output for (scored 0)
    challenger_missing: int

    @classmethod
    def of(cls, champion: np.ndarray, challenger: np.ndarray) -> PairedScores:
        """From per-image scores in [0, 1]; NaN is a missing output."""
        a, b = np.asarray(champion, float), np.asarray(challenger, float)
        if a.shape != b.shape:
            raise ValueError(f"paired results of different lengths: {a.shape} vs {b.shape}")
        # A missing output scores 0 (no label right) and the image stays in the pairs: dropping
        # it would let a model that fails on hard images skip exactly those, and both models
        # must be compared on the same images.
        miss_a, miss_b = np.isnan(a), np.isnan(b)
        a, b = np.where(miss_a, 0.0, a), np.where(miss_b, 0.0, b)
        d = b - a
        n = int(d.size)
        return cls(
            n=n,
            champion_accuracy=float(a.mean()) if n else float("nan"),
            challenger_accuracy=float(b.mean()) if n else float("nan"),
            difference=float(d.mean()) if n else float("nan"),
            sd_difference=float(d.std(ddof=1)) if n > 1 else float("nan"),
            challenger_better=int((d > 0).sum()),
            champion_better=int((d < 0).sum()),
            champion_missing=int(miss_a.sum()),
            challenger_missing=int(miss_b.sum()),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedScores:
        """Read back from a gate's evidence (None for NaN, see ``gate``)."""
        kw = {k: d[k] for k in cls.__dataclass_fields__}
        for k, v in kw.items():
            if v is None:
                kw[k] = float("nan")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_t(scores: PairedScores, alpha: float) -> tuple[float, float, str]:
    """The one-sided paired t test on the per-image differences (challenger - champion):
    ``(lower, p, note)``: the (1 - ``alpha``) lower confidence bound of the mean difference
    (label-wise accuracy, a fraction), the p-value that the challenger is better, and a note on
    a degenerate case ("" when the t test ran). Below :data:`MIN_LABELWISE_IMAGES` images it
    is not run: ``(-inf, 1.0, note)``, so neither test passes. When at most
    :data:`SIGN_TEST_MAX_CHANGED` images differ, ``p`` is the exact one-sided sign test's on
    them (the lower bound stays the t test's)."""
    # Imported here, not at the top: the loop commands' option checks import this module, and
    # scipy.stats alone takes a few tenths of a second to import.
    from scipy import stats

    n, mean, sd = scores.n, scores.difference, scores.sd_difference
    if n < MIN_LABELWISE_IMAGES:
        return float("-inf"), 1.0, ""
    if not sd > 0:
        # Every image's difference is the same (all zero included): the t statistic has no
        # spread. The bound is that difference itself; the p-value is the exact sign test's,
        # as every image moved the same way (0.5^n when the challenger gained on each, 1 when
        # it gained on none: all zero means the models tied on every image, no evidence).
        p = 0.5**n if mean > 0 else 1.0
        return mean, p, f"every image differs by {mean:+.3f}, so the sign test's p"
    se = sd / math.sqrt(n)
    lower = mean - float(stats.t.ppf(1 - alpha, n - 1)) * se
    changed = scores.challenger_better + scores.champion_better
    if changed <= SIGN_TEST_MAX_CHANGED:
        # One-sided exact sign test on the images that differ, ties left out: the count form
        # of a sign-flip permutation test, McNemar's exact test when each image has one label.
        p = float(stats.binom.sf(scores.challenger_better - 1, changed, 0.5))
        return lower, p, f"only {changed} image(s) differ, so the exact sign test's p"
    p = float(stats.t.sf(mean / se, n - 1))
    return lower, p, ""


@dataclass(frozen=True)
class GateResult:
    """Both tests, their inputs and the decision; ``test`` names the test used, ``metric`` the
    task metric compared (every one offered is higher-is-better)."""

    passed: bool
    noninferior: bool
    superior: bool
    margin: float
    alpha: float
    fixed_test: PairedCounts | PairedScores | PairedMetric
    production: PairedCounts | PairedScores | PairedMetric
    lower_bound: float
    p_value: float
    reason: str
    test: str = MCNEMAR
    metric: str = "acc"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # with ``test``
        d["fixed_test"] = self.fixed_test.to_dict()
        d["production"] = self.production.to_dict()
        return d


def champion_and_challenger(paired: PairedCounts | PairedScores | PairedMetric) -> list[float]:
    """The two models' figures on one split of a gate: accuracies, or the task metric a
    bootstrap gate compared (:class:`~pomlia_hpc.loop.bootstrap.PairedMetric`)."""
    if isinstance(paired, PairedCounts | PairedScores):
        return [paired.champion_accuracy, paired.challenger_accuracy]
    return [paired.champion_value, paired.challenger_value]


def check_levels(margin: float, alpha: float) -> None:
    """One :class:`InputError` for a margin or significance level the gate cannot use (checked
    before a promotion or a loop run starts, not when the gate is reached)."""
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha}: expected a significance level between 0 and 1")
    # A difference of the task's metric (accuracy, AUC, F1) lies in [-1, 1]: a margin of 1 or
    # more lets every challenger through the non-inferiority test (`--margin 2` meant 2
    # points, which is 0.02).
    if not 0 <= margin < 1:  # NaN too
        raise InputError(
            f"--margin {margin}: expected a fraction in [0, 1) (e.g. 0.02 for 2 points of "
            "the task's metric; 1 or more would let any challenger pass)"
        )


def decide(
    fixed: PairedCounts, production: PairedCounts, *, margin: float, alpha: float
) -> GateResult:
    """Pass when the challenger is non-inferior on ``fixed`` and better on ``production``."""
    if not (0 < alpha < 1) or margin < 0:
        raise ValueError("alpha must be in (0, 1) and margin >= 0")
    lower = noninferiority_lower_bound(fixed, alpha)
    p = mcnemar_exact_p(production.only_champion, production.only_challenger)
    noninferior = fixed.n > 0 and lower > -margin
    superior = production.n > 0 and p < alpha
    reasons = []
    if fixed.n == 0:
        reasons.append("no fixed test images")
    elif not noninferior:
        reasons.append(
            f"not shown non-inferior on the fixed test split: lower bound {lower:+.3f} "
            f"<= -margin {-margin:+.3f}"
        )
    if production.n == 0:
        reasons.append("no labelled production test images")
    elif not superior:
        reasons.append(
            f"not shown better on production data: McNemar p = {p:.3g} >= alpha {alpha:g} "
            f"(only challenger right {production.only_challenger}, only champion right "
            f"{production.only_champion})"
        )
    passed = noninferior and superior
    reason = (
        "; ".join(reasons)
        if reasons
        else (
            f"non-inferior (lower bound {lower:+.3f} > {-margin:+.3f}) and better on production "
            f"(McNemar p = {p:.3g} < {alpha:g})"
        )
    )
    return GateResult(
        passed, noninferior, superior, margin, alpha, fixed, production, lower, p, reason
    )


def decide_labelwise(
    fixed: PairedScores, production: PairedScores, *, margin: float, alpha: float
) -> GateResult:
    """:func:`decide` for a multi-label task, on per-image label-wise accuracy: pass when the
    paired t test's lower bound on ``fixed`` is above ``-margin`` and its p-value on
    ``production`` below ``alpha`` (module docstring)."""
    if not (0 < alpha < 1) or margin < 0:
        raise ValueError("alpha must be in (0, 1) and margin >= 0")
    lower, _, fixed_note = paired_t(fixed, alpha)
    _, p, prod_note = paired_t(production, alpha)
    noninferior = fixed.n >= MIN_LABELWISE_IMAGES and lower > -margin
    superior = production.n >= MIN_LABELWISE_IMAGES and p < alpha
    few = f"fewer than {MIN_LABELWISE_IMAGES} images, not tested"
    fixed_text = f"paired t, label-wise accuracy {_scores_text(fixed, fixed_note)}"
    prod_text = f"label-wise accuracy {_scores_text(production, prod_note)}"
    reasons = []
    if fixed.n == 0:
        reasons.append("no fixed test images")
    elif fixed.n < MIN_LABELWISE_IMAGES:
        reasons.append(f"not shown non-inferior on the fixed test split: {few} ({fixed_text})")
    elif not noninferior:
        reasons.append(
            f"not shown non-inferior on the fixed test split ({fixed_text}): lower bound "
            f"{lower:+.3f} <= -margin {-margin:+.3f}"
        )
    if production.n == 0:
        reasons.append("no labelled production test images")
    elif production.n < MIN_LABELWISE_IMAGES:
        reasons.append(f"not shown better on production data: paired t {few} ({prod_text})")
    elif not superior:
        reasons.append(
            f"not shown better on production data: paired t p = {p:.3g} >= alpha {alpha:g} "
            f"({prod_text})"
        )
    passed = noninferior and superior
    reason = (
        "; ".join(reasons)
        if reasons
        else (
            f"non-inferior ({fixed_text}: lower bound {lower:+.3f} > {-margin:+.3f}) and better "
            f"on production (paired t p = {p:.3g} < {alpha:g}; {prod_text})"
        )
    )
    return GateResult(
        passed, noninferior, superior, margin, alpha, fixed, production, lower, p, reason, PAIRED_T
    )


def _scores_text(s: PairedScores, note: str) -> str:
    """``0.512 -> 0.748 over 40 images, challenger better on 31, champion on 2`` and what is
    missing or degenerate."""
    text = (
        f"{s.champion_accuracy:.3f} → {s.challenger_accuracy:.3f} over {s.n} images, "
        f"challenger better on {s.challenger_better}, champion on {s.champion_better}"
    )
    for who, k in (("champion", s.champion_missing), ("challenger", s.challenger_missing)):
        if k:
            text += f"; no output from the {who} for {k} (scored 0)"
    return f"{text}; {note}" if note else text
