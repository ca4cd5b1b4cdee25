"""The monitoring report as one self-contained HTML page: plots are PNGs embedded as base64
``data:`` URIs, no scripts, no external files, so the page reads straight off a cluster file
system (or as an e-mail attachment).

Plots: p-value of each test over the history of reports against its threshold (UTC time axis);
accuracy from feedback over time with its 95% interval; reference vs window fingerprints in the
reference's first two principal components; the most drifting fingerprint dimensions;
predicted-label shares; predictions per hour over the whole window (UTC).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from pomlia_hpc.monitor.checks import CheckOutcome
from pomlia_hpc.monitor.figures import history_figure, volume_figure
from pomlia_hpc.monitor.history import NOT_TESTED, comparable_accuracy, is_tested, show_time
from pomlia_hpc.plotting import new_figure
from pomlia_hpc.registry import MonitorReport
from pomlia_hpc.serve.reference import Reference

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}.alarm{color:#fff;background:#c0392b;padding:2px 8px}
.ok{color:#fff;background:#27ae60;padding:2px 8px}.empty{color:#fff;background:#7f8c8d;
padding:2px 8px}img{max-width:100%;border:1px solid #eee;margin:.4em 0}.rej{font-weight:bold;
color:#c0392b}li{margin:.2em 0}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:  # a figure that failed to draw stays in pyplot's registry (its memory) otherwise
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def plot_history(past: Sequence[MonitorReport], report: dict[str, Any]) -> str:
    """The history figure (:func:`~pomlia_hpc.monitor.figures.history_figure`) as an
    ``<img>``; empty when there is nothing to draw."""
    fig = history_figure(past, report)
    return _img(fig, "p-values over the history of reports against their thresholds") if fig else ""


def metric_points(
    past: Sequence[MonitorReport], report: dict[str, Any]
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """(label, performance) of each report with feedback labels, oldest first, ``report``
    last, and how many were left out for an accuracy of another kind: a multi-label model's
    reports of format /1 held exact-match accuracy (about 0), not today's label-wise one."""
    multi_label = report["reference"].get("task_type") == "multi-label"
    points, left_out = [], 0
    for row in past:
        perf = (row.metrics or {}).get("performance") or {}
        if not perf.get("labels"):
            continue
        if comparable_accuracy(row.metrics, multi_label) is None:
            left_out += 1
        else:
            points.append((f"#{row.id}", perf))
    if report["performance"] and report["performance"].get("labels"):
        points.append(("now", report["performance"]))
    return points, left_out


def plot_metric(past: Sequence[MonitorReport], report: dict[str, Any]) -> str:
    points, left_out = metric_points(past, report)
    if not points:
        return ""
    with new_figure(figsize=(9, 3.2)) as (fig, ax):
        x = np.arange(len(points))
        acc = np.array([p["accuracy"] for _, p in points], dtype=float)
        lo = np.array([p["interval_95"][0] for _, p in points], dtype=float)
        hi = np.array([p["interval_95"][1] for _, p in points], dtype=float)
        # Clipped at 0: a bound a rounding error past its accuracy must not fail the whole run.
        below, above = np.maximum(acc - lo, 0.0), np.maximum(hi - acc, 0.0)
        ax.errorbar(x, acc, yerr=[below, above], fmt="o-", capsize=4, label="accuracy (95% CI)")
        split = report["reference"].get("split")
        ax.axhline(
            report["reference"]["accuracy"],
            color="k",
            ls="--",
            lw=1,
            label=f"accuracy reference ({split})" if split else "accuracy reference",
        )
        _plot_tested(ax, x, [p for _, p in points])
        ax.set_xticks(x, [k for k, _ in points], rotation=45, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("on feedback labels")
        ax.legend(fontsize=8)
        ax.set_title(
            "performance over time"
            + (
                f" ({left_out} older report(s) with exact-match accuracy left out)"
                if left_out
                else ""
            )
        )
        return _img(fig, "accuracy and the tested metric over time")


def _plot_tested(ax: Any, x: np.ndarray, perfs: Sequence[dict[str, Any]]) -> None:
    """The task's metric (AUC, macro F1) of each report that tested it, beside accuracy (its
    test decided, so it is the line an alarm is read from); its reference, the newest one's."""
    tests = [p.get("metric_test") if p.get("metric") != "acc" else None for p in perfs]
    for name in sorted({t["metric"] for t in tests if t}):
        got = [t if t and t["metric"] == name else None for t in tests]
        y = np.array([np.nan if t is None or t["value"] is None else t["value"] for t in got])
        ax.plot(x, y, "s-", color="C2", label=f"{name} (tested)")
        ref = [t["reference_value"] for t in got if t and t["reference_value"] is not None]
        if ref:
            ax.axhline(ref[-1], color="C2", ls=":", lw=1, label=f"{name} reference")


def plot_projection(outcome: CheckOutcome) -> str:
    rv, wv = outcome.reference_vectors, outcome.window_vectors
    if rv is None or wv is None or len(rv) < 3 or rv.shape[1] < 2:
        return ""
    mu = rv.mean(axis=0)
    _, _, vt = np.linalg.svd(rv - mu, full_matrices=False)
    pr, pw = (rv - mu) @ vt[:2].T, (wv - mu) @ vt[:2].T
    with new_figure(figsize=(5.5, 5)) as (fig, ax):
        ax.scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.35, label=f"reference ({len(pr)})")
        ax.scatter(pw[:, 0], pw[:, 1], s=8, alpha=0.6, label=f"window ({len(pw)})", c="C3")
        ax.set_xlabel("PC 1 of the reference")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=8)
        ax.set_title("fingerprints: reference vs window")
        return _img(fig, "reference vs window in two principal components")


