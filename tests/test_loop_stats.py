"""The gate's paired tests: exact McNemar values, the non-inferiority bound, the decision; the
label-wise paired t test of multi-label tasks and its degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pomlia_hpc.loop.stats import (
    MCNEMAR,
    MIN_LABELWISE_IMAGES,
    PAIRED_T,
    PairedCounts,
    PairedScores,
    decide,
    decide_labelwise,
    mcnemar_exact_p,
    noninferiority_lower_bound,
    paired_t,
)


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


def test_single_label_decisions_are_unchanged() -> None:
    """The numbers of a single-label gate, pinned: McNemar and the Wald bound as before."""
    champ = np.array([True] * 70 + [False] * 30)
    chal = champ.copy()
    chal[70:85] = True  # challenger also right on 15 the champion missed
    chal[:3] = False  # and wrong on 3 it got right
    counts = PairedCounts.of(champ, chal)
    res = decide(counts, counts, margin=0.02, alpha=0.05)
    assert res.passed and res.test == MCNEMAR and res.to_dict()["test"] == MCNEMAR
    assert res.p_value == pytest.approx(mcnemar_exact_p(3, 15)) == pytest.approx(0.0037689208984375)
    assert res.lower_bound == pytest.approx(
        0.12 - 1.6448536269514722 * math.sqrt(0.18 - 0.0144) / 10
    )
    assert "McNemar p = 0.00377 < 0.05" in res.reason


def _fractions(right: np.ndarray) -> np.ndarray:
    return right.mean(axis=1)


def test_a_challenger_better_label_by_label_but_never_all_right_passes_label_wise() -> None:
    """14 labels: the champion gets 10-12 right per image, the challenger one more on most
    images, neither ever all 14. By exact match the two are tied (both always wrong)."""
    rng = np.random.default_rng(3)
    n, labels = 80, 14
    champ = np.zeros((n, labels), bool)
    for i in range(n):
        champ[i, : rng.integers(10, 13)] = True
    chal = champ.copy()
    gains = rng.random(n) < 0.7
    chal[gains, 12] = True  # one more label right, still not 14
    losses = ~gains & (rng.random(n) < 0.2)
    chal[losses, 0] = False
    exact = decide(
        PairedCounts.of(champ.all(1), chal.all(1)),
        PairedCounts.of(champ.all(1), chal.all(1)),
        margin=0.02,
        alpha=0.05,
    )
    assert not exact.passed  # what the gate did for multi-label tasks before
    scores = PairedScores.of(_fractions(champ), _fractions(chal))
    res = decide_labelwise(scores, scores, margin=0.02, alpha=0.05)
    assert res.passed and res.test == PAIRED_T, res.reason
    d = _fractions(chal) - _fractions(champ)
    assert res.p_value == pytest.approx(stats.ttest_1samp(d, 0, alternative="greater").pvalue)
    assert "paired t" in res.reason and f"{scores.challenger_accuracy:.3f}" in res.reason
    worse = PairedScores.of(_fractions(chal), _fractions(champ))
    bad = decide_labelwise(worse, worse, margin=0.02, alpha=0.05)
    assert not bad.passed and not bad.noninferior and not bad.superior
    assert "not shown non-inferior" in bad.reason and "not shown better" in bad.reason


def test_label_wise_degenerate_cases_have_a_rule() -> None:
    half = np.full(20, 0.5)
    tied = PairedScores.of(half, half)  # every difference zero: no evidence either way
    lower, p, _ = paired_t(tied, 0.05)
    assert (lower, p) == (0.0, 1.0)
    res = decide_labelwise(tied, tied, margin=0.02, alpha=0.05)
    assert res.noninferior and not res.superior and "paired t p = 1 >= alpha" in res.reason

    step = PairedScores.of(half, half + 0.25)  # every image gains the same: sign test
    lower, p, note = paired_t(step, 0.05)
    assert lower == 0.25 and p == 0.5**20 and "sign test" in note
    assert decide_labelwise(step, step, margin=0.02, alpha=0.05).passed

    few = MIN_LABELWISE_IMAGES - 1
    small = PairedScores.of(np.zeros(few), np.ones(few))  # large gain, too few images
    res = decide_labelwise(small, small, margin=0.02, alpha=0.05)
    assert not res.passed and not res.noninferior and not res.superior
    assert f"fewer than {MIN_LABELWISE_IMAGES} images, not tested" in res.reason

    none = PairedScores.of(np.zeros(0), np.zeros(0))
    res = decide_labelwise(none, none, margin=0.02, alpha=0.05)
    assert res.reason == "no fixed test images; no labelled production test images"

    # A missing output (NaN) scores 0 for that model; the image stays paired.
    champ = np.r_[np.full(30, 0.75), np.full(10, np.nan)]
    chal = np.full(40, 0.5)
    missing = PairedScores.of(champ, chal)
    assert missing.n == 40 and missing.champion_missing == 10 and missing.challenger_missing == 0
    assert missing.champion_accuracy == pytest.approx(30 * 0.75 / 40)
    assert (missing.challenger_better, missing.champion_better) == (10, 30)
    res = decide_labelwise(missing, missing, margin=0.02, alpha=0.05)
    assert not res.passed and "no output from the champion for 10 (scored 0)" in res.reason
    assert PairedScores.from_dict({**PairedScores.of(half[:1], half[:1]).to_dict()}).n == 1


def test_a_few_differing_images_among_many_ties_get_the_exact_sign_tests_p() -> None:
    # 100 images of 14 labels: the challenger gets one more label right on 3, ties on 97. The
    # t test gave p = 0.042 and passed; McNemar's exact test on a 3-to-0 split gives 0.125.
    champion = np.full(100, 12 / 14)
    challenger = champion.copy()
    challenger[:3] = 13 / 14
    scores = PairedScores.of(champion, challenger)
    _, p, note = paired_t(scores, 0.05)
    assert p == pytest.approx(mcnemar_exact_p(0, 3)) == pytest.approx(0.125)
    assert "sign test" in note
    assert not decide_labelwise(scores, scores, margin=0.02, alpha=0.05).superior
    # One-sided: a challenger worse on those 3 images is not better either.
    assert paired_t(PairedScores.of(challenger, champion), 0.05)[1] == pytest.approx(1.0)
    # With many differing images the t test runs as before.
    rng = np.random.default_rng(0)
    a, b = rng.random(100), rng.random(100)
    s = PairedScores.of(a, b)
    assert paired_t(s, 0.05)[1] == pytest.approx(stats.ttest_rel(b, a, alternative="greater")[1])
