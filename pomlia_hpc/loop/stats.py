"""The gate's two paired tests on per-image correctness (numpy and the standard library only).

Champion and challenger are scored on the same images, so the tests use the pairs:
``b`` = images only the champion gets right, ``c`` = images only the challenger gets right.

- **Non-inferiority** on the fixed test split: the challenger's accuracy minus the champion's,
  with a one-sided lower confidence bound at level 1 - alpha from the paired (Wald) variance of the
  difference, ``var = ((b + c) - (c - b)^2 / n) / n^2``; passed when the bound is above
  ``-margin``. (The normal approximation is what the margin's scale needs; on a few dozen
  images the bound is wide and the test rightly does not pass.)
- **Superiority** on recent labelled production data: McNemar's exact test, one-sided,
  ``p = P(X >= c)`` for ``X ~ Binomial(b + c, 1/2)``; passed when ``p < alpha``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from pomlia_hpc.errors import InputError


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


@dataclass(frozen=True)
class GateResult:
    """Both tests, their inputs and the decision."""

    passed: bool
    noninferior: bool
    superior: bool
    margin: float
    alpha: float
    fixed_test: PairedCounts
    production: PairedCounts
    lower_bound: float
    p_value: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fixed_test"] = self.fixed_test.to_dict()
        d["production"] = self.production.to_dict()
        return d


def check_levels(margin: float, alpha: float) -> None:
    """One :class:`InputError` for a margin or significance level the gate cannot use (checked
    before a promotion or a loop run starts, not when the gate is reached)."""
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha}: expected a significance level between 0 and 1")
    # An accuracy difference lies in [-1, 1]: a margin of 1 or more lets every challenger
    # through the non-inferiority test (`--margin 2` meant 2 points, which is 0.02).
    if not 0 <= margin < 1:  # NaN too
        raise InputError(
            f"--margin {margin}: expected a fraction in [0, 1) (e.g. 0.02 for 2 accuracy "
            "points; 1 or more would let any challenger pass)"
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
