"""Warm-started SMAC (from the strategy recommender) vs plain SMAC vs random search, with
logistic regression and an RBF SVC on the pixels of every task in the same run.

1. **Knowledge base.** ``--kb-tasks`` look-alike tasks (:mod:`pomlia_hpc.data.synth`, 28 px,
   ``--sizes``) each get a random-search study (``--kb-trials`` trials of ``--max-epochs``):
   the registry's own runs that the recommender learns from. The benchmark tasks are not
   among them (held out).
2. **Benchmark tasks**: ``--tasks`` look-alikes plus ``digits``, a real data set built from
   scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), up-sampled to 28 px
   (nearest neighbour) and scaled to 0..255, split 1,257 / 180 / 360 (train / val / test).
   Per task and seed three studies through the real stack (local executor, DeepSpeed on CPU,
   registry records), each stopping once ``--budget`` epochs were given out:

   - ``warm``: SMAC-Hyperband (budgets ``--min-epochs``..``--max-epochs``, eta 3) whose initial
     design is the recommender's top ``--k`` configurations for the task (registry source
     only, the task's own runs excluded) and whose space is narrowed to their architectures;
     the best configuration is then trained on to ``--max-epochs`` (counted in the budget);
   - ``smac``: the same without the warm start (space: ``--archs``);
   - ``random``: random configurations at ``--max-epochs`` each (space: ``--archs``).

   Curve: after each finished trial, the epochs spent and the test metric (ACC) of the best
   trial so far by validation metric. ``reach``: epochs the method needed for its curve to
   reach random search's final test metric, as a fraction of random search's epochs.
3. **Pixel baselines**: scikit-learn ``LogisticRegression`` (max_iter 2000) and ``SVC(rbf)``
   on the flattened training pixels / 255 (defaults otherwise), test ACC.
4. **The registry's own runs**: leave-one-dataset-out (``pomlia strategy eval --source
   registry --metric acc``) over every task that has runs at the end.

    python scripts/bench/automl_warm.py --out bench-results --png docs/automl_bench.png

Writes ``automl_warm.json``, ``automl_warm.md`` and ``automl_warm.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from automl import at_budget, trials_of  # noqa: E402

from pomlia_hpc.automl.engine import EngineOptions  # noqa: E402
from pomlia_hpc.automl.space import SpaceOptions  # noqa: E402
from pomlia_hpc.automl.study import create_study, run_study  # noqa: E402
from pomlia_hpc.automl.tasks import add_task  # noqa: E402
from pomlia_hpc.data.api import ingest  # noqa: E402
from pomlia_hpc.data.medmnist_info import flag_info  # noqa: E402
from pomlia_hpc.data.synth import make_split  # noqa: E402
from pomlia_hpc.registry import Registry  # noqa: E402
from pomlia_hpc.strategy.service import evaluate_source  # noqa: E402
from pomlia_hpc.strategy.warmstart import from_recommendation  # noqa: E402
from pomlia_hpc.workspace import Workspace  # noqa: E402

METHODS = ("warm", "smac", "random")


def lookalike(flag: str, sizes: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        x, y = make_split(flag, n, seed=seed, size=28, split=split)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    return arrays


def digits() -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits, up-sampled to 28 px, 1,257 / 180 / 360 images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images / 16.0 * 255).round().astype(np.uint8)  # (1797, 8, 8)
    idx = (np.arange(28) * 8) // 28  # nearest-neighbour up-sampling
    big = imgs[:, idx][:, :, idx][..., None]
    order = np.random.default_rng(0).permutation(len(big))
    parts = {"train": order[:1257], "val": order[1257:1437], "test": order[1437:]}
    out: dict[str, np.ndarray] = {}
    for split, rows in parts.items():
        out[f"{split}_images"], out[f"{split}_labels"] = big[rows], d.target[rows][:, None]
    return out


def register(ws: Workspace, reg: Registry, name: str, arrays: dict[str, np.ndarray], flag: str):
    ws.tmp.mkdir(parents=True, exist_ok=True)
    path = ws.tmp / f"{name}.npz"
    np.savez(path, **arrays)
    if flag == "digits":
        classes, task_type = [str(i) for i in range(10)], "multi-class"
    else:
        info = flag_info(flag)
        classes, task_type = list(info.class_names), info.task_type
    rec = ingest(ws, reg, f"{name}_data", path, class_names=classes, task_type=task_type, workers=1)
    add_task(reg, name, f"{name}_data@{rec.version}", "acc")
    path.unlink()


def pixel_baselines(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    def xy(split: str) -> tuple[np.ndarray, np.ndarray]:
        x = arrays[f"{split}_images"].reshape(len(arrays[f"{split}_images"]), -1) / 255.0
        return x, arrays[f"{split}_labels"].ravel()

    xtr, ytr = xy("train")
    xte, yte = xy("test")
    out = {}
    for name, model in (
        ("logreg", LogisticRegression(max_iter=2000)),
        ("svc_rbf", SVC(kernel="rbf")),
    ):
        model.fit(xtr, ytr)
        out[name] = float((model.predict(xte) == yte).mean())
    return out


def study(reg: Registry, ws: Workspace, task: str, name: str, method: str, seed: int, a: Any):
    space = SpaceOptions(archs=tuple(a.archs.split(",")))
    initial: list[dict[str, Any]] = []
    optimizer = "random" if method == "random" else "smac"
    if method == "warm":
        warm = from_recommendation(
            reg,
            task,
            k=a.k,
            archs=space.archs,
            sources=["registry"],
            exclude_own_runs=True,
        )
        initial, space = warm.configs, SpaceOptions(archs=warm.archs)
    spec = create_study(
        reg,
        ws,
        task,
        name=name,
        n_trials=10_000,
        max_epochs=a.max_epochs,
        min_epochs=a.min_epochs if optimizer == "smac" else a.max_epochs,
        eta=3,
        parallel=a.parallel,
        optimizer=optimizer,
        seed=seed,
        budget_epochs=a.budget,
        engine=EngineOptions(threads=1),
        space=space,
        initial_configs=initial,
        n_initial=max(len(initial), 1) if method == "warm" else None,
        final_full_budget=optimizer == "smac",
    )
    t0 = time.perf_counter()
    run_study(reg, ws, spec, poll_s=0.5)
    trials = trials_of(reg, name, "acc")
    return trials, time.perf_counter() - t0, initial


def curve(trials: list[dict[str, Any]]) -> list[tuple[int, float]]:
    spent, best_val, best_test, pts = 0, -1.0, float("nan"), []
    for t in trials:
        spent += max(t["epochs_run"], 0)
        if t["status"] == "ok" and t["val"] is not None and t["val"] > best_val:
            best_val, best_test = t["val"], t["test"]
        pts.append((spent, best_test))
    return pts


def reach(pts: list[tuple[int, float]], target: float) -> float | None:
    """Epochs at which the curve first reaches ``target`` (None: never)."""
    for spent, value in pts:
        if value is not None and np.isfinite(value) and value >= target - 1e-9:
            return float(spent)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/pomlia-bench-automl-warm"))
    ap.add_argument("--png", type=Path)
    ap.add_argument("--kb-tasks", nargs="+", default=["dermamnist", "organcmnist", "pathmnist"])
    ap.add_argument("--tasks", nargs="+", default=["bloodmnist", "organsmnist", "octmnist"])
    ap.add_argument("--no-digits", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs=3, default=[500, 150, 300])
    ap.add_argument("--kb-trials", type=int, default=5)
    ap.add_argument("--budget", type=int, default=36, help="epochs per study")
    ap.add_argument("--min-epochs", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=9)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--archs", default="small_cnn,mobilenet_v3_small")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(a.work, ignore_errors=True)
    ws = Workspace(
        home=a.work, db_url=f"sqlite:///{a.work / 'registry.db'}", cluster_profile="local"
    )
    ws.create()
    reg = Registry.open(ws.db_url)
    res: dict[str, Any] = {"load_start": os.getloadavg(), "args": vars(a) | {"out": str(a.out)}}
    res["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in res["args"].items()}
    t_all = time.perf_counter()
    for i, flag in enumerate(a.kb_tasks):  # the knowledge base: runs on other tasks
        name = f"kb_{flag}"
        register(ws, reg, name, lookalike(flag, tuple(a.sizes), 100 + i), flag)
        spec = create_study(
            reg,
            ws,
            name,
            name=f"{name}-random",
            n_trials=a.kb_trials,
            max_epochs=a.max_epochs,
            min_epochs=a.max_epochs,
            parallel=a.parallel,
            optimizer="random",
            seed=100 + i,
            engine=EngineOptions(threads=1),
            space=SpaceOptions(archs=tuple(a.archs.split(","))),
        )
        run_study(reg, ws, spec, poll_s=0.5)
        print(f"kb study {name}: done ({time.perf_counter() - t_all:.0f} s)", flush=True)
    tasks = [(f, lookalike(f, tuple(a.sizes), 7)) for f in a.tasks]
    if not a.no_digits:
        tasks.append(("digits", digits()))
    res["tasks"] = {}
    for flag, arrays in tasks:
        name = f"bench_{flag}"
        register(ws, reg, name, arrays, flag)
        entry: dict[str, Any] = {"baselines": pixel_baselines(arrays), "studies": []}
        print(f"{name}: pixel baselines {entry['baselines']}", flush=True)
        for seed in range(a.seeds):
            for method in METHODS:
                trials, wall, initial = study(
                    reg, ws, name, f"{name}-{method}-s{seed}", method, seed, a
                )
                pts = curve(trials)
                entry["studies"].append(
                    {
                        "method": method,
                        "seed": seed,
                        "wall_s": wall,
                        "initial": initial,
                        "curve": pts,
                        "final": pts[-1][1] if pts else None,
                        "epochs": pts[-1][0] if pts else 0,
                        "trials": trials,
                    }
                )
                print(
                    f"  {name} {method} s{seed}: {len(trials)} trials, "
                    f"{pts[-1][0] if pts else 0} epochs, final test {pts[-1][1] if pts else None}, "
                    f"{wall:.0f} s",
                    flush=True,
                )
        res["tasks"][name] = entry
    try:
        loo = evaluate_source(reg, "registry", "acc")
        res["registry_loo"] = loo.to_dict()
    except Exception as exc:  # reported, not fatal: the studies above are the main result
        res["registry_loo"] = {"error": str(exc)}
    res["wall_s"] = time.perf_counter() - t_all
    res["load_end"] = os.getloadavg()
    (a.out / "automl_warm.json").write_text(json.dumps(res, indent=1, default=str))
    md = summarize(res, a)
    (a.out / "automl_warm.md").write_text(md)
    print(md)
    plot(res, a.out / "automl_warm.png", a.budget)
    if a.png:
        shutil.copyfile(a.out / "automl_warm.png", a.png)


def summarize(res: dict[str, Any], a: Any) -> str:
    lines = [
        f"Load average {res['load_start']} at the start, {res['load_end']} at the end; "
        f"{res['wall_s'] / 60:.0f} min.",
        "",
        "| task | method | final test ACC (mean) | per seed | epochs | epochs to reach random's "
        "final (fraction of random's) | logreg | RBF SVC |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for name, entry in res["tasks"].items():
        by = {m: [s for s in entry["studies"] if s["method"] == m] for m in METHODS}
        for m in METHODS:
            finals = [s["final"] for s in by[m] if s["final"] is not None]
            reached = []
            for s, r in zip(by[m], by["random"], strict=False):
                hit = reach([tuple(p) for p in s["curve"]], r["final"])
                reached.append(
                    "not reached" if hit is None else f"{hit:.0f} ({hit / max(r['epochs'], 1):.2f})"
                )
            lines.append(
                f"| {name} | {m} | {np.mean(finals):.3f} | "
                f"{', '.join(f'{f:.3f}' for f in finals)} | "
                f"{np.mean([s['epochs'] for s in by[m]]):.0f} | {'; '.join(reached)} | "
                f"{entry['baselines']['logreg']:.3f} | {entry['baselines']['svc_rbf']:.3f} |"
            )
    loo = res.get("registry_loo", {})
    if "summary" in loo:
        lines += ["", f"Registry's own runs, leave-one-task-out ({len(loo['datasets'])} tasks):"]
        for k, v in loo["summary"].items():
            lines.append(f"- {k}: top-1 {v['top1_mean']:.2f}, best of top 3 {v['topk_mean']:.2f}")
    elif loo:
        lines += ["", f"Registry's own runs: {loo.get('error')}"]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["tasks"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    grid = np.arange(1, budget + 10)
    colors = {"warm": "tab:green", "smac": "tab:blue", "random": "tab:orange"}
    for ax, name in zip(axes[0], names, strict=True):
        entry = res["tasks"][name]
        for m in METHODS:
            curves = [
                at_budget([tuple(p) for p in s["curve"]], grid)
                for s in entry["studies"]
                if s["method"] == m
            ]
            if curves:
                ax.plot(grid, np.nanmean(np.stack(curves), axis=0), label=m, color=colors[m])
        for b, style in (("logreg", ":"), ("svc_rbf", "--")):
            ax.axhline(entry["baselines"][b], color="grey", linestyle=style, label=b)
        ax.set_title(name.replace("bench_", ""))
        ax.set_xlabel("epochs spent")
        ax.set_ylabel("test ACC of best-by-val")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
