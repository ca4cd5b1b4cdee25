"""Benchmark the monitor: false-alarm rate (calibration), power per shift, and speed.

Setup, on MedMNIST look-alikes (``pomlia_hpc.data.synth``; default bloodmnist, RGB 28 px,
8 classes): the classifier is a multinomial logistic regression on the fingerprints of 2,000
training images (a cheap stand-in for the exported CNN: the monitor only sees a model's
outputs). The reference is 1,000 validation images, fingerprinted with the server's own function
(``stats-thumb-v1``, rounded as logged) and passed through the classifier. Windows are drawn from
held-out in-distribution images (the test split) and then shifted:

* corruption families of ``pomlia_hpc.data.corruptions`` (MedMNIST-C's) at severities 1-5,
  applied to the window's images;
* class prior: half of the window is drawn from one class (chosen per window), the other half
  from the natural distribution (total-variation distance 0.5 * (1 - p_class) from the
  reference priors);
* foreign data: 10 / 25 / 50 % of the window from another look-alike dataset (default
  pathmnist);
* accuracy drop: labelled in-distribution windows whose feedback labels are changed on 10
  points' worth of correctly predicted images (input and prediction distribution unchanged).

Each window goes through :func:`pomlia_hpc.monitor.checks.run_checks`, the function
``pomlia monitor run`` uses (MMD with 1,000 permutations, KS, classifier, labels, confidence,
accuracy; weighted Holm at alpha 0.05). Baselines in the same run, built so they can lose: a
t-test on mean image brightness (alpha 0.05), and a domain classifier with a fixed AUC > 0.55
rule (Evidently's default rule for embedding drift).

Speed: a log of N predictions (default 1,000,000) written as a server writes it, then
``pomlia monitor run`` in a separate process under ``/usr/bin/time`` (wall time, peak memory).

    python scripts/bench/monitor.py --out bench-results                  # full run
    python scripts/bench/monitor.py --quick --out /tmp/bench-monitor     # smoke run

Writes ``monitor.json`` and ``monitor.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from pomlia_hpc.data.corruptions import FAMILIES, corrupt
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.monitor.checks import run_checks
from pomlia_hpc.monitor.logread import LogWindow
from pomlia_hpc.monitor.stats import wilson
from pomlia_hpc.serve.fingerprint import STATS_KIND, logged_vectors, stats_fingerprint
from pomlia_hpc.serve.reference import Reference, confidence_of
from pomlia_hpc.serve.runtime import to_nchw

SIZES = (50, 100, 200, 500)
ALPHA = 0.05
FAILING_LOUDLY_BEST = 0.51  # Rabanser et al. 2019: best average power over their shifts, n=200


@dataclass
class Pool:
    """Fingerprints, true labels, predictions and confidences of a set of images."""

    fp: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    conf: np.ndarray

    def take(self, idx: np.ndarray) -> Pool:
        return Pool(self.fp[idx], self.y[idx], self.pred[idx], self.conf[idx])


class Setup:
    """Classifier, reference and the pools windows are drawn from."""

    def __init__(self, flag: str, foreign: str, n_pool: int, seed: int, c: float) -> None:
        x_tr, y_tr = make_split(flag, 2000, seed=seed, split="train")
        x_val, y_val = make_split(flag, 1000, seed=seed, split="val")
        self.x_pool, y_pool = make_split(flag, n_pool, seed=seed, split="test")
        x_for, y_for = make_split(foreign, n_pool, seed=seed, split="test")
        # Regularised on purpose (C): validation accuracy about 0.85 rather than 1.0, so a
        # 10-point drop is a realistic test (it is easier to see from 0.99 than from 0.85).
        self.clf = LogisticRegression(C=c, max_iter=1000)
        fp_tr = fingerprints(x_tr)
        self.mu, self.sd = fp_tr.mean(axis=0), fp_tr.std(axis=0) + 1e-6
        self.clf.fit((fp_tr - self.mu) / self.sd, y_tr[:, 0])
        val = self.pool(x_val, y_val)
        self.labels = [f"class_{i}" for i in range(int(self.clf.classes_.max()) + 1)]
        self.reference = Reference(
            model="bench",
            model_version="bench",
            fingerprint_kind=STATS_KIND,
            task_type="multi-class",
            label_names=self.labels,
            source=f"{flag} look-alike [val]",
            fingerprints=val.fp,
            labels=val.y,
            pred_index=val.pred,
            confidence=val.conf,
            created_at="",
        )
        self.clean = self.pool(self.x_pool, y_pool)
        self.foreign = self.pool(x_for, np.full(y_for.shape, -1))
        self._corrupted: dict[tuple[str, int], Pool] = {}

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
            self._corrupted[key] = self.pool(x, self.clean.y[:, None])
        return self._corrupted[key]


def fingerprints(x: np.ndarray) -> np.ndarray:
    """What the server logs for uint8 NHWC images (see pomlia_hpc.serve.predictor)."""
    x = x[..., None] if x.ndim == 3 else x
    return logged_vectors(stats_fingerprint, to_nchw(x.astype(np.float32) / 255.0))


def window(pool: Pool, fp: np.ndarray | None = None, feedback: list[Any] | None = None) -> Any:
    win = LogWindow(model="bench", version="bench", since=None, until=None)  # type: ignore[arg-type]
    win.vectors = list(pool.fp if fp is None else fp)
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


def shifts(s: Setup) -> dict[str, Draw]:
    n_clean = len(s.clean.y)

    def clean(rng: np.random.Generator, n: int) -> Pool:
        return s.clean.take(rng.choice(n_clean, n, replace=False))

    def corrupted(family: str, severity: int) -> Draw:
        return lambda rng, n: s.corrupted(family, severity).take(
            rng.choice(n_clean, n, replace=False)
        )

    def prior(rng: np.random.Generator, n: int) -> Pool:
        c = int(rng.integers(len(s.labels)))
        k = int(rng.binomial(n, 0.5))
        members = np.flatnonzero(s.clean.y == c)
        return concat(s.clean.take(rng.choice(members, k, replace=True)), clean(rng, n - k))

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
    r = ref[rng.choice(len(ref), len(win), replace=False)]
    x = np.concatenate([r, win])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.r_[np.zeros(len(r)), np.ones(len(win))]
    p = cross_val_predict(
        LogisticRegression(C=0.1, max_iter=300), x, y, cv=2, method="predict_proba"
    )[:, 1]
    return bool(roc_auc_score(y, p) > 0.55)


# ----------------------------------------------------------------------------- experiments


def evaluate(s: Setup, draw: Draw, n: int, reps: int, seed: int, perms: int) -> dict[str, Any]:
    """Run ``reps`` windows of size ``n``; rates of each test (at nominal alpha and at its Holm
    share), the overall alarm and the baselines."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    channels = s.reference.fingerprints.shape[1] // 66
    for r in range(reps):
        pool = draw(rng, n)
        outcome = run_checks(window(pool), s.reference, alpha=ALPHA, n_perm=perms, seed=r)
        hits = {"alarm": outcome.alarm}
        for t in outcome.tests:
            hits[f"{t.name}@0.05"] = t.p_value <= ALPHA
            hits[f"{t.name}@holm"] = t.rejected
        hits["baseline_mean_t"] = baseline_mean_t(s.reference.fingerprints, pool.fp, channels)
        hits["baseline_auc>0.55"] = baseline_auc_rule(s.reference.fingerprints, pool.fp, rng)
        for k, v in hits.items():
            counts[k] = counts.get(k, 0) + int(v)
    return {
        k: {"rate": v / reps, "k": v, "n": reps, "ci95": wilson(v, reps)} for k, v in counts.items()
    }


