"""The monitor benchmark's results: ``monitor.json`` and the Markdown tables of ``monitor.md``,
from the saved chunks of one or more (partial) runs."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
from monitor_eval import merge
from monitor_setup import shift_names

from pomlia_hpc.data.corruptions import FAMILIES

SIZES = (50, 100, 200, 500)
FAILING_LOUDLY_BEST = 0.51  # Rabanser et al. 2019: best average power over their shifts, n=200

Results = dict[str, dict[int, dict[str, Any]]]


def load_parts(dirs: list[Path]) -> tuple[Results, Any, Any, Any]:
    """Chunks saved in ``monitor-partial.jsonl`` of every folder, merged, plus the accuracy
    and speed results (``monitor-accuracy.json``, ``monitor-speed.json``) where present."""
    done: list[Any] = []
    acc = acc_null = sp = None
    for d in dirs:
        partial = d / "monitor-partial.jsonl"
        if partial.is_file():
            done += [tuple(json.loads(line)) for line in partial.read_text().splitlines()]
        if (d / "monitor-accuracy.json").is_file():
            accs = json.loads((d / "monitor-accuracy.json").read_text())
            acc, acc_null = accs["drop"], accs["none"]
        if (d / "monitor-speed.json").is_file():
            sp = json.loads((d / "monitor-speed.json").read_text())
    return merge(done), acc, acc_null, sp


def _rate(results: Results, k: str, key: str, n: int = 200) -> float | None:
    cell = results.get(k, {}).get(n)
    return None if cell is None or key not in cell else float(cell[key]["rate"])


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.mean(got)) if got else None


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def fmt(c: dict[str, Any]) -> str:
    return f"{c['rate']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"


def power_table(results: Results, key: str) -> list[str]:
    rows = ["| shift | " + " | ".join(f"n={n}" for n in SIZES) + " | windows |", "|---" * 6 + "|"]
    for name, by_n in results.items():
        cells = [f"{by_n[n][key]['rate']:.2f}" if n in by_n else "" for n in SIZES]
        counts = sorted({by_n[n][key]["n"] for n in SIZES if n in by_n})
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {'/'.join(map(str, counts))} |")
    return rows


def per_test_table(results: Results, n: int = 200) -> list[str]:
    """Each test's own rejection rate (p <= 0.05) per shift at ``n``: which test sees what."""
    cells = {k: v[n] for k, v in results.items() if n in v}
    if not cells:
        return []
    tests = [k.removesuffix("@0.05") for k in next(iter(cells.values())) if k.endswith("@0.05")]
    rows = [f"| shift (n={n}) | " + " | ".join(tests) + " |", "|---" * (1 + len(tests)) + "|"]
    for name, cell in cells.items():
        vals = [f"{cell[f'{t}@0.05']['rate']:.2f}" if f"{t}@0.05" in cell else "" for t in tests]
        rows.append(f"| {name} | " + " | ".join(vals) + " |")
    return rows


