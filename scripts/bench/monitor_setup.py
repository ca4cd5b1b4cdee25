"""The monitor benchmark's world: a classifier, its reference, the image pools windows are drawn
from, the shifts and the two trivial baselines (see ``monitor.py`` for the design)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from pomlia_hpc.data.corruptions import FAMILIES, corrupt
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.monitor.logread import LogWindow
from pomlia_hpc.serve.fingerprint import STATS_KIND, logged_vectors, stats_fingerprint
from pomlia_hpc.serve.reference import Reference, confidence_of
from pomlia_hpc.serve.runtime import to_nchw

ALPHA = 0.05


@dataclass
class Pool:
    """Fingerprints, true labels, predictions and confidences of a set of images."""

    fp: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    conf: np.ndarray

    def take(self, idx: np.ndarray) -> Pool:
        return Pool(self.fp[idx], self.y[idx], self.pred[idx], self.conf[idx])


def fingerprints(x: np.ndarray) -> np.ndarray:
    """What the server logs for uint8 NHWC images (see pomlia_hpc.serve.predictor)."""
    x = x[..., None] if x.ndim == 3 else x
    out = []
    for lo in range(0, len(x), 4096):  # bounded float32 copies
        out.append(logged_vectors(stats_fingerprint, to_nchw(x[lo : lo + 4096] / np.float32(255))))
    return np.concatenate(out)


class Setup:
    """Classifier, reference(s) and the pools windows are drawn from.

    ``n_reference`` validation images make the reference (seed ``seed``; more references, for
    the spread of the false-alarm rate between references, come from :meth:`reference_from`).
    No-drift windows come from ``n_null`` fresh test-split images: large, so that a window is
    (almost) a fresh sample of the distribution, not of a small fixed pool (a fixed pool is a
    second fixed sample and biases the false-alarm rate like a fixed reference does).
    Corruptions are applied to ``n_pool`` test images (a separate seed)."""

    def __init__(
        self,
        flag: str,
        foreign: str,
        n_pool: int,
        seed: int,
        c: float,
        *,
        n_reference: int = 1000,
        n_null: int = 30000,
    ) -> None:
        self.flag, self.seed, self.n_reference = flag, seed, n_reference
        x_tr, y_tr = make_split(flag, 2000, seed=seed, split="train")
        # Regularised on purpose (c): validation accuracy about 0.83 rather than 1.0, so a
        # 10-point drop is a realistic test (it is easier to see from 0.99 than from 0.83).
        self.clf = LogisticRegression(C=c, max_iter=1000)
        fp_tr = fingerprints(x_tr)
        self.mu, self.sd = fp_tr.mean(axis=0), fp_tr.std(axis=0) + 1e-6
        self.clf.fit((fp_tr - self.mu) / self.sd, y_tr[:, 0])
        self.labels = [f"class_{i}" for i in range(int(self.clf.classes_.max()) + 1)]
        self.reference = self.reference_from(seed)
        self.x_pool, y_pool = make_split(flag, n_pool, seed=seed, split="test")
        self.corruption_base = self.pool(self.x_pool, y_pool)
        x_null, y_null = make_split(flag, n_null, seed=seed + 1, split="test")
        self.clean = self.pool(x_null, y_null)
        del x_null
        x_for, y_for = make_split(foreign, n_pool, seed=seed, split="test")
        self.foreign = self.pool(x_for, np.full(y_for.shape, -1))
        self._corrupted: dict[tuple[str, int], Pool] = {}

    def reference_from(self, seed: int) -> Reference:
        """The reference: ``n_reference`` validation images drawn with ``seed``."""
        x_val, y_val = make_split(self.flag, self.n_reference, seed=seed, split="val")
        val = self.pool(x_val, y_val)
        return Reference(
            model="bench",
            model_version="bench",
            fingerprint_kind=STATS_KIND,
            task_type="multi-class",
            label_names=self.labels,
            source=f"{self.flag} look-alike [val], seed {seed}",
            fingerprints=val.fp,
            labels=val.y,
            pred_index=val.pred,
            confidence=val.conf,
            created_at="",
        )

    def pool(self, x: np.ndarray, y: np.ndarray) -> Pool:
        fp = fingerprints(x)
        probs = self.clf.predict_proba((fp - self.mu) / self.sd)
        return Pool(
            fp, y[:, 0].astype(int), probs.argmax(axis=1), confidence_of(probs, "multi-class")
        )

    def corrupted(self, family: str, severity: int) -> Pool:
        key = (family, severity)
        if key not in self._corrupted:
            rng = np.random.default_rng(severity)
            x = corrupt(self.x_pool, family, severity, rng)
            self._corrupted[key] = self.pool(x, self.corruption_base.y[:, None])
        return self._corrupted[key]


def window(pool: Pool, feedback: list[Any] | None = None) -> LogWindow:
    """A :class:`LogWindow` as the log reader would fill it from ``pool``'s predictions."""
    win = LogWindow(model="bench", version="bench", since=None, until=None)  # type: ignore[arg-type]
    win.vectors = list(pool.fp)
    win.pred_index = pool.pred.tolist()
    win.confidence.extend(pool.conf.tolist())
    win.feedback = feedback or []
    return win


