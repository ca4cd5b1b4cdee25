"""Benchmark AutoML: SMAC-Hyperband against random search at the same total budget (epochs).

Two look-alike tasks (:mod:`pomlia_hpc.data.synth`, 28 px): BloodMNIST-like (8 classes, RGB,
metric ACC) and PneumoniaMNIST-like (binary, gray, metric AUC), each with ``--sizes``
(train, val, test) images. For every task and seed, two studies run through the real stack
(:func:`pomlia_hpc.automl.study.run_study`: local executor, ``--parallel`` trial jobs at once,
DeepSpeed on CPU, registry records):

- ``smac``: SMAC3's multi-fidelity facade, Hyperband (``--eta``, default 2) over
  1..``--max-epochs`` epochs (a promoted configuration continues from its checkpoint);
- ``random``: uniform random configurations, each trained for ``--max-epochs`` epochs.

Both stop asking for trials once ``--budget`` epochs were given out (epochs summed over
trials; a promotion from 2 to 4 epochs costs 2). The search space is the default one with the
architectures ``--archs``: on 2 shared CPU cores the default run keeps to the two cheap ones
(resnet18 with its 3x3 stem at 28 px trains at ~10 images/s per core, resnet18_imagenet at
~100, mobilenet_v3_small at ~200, small_cnn at ~700); pass more on a GPU node.

Budget curve: after each finished trial (in finishing order), the budget spent so far and the
test metric of the best trial so far, chosen by the validation metric (what a user would
deploy at that point). ``fraction``: the budget SMAC-Hyperband needed for its best-so-far test
metric to reach random search's final one, divided by the total budget (per seed, and for the
mean curves); ``>1`` means it did not reach it.

    python scripts/bench/automl.py --out bench-results            # full run (~55 min, 2 cores)
    python scripts/bench/automl.py --quick --out /tmp/bench       # smoke run (~5 min)

Writes ``automl.json`` (every trial), ``automl.md`` (the table) and ``automl.png`` (the curves)
to ``--out``; ``--png`` also copies the plot (e.g. to docs/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pomlia_hpc.automl import records  # noqa: E402
from pomlia_hpc.automl.engine import EngineOptions  # noqa: E402
from pomlia_hpc.automl.space import SpaceOptions  # noqa: E402
from pomlia_hpc.automl.study import create_study, run_study  # noqa: E402
from pomlia_hpc.automl.tasks import add_task  # noqa: E402
from pomlia_hpc.data.api import ingest  # noqa: E402
from pomlia_hpc.data.medmnist_info import flag_info  # noqa: E402
from pomlia_hpc.data.synth import make_split  # noqa: E402
from pomlia_hpc.registry import Job, Registry  # noqa: E402
from pomlia_hpc.workspace import Workspace  # noqa: E402

TASKS = {"blood": ("bloodmnist", "acc"), "pneumonia": ("pneumoniamnist", "auc")}
METHODS = ("smac", "random")


def make_task(ws: Workspace, reg: Registry, name: str, sizes: tuple[int, int, int]) -> None:
    flag, metric = TASKS[name]
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        x, y = make_split(flag, n, seed=0, size=28, split=split)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    ws.tmp.mkdir(parents=True, exist_ok=True)
    path = ws.tmp / f"{name}.npz"
    np.savez(path, **arrays)
    info = flag_info(flag)
    rec = ingest(
        ws,
        reg,
        f"{name}_data",
        path,
        class_names=list(info.class_names),
        task_type=info.task_type,
        workers=1,
    )
    path.unlink()
    add_task(reg, name, f"{name}_data@{rec.version}", metric)


def trials_of(reg: Registry, study: str, metric: str) -> list[dict[str, Any]]:
    """The study's finished trials in finishing order, with budget and metrics."""
    out = []
    with reg.session() as s:
        for run in records.study_runs(reg, study):
            job = s.get(Job, run.job_id) if run.job_id else None
            m = run.metrics or {}
            start = int(m.get("start_epoch", 0))
            out.append(
                {
                    "run_id": run.id,
                    "status": run.status,
                    "epochs": int(run.budget or 0),
                    # A trial answered from an earlier record of a larger budget starts
                    # past its own: it trained nothing.
                    "epochs_run": max(int(run.budget or 0) - start, 0),
                    "cost_s": run.cost_s,
                    "val": (m.get("val") or {}).get(metric),
                    "test": (m.get("test") or {}).get(metric),
                    "arch": run.config.get("arch"),
                    "config": {k: v for k, v in run.config.items() if k not in ("engine",)},
                    "ended": job.ended_at.timestamp() if job and job.ended_at else float("inf"),
                }
            )
    return sorted(out, key=lambda t: (t["ended"], t["run_id"]))