def plot_dimensions(report: dict[str, Any]) -> str:
    ks = next((t for t in report["tests"] if t["name"] == "ks"), None)
    if not ks or not ks["detail"].get("top"):
        return ""
    top = ks["detail"]["top"]
    with new_figure(figsize=(7, 3.2)) as (fig, ax):
        ax.bar([str(d["dim"]) for d in top], [d["ks"] for d in top], color="C1")
        ax.set_xlabel("fingerprint dimension")
        ax.set_ylabel("KS statistic")
        ax.set_title("most drifting dimensions")
        return _img(fig, "most drifting fingerprint dimensions")


def plot_labels(report: dict[str, Any], ref: Reference) -> str:
    lab = next((t for t in report["tests"] if t["name"] == "labels"), None)
    if not lab:
        return ""
    names = ref.label_names
    x = np.arange(len(names))
    with new_figure(figsize=(8, 3)) as (fig, ax):
        ax.bar(x - 0.2, lab["detail"]["reference_share"], 0.4, label="reference")
        ax.bar(x + 0.2, lab["detail"]["window_share"], 0.4, label="window")
        ax.set_xticks(x, [n[:14] for n in names], rotation=45, fontsize=7)
        ax.set_ylabel("share of predictions")
        ax.legend(fontsize=8)
        ax.set_title("predicted labels")
        return _img(fig, "predicted-label shares")


def plot_volume(report: dict[str, Any]) -> str:
    """The volume figure (:func:`~pomlia_hpc.monitor.figures.volume_figure`) as an
    ``<img>``; empty when the window holds no predictions."""
    fig = volume_figure(report)
    return _img(fig, "predictions per hour over the window") if fig else ""


def plot_inputs(atypical: Sequence[tuple[str, float, np.ndarray]]) -> str:
    if not atypical:
        return ""
    cols = min(8, len(atypical))
    rows = (len(atypical) + cols - 1) // cols
    with new_figure(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False) as (fig, axes):
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (pid, dist, img) in zip(axes.ravel(), atypical, strict=False):
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{pid[:6]} d={dist:.1f}", fontsize=6)
        fig.suptitle("least typical inputs of the window (distance to nearest reference)")
        return _img(fig, "least typical recent inputs")


