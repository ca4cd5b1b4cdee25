"""Running windows through the monitor's checks: rates per test and overall (no drift and
shifted), and the labelled accuracy drop."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from monitor_setup import (
    ALPHA,
    Draw,
    Setup,
    baseline_auc_rule,
    baseline_mean_t,
    shifts,
    window,
)

from pomlia_hpc.monitor.checks import run_checks
from pomlia_hpc.monitor.stats import wilson
from pomlia_hpc.serve.reference import Reference


def evaluate(
    s: Setup, ref: Reference, draw: Draw, n: int, reps: int, seed: int, perms: int
) -> dict[str, dict[str, Any]]:
    """``reps`` windows of size ``n`` against ``ref``: counts of each test at nominal alpha and
    at its Holm share, of the overall alarm and of the two baselines."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    channels = ref.fingerprints.shape[1] // 66
    for r in range(reps):
        pool = draw(rng, n)
        outcome = run_checks(window(pool), ref, alpha=ALPHA, n_perm=perms, seed=seed + r)
        hits = {"alarm": outcome.alarm}
        for t in outcome.tests:
            hits[f"{t.name}@0.05"] = t.p_value <= ALPHA
            hits[f"{t.name}@holm"] = t.rejected
            if "plain_p_value" in t.detail:  # the same test without the reference tolerance
                hits[f"{t.name}-plain@0.05"] = t.detail["plain_p_value"] <= ALPHA
        hits["baseline_mean_t"] = baseline_mean_t(ref.fingerprints, pool.fp, channels)
        hits["baseline_auc>0.55"] = baseline_auc_rule(ref.fingerprints, pool.fp, rng)
        for k, v in hits.items():
            counts[k] = counts.get(k, 0) + int(v)
    return {k: {"k": v, "n": reps} for k, v in counts.items()}


#: A chunk of windows: (shift, n, windows, seed, permutations, reference seed).
Cell = tuple[str, int, int, int, int, int]

_SETUP: Setup | None = None
_REFS: dict[int, Reference] = {}


def use_setup(s: Setup) -> None:
    """Make ``s`` the setup :func:`run_cell` uses (set before forking workers)."""
    global _SETUP
    _SETUP = s
    _REFS[s.seed] = s.reference


def run_cell(cell: Cell) -> tuple[str, int, dict[str, Any]]:
    """One chunk; no-drift chunks against another reference are named ``none@ref<seed>``."""
    name, n, reps, seed, perms, ref_seed = cell
    assert _SETUP is not None
    if ref_seed not in _REFS:
        _REFS[ref_seed] = _SETUP.reference_from(ref_seed)
    t0 = time.time()
    res = evaluate(_SETUP, _REFS[ref_seed], shifts(_SETUP)[name], n, reps, seed, perms)
    label = name if ref_seed == _SETUP.seed else f"{name}@ref{ref_seed}"
    print(
        f"  {label:14s} n={n:3d} x{reps:3d}: alarm {res['alarm']['k']}/{reps} "
        f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return label, n, res


def merge(done: list[tuple[str, int, dict[str, Any]]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Sum the chunks of each (shift, n) cell; rates and Wilson intervals of the sums."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for name, n, res in done:
        cell = out.setdefault(name, {}).setdefault(int(n), {})
        for key, c in res.items():
            k, m = cell.get(key, {}).get("k", 0) + c["k"], cell.get(key, {}).get("n", 0) + c["n"]
            cell[key] = {"rate": k / m, "k": k, "n": m, "ci95": wilson(k, m)}
    return out


def accuracy_drop(
    s: Setup, n: int, reps: int, drop: float, seed: int, perms: int
) -> dict[str, Any]:
    """Labelled no-drift windows from a deployment whose accuracy is ``drop`` below the
    validation accuracy: each correct prediction's feedback label is made wrong with the same
    probability, so the window's accuracy varies from window to window as a real one does
    (binomially) around validation accuracy minus ``drop``. Input and prediction
    distributions are unchanged: only the accuracy test can see it."""
    rng = np.random.default_rng(seed)
    pool_acc = float(np.mean(s.clean.pred == s.clean.y))
    flip_p = max(0.0, 1.0 - (s.reference.accuracy - drop) / pool_acc) if drop > 0 else 0.0
    alarm = perf = 0
    accs = []
    for r in range(reps):
        pool = s.clean.take(rng.choice(len(s.clean.y), n, replace=False))
        y = pool.y.copy()
        correct = np.flatnonzero(pool.pred == y)
        flip = correct[rng.random(len(correct)) < flip_p]
        y[flip] = (y[flip] + 1 + rng.integers(len(s.labels) - 1, size=len(flip))) % len(s.labels)
        feedback = [(int(p), int(t), "") for p, t in zip(pool.pred, y, strict=True)]
        outcome = run_checks(
            window(pool, feedback=feedback), s.reference, n_perm=perms, seed=seed + r
        )
        alarm += outcome.alarm
        perf += any(t.name == "accuracy" and t.rejected for t in outcome.tests)
        accs.append(float(np.mean(pool.pred == y)))
    return {
        "n_labels": n,
        "drop": drop,
        "validation_accuracy": s.reference.accuracy,
        "deployment_accuracy": pool_acc * (1 - flip_p),
        "window_accuracy_mean": float(np.mean(accs)),
        "window_accuracy_sd": float(np.std(accs)),
        "accuracy_test_power": {"rate": perf / reps, "ci95": wilson(perf, reps), "n": reps},
        "alarm_power": {"rate": alarm / reps, "ci95": wilson(alarm, reps), "n": reps},
    }
