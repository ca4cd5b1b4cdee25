"""The gate's paired tests: exact McNemar values, the non-inferiority bound, the decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pomlia_hpc.loop.stats import PairedCounts, decide, mcnemar_exact_p, noninferiority_lower_bound


def test_mcnemar_exact_matches_the_binomial_tail() -> None:
    assert mcnemar_exact_p(0, 5) == pytest.approx(1 / 32)
    assert mcnemar_exact_p(1, 9) == pytest.approx(11 / 1024)
    assert mcnemar_exact_p(5, 5) == pytest.approx(
        sum(math.comb(10, k) for k in range(5, 11)) / 1024
    )
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(9, 1) > 0.99


def test_decision_needs_both_tests() -> None:
    rng = np.random.default_rng(0)
    champ = rng.random(400) < 0.8
    same = PairedCounts.of(champ, champ)
    assert noninferiority_lower_bound(same, 0.05) == 0.0
    better = champ.copy()
    better[~champ] = True  # the challenger also gets every image the champion misses
    prod = PairedCounts.of(champ, better)
    ok = decide(same, prod, margin=0.02, alpha=0.05)
    assert ok.passed and ok.noninferior and ok.superior and ok.p_value < 1e-6
    worse = champ.copy()
    worse[:40] = False
    bad = decide(PairedCounts.of(champ, worse), prod, margin=0.02, alpha=0.05)
    assert not bad.passed and not bad.noninferior and "non-inferior" in bad.reason
    flat = decide(same, same, margin=0.02, alpha=0.05)
    assert not flat.passed and "McNemar p = 1" in flat.reason
    with pytest.raises(ValueError):
        decide(same, same, margin=0.02, alpha=1.5)