def accuracy_drop(
    s: Setup, n: int, reps: int, drop: float, seed: int, perms: int
) -> dict[str, Any]:
    """Labelled windows; feedback labels of ``drop * n`` correct predictions made wrong."""
    rng = np.random.default_rng(seed)
    alarm = perf = 0
    accs = []
    for r in range(reps):
        pool = s.clean.take(rng.choice(len(s.clean.y), n, replace=False))
        y = pool.y.copy()
        correct = np.flatnonzero(pool.pred == y)
        # Feedback made wrong until the window's accuracy is the validation accuracy minus
        # ``drop`` (a drop measured against what the monitor compares with).
        target = (s.reference.accuracy - drop) * n
        k = min(len(correct), max(0, round(len(correct) - target))) if drop > 0 else 0
        flip = rng.choice(correct, k, replace=False)
        y[flip] = (y[flip] + 1 + rng.integers(len(s.labels) - 1, size=k)) % len(s.labels)
        feedback = [(int(p), int(t), "") for p, t in zip(pool.pred, y, strict=True)]
        outcome = run_checks(window(pool, feedback=feedback), s.reference, n_perm=perms, seed=r)
        alarm += outcome.alarm
        perf += any(t.name == "accuracy" and t.rejected for t in outcome.tests)
        accs.append(float(np.mean(pool.pred == y)))
    return {
        "n_labels": n,
        "drop": drop,
        "validation_accuracy": s.reference.accuracy,
        "window_accuracy_mean": float(np.mean(accs)),
        "accuracy_test_power": {"rate": perf / reps, "ci95": wilson(perf, reps), "n": reps},
        "alarm_power": {"rate": alarm / reps, "ci95": wilson(alarm, reps), "n": reps},
    }


