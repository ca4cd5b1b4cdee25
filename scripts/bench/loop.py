"""Benchmark the loop end to end: time from the monitor's alarm to the new model serving, and
accuracy on a shifted stream before and after.

A fresh workspace; a PneumoniaMNIST look-alike (``--scale`` of MedMNIST's split sizes); a
champion found by ``pomlia automl run`` and exported; then the showcase of
:mod:`pomlia_hpc.loop.showcase`: served on a slot with kept inputs, an in-distribution stream
(the monitor must stay quiet), a corrupted stream with feedback labels (the monitor must
alarm), ``pomlia loop watch --once`` (harvest → ... → gate → redeploy), the running server
swaps, and a fresh corrupted stream is classified by the new model.

Baselines in the same run, on that fresh stream: the old model (no loop), and the trivial
majority-class answer (the most frequent class of the champion's training labels).

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

import numpy as np
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--home", type=Path, help="workspace (default: a new temporary folder)")
    p.add_argument("--scale", type=float, default=0.2, help="look-alike size (MedMNIST x this)")
    p.add_argument("--family", default="contrast", help="corruption family of the shift")
    p.add_argument("--severity", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller streams and budgets")
    args = p.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="pomlia-bench-loop-"))
    os.environ["POMLIA_HOME"] = str(home)
    os.environ.pop("POMLIA_DB_URL", None)

    from pomlia_hpc.loop.showcase import LoopShowcase, loop_showcase, stream
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

    cfg = LoopShowcase(
        flag=FLAG,
        normal=100 if quick else 200,
        shifted=200 if quick else 300,
        after=200 if quick else 400,
        family=args.family,
        severity=args.severity,
        loop_args=(
            *budget,
            "--min-epochs",
            budget[-1],
            "--parallel",
            "2",
            "--archs",
            "small_cnn",
            "--margin",
            "0.05",
        ),
    )
    figures = loop_showcase(ws, reg, model, cfg, cli=cli)

    # The trivial baseline: always the champion's most frequent training class.
    from pomlia_hpc.data.store import open_version

    store = open_version(reg, FLAG)
    lo, hi = store.split_range("train")
    majority = int(np.bincount(store.read_labels(lo, hi)[:, 0]).argmax())
    _, y_after = stream(FLAG, cfg.after, 303, (cfg.family, cfg.severity))
    figures["majority_on_after_stream"] = float((y_after == majority).mean())
    with reg.session() as s:
        run = s.scalar(select(LoopRun).order_by(LoopRun.id.desc()).limit(1))
        stages = {
            k: v.get("seconds") for k, v in (run.stages if run else {}).items() if k != "params"
        }
        gate = (run.stages if run else {}).get("gate", {})
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
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop.json").write_text(json.dumps(result, indent=2, default=str))
    f = figures
    rows = [
        ("alarm → new model serving (s)", f"{f['alarm_to_serving_s']:.1f}"),
        ("accuracy, in-distribution stream (old model)", f"{f['accuracy_normal']:.3f}"),
        ("accuracy, shifted stream 1 (old model, served)", f"{f['accuracy_before']:.3f}"),
        ("accuracy, shifted stream 2 (new model, served)", f"{f['accuracy_after']:.3f}"),
        ("baseline: old model on shifted stream 2", f"{f['old_on_after_stream']:.3f}"),
        ("baseline: majority class on shifted stream 2", f"{f['majority_on_after_stream']:.3f}"),
        ("gate", f"passed={gate.get('passed')} p={gate.get('p_value')}"),
        ("stage seconds", ", ".join(f"{k} {v}" for k, v in stages.items())),
        ("load average before / after", f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}"),
    ]
    md = "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    (args.out / "loop.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