def _table(rows: list[list[str]], head: list[str]) -> str:
    out = ["<table><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(v: Any) -> str:
    """A value for a cell: numbers to 4 significant digits, ``-`` for none (never Python's
    ``None``)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _reasons(counts: Any) -> str:
    """Rejections by reason as ``reason: n, ...``; ``none`` when there were none."""
    if not isinstance(counts, dict) or not counts:
        return "none"
    return html.escape(", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))


def render_html(
    report: dict[str, Any],
    past: Sequence[MonitorReport],
    outcome: CheckOutcome | None,
    ref: Reference,
    atypical: Sequence[tuple[str, float, np.ndarray]] = (),
) -> str:
    """The whole page for ``report`` (history ``past`` oldest first); ``atypical``: (prediction
    id, distance, uint8 HWC image) of the least typical kept inputs."""
    e = html.escape
    status, window = report["status"], report["window"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>pomlia monitor: {e(report['model'])} {e(show_time(window['until']))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Monitoring report: {e(report['model'])} "
        f"<span class='{e(status)}'>{e(status.upper())}</span></h1>",
        _table(
            [
                ["model version", e(report["model_version"])],
                ["deployment", e(str(report["deployment_id"] or "all"))],
                [
                    "window",
                    f"{e(show_time(window['since']))} → {e(show_time(window['until']))}",
                ],
                ["predictions", _fmt(report["volume"]["predictions"])],
                ["reference", f"{e(ref.source)}, {ref.n} images, accuracy {ref.accuracy:.3f}"],
                ["alpha (family-wise)", _fmt(report["alpha"])],
                ["reasons", e(", ".join(report["reasons"]) or "none")],
            ],
            ["", ""],
        ),
    ]
    if report["tests"]:
        rows = [
            [
                e(t["family"]),
                f"<span class='{'rej' if t['rejected'] else ''}'>{e(t['name'])}</span>",
                _fmt(t["statistic"]),
                _fmt(t["p_value"]) if is_tested(t) else NOT_TESTED,
                _fmt(t["weight"] * report["alpha"]) if is_tested(t) else "-",
                ("yes" if t["rejected"] else "no") if is_tested(t) else "-",
            ]
            for t in report["tests"]
        ]
        parts += [
            "<h2>Tests</h2>",
            _table(rows, ["family", "test", "statistic", "p-value", "alpha share", "rejected"]),
        ]
    perf = report["performance"]
    if perf and perf.get("labels"):
        lo, hi = perf["interval_95"]
        # The reference's split, not always validation (monitor reference --split test).
        split = perf.get("reference_split")
        against = f"reference ({e(split)} split)" if split else "reference"
        parts += [
            "<h2>Performance from feedback</h2>",
            f"<p>accuracy {perf['accuracy']:.3f} (95% interval {lo:.3f} to {hi:.3f}) from "
            f"{perf['labels']} labels (coverage {perf['coverage']:.1%}); {against} "
            f"{perf.get('reference_accuracy', perf['validation_accuracy']):.3f}.</p>",
        ]
        parts += _metric_line(perf)
    plots = [plot_history(past, report), plot_metric(past, report)]
    if outcome is not None:
        plots += [plot_projection(outcome), plot_dimensions(report), plot_labels(report, ref)]
    plots.append(plot_volume(report))
    parts += ["<h2>Plots</h2>", *[p for p in plots if p]]
    grid = plot_inputs(atypical)
    parts.append(
        grid
        or "<p>Least typical recent inputs: not shown (the server keeps no inputs; start it "
        "with <code>pomlia serve --keep-inputs</code>).</p>"
    )
    q = report["quality"]
    notes = list(q.get("warnings", [])) + list(report["notes"])
    parts += ["<h2>Data quality and notes</h2>"]
    if "requests" in q:
        parts.append(
            _table(
                [
                    ["requests", _fmt(q["requests"])],
                    ["predictions (images)", _fmt(q.get("predictions"))],
                    ["rejected share", _fmt(q["rejected_share"])],
                    ["rejections by reason", _reasons(q.get("rejections_by_reason"))],
                    [
                        "transport failures (not in the share)",
                        _reasons(q.get("transport_failures_by_reason")),
                    ],
                    [
                        "requests refused unread (not in the share)",
                        _reasons(q.get("request_refusals_by_reason")),
                    ],
                    ["near-constant inputs", _fmt(q.get("near_constant_share"))],
                ],
                ["", ""],
            )
        )
    parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _metric_line(perf: dict[str, Any]) -> list[str]:
    """The paragraph on the task's metric when it is not accuracy (it alone is tested)."""
    got = perf.get("metric_test")
    if not got:
        return []
    value, ref = got.get("value"), got.get("reference_value")
    shown = [f"{v:.3f}" if isinstance(v, int | float) else "undefined" for v in (value, ref)]
    return [
        f"<p>{html.escape(got['metric'])} (the task's metric, which is tested) {shown[0]} from "
        f"{got['labels']} labels; reference {shown[1]} from {got['reference_n']} images; "
        f"{html.escape(str(got.get('test', 'bootstrap')).split(' ')[0])} p = "
        f"{got['p_value']:.3g} over {got['resamples']} resamples.</p>"
    ]