def speed(records: int, seed: int, home: Path | None = None) -> dict[str, Any]:
    """Write a log of ``records`` predictions as servers write it (files of 200,000, in the last
    23 hours), then time ``pomlia monitor run`` on it in a child process.

    Only the first file is generated record by record (orjson, as the server does; slow on a
    loaded machine); the others are copies of it with new prediction ids, so every id is unique
    while fingerprints and times repeat (reading cost is the same). ``home``: a workspace of an
    earlier, interrupted run to reuse (its model, reference and first file)."""
    import orjson

    from pomlia_hpc.registry import Registry
    from pomlia_hpc.serve.demo import register_demo_model
    from pomlia_hpc.serve.predlog import log_dir
    from pomlia_hpc.workspace import Workspace

    reuse = home is not None and (home / "registry.db").is_file()
    home = home or Path(tempfile.mkdtemp(prefix="pomlia-bench-monitor-"))
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    if reuse:
        from pomlia_hpc.monitor.reference import resolve_target

        bundle = resolve_target(reg, "bench").bundle
    else:
        from pomlia_hpc.serve.reference import compute_reference, write_reference

        bundle = register_demo_model(reg, ws, "bench", channels=3, num_classes=8).bundle
        x_val, y_val = make_split("bloodmnist", 1000, seed=seed, split="val")
        write_reference(bundle, compute_reference(bundle, x_val, y_val, source="bench"))
    folder = log_dir(ws.path("logs"), "bench")
    folder.mkdir(parents=True, exist_ok=True)
    per_file = 200_000
    first = folder / "20261201T000000-bench-0-0000.jsonl"
    t0 = time.time()
    if not first.is_file():
        x, _ = make_split("bloodmnist", 2000, seed=seed, split="test")
        fps = fingerprints(x)
        now = time.time()
        rng = np.random.default_rng(seed)
        probs = np.round(rng.dirichlet(np.ones(8), size=4096), 6)
        opt = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        from datetime import UTC, datetime

        lines = []
        for i in range(min(records, per_file)):
            t = datetime.fromtimestamp(now - 82800 + 82800 * i / per_file, UTC)
            p = probs[i % 4096]
            lines.append(
                orjson.dumps(
                    {
                        "type": "prediction",
                        "id": os.urandom(16).hex(),
                        "time": t.isoformat(timespec="microseconds"),
                        "model": "bench",
                        "model_version": bundle.version,
                        "deployment": None,
                        "fingerprint_kind": STATS_KIND,
                        "fingerprint": fps[i % len(fps)],
                        "output": {
                            "label": f"class_{int(p.argmax())}",
                            "label_index": int(p.argmax()),
                            "probabilities": p.tolist(),
                        },
                    },
                    option=opt,
                )
            )
        first.write_bytes(b"".join(lines))
    base = first.read_bytes().splitlines(keepends=True)
    marker = b'"id":"'
    for f in range(1, math.ceil(records / per_file)):
        out = []
        for line in base[: min(per_file, records - f * per_file)]:
            at = line.index(marker) + len(marker)
            out.append(line[:at] + os.urandom(16).hex().encode() + line[at + 32 :])
        (folder / f"20261201T000000-bench-{f}-0000.jsonl").write_bytes(b"".join(out))
    del base
    write_s = time.time() - t0
    size = sum(p.stat().st_size for p in folder.glob("*.jsonl"))
    out_file = home / "run.json"
    t0 = time.time()
    with out_file.open("w") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pomlia_hpc",
                "--home",
                str(home),
                "monitor",
                "run",
                "bench",
                "--window",
                "24h",
                "--json",
            ],
            stdout=out,
            stderr=err,
            env={**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"},
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t0
        err.seek(0)
        stderr = err.read()
    peak_kb = usage.ru_maxrss
    proc = subprocess.CompletedProcess(child.args, child.returncode, out_file.read_text(), stderr)
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    reg.dispose()
    for path in folder.glob("*.jsonl"):
        path.unlink()  # 1.7 GB

    return {
        "records": records,
        "log_bytes": size,
        "write_s": round(write_s, 1),
        "run_wall_s": round(wall, 1),
        "run_peak_rss_mb": round(peak_kb / 1024, 1),
        "run_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "exit_status": proc.returncode,
        "predictions_in_report": (report.get("volume") or {}).get("predictions"),
        "stderr_tail": proc.stderr[-800:],
    }


_SETUP: Setup | None = None


def _cell(cell: tuple[str, int, int, int, int]) -> tuple[str, int, dict[str, Any]]:
    name, n, reps, seed, perms = cell
    assert _SETUP is not None
    t0 = time.time()
    res = evaluate(_SETUP, shifts(_SETUP)[name], n, reps, seed, perms)
    print(
        f"  {name:14s} n={n:3d} x{reps:3d}: alarm {res['alarm']['rate']:.2f} "
        f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return name, n, res


def power_table(results: dict[str, dict[int, dict[str, Any]]], key: str) -> list[str]:
    rows = ["| shift | " + " | ".join(f"n={n}" for n in SIZES) + " |", "|---" * 5 + "|"]
    for name, by_n in results.items():
        cells = [f"{by_n[n][key]['rate']:.2f}" if n in by_n else "" for n in SIZES]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--flag", default="bloodmnist")
    ap.add_argument("--foreign", default="pathmnist")
    ap.add_argument("--null-windows", type=int, default=500, help="no-drift windows at n=200")
    ap.add_argument("--null-windows-other", type=int, default=100, help="... at other n")
    ap.add_argument("--reps", type=int, default=30, help="windows per shift at n=200")
    ap.add_argument("--reps-other", type=int, default=10, help="windows per shift at other n")
    ap.add_argument("--acc-reps", type=int, default=200)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--speed-records", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classifier-c", type=float, default=0.003, help="logistic regression C")
    ap.add_argument("--pool", type=int, default=1500, help="held-out images windows come from")
    ap.add_argument("--workers", type=int, default=2, help="processes for the windows")
    ap.add_argument("--skip-speed", action="store_true", help="no 1M-prediction speed run")
    ap.add_argument("--only-speed", action="store_true", help="only the speed run")
    ap.add_argument("--speed-home", type=Path, default=None, help="reuse this workspace")
    ap.add_argument("--shifts", default="", help="comma-separated shift names (default all)")
    ap.add_argument("--only-accuracy", action="store_true", help="only the accuracy drop")
    ap.add_argument(
        "--from-partial",
        action="store_true",
        help="write the tables from the cells saved so far (a run cut short), with the "
        "speed and accuracy results of --only-speed / --only-accuracy runs in --out",
    )
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    a = ap.parse_args()
    if a.quick:
        a.null_windows, a.null_windows_other, a.reps, a.reps_other = 40, 10, 4, 2
        a.acc_reps, a.speed_records = 20, 20_000
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if a.only_speed:
        sp = speed(a.speed_records, a.seed, a.speed_home)
        sp["load_avg_end"] = os.getloadavg()
        (a.out / "monitor-speed.json").write_text(json.dumps(sp, indent=1))
        print(json.dumps(sp, indent=1))
        return
    if a.from_partial:
        write_tables(a, *from_partial(a.out), time.time() - t_start)
        return
    print(f"setup: {a.flag} look-alike, foreign {a.foreign}", flush=True)
    s = Setup(a.flag, a.foreign, a.pool, a.seed, a.classifier_c)
    print(f"  classifier validation accuracy {s.reference.accuracy:.3f}", flush=True)
    if a.only_accuracy:
        accs = {
            "drop": accuracy_drop(s, 200, a.acc_reps, 0.10, a.seed, a.permutations),
            "none": accuracy_drop(s, 200, a.acc_reps, 0.0, a.seed + 1, a.permutations),
            "load_avg_end": os.getloadavg(),
        }
        (a.out / "monitor-accuracy.json").write_text(json.dumps(accs, indent=1))
        print(json.dumps(accs, indent=1))
        return
    draws = shifts(s)
    for family in FAMILIES:  # corrupt once, before the workers fork
        for sev in range(1, 6):
            if not a.shifts or f"{family}-{sev}" in a.shifts.split(","):
                s.corrupted(family, sev)
    # Most important first (the calibration at n=200, then every shift at n=200), and every
    # finished cell saved at once: a run cut short on a loaded machine still reports them.
    # Most important first (the calibration at n=200, then every shift at n=200), in chunks
    # of at most 25 windows shared by the workers, each saved when done: a run cut short on a
    # loaded machine still reports what it measured (--from-partial).
    cells = []
    wanted = set(a.shifts.split(",")) if a.shifts else set(draws)
    for n in (200, 50, 100, 500):
        for name in (k for k in draws if k in wanted):
            if name == "none":
                reps = a.null_windows if n == 200 else a.null_windows_other
            else:
                reps = a.reps if n == 200 else a.reps_other
            for chunk, lo in enumerate(range(0, reps, 25)):
                seed = a.seed + 1000 * n + chunk
                cells.append((name, n, min(25, reps - lo), seed, a.permutations))
    global _SETUP
    _SETUP = s
    partial = a.out / "monitor-partial.jsonl"
    partial.unlink(missing_ok=True)
    done = []
    if a.workers > 1:  # fork: the workers share the setup built above
        import multiprocessing as mp

        with mp.get_context("fork").Pool(a.workers) as pool:
            for item in pool.imap_unordered(_cell, cells):
                done.append(item)
                with partial.open("a") as fh:
                    fh.write(json.dumps(item) + "\n")
    else:
        done = [_cell(c) for c in cells]
    results = merge(done)
    acc = accuracy_drop(s, 200, a.acc_reps, 0.10, a.seed, a.permutations)
    acc_null = accuracy_drop(s, 200, a.acc_reps, 0.0, a.seed + 1, a.permutations)
    print(f"  accuracy drop 10 points, 200 labels: {acc['alarm_power']}", flush=True)
    sp = speed(a.speed_records, a.seed) if not a.skip_speed else None
    print(f"  speed: {sp}", flush=True)
    write_tables(a, results, acc, acc_null, sp, time.time() - t_start)


def merge(
    done: list[tuple[str, int, dict[str, Any]]],
) -> dict[str, dict[int, dict[str, Any]]]:
    """Sum the chunks of each (shift, n) cell; rates and Wilson intervals of the sums."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for name, n, res in done:
        cell = out.setdefault(name, {}).setdefault(int(n), {})
        for key, c in res.items():
            k, m = cell.get(key, {}).get("k", 0) + c["k"], cell.get(key, {}).get("n", 0) + c["n"]
            cell[key] = {"rate": k / m, "k": k, "n": m, "ci95": wilson(k, m)}
    return out


def from_partial(out: Path) -> tuple[Any, Any, Any, Any]:
    """Results of a run cut short (``monitor-partial.jsonl``) plus the separate accuracy and
    speed runs' files, when present."""
    lines = (out / "monitor-partial.jsonl").read_text().splitlines()
    results = merge([tuple(json.loads(line)) for line in lines])  # type: ignore[misc]
    acc = acc_null = sp = None
    if (out / "monitor-accuracy.json").is_file():
        accs = json.loads((out / "monitor-accuracy.json").read_text())
        acc, acc_null = accs["drop"], accs["none"]
    if (out / "monitor-speed.json").is_file():
        sp = json.loads((out / "monitor-speed.json").read_text())
    return results, acc, acc_null, sp


def _rate(results: dict[str, dict[int, dict[str, Any]]], k: str, key: str) -> float | None:
    cell = results.get(k, {}).get(200)
    return None if cell is None else float(cell[key]["rate"])


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.mean(got)) if got else None


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_tables(
    a: argparse.Namespace,
    results: dict[str, dict[int, dict[str, Any]]],
    acc: dict[str, Any] | None,
    acc_null: dict[str, Any] | None,
    sp: dict[str, Any] | None,
    elapsed: float,
) -> None:
    """``monitor.json`` and ``monitor.md`` from whatever cells were measured."""
    canonical = ["none", *(f"{f}-{v}" for f in FAMILIES for v in range(1, 6))]
    canonical += ["prior-50%", "foreign-10%", "foreign-25%", "foreign-50%"]
    results = {k: results[k] for k in canonical if k in results}
    corr = [f"{f}-{v}" for f in FAMILIES for v in (3, 4, 5)]
    all_shifts = [k for k in results if k != "none"]
    measured = [k for k in all_shifts if 200 in results[k]]
    summary = {
        "false_alarm_n200": results.get("none", {}).get(200),
        "power_corruptions_sev3plus_n200": _mean([_rate(results, k, "alarm") for k in corr]),
        "corruption_cells_measured_n200": sum(_rate(results, k, "alarm") is not None for k in corr),
        "power_foreign25_n200": _rate(results, "foreign-25%", "alarm"),
        "power_all_shifts_n200": _mean([_rate(results, k, "alarm") for k in measured]),
        "shifts_measured_n200": len(measured),
        "failing_loudly_best_n200": FAILING_LOUDLY_BEST,
        "baseline_mean_t_all_shifts_n200": _mean(
            [_rate(results, k, "baseline_mean_t") for k in measured]
        ),
        "baseline_auc_rule_all_shifts_n200": _mean(
            [_rate(results, k, "baseline_auc>0.55") for k in measured]
        ),
        "accuracy_drop_10pt_200_labels": acc,
        "accuracy_no_drop_200_labels": acc_null,
        "speed": sp,
    }
    meta = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_end": os.getloadavg(),
        "wall_s": round(elapsed),
    }
    (a.out / "monitor.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1)
    )

    def fmt(c: dict[str, Any]) -> str:
        return f"{c['rate']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"

    null = results.get("none", {})
    names = [k.removesuffix("@0.05") for k in null.get(200, {}) if k.endswith("@0.05")]
    lines = [
        "### False-alarm rate (no drift), 95% Wilson interval",
        "",
        "| n | windows | overall alarm | "
        + " | ".join(f"{t} (p<=0.05)" for t in names)
        + " | baseline mean t | baseline AUC>0.55 |",
        "|---" * (5 + len(names)) + "|",
    ]
    for n in SIZES:
        if n not in null:
            continue
        row = null[n]
        tests = [fmt(row[f"{t}@0.05"]) if f"{t}@0.05" in row else "" for t in names]
        lines.append(
            f"| {n} | {row['alarm']['n']} | {fmt(row['alarm'])} | "
            + " | ".join(tests)
            + f" | {fmt(row['baseline_mean_t'])} | {fmt(row['baseline_auc>0.55'])} |"
        )
    shifted = {k: v for k, v in results.items() if k != "none"}
    lines += ["", "### Power of the overall alarm (share of shifted windows alarmed)", ""]
    lines += power_table(shifted, "alarm")
    lines += ["", "### Baseline: t-test on mean brightness", ""]
    lines += power_table(shifted, "baseline_mean_t")
    lines += ["", "### Baseline: domain classifier with the fixed rule AUC > 0.55", ""]
    lines += power_table(shifted, "baseline_auc>0.55")
    lines += [
        "",
        "### Summary at n = 200",
        "",
        f"- corruptions, severity >= 3, averaged over families "
        f"({summary['corruption_cells_measured_n200']} of {len(corr)} cells measured): "
        f"{_f(summary['power_corruptions_sev3plus_n200'])} (target >= 0.9)",
        f"- 25% foreign data: {_f(summary['power_foreign25_n200'])} (target >= 0.9)",
        f"- average over the {len(measured)} shifts measured: "
        f"{_f(summary['power_all_shifts_n200'])} (Failing Loudly's best: {FAILING_LOUDLY_BEST}; "
        f"baselines: mean-brightness t-test {_f(summary['baseline_mean_t_all_shifts_n200'])}, "
        f"AUC>0.55 rule {_f(summary['baseline_auc_rule_all_shifts_n200'])})",
    ]
    if acc is not None and acc_null is not None:
        lines.append(
            f"- accuracy drop of 10 points from 200 labels (validation accuracy "
            f"{acc['validation_accuracy']:.3f}, window accuracy {acc['window_accuracy_mean']:.3f}"
            f"): alarm power {fmt(acc['alarm_power'])}, accuracy-test power "
            f"{fmt(acc['accuracy_test_power'])}; same windows without the drop: alarm rate "
            f"{fmt(acc_null['alarm_power'])} ({acc['alarm_power']['n']} windows each)"
        )
    if sp is not None:
        lines.append(
            f"- speed: {sp['records']} predictions ({sp['log_bytes'] / 1e9:.2f} GB of log): "
            f"{sp['run_wall_s']} s wall, {sp.get('run_cpu_s')} s CPU, peak RSS "
            f"{sp['run_peak_rss_mb']} MB (exit {sp['exit_status']}; load average at the end "
            f"{sp.get('load_avg_end', meta['load_avg_end'])[0]:.1f})"
        )
    (a.out / "monitor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
