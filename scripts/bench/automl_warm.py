"""Warm-started SMAC (from the strategy recommender) vs plain SMAC vs random search, with
logistic regression and an RBF SVC on the pixels of every task in the same run.

1. **Knowledge base.** ``--kb-tasks`` look-alike tasks (:mod:`pomlia_hpc.data.synth`, 28 px,
   ``--sizes``) each get a random-search study (``--kb-trials`` trials of ``--max-epochs``):
   the registry's own runs that the recommender learns from. The benchmark tasks are not
   among them (held out). Every knowledge-base study draws its configurations with the same
   seed (``--kb-seed``), so each configuration is tried on every knowledge-base task and the
   warm start can pass on the settings that did well on several similar tasks
   (:mod:`pomlia_hpc.strategy.hparams`), not the winner of one task's few random draws.
   With ``--kb-model`` the studies after the first may also start from the first one's best
   model (a registered model of a similar task) in every training mode (full fine-tuning,
   linear probe, freeze-then-unfreeze), so the knowledge base holds strategies that differ in
   initial weights and training mode, not only in hyperparameters.
2. **Benchmark tasks** (``--tasks``): look-alikes, and ``digits``, a real data set built from
   scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), up-sampled to 28 px
   (nearest neighbour) and scaled to 0..255, split 1,257 / 180 / 360 (train / val / test).
   Per task and seed, studies through the real stack (local executor, one trial at a time,
   DeepSpeed on CPU, registry records), each stopping once ``--budget`` epochs were given out:

   - ``warm``: SMAC-Hyperband (budgets ``--min-epochs``..``--max-epochs``, eta 3) whose initial
     design is the recommender's top ``--k`` configurations for the task (registry source
     only, the task's own runs excluded; earlier benchmark tasks' runs are in the knowledge
     base, as they would be for a user) and whose space is narrowed to their architectures;
     the best configuration is then trained on to ``--max-epochs`` (counted in its epochs);
   - ``smac``: the same without the warm start (space: ``--archs``);
   - ``random``: random configurations at ``--max-epochs`` each (space: ``--archs``);
   - ``default`` (seed 0 only, when asked with ``--methods``): warm-started like ``warm`` but
     with the command line's default budget for the task's size
     (:func:`~pomlia_hpc.automl.budget.default_budget`), ``--default-trials`` trials, no
     epoch cap, and the best configuration trained on to the full budget: does a study with
     its default budget beat both pixel baselines?

   Curve: after each finished trial, the epochs spent and the test metric (ACC) of the best
   trial so far by validation metric. ``reach``: epochs the method needed for its curve to
   reach random search's final test metric, as a fraction of random search's epochs (per seed,
   and for the mean curves over seeds). Target: warm <= 0.5; the report counts the (task, seed)
   pairs that meet it, for ``warm`` and for ``smac``.
3. **Pixel baselines**: scikit-learn ``LogisticRegression`` (max_iter 2000) and ``SVC(rbf)``
   on the flattened training pixels / 255 (defaults otherwise), test ACC.
4. **The registry's own runs** (``--report-only``, after the pieces): leave-one-dataset-out
   (``pomlia strategy eval --source registry --metric acc``) over every task with runs.

Resumable, in pieces: every finished study is saved to ``--out``/automl_warm.json at once, the
workspace (``--work``) is kept, and a run started again skips what is recorded and resumes a
study that was interrupted. ``--fresh`` starts over.

    python scripts/bench/automl_warm.py --out bench-results --tasks digits       # piece 1
    python scripts/bench/automl_warm.py --out bench-results --tasks bloodmnist   # ...
    python scripts/bench/automl_warm.py --out bench-results --methods default    # default
    python scripts/bench/automl_warm.py --out bench-results --report-only \
        --png docs/automl_bench.png

Methods that need no knowledge base (``smac``, ``random``) can run at the same time in another
work folder (``--kb-tasks`` with no names); ``--report-only --merge OTHER/automl_warm.json``
then reports them together.

Writes ``automl_warm.json``, ``automl_warm.md`` and ``automl_warm.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from automl import at_budget, curve, trials_of  # noqa: E402

from pomlia_hpc.automl.budget import default_budget, task_train_size  # noqa: E402
from pomlia_hpc.automl.engine import EngineOptions  # noqa: E402
from pomlia_hpc.automl.space import SpaceOptions  # noqa: E402
from pomlia_hpc.automl.study import create_study, load_spec, run_study  # noqa: E402
from pomlia_hpc.automl.tasks import add_task, get_task  # noqa: E402
from pomlia_hpc.data.api import ingest  # noqa: E402
from pomlia_hpc.data.medmnist_info import flag_info  # noqa: E402
from pomlia_hpc.data.synth import make_split  # noqa: E402
from pomlia_hpc.errors import NotFoundError  # noqa: E402
from pomlia_hpc.registry import Registry  # noqa: E402
from pomlia_hpc.strategy.service import evaluate_source  # noqa: E402
from pomlia_hpc.strategy.warmstart import from_recommendation  # noqa: E402
from pomlia_hpc.workspace import Workspace  # noqa: E402

METHODS = ("warm", "smac", "random")


def _commit() -> str:
    """The code's commit (``POMLIA_BENCH_COMMIT`` when run from an exported copy)."""
    import subprocess

    env = os.environ.get("POMLIA_BENCH_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


COMMIT = _commit()


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
    """One study of ``method`` on ``task``; returns its trials, wall seconds, warm start, epochs.

    ``default``: warm-started like ``warm`` but with the command line's default budget for the
    task's size (:func:`~pomlia_hpc.automl.budget.default_budget`), ``--default-trials`` trials
    and no epoch cap, then the best configuration trained on to the full budget."""
    space = SpaceOptions(archs=tuple(a.archs.split(",")))
    initial: list[dict[str, Any]] = []
    optimizer = "random" if method == "random" else "smac"
    low, high = a.min_epochs, a.max_epochs
    n_trials, budget = 10_000, a.budget
    weights: dict[str, Any] = {}
    if method in ("warm", "default"):
        warm = from_recommendation(
            reg,
            task,
            k=a.k,
            archs=space.archs,
            sources=["registry"],
            exclude_own_runs=True,
        )
        initial, space = warm.configs, SpaceOptions(archs=warm.archs)
        weights = {"encoder": warm.encoder, "init_model": warm.init_model}
    if method == "default":
        low, high = default_budget(task_train_size(reg, task), 3)
        n_trials, budget = a.default_trials, None
    t0 = time.perf_counter()
    try:
        spec = load_spec(ws, name)  # an interrupted piece: continue the study, not redo it
        resume = True
    except NotFoundError:
        spec = create_study(
            reg,
            ws,
            task,
            name=name,
            n_trials=n_trials,
            max_epochs=high,
            min_epochs=low if optimizer == "smac" else high,
            eta=3,
            parallel=1,  # one trial at a time: one core stays free for the rest
            optimizer=optimizer,
            seed=seed,
            budget_epochs=budget,
            engine=EngineOptions(threads=1),
            space=space,
            initial_configs=initial,
            n_initial=max(len(initial), 1) if initial else None,
            final_full_budget=optimizer == "smac",
            **weights,
        )
        resume = False
    run_study(reg, ws, spec, resume=resume, poll_s=0.5)
    trials = trials_of(reg, name, "acc")
    return trials, time.perf_counter() - t0, initial, (low, high)


def setting_loo(reg: Registry, tasks: list[str]) -> dict[str, Any]:
    """Leave-one-task-out over ``tasks`` of the configurations (strategy fields and
    hyperparameters together) ranked by their mean regret over the other tasks
    (:func:`pomlia_hpc.strategy.hparams.rank_hparams`, equal task weights, a configuration
    missing on a task counted as the task's median; close to, not the same as, how the warm
    start picks its first configuration: per strategy, against each task's best). For each
    task, the configurations it ran at its largest budget are ranked from the other tasks'
    runs (configurations the others never ran come after, in a fixed order), and the regret
    (validation objective, points) of the first and of the best of the first 3 is measured on
    the task; baselines: a random configuration (expected), and the best configuration of one
    other task (``one task``, averaged over the others). A task none of whose configurations
    ran on another task is left out."""
    from pomlia_hpc.strategy.hparams import HpRun, hp_key, rank_hparams, task_runs
    from pomlia_hpc.strategy.kb import HPARAMS
    from pomlia_hpc.strategy.runstats import run_strategy

    names = list(tasks)
    runs = []
    for r in task_runs(reg, names).runs:
        fields = run_strategy(r.hparams, 0)
        values = {k: r.hparams[k] for k in HPARAMS if r.hparams.get(k) is not None}
        values.update({k: fields[k] for k in ("arch", "init", "mode")})
        runs.append(HpRun(r.task, values, r.budget, r.objective))
    per: dict[str, dict[str, float]] = {}
    for t in names:
        mine = [r for r in runs if r.task == t]
        if not mine:
            continue
        top = max(r.budget for r in mine)
        per[t] = {}
        for r in mine:
            if r.budget >= top:
                per[t][hp_key(r.hparams)] = max(per[t].get(hp_key(r.hparams), -1.0), r.objective)
    keys = ("ranked", "ranked_top3", "random", "one task")
    out: dict[str, dict[str, float]] = {k: {} for k in keys}  # method -> task -> regret
    used = []
    for t, vals in per.items():
        others = [r for r in runs if r.task != t]
        if len(vals) < 2 or not others:
            continue
        best = max(vals.values())
        ranked = [hp_key(h) for h in rank_hparams(others, {o: 1.0 for o in per if o != t})]
        if not any(k in vals for k in ranked):
            continue  # none of its configurations ran elsewhere: nothing to rank them by
        order = [k for k in ranked if k in vals] + sorted(k for k in vals if k not in ranked)
        out["ranked"][t] = 100 * (best - vals[order[0]])
        out["ranked_top3"][t] = 100 * (best - max(vals[k] for k in order[:3]))
        out["random"][t] = 100 * (best - float(np.mean(list(vals.values()))))
        one = []
        for o in per:
            if o == t:
                continue
            mine = [k for k in per[o] if k in vals]
            if mine:
                one.append(100 * (best - vals[max(mine, key=lambda k, o=o: per[o][k])]))
        if one:  # a task whose configurations no other task's best ran has no value here
            out["one task"][t] = float(np.mean(one))
        used.append(t)
    return {
        "tasks": used,
        "per_task": out,
        "n_settings": {t: len(per[t]) for t in used},
        "mean": {k: float(np.mean(list(v.values()))) if v else None for k, v in out.items()},
    }


def reach(pts: list[tuple[int, float]], target: float) -> float | None:
    """Epochs at which the curve first reaches ``target`` (None: never)."""
    for spent, value in pts:
        if value is not None and np.isfinite(value) and value >= target - 1e-9:
            return float(spent)
    return None


def within_half(studies: list[dict[str, Any]], rnd: dict[int, dict[str, Any]]) -> tuple[int, int]:
    """(seeds whose curve reaches random search's final of the same seed within 50 % of that
    search's epochs, seeds that have a random search to compare with) over ``studies``."""
    pairs = [(s, rnd[s["seed"]]) for s in studies if s["seed"] in rnd]
    ok = sum(
        (h := reach([tuple(p) for p in s["curve"]], r["final"])) is not None
        and h <= 0.5 * r["epochs"]
        for s, r in pairs
    )
    return ok, len(pairs)


#: Arguments that must not change between the pieces of one benchmark run.
FIXED_ARGS = (
    "kb_tasks",
    "kb_model",
    "kb_seed",
    "sizes",
    "kb_trials",
    "budget",
    "min_epochs",
    "max_epochs",
    "k",
    "archs",
)


def load_results(a: Any) -> dict[str, Any]:
    """The results so far (``--out``/automl_warm.json), or a new record; refuses to mix runs
    whose fixed arguments differ (pass ``--fresh``)."""
    path = a.out / "automl_warm.json"
    if a.fresh or not path.is_file():
        shutil.rmtree(a.work, ignore_errors=True)
        return {"args": {k: getattr(a, k) for k in FIXED_ARGS}, "pieces": [], "kb": {}, "tasks": {}}
    res = json.loads(path.read_text())
    now = {k: getattr(a, k) for k in FIXED_ARGS}
    if res["args"] != now:
        diff = [k for k in FIXED_ARGS if res["args"].get(k) != now[k]]
        sys.exit(f"{path}: a run with other {', '.join(diff)} is there; pass --fresh to restart")
    return res


def save(res: dict[str, Any], a: Any) -> None:
    """Write the results so far (atomically: a stopped piece keeps every finished study)."""
    tmp = a.out / "automl_warm.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(a.out / "automl_warm.json")


def ensure_task(ws: Workspace, reg: Registry, name: str, arrays: Any, flag: str) -> None:
    try:
        get_task(reg, name)
    except NotFoundError:
        register(ws, reg, name, arrays(), flag)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/pomlia-bench-automl-warm"))
    ap.add_argument("--png", type=Path)
    ap.add_argument("--fresh", action="store_true", help="forget earlier pieces; start again")
    ap.add_argument(
        "--kb-tasks",
        nargs="*",
        default=[
            "organcmnist",
            "dermamnist",
            "pathmnist",
            "organamnist",
            "tissuemnist",
            "pneumoniamnist",
        ],
        help="knowledge-base look-alikes (none: only methods without a warm start can run)",
    )
    ap.add_argument(
        "--tasks", nargs="+", default=["bloodmnist", "organsmnist", "octmnist", "digits"]
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs=3, default=[300, 100, 200])
    ap.add_argument("--kb-trials", type=int, default=6)
    ap.add_argument(
        "--kb-seed", type=int, default=100, help="seed of every knowledge-base study's draws"
    )
    ap.add_argument(
        "--kb-model",
        action="store_true",
        help="knowledge-base studies after the first also offer the first one's best model as "
        "initial weights (init=model: full fine-tune, linear probe, freeze-then-unfreeze)",
    )
    ap.add_argument("--budget", type=int, default=27, help="epochs per study")
    ap.add_argument("--min-epochs", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=9)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--archs", default="small_cnn,mobilenet_v3_small")
    ap.add_argument("--default-trials", type=int, default=6)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, "default"])
    ap.add_argument("--report-only", action="store_true", help="tables and plot from the JSON")
    ap.add_argument(
        "--redo",
        nargs="+",
        default=[],
        choices=[*METHODS, "default"],
        help="forget the recorded studies of these methods (on --tasks) and run them again "
        "under names ending in --tag (after a library change)",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        help="with --report-only: add the studies of these automl_warm.json files (methods run "
        "in another work folder at the same time)",
    )
    ap.add_argument("--tag", default="", help="suffix of new study names (with --redo)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res = load_results(a)
    ws = Workspace(
        home=a.work, db_url=f"sqlite:///{a.work / 'registry.db'}", cluster_profile="local"
    )
    ws.create()
    reg = Registry.open(ws.db_url)
    t_all = time.perf_counter()
    piece = {
        "load_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    piece["argv"] = sys.argv[1:]
    res["pieces"].append(piece)
    for i, flag in enumerate([] if a.report_only else a.kb_tasks):  # the knowledge base
        name = f"kb_{flag}"
        if res["kb"].get(name, {}).get("done"):
            continue
        ensure_task(ws, reg, name, lambda f=flag, i=i: lookalike(f, tuple(a.sizes), 100 + i), flag)
        sname = f"{name}-random"
        try:
            spec, resume = load_spec(ws, sname), True
        except NotFoundError:
            # --kb-model: every knowledge-base study but the first may start from the first
            # one's best model (a registered model of a similar task), in every training mode.
            model = f"kb_{a.kb_tasks[0]}-random-best" if a.kb_model and i > 0 else None
            spec = create_study(
                reg,
                ws,
                name,
                name=sname,
                n_trials=a.kb_trials,
                max_epochs=a.max_epochs,
                min_epochs=a.max_epochs,
                parallel=1,
                optimizer="random",
                seed=a.kb_seed,
                engine=EngineOptions(threads=1),
                space=SpaceOptions(archs=tuple(a.archs.split(","))),
                init_model=model,
            )
            resume = False
        t0 = time.perf_counter()
        run_study(reg, ws, spec, resume=resume, poll_s=0.5)
        res["kb"][name] = {"done": True, "wall_s": time.perf_counter() - t0}
        save(res, a)
        print(f"kb study {name}: done ({time.perf_counter() - t_all:.0f} s)", flush=True)
    makers = {}
    for flag in [] if a.report_only else a.tasks:
        name = f"bench_{flag}"
        make = digits if flag == "digits" else (lambda f=flag: lookalike(f, tuple(a.sizes), 7))
        ensure_task(ws, reg, name, make, flag)
        entry = res["tasks"].setdefault(name, {"studies": []})
        if a.redo:
            entry["studies"] = [s for s in entry["studies"] if s["method"] not in a.redo]
        if "baselines" not in entry:
            entry["baselines"] = pixel_baselines(make())
            save(res, a)
        print(f"{name}: pixel baselines {entry['baselines']}", flush=True)
        makers[name] = make
    # Seed by seed over every task: a run stopped early holds whole seeds of the protocol.
    for seed in range(a.seeds):
        for name, entry in ((n, res["tasks"][n]) for n in makers):
            done = {(s["method"], s["seed"]) for s in entry["studies"]}
            for method in a.methods:
                if (method, seed) in done or (method == "default" and seed > 0):
                    continue
                sname = f"{name}-{method}-s{seed}{a.tag if method in a.redo else ''}"
                trials, wall, initial, (low, high) = study(reg, ws, name, sname, method, seed, a)
                pts = curve(trials)
                entry["studies"].append(
                    {
                        "method": method,
                        "seed": seed,
                        "study": sname,
                        "commit": COMMIT,
                        "wall_s": wall,
                        "min_max_epochs": [low, high],
                        "initial": initial,
                        "curve": pts,
                        "final": pts[-1][1] if pts else None,
                        "epochs": pts[-1][0] if pts else 0,
                        "trials": trials,
                    }
                )
                save(res, a)
                print(
                    f"  {name} {method} s{seed}: {len(trials)} trials, "
                    f"{pts[-1][0] if pts else 0} epochs, final test {pts[-1][1] if pts else None}, "
                    f"{wall:.0f} s",
                    flush=True,
                )
    if a.report_only:
        for path in a.merge:
            merge(res, json.loads(path.read_text()), path)
        try:
            res["registry_loo"] = evaluate_source(reg, "registry", "acc").to_dict()
        except Exception as exc:  # reported, not fatal: the studies are the main result
            res["registry_loo"] = {"error": str(exc)}
        res["setting_loo"] = setting_loo(reg, [f"kb_{f}" for f in a.kb_tasks])
    piece["wall_s"] = time.perf_counter() - t_all
    piece["load_end"] = os.getloadavg()
    save(res, a)
    md = summarize(res, a)
    (a.out / "automl_warm.md").write_text(md)
    print(md)
    if any(s["method"] in METHODS for e in res["tasks"].values() for s in e["studies"]):
        plot(res, a.out / "automl_warm.png")
        if a.png:
            shutil.copyfile(a.out / "automl_warm.png", a.png)


def merge(res: dict[str, Any], other: dict[str, Any], path: Path) -> None:
    """Add the studies of ``other`` (another work folder's results: e.g. the methods without a
    warm start, run in parallel) to ``res``, task by task; a (method, seed) present in both is
    an error. The pixel baselines must agree (same splits)."""
    for entry in res["tasks"].values():  # merged before (a report made again)
        entry["studies"] = [s for s in entry["studies"] if s.get("from") != str(path)]
    res["pieces"] = [p for p in res["pieces"] if p.get("from") != str(path)]
    res["merged"] = [m for m in res.get("merged", []) if m["path"] != str(path)]
    for name, entry in other["tasks"].items():
        mine = res["tasks"].setdefault(name, {"studies": [], "baselines": entry["baselines"]})
        if mine.get("baselines") != entry["baselines"]:
            sys.exit(f"{path}: {name}'s pixel baselines differ: not the same splits")
        have = {(s["method"], s["seed"]) for s in mine["studies"]}
        for s in entry["studies"]:
            if (s["method"], s["seed"]) in have:
                sys.exit(f"{path}: {name} {s['method']} seed {s['seed']} is in both results")
            mine["studies"].append({**s, "from": str(path)})
    res["pieces"] += [{**p, "from": str(path)} for p in other["pieces"]]
    res["merged"].append({"path": str(path), "args": other["args"]})


def _mean_curve(studies: list[dict[str, Any]], grid: np.ndarray) -> np.ndarray:
    """Mean over ``studies`` of their curves on ``grid`` (NaN before any study's first point)."""
    curves = [at_budget([tuple(p) for p in s["curve"]], grid) for s in studies]
    with warnings.catch_warnings():  # all-NaN columns (no study has a point yet) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(curves), axis=0) if curves else np.full(len(grid), np.nan)


def summarize(res: dict[str, Any], a: Any) -> str:
    """The tables of the module docstring, from the results so far."""
    loads = "; ".join(
        f"{p['started']}: {' '.join(f'{x:.1f}' for x in p['load_start'])} -> "
        f"{' '.join(f'{x:.1f}' for x in p.get('load_end', [math.nan] * 3))} "
        f"({p.get('wall_s', math.nan) / 60:.0f} min)"
        for p in res["pieces"]
    )
    lines = [
        f"Pieces (start: load average at start -> end, wall): {loads}.",
        "",
        "| task | method | seeds | final test ACC (mean) | per seed | epochs (mean) | epochs to "
        "reach random's final, per seed (fraction of random's epochs) | logreg | RBF SVC |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    verdicts = []
    pairs = {"warm": [0, 0], "smac": [0, 0]}  # (task, seed) pairs within 50 %, pairs with both
    for name, entry in res["tasks"].items():
        by = {
            m: sorted((s for s in entry["studies"] if s["method"] == m), key=lambda s: s["seed"])
            for m in (*METHODS, "default")
        }
        # Random searches with a result (a study without any trial recorded has none).
        rnd = {s["seed"]: s for s in by["random"] if s["final"] is not None}
        base = entry.get("baselines", {})
        for m, studies in by.items():
            if not studies:
                continue
            finals = [s["final"] for s in studies if s["final"] is not None]
            reached = []
            for s in studies:
                r = rnd.get(s["seed"])
                if r is None or m in ("random", "default"):
                    continue
                hit = reach([tuple(p) for p in s["curve"]], r["final"])
                reached.append(
                    "not reached" if hit is None else f"{hit:.0f} ({hit / max(r['epochs'], 1):.2f})"
                )
            lines.append(
                f"| {name.removeprefix('bench_')} | {m} | {len(studies)} | "
                f"{f'{np.mean(finals):.3f}' if finals else '-'} | "
                f"{', '.join(f'{f:.3f}' for f in finals)} | "
                f"{np.mean([s['epochs'] for s in studies]):.0f} | {'; '.join(reached) or '-'} | "
                f"{base.get('logreg', math.nan):.3f} | {base.get('svc_rbf', math.nan):.3f} |"
            )
        if by["warm"] and rnd:
            grid = np.arange(0, 10 * a.budget + 1)
            target = float(np.mean([s["final"] for s in rnd.values()]))
            r_epochs = float(np.mean([s["epochs"] for s in rnd.values()]))
            warm = _mean_curve(by["warm"], grid)
            hit = np.nonzero(np.nan_to_num(warm, nan=-1.0) >= target - 1e-9)[0]
            frac = grid[hit[0]] / r_epochs if len(hit) else math.inf
            seeds_ok, seeds_n = within_half(by["warm"], rnd)
            verdicts.append(
                f"- {name.removeprefix('bench_')}: mean warm curve reaches random's mean final "
                f"({target:.3f}) at {frac:.2f} of random's epochs "
                f"({'met' if frac <= 0.5 else 'NOT met'}); per seed within 50 %: "
                f"{seeds_ok}/{seeds_n}"
            )
        for m in ("warm", "smac"):
            ok, n = within_half(by[m], rnd)
            pairs[m][0] += ok
            pairs[m][1] += n
        for s in by["default"]:
            if s["final"] is None:  # no trial of the study produced a model
                verdicts.append(f"- {name.removeprefix('bench_')}: default-budget study: no model")
                continue
            beats = {b: s["final"] > v for b, v in base.items()}
            verdicts.append(
                f"- {name.removeprefix('bench_')}: default-budget study (epochs "
                f"{s['min_max_epochs'][0]}..{s['min_max_epochs'][1]}, {len(s['trials'])} trials, "
                f"{s['epochs']} epochs) test ACC {s['final']:.3f}: beats logreg "
                f"{'yes' if beats.get('logreg') else 'no'}, beats RBF SVC "
                f"{'yes' if beats.get('svc_rbf') else 'no'}"
            )
    if pairs["warm"][1]:
        verdicts.append(
            f"- all tasks: random search's final reached within 50 % of its epochs in "
            f"{pairs['warm'][0]} of {pairs['warm'][1]} (task, seed) pairs by warm-started SMAC, "
            f"{pairs['smac'][0]} of {pairs['smac'][1]} by plain SMAC"
        )
    lines += ["", *verdicts]
    loo = res.get("registry_loo", {})
    if "summary" in loo:
        lines += [
            "",
            f"Registry's own runs, leave-one-task-out ({len(loo['datasets'])} tasks: "
            f"{', '.join(loo['datasets'])}; {loo['n_strategies']} strategies):",
            "",
            "| method | top-1 regret | best-of-top-3 regret |",
            "| --- | ---: | ---: |",
        ]
        for k, v in loo["summary"].items():
            lines.append(f"| {k} | {v['top1_mean']:.2f} | {v['topk_mean']:.2f} |")
    elif loo:
        lines += ["", f"Registry's own runs: {loo.get('error')}"]
    sl = res.get("setting_loo")
    if sl and sl.get("tasks"):
        mean = {k: "-" if v is None else f"{v:.2f}" for k, v in sl["mean"].items()}
        lines += [
            "",
            f"Configurations ranked as the warm start's first, leave-one-task-out over "
            f"{len(sl['tasks'])} tasks ({', '.join(sl['tasks'])}), regret in validation points: "
            f"ranked first {mean['ranked']}, best of ranked 3 {mean['ranked_top3']}, "
            f"best of one other task {mean['one task']}, random setting {mean['random']}.",
        ]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    """Mean curves per method and task (``warm``/``smac``/``random``), the pixel baselines,
    and the 50 % mark of random search's epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        n for n, e in res["tasks"].items() if any(s["method"] in METHODS for s in e["studies"])
    ]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    colors = {"warm": "tab:green", "smac": "tab:blue", "random": "tab:orange"}
    for ax, name in zip(axes[0], names, strict=True):
        entry = res["tasks"][name]
        top = max(s["epochs"] for s in entry["studies"] if s["method"] in METHODS)
        grid = np.arange(0, top + 1)
        for m in METHODS:
            studies = [s for s in entry["studies"] if s["method"] == m]
            if studies:
                ax.plot(
                    grid,
                    _mean_curve(studies, grid),
                    label=f"{m} ({len(studies)})",
                    color=colors[m],
                    drawstyle="steps-post",
                )
        rnd = [s["epochs"] for s in entry["studies"] if s["method"] == "random"]
        if rnd:
            ax.axvline(
                0.5 * float(np.mean(rnd)),
                color="tab:orange",
                linestyle="-.",
                lw=0.8,
                label="50 % of random's epochs",
            )
        for b, style in (("logreg", ":"), ("svc_rbf", "--")):
            ax.axhline(entry["baselines"][b], color="grey", linestyle=style, label=b)
        ax.set_title(name.replace("bench_", ""))
        ax.set_xlabel("epochs spent")
        ax.set_ylabel("test ACC of best-by-val (mean of seeds)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