# ----------------------------------------------------------------------------- shifts

Draw = Callable[[np.random.Generator, int], Pool]


def concat(a: Pool, b: Pool) -> Pool:
    return Pool(
        *(np.concatenate([u, v]) for u, v in zip(vars(a).values(), vars(b).values(), strict=True))
    )


def shift_names() -> list[str]:
    """Every shift, in table order ("none" first)."""
    names = ["none", *(f"{f}-{v}" for f in FAMILIES for v in range(1, 6))]
    return [*names, "prior-50%", "foreign-10%", "foreign-25%", "foreign-50%"]


def shifts(s: Setup) -> dict[str, Draw]:
    """A window drawer per shift name: ``draw(rng, n)`` -> the window's pool."""
    n_clean, n_base = len(s.clean.y), len(s.corruption_base.y)

    def clean(rng: np.random.Generator, n: int) -> Pool:
        return s.clean.take(rng.choice(n_clean, n, replace=False))

    def corrupted(family: str, severity: int) -> Draw:
        return lambda rng, n: s.corrupted(family, severity).take(
            rng.choice(n_base, n, replace=False)
        )

    def prior(rng: np.random.Generator, n: int) -> Pool:
        # Half of the window (binomial) from one class chosen per window: total-variation
        # distance 0.5 * (1 - p_class) from the reference's priors.
        c = int(rng.integers(len(s.labels)))
        k = int(rng.binomial(n, 0.5))
        members = np.flatnonzero(s.clean.y == c)
        return concat(s.clean.take(rng.choice(members, k, replace=False)), clean(rng, n - k))

    def foreign(share: float) -> Draw:
        def draw(rng: np.random.Generator, n: int) -> Pool:
            k = round(share * n)
            alien = s.foreign.take(rng.choice(len(s.foreign.y), k, replace=False))
            return concat(alien, clean(rng, n - k))

        return draw

    out: dict[str, Draw] = {"none": clean}
    for family in FAMILIES:
        for sev in range(1, 6):
            out[f"{family}-{sev}"] = corrupted(family, sev)
    out["prior-50%"] = prior
    for share in (0.10, 0.25, 0.50):
        out[f"foreign-{round(share * 100)}%"] = foreign(share)
    return out


# ----------------------------------------------------------------------------- baselines


def baseline_mean_t(ref: np.ndarray, win: np.ndarray, channels: int) -> bool:
    """Trivial detector: Welch t-test on mean image brightness."""
    return bool(
        stats.ttest_ind(ref[:, :channels].mean(1), win[:, :channels].mean(1), equal_var=False)[1]
        < ALPHA
    )


def baseline_auc_rule(ref: np.ndarray, win: np.ndarray, rng: np.random.Generator) -> bool:
    """Domain classifier with a fixed rule: cross-validated ROC AUC > 0.55 means drift."""
    r = ref[rng.choice(len(ref), min(len(ref), len(win)), replace=False)]
    x = np.concatenate([r, win])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.r_[np.zeros(len(r)), np.ones(len(win))]
    p = cross_val_predict(
        LogisticRegression(C=0.1, max_iter=300), x, y, cv=2, method="predict_proba"
    )[:, 1]
    return bool(roc_auc_score(y, p) > 0.55)