def curve(trials: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(budget spent, test metric of the best-by-validation trial so far) after each trial."""
    spent, best_val, best_test, pts = 0, -1.0, float("nan"), []
    for t in trials:
        spent += t["epochs_run"]
        if t["status"] == "ok" and t["val"] is not None and t["val"] > best_val:
            best_val, best_test = t["val"], t["test"]
        pts.append((spent, best_test))
    return pts


def at_budget(pts: list[tuple[int, float]], grid: np.ndarray) -> np.ndarray:
    """Step function of a curve on ``grid`` (NaN before the first finished trial)."""
    out = np.full(len(grid), np.nan)
    for spent, value in pts:
        out[grid >= spent] = value
    return out


def fraction_to_reach(smac: np.ndarray, target: float, grid: np.ndarray, budget: int) -> float:
    """Budget fraction at which ``smac`` (on ``grid``) first reaches ``target``; inf if never."""
    hit = np.nonzero(np.nan_to_num(smac, nan=-1.0) >= target - 1e-12)[0]
    return float(grid[hit[0]] / budget) if len(hit) else float("inf")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    ws = Workspace(home=work, db_url=f"sqlite:///{work / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    results: dict[str, Any] = {"studies": []}
    space = SpaceOptions(archs=tuple(args.archs.split(",")))
    for task in args.tasks:
        make_task(ws, reg, task, tuple(args.sizes))  # type: ignore[arg-type]
        for seed in range(args.seeds):
            for method in METHODS:
                name = f"{task}-{method}-s{seed}"
                t0 = time.perf_counter()
                spec = create_study(
                    reg,
                    ws,
                    task,
                    name=name,
                    n_trials=10_000,
                    max_epochs=args.max_epochs,
                    min_epochs=1,
                    eta=3,
                    parallel=args.parallel,
                    optimizer=method,
                    seed=seed,
                    budget_epochs=args.budget,
                    engine=EngineOptions(threads=1),
                    space=space,
                )
                res = run_study(reg, ws, spec, poll_s=0.5)
                wall = time.perf_counter() - t0
                trials = trials_of(reg, name, TASKS[task][1])
                results["studies"].append(
                    {
                        "task": task,
                        "method": method,
                        "seed": seed,
                        "metric": TASKS[task][1],
                        "wall_s": wall,
                        "n_trials": len(trials),
                        "n_crashed": res.n_crashed,
                        "spent_epochs": sum(t["epochs_run"] for t in trials),
                        "curve": curve(trials),
                        "trials": trials,
                    }
                )
                print(
                    f"{name}: {len(trials)} trials, {res.spent_epochs} epochs, "
                    f"{wall:.0f} s, best test {curve(trials)[-1][1]:.3f}",
                    flush=True,
                )
    return results


def summarize(results: dict[str, Any], budget: int) -> dict[str, Any]:
    grid = np.arange(1, budget + 1)
    summary: dict[str, Any] = {}
    for task in sorted({s["task"] for s in results["studies"]}):
        per = {
            m: [s for s in results["studies"] if s["task"] == task and s["method"] == m]
            for m in METHODS
        }
        curves = {m: np.array([at_budget(s["curve"], grid) for s in per[m]]) for m in METHODS}
        mean = {m: np.nanmean(curves[m], axis=0) for m in METHODS}
        fractions = []
        for sm, rn in zip(per["smac"], per["random"], strict=True):
            target = at_budget(rn["curve"], grid)[-1]
            fractions.append(fraction_to_reach(at_budget(sm["curve"], grid), target, grid, budget))
        summary[task] = {
            "metric": per["smac"][0]["metric"],
            "final": {m: [float(at_budget(s["curve"], grid)[-1]) for s in per[m]] for m in METHODS},
            "final_mean": {m: float(mean[m][-1]) for m in METHODS},
            "half_budget_mean": {m: float(mean[m][budget // 2 - 1]) for m in METHODS},
            "trials_mean": {m: float(np.mean([s["n_trials"] for s in per[m]])) for m in METHODS},
            "wall_s_mean": {m: float(np.mean([s["wall_s"] for s in per[m]])) for m in METHODS},
            "fraction_per_seed": fractions,
            "fraction_median": float(np.median(fractions)),
            "fraction_of_means": fraction_to_reach(
                mean["smac"], float(mean["random"][-1]), grid, budget
            ),
            "grid": grid.tolist(),
            "mean_curve": {
                m: [None if np.isnan(v) else float(v) for v in mean[m]] for m in METHODS
            },
        }
    return summary


def plot(summary: dict[str, Any], results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    colors = {"smac": "tab:blue", "random": "tab:orange"}
    labels = {"smac": "SMAC-Hyperband", "random": "random search"}
    for ax, task in zip(axes[0], tasks, strict=True):
        s = summary[task]
        grid = np.array(s["grid"])
        for m in METHODS:
            for st in results["studies"]:
                if st["task"] == task and st["method"] == m:
                    xs = [p[0] for p in st["curve"]]
                    ys = [p[1] for p in st["curve"]]
                    ax.step(xs, ys, where="post", color=colors[m], alpha=0.25, lw=1)
            ys = np.array([np.nan if v is None else v for v in s["mean_curve"][m]])
            ax.step(
                grid,
                ys,
                where="post",
                color=colors[m],
                lw=2.2,
                label=f"{labels[m]} (mean of {len(s['final'][m])} seeds)",
            )
        ax.set_title(f"{task} look-alike: test {s['metric']} of best-by-val trial")
        ax.set_xlabel("budget spent (epochs summed over trials)")
        ax.set_ylabel(f"test {s['metric']}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def table(summary: dict[str, Any], budget: int) -> str:
    lines = [
        "| task (metric) | method | trials | test metric at budget/2 | final (mean) | "
        "final per seed | wall s | SMAC budget fraction to reach random's final |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]

    def frac(x: float) -> str:
        return f"{x:.2f}" if np.isfinite(x) else "not reached"

    for task, s in summary.items():
        for m in METHODS:
            reach = ""
            if m == "smac":
                reach = f"{frac(s['fraction_of_means'])} (mean curves); per seed " + ", ".join(
                    frac(f) for f in s["fraction_per_seed"]
                )
            lines.append(
                f"| {task} ({s['metric']}) | {m} | {s['trials_mean'][m]:.1f} | "
                f"{s['half_budget_mean'][m]:.3f} | {s['final_mean'][m]:.3f} | "
                + ", ".join(f"{v:.3f}" for v in s["final"][m])
                + f" | {s['wall_s_mean'][m]:.0f} | {reach} |"
            )
    lines.append(f"\nBudget: {budget} epochs per study.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "pomlia-bench-automl"
    )
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=24, help="epochs per study")
    ap.add_argument("--max-epochs", type=int, default=4)
    ap.add_argument("--eta", type=int, default=2, help="Hyperband's eta (budgets 1, 2, 4)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs=3, default=[500, 150, 300])
    ap.add_argument("--archs", default="small_cnn,mobilenet_v3_small")
    ap.add_argument("--png", type=Path, help="also copy the plot here (e.g. docs/automl.png)")
    ap.add_argument("--quick", action="store_true", help="1 task, 1 seed, budget 12, 3 epochs")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.budget, args.max_epochs = ["blood"], 1, 8, 2
        args.sizes = [200, 80, 80]
    t0 = time.perf_counter()
    results = run_all(args)
    summary = summarize(results, args.budget)
    res = {
        "command": " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_s": time.perf_counter() - t0,
        "summary": summary,
        **results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "automl.json").write_text(json.dumps(res, indent=1, default=str))
    md = table(summary, args.budget)
    (args.out / "automl.md").write_text(md + "\n")
    plot(summary, results, args.out / "automl.png")
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out / "automl.png", args.png)
    print(md)


if __name__ == "__main__":
    main()
