"""Benchmark the loop end to end: time from the monitor's alarm to the new model serving, and
accuracy on a shifted stream before and after.

A fresh workspace; a PneumoniaMNIST look-alike (``--scale`` of MedMNIST's split sizes); a
champion found by ``pomlia automl run`` and exported; then the showcase of
:mod:`pomlia_hpc.loop.showcase`: served on a slot with kept inputs, an in-distribution stream
(the monitor must stay quiet), a corrupted stream with feedback labels (the monitor must
alarm), ``pomlia loop watch --once`` (harvest → ... → gate → redeploy), the running server
swaps, and a fresh corrupted stream is classified by the new model.

Baselines in the same run, on that fresh stream: the old model (no loop), and the trivial
majority-class answer (the most frequent class of the champion's training labels). Ablations
on the loop's own task (the harvested version) with the same budget, to show what the loop's
retrain defaults do (unless ``--no-ablation``): a study from scratch with plain shuffling (the
loop before those defaults) and a fine-tune of the champion with plain shuffling.

    python scripts/bench/loop.py --out bench-results               # ~10-15 min on 2 idle cores
    python scripts/bench/loop.py --quick --out /tmp/bench          # smaller sizes

Writes ``loop.json`` and ``loop.md`` to ``--out``; the load average is recorded beside the
timings (they are only comparable at a similar load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

FLAG = "pneumoniamnist"


def cli(*args: str, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> int:
    print(f"$ pomlia {' '.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", *args], check=False, env={**os.environ, **(env or {})}
    )
    if proc.returncode not in ok:
        raise SystemExit(f"bench: `pomlia {' '.join(args)}` exited with {proc.returncode}")
    return proc.returncode


def _pair(pair: Any) -> str:
    return f"{pair[0]:.3f} → {pair[1]:.3f}" if isinstance(pair, list) and len(pair) == 2 else ""


def ablation(
    reg: Any,
    ws: Any,
    task: str,
    study: str,
    champion: str,
    cfg: Any,
    trials: int,
    epochs: int,
    fine_tune: bool,
) -> float:
    """Accuracy on shifted stream 2 of the best model of a study on the loop's task with the
    loop's budget but plain shuffling, from scratch or fine-tuning ``champion``."""
    from pomlia_hpc.automl.space import SpaceOptions
    from pomlia_hpc.automl.study import create_study, load_spec, run_study
    from pomlia_hpc.loop.gate import correct
    from pomlia_hpc.loop.showcase import stream
    from pomlia_hpc.models.catalog import resolve_model

    # The loop study's own warm start (the fine-tune of the champion first), less the
    # fine-tune for the scratch ablation.
    warm = load_spec(ws, study).initial_configs
    name = f"ablation-{'fine-tune' if fine_tune else 'scratch'}-plain"
    print(f"ablation study {name} on {task}", flush=True)
    spec = create_study(
        reg,
        ws,
        task,
        name=name,
        n_trials=trials,
        max_epochs=epochs,
        min_epochs=epochs,
        parallel=2,
        space=SpaceOptions(archs=("small_cnn",)),
        init_model=champion if fine_tune else None,
        initial_configs=[c for c in warm if fine_tune or c.get("init") != "model"],
    )
    res = run_study(reg, ws, spec)
    if res.model_name is None:
        return float("nan")
    x, y = stream(cfg.flag, cfg.after, 303, (cfg.family, cfg.severity))
    return float(correct(resolve_model(reg, res.model_name), x, y[:, None]).mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--home", type=Path, help="workspace (default: a new temporary folder)")
    p.add_argument("--scale", type=float, default=0.2, help="look-alike size (MedMNIST x this)")
    p.add_argument("--family", default="contrast", help="corruption family of the shift")
    p.add_argument("--severity", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller streams and budgets")
    p.add_argument("--no-ablation", action="store_true", help="skip the two ablation studies")
    args = p.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="pomlia-bench-loop-"))
    os.environ["POMLIA_HOME"] = str(home)
    os.environ.pop("POMLIA_DB_URL", None)

    from pomlia_hpc.loop.showcase import LoopShowcase, loop_showcase
    from pomlia_hpc.registry import LoopRun, Registry
    from pomlia_hpc.workspace import Workspace

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    quick = args.quick
    cli("init")
    ws = Workspace.from_settings()
    reg = Registry.open(ws.db_url)
    raw = home / "raw"
    cli("data", "synth", "--scale", str(args.scale), "--flags", FLAG, str(raw))
    cli("data", "add", FLAG, "--root", str(raw))
    cli("task", "add", "bench-pneumo", "--dataset", FLAG, "--metric", "acc")
    budget = ["--trials", "2" if quick else "4", "--max-epochs", "3" if quick else "4"]
    cli("automl", "run", "bench-pneumo", "--study", "bench-champ", *budget, "--archs", "small_cnn")
    model = "bench-champ-best"
    cli("model", "export", model)
    t_champion = time.perf_counter() - t_start

    loop_trials, loop_epochs = (2, 6) if quick else (4, 8)
    cfg = LoopShowcase(
        flag=FLAG,
        normal=100 if quick else 200,
        shifted=200 if quick else 300,
        after=200 if quick else 400,
        family=args.family,
        severity=args.severity,
        loop_args=(
            *("--trials", str(loop_trials), "--max-epochs", str(loop_epochs)),
            *("--min-epochs", str(loop_epochs), "--parallel", "2"),
            *("--archs", "small_cnn", "--margin", "0.05"),
        ),
    )
    figures = loop_showcase(ws, reg, model, cfg, cli=cli)
    t_loop = time.perf_counter() - t_start

    with reg.session() as s:
        run = s.scalar(select(LoopRun).order_by(LoopRun.id.desc()).limit(1))
        stages = {
            k: v.get("seconds") for k, v in (run.stages if run else {}).items() if k != "params"
        }
        gate = (run.stages if run else {}).get("gate", {})
        loop_task = str(((run.stages if run else {}).get("recommend") or {}).get("task", ""))
        loop_study = str(((run.stages if run else {}).get("automl") or {}).get("study", ""))
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "scale": args.scale,
        "shift": {"family": cfg.family, "severity": cfg.severity},
        "streams": {"normal": cfg.normal, "shifted": cfg.shifted, "after": cfg.after},
        "champion_build_s": round(t_champion, 1),
        "figures": figures,
        "stage_seconds": stages,
        "gate": {
            k: gate.get(k)
            for k in ("passed", "p_value", "fixed_test_accuracy", "production_accuracy", "reason")
        },
        "loop_total_s": round(t_loop, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop.json").write_text(json.dumps(result, indent=2, default=str))  # partial
    ablations: dict[str, float] = {}
    if not args.no_ablation and loop_task:
        for label, fine_tune in (("scratch, plain shuffling", False), ("fine-tune, plain", True)):
            ablations[label] = ablation(
                reg, ws, loop_task, loop_study, model, cfg, loop_trials, loop_epochs, fine_tune
            )
            result["ablations"] = ablations
            (args.out / "loop.json").write_text(json.dumps(result, indent=2, default=str))
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    result["load_average_end"] = os.getloadavg()
    (args.out / "loop.json").write_text(json.dumps(result, indent=2, default=str))
    f = figures
    rows = [
        ("alarm → new model serving (s)", f"{f['alarm_to_serving_s']:.1f}"),
        ("accuracy, in-distribution stream (old model)", f"{f['accuracy_normal']:.3f}"),
        ("accuracy, shifted stream 1 (old model, served)", f"{f['accuracy_before']:.3f}"),
        ("accuracy, shifted stream 2 (new model, served)", f"{f['accuracy_after']:.3f}"),
        ("baseline: old model on shifted stream 2", f"{f['old_on_after_stream']:.3f}"),
        ("baseline: majority class on shifted stream 2", f"{f['majority_on_after_stream']:.3f}"),
        *((f"ablation: {k}, on stream 2", f"{v:.3f}") for k, v in ablations.items()),
        ("gate", f"passed={gate.get('passed')} p={gate.get('p_value')}"),
        ("gate: fixed test accuracy old → new", _pair(gate.get("fixed_test_accuracy"))),
        ("gate: production test accuracy old → new", _pair(gate.get("production_accuracy"))),
        ("stage seconds", ", ".join(f"{k} {v}" for k, v in stages.items())),
        ("load average before / after", f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}"),
    ]
    md = "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    (args.out / "loop.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
