"""The metrics the gate's bootstrap and the monitor's performance test compute on resamples
(weights: how often each image was drawn) are scikit-learn's on the images repeated that often:
tied scores, missing outputs ranked wrong, resamples of one class only."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from pomlia_hpc.automl.resampled import draw_weights, weighted_auc, weighted_f1


def test_a_resample_draws_n_images_with_replacement() -> None:
    w = draw_weights(np.random.default_rng(0), 7, 50)
    assert w.shape == (50, 7) and (w.sum(axis=1) == 7).all() and (w >= 0).all()


def test_the_weighted_auc_is_scikit_learn_s_on_the_repeated_images_with_ties() -> None:
    rng = np.random.default_rng(3)
    for trial in range(150):
        n = int(rng.integers(2, 40))
        truth = rng.random(n) < rng.random()
        score = rng.integers(0, 5, n).astype(float)  # few values: many ties
        if trial % 3 == 0:
            score[rng.random(n) < 0.2] = np.inf  # a missing answer ranked on top
        w = draw_weights(rng, n, 4)
        got = weighted_auc(truth, score, w.astype(float))
        for b in range(4):
            t, s = np.repeat(truth, w[b]), np.repeat(score, w[b])
            if len(set(t)) < 2:
                assert np.isnan(got[b])  # one class drawn: undefined, never 0.5
                continue
            assert abs(got[b] - roc_auc_score(t, np.where(np.isinf(s), 1e9, s))) < 1e-12


def test_the_weighted_macro_f1_is_scikit_learn_s_over_the_classes_present() -> None:
    rng = np.random.default_rng(4)
    for _ in range(100):
        n, k = int(rng.integers(2, 30)), int(rng.integers(2, 5))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        classes = np.arange(k)[None, :]
        w = draw_weights(rng, n, 3)
        got = weighted_f1(classes == y[:, None], classes == p[:, None], w.astype(float))
        for b in range(3):
            yy, pp = np.repeat(y, w[b]), np.repeat(p, w[b])
            labels = sorted(set(yy) | set(pp))
            want = f1_score(yy, pp, labels=labels, average="macro", zero_division=0)
            assert abs(got[b] - want) < 1e-12