def summarise(results: Results, acc: Any, acc_null: Any, sp: Any) -> dict[str, Any]:
    corr = [f"{f}-{v}" for f in FAMILIES for v in (3, 4, 5)]
    measured = [k for k in results if k in shift_names()[1:] and 200 in results[k]]
    by_n = {n: _mean([_rate(results, k, "alarm", n) for k in shift_names()[1:]]) for n in SIZES}
    return {
        "false_alarm": {n: results.get("none", {}).get(n) for n in SIZES},
        "power_corruptions_sev3plus_n200": _mean([_rate(results, k, "alarm") for k in corr]),
        "corruption_cells_measured_n200": sum(_rate(results, k, "alarm") is not None for k in corr),
        "power_foreign25_n200": _rate(results, "foreign-25%", "alarm"),
        "power_all_shifts_by_n": by_n,
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


def null_rows(results: Results) -> list[str]:
    """False-alarm table: one row per n (main reference) and per other reference at n=200."""
    rows_of = [("none", n) for n in SIZES if n in results.get("none", {})]
    rows_of += [(k, n) for k in results if k.startswith("none@") for n in results[k]]
    if not rows_of:
        return []
    first = results[rows_of[0][0]][rows_of[0][1]]
    names = [k.removesuffix("@0.05") for k in first if k.endswith("@0.05")]
    lines = [
        "| reference | n | windows | overall alarm | "
        + " | ".join(f"{t} (p<=0.05)" for t in names)
        + " | baseline mean t | baseline AUC>0.55 |",
        "|---" * (6 + len(names)) + "|",
    ]
    for key, n in rows_of:
        row = results[key][n]
        ref = "main" if key == "none" else key.split("@")[1]
        tests = [fmt(row[f"{t}@0.05"]) if f"{t}@0.05" in row else "" for t in names]
        lines.append(
            f"| {ref} | {n} | {row['alarm']['n']} | {fmt(row['alarm'])} | "
            + " | ".join(tests)
            + f" | {fmt(row['baseline_mean_t'])} | {fmt(row['baseline_auc>0.55'])} |"
        )
    return lines


def write_tables(
    out: Path, args: dict[str, Any], results: Results, acc: Any, acc_null: Any, sp: Any
) -> None:
    """``monitor.json`` and ``monitor.md`` in ``out`` from whatever cells were measured."""
    order = shift_names()
    results = {k: results[k] for k in sorted(results, key=lambda k: ([*order, k]).index(k))}
    summary = summarise(results, acc, acc_null, sp)
    meta = {
        "args": args,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_end": os.getloadavg(),
    }
    (out / "monitor.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1)
    )
    shifted = {k: v for k, v in results.items() if k in order[1:]}
    lines = ["### False-alarm rate (no drift), 95% Wilson interval", "", *null_rows(results)]
    lines += ["", "### Power of the overall alarm (share of shifted windows alarmed)", ""]
    lines += power_table(shifted, "alarm")
    lines += ["", "### Each test alone (share of windows with p <= 0.05)", ""]
    lines += per_test_table(shifted)
    lines += ["", "### Baseline: t-test on mean brightness", ""]
    lines += power_table(shifted, "baseline_mean_t")
    lines += ["", "### Baseline: domain classifier with the fixed rule AUC > 0.55", ""]
    lines += power_table(shifted, "baseline_auc>0.55")
    by_n = ", ".join(f"n={n}: {_f(v)}" for n, v in summary["power_all_shifts_by_n"].items())
    lines += [
        "",
        "### Summary",
        "",
        f"- n = 200, corruptions at severity >= 3 averaged over families "
        f"({summary['corruption_cells_measured_n200']} of {len(FAMILIES) * 3} cells): "
        f"{_f(summary['power_corruptions_sev3plus_n200'])} (target >= 0.9)",
        f"- n = 200, 25% foreign data: {_f(summary['power_foreign25_n200'])} (target >= 0.9)",
        f"- average power over the {summary['shifts_measured_n200']} shifts at n = 200: "
        f"{_f(summary['power_all_shifts_by_n'][200])} (Failing Loudly's best: "
        f"{FAILING_LOUDLY_BEST}; baselines: mean-brightness t-test "
        f"{_f(summary['baseline_mean_t_all_shifts_n200'])}, AUC>0.55 rule "
        f"{_f(summary['baseline_auc_rule_all_shifts_n200'])}); by n: {by_n}",
    ]
    if acc is not None and acc_null is not None:
        lines.append(
            f"- accuracy drop of 10 points from 200 labels (validation accuracy "
            f"{acc['validation_accuracy']:.3f}, window accuracy "
            f"{acc['window_accuracy_mean']:.3f} +- {acc.get('window_accuracy_sd', 0):.3f}"
            f"): alarm power {fmt(acc['alarm_power'])}, accuracy-test power "
            f"{fmt(acc['accuracy_test_power'])}; same windows without the drop: alarm rate "
            f"{fmt(acc_null['alarm_power'])} ({acc['alarm_power']['n']} windows each)"
        )
    if sp is not None:
        lines.append(
            f"- speed: {sp['records']} predictions ({sp['log_bytes'] / 1e9:.2f} GB of log): "
            f"{sp['run_wall_s']} s wall, {sp['run_cpu_s']} s CPU, peak RSS "
            f"{sp['run_peak_rss_mb']} MB (exit {sp['exit_status']}, alarm {sp.get('alarm')}; "
            f"load average before/after {sp.get('load_avg_before')} / {sp.get('load_avg_end')})"
        )
    (out / "monitor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
