"""Benchmark the monitor: false-alarm rate (calibration), power per shift, and speed.

Setup, on MedMNIST look-alikes (``pomlia_hpc.data.synth``; default bloodmnist, RGB 28 px,
8 classes): the classifier is a multinomial logistic regression on the fingerprints of 2,000
training images (a cheap stand-in for the exported CNN: the monitor only sees a model's
outputs). The reference is ``--reference`` validation images (default 1,000), fingerprinted with
the server's own function (``stats-thumb-v1``, rounded as logged) and passed through the
classifier. No-drift windows are drawn from 30,000 fresh test-split images (so that each is
close to a fresh sample of the distribution); ``--extra-references`` more references (other
validation draws) show how much the false-alarm rate varies from one reference to another.
Shifted windows:

* corruption families of ``pomlia_hpc.data.corruptions`` (MedMNIST-C's) at severities 1-5,
  applied to ``--pool`` test images;
* class prior: half of the window is drawn from one class (chosen per window), the other half
  from the natural distribution;
* foreign data: 10 / 25 / 50 % of the window from another look-alike dataset (default
  pathmnist);
* accuracy drop: labelled in-distribution windows whose feedback labels are changed on 10
  points' worth of correctly predicted images (input and prediction distribution unchanged).

Each window goes through :func:`pomlia_hpc.monitor.checks.run_checks`, the function
``pomlia monitor run`` uses (MMD with 200 reference x 1,000 window resamples, KS, classifier,
labels, confidence, accuracy; weighted Holm at alpha 0.05); the MMD's and the classifier's
plain (not reference-tolerant) p-values are counted beside as ``mmd-plain`` and
``classifier-plain``. Baselines in the same run, built so they can lose: a
t-test on mean image brightness (alpha 0.05), and a domain classifier with a fixed AUC > 0.55
rule (Evidently's default rule for embedding drift).

Speed: a log of N predictions (default 1,000,000) written as a server writes it, then
``pomlia monitor run`` in a separate process (wall time, CPU time, peak memory).

    python scripts/bench/monitor.py --out bench-results                  # everything
    python scripts/bench/monitor.py --quick --out /tmp/bench-monitor     # smoke run
    # in pieces (each saves its chunks as it goes), then the tables from all of them:
    python scripts/bench/monitor.py --parts null,accuracy --out A
    python scripts/bench/monitor.py --parts shifts --sizes 200,50 --out B
    python scripts/bench/monitor.py --merge A B --out C

Writes ``monitor-partial.jsonl`` (chunks, as they finish), ``monitor.json`` and ``monitor.md``
to ``--out``. Modules: ``monitor_setup`` (data, shifts, baselines), ``monitor_eval`` (windows
through the checks), ``monitor_speed``, ``monitor_tables``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

from monitor_eval import Cell, accuracy_drop, merge, run_cell, use_setup
from monitor_setup import Setup, shift_names
from monitor_speed import speed
from monitor_tables import load_parts, write_tables

from pomlia_hpc.data.corruptions import FAMILIES

CHUNK = 25  # windows per saved chunk


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--flag", default="bloodmnist")
    ap.add_argument("--foreign", default="pathmnist")
    ap.add_argument(
        "--parts",
        default="null,shifts,accuracy,speed",
        help="comma-separated: null (no-drift windows), shifts, accuracy, speed",
    )
    ap.add_argument("--sizes", default="200,50,100,500", help="window sizes, in this order")
    ap.add_argument("--null-windows", type=int, default=500, help="no-drift windows at n=200")
    ap.add_argument("--null-windows-other", type=int, default=500, help="... at other n")
    ap.add_argument("--extra-references", type=int, default=5, help="other references (every n)")
    ap.add_argument("--extra-null-windows", type=int, default=200, help="windows per other one")
    ap.add_argument("--reps", type=int, default=50, help="windows per shift at n=200")
    ap.add_argument("--reps-other", type=int, default=25, help="windows per shift at other n")
    ap.add_argument("--shifts", default="", help="comma-separated shift names (default all)")
    ap.add_argument("--acc-reps", type=int, default=200)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--speed-records", type=int, default=1_000_000)
    ap.add_argument("--speed-home", type=Path, default=None, help="reuse this workspace")
    ap.add_argument("--keep-log", action="store_true", help="keep the speed run's log")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", type=int, default=1000, help="validation images")
    ap.add_argument("--classifier-c", type=float, default=0.003, help="logistic regression C")
    ap.add_argument("--pool", type=int, default=1500, help="test images the corruptions use")
    ap.add_argument("--workers", type=int, default=1, help="processes for the windows")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="write the tables from the chunks and results saved in these folders",
    )
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    a = ap.parse_args()
    if a.quick:
        a.null_windows, a.null_windows_other, a.reps, a.reps_other = 40, 10, 4, 2
        a.extra_references, a.extra_null_windows = 1, 10
        a.acc_reps, a.speed_records = 20, 20_000
    return a


def cells(a: argparse.Namespace, wanted: set[str]) -> list[Cell]:
    """Chunks of windows, most important first: no-drift at n=200, then the shifts by n."""
    sizes = [int(n) for n in a.sizes.split(",")]
    parts = set(a.parts.split(","))
    out: list[Cell] = []

    def add(name: str, n: int, reps: int, ref_seed: int) -> None:
        for chunk, lo in enumerate(range(0, reps, CHUNK)):
            seed = 7919 * ref_seed + 1000 * n + chunk + zlib.crc32(name.encode()) % 997
            out.append((name, n, min(CHUNK, reps - lo), seed, a.permutations, ref_seed))

    if "null" in parts:
        for n in sizes:
            add("none", n, a.null_windows if n == 200 else a.null_windows_other, a.seed)
        for n in sizes:
            for r in range(1, a.extra_references + 1):
                add("none", n, a.extra_null_windows, a.seed + r)
    if "shifts" in parts:
        for n in sizes:
            for name in (k for k in shift_names()[1:] if k in wanted):
                add(name, n, a.reps if n == 200 else a.reps_other, a.seed)
    return out


def main() -> None:
    a = parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    args = json.loads(json.dumps(vars(a), default=str))  # Paths as strings
    if a.merge:
        write_tables(a.out, args, *load_parts(a.merge))
        return
    parts = set(a.parts.split(","))
    t_start = time.time()
    if "speed" in parts:
        before = os.getloadavg()
        sp = speed(a.speed_records, a.seed, a.speed_home, keep_log=a.keep_log)
        sp["load_avg_before"], sp["load_avg_end"] = before, os.getloadavg()
        (a.out / "monitor-speed.json").write_text(json.dumps(sp, indent=1))
        print(json.dumps(sp, indent=1), flush=True)
    if not parts & {"null", "shifts", "accuracy"}:
        write_tables(a.out, args, *load_parts([a.out]))
        return
    print(f"setup: {a.flag} look-alike, foreign {a.foreign}", flush=True)
    s = Setup(a.flag, a.foreign, a.pool, a.seed, a.classifier_c, n_reference=a.reference)
    print(f"  classifier validation accuracy {s.reference.accuracy:.3f}", flush=True)
    wanted = set(a.shifts.split(",")) if a.shifts else set(shift_names())
    if "shifts" in parts:
        for family in FAMILIES:  # corrupt once, before any worker forks
            for sev in range(1, 6):
                if f"{family}-{sev}" in wanted:
                    s.corrupted(family, sev)
    use_setup(s)
    todo = cells(a, wanted)
    partial = a.out / "monitor-partial.jsonl"
    partial.unlink(missing_ok=True)
    done: list[Any] = []

    def save(item: Any) -> None:
        done.append(item)
        with partial.open("a") as fh:
            fh.write(json.dumps(item) + "\n")

    if a.workers > 1:  # fork: the workers share the setup built above
        import multiprocessing as mp

        with mp.get_context("fork").Pool(a.workers) as pool:
            for item in pool.imap_unordered(run_cell, todo):
                save(item)
    else:
        for c in todo:
            save(run_cell(c))
    if "accuracy" in parts:
        accs = {
            "drop": accuracy_drop(s, 200, a.acc_reps, 0.10, a.seed, a.permutations),
            "none": accuracy_drop(s, 200, a.acc_reps, 0.0, a.seed + 1, a.permutations),
            "load_avg_end": os.getloadavg(),
        }
        (a.out / "monitor-accuracy.json").write_text(json.dumps(accs, indent=1))
        print(f"  accuracy drop 10 points, 200 labels: {accs['drop']['alarm_power']}", flush=True)
    print(f"  {len(merge(done))} cells in {time.time() - t_start:.0f} s", flush=True)
    write_tables(a.out, args, *load_parts([a.out]))


if __name__ == "__main__":
    main()
