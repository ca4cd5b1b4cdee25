"""Report page of the strategy recommender's answers (``recommendations`` in the registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from pomlia_hpc.registry import Recommendation, Registry
from pomlia_hpc.report.html import NA, esc, is_number, metric_text, table, utc_text
from pomlia_hpc.strategy.outcomes import Outcome, score_answers
from pomlia_hpc.workspace import Workspace

#: Answers shown (newest first).
MAX_ANSWERS = 30


def _strategy(s: dict[str, Any]) -> str:
    extra = " + nearest images" if s.get("extra_data") == "nearest" else ""
    return f"{s.get('arch')} {s.get('init')}/{s.get('mode')} {s.get('img_size')} px{extra}"


def _num(x: Any, digits: int = 3) -> str:
    """A weight, cost or count; empty when not recorded (metrics: ``metric_text``, n/a)."""
    return f"{x:.{digits}f}" if is_number(x) else ""


def _expected(x: dict[str, Any]) -> str:
    """A recommended strategy's expected value ± spread and the effective number of data sets
    behind it; no spread where one data set carries the weight (``spread`` None) or where an
    answer recorded before learner version 6 gave none."""
    expected = x.get("expected")
    if not is_number(expected):
        return NA
    spread = x.get("spread")
    text = f"{expected:.3f}" + (f" ± {spread:.3f}" if is_number(spread) else "")
    if x.get("expected_of_published"):
        text += "*"
    return text + (f" (n={x['n_eff']:.1f})" if x.get("n_eff") else "")


def _since(o: Outcome | None) -> str:
    """One sentence: how the answer did against the runs on its task since."""
    short = f" ({o.n_short} too short to count)" if o is not None and o.n_short else ""
    if o is None or not o.n_runs:
        return f"No run on the task since{short}."
    regrets = [
        f"{what} {o_regret:.2f}"
        for what, o_regret in (
            ("first pick", o.top1_regret),
            ("best pick", o.topk_regret),
            ("best warm start", o.warm_regret),
        )
        if o_regret is not None
    ]
    told = (
        "; regret (points) of its " + ", ".join(regrets) if regrets else "; none of its picks ran"
    )
    best = metric_text(o.best_value)
    return f"Since: {o.n_runs} run(s){short}, the best {best} (run {o.best_run_id}){told}."


def _cost(cost: dict[str, Any]) -> str:
    """Wall time as ``recommend`` prints it: seconds, then whether it was measured on the
    registry's runs or estimated."""
    wall = _num(cost.get("wall_s"), 0)
    return f"{wall} ({cost['basis']})" if wall and cost.get("basis") else wall


def _strategies_table(out: dict[str, Any], metric: str) -> str:
    """The answer's strategies as ``recommend`` lists them, each with its note (e.g. why it
    is not in the AutoML warm start). The failure rate (similarity-weighted, over the
    registry's runs of the strategy) is a column only when some strategy has one: published
    tables record no failures."""
    found = out.get("strategies") or []
    with_failures = any(x.get("failure_rate") is not None for x in found)
    rows = []
    for x in found:
        note = x.get("note")
        ev = "; ".join(
            f"{e.get('dataset')} {metric_text(e.get('value'))}"
            for e in (x.get("evidence") or [])[:2]
        )
        rate = x.get("failure_rate")
        rows.append(
            [
                x.get("rank", ""),
                _strategy(x.get("strategy") or {}) + (f" → {note}" if note else ""),
                _expected(x),
                _cost(x.get("cost") or {}),
                _num((x.get("cost") or {}).get("gpu_hours")),
                *([metric_text(rate, 2) if rate is not None else "no runs"] * with_failures),
                ev,
            ]
        )
    head = ["#", "strategy", f"expected {metric}".strip(), "cost (s)", "GPU-hours"]
    return table([*head, *(["failure rate"] if with_failures else []), "evidence"], rows)


def recommendations_page(registry: Registry, workspace: Workspace, folder: Path) -> str | None:
    with registry.session() as s:
        rows = list(
            s.scalars(select(Recommendation).order_by(Recommendation.id.desc()).limit(MAX_ANSWERS))
        )
        for r in rows:
            s.expunge(r)
    if not rows:
        return None
    since = {o.recommendation_id: o for o in score_answers(registry, rows)}
    parts = []
    for r in rows:
        out, inp = r.output or {}, r.inputs or {}
        similar = ", ".join(
            f"{x.get('dataset')} ({_num(x.get('weight'), 2)})"
            for x in (out.get("similar") or [])[:5]
        )
        parts.append(
            f"<h2>Recommendation {r.id} for task {esc(r.task)}</h2>"
            f"<p>{esc(utc_text(r.created_at))} UTC, learner {esc(r.learner)} "
            f"{esc(r.learner_version)}, metric {esc(inp.get('metric', ''))}, "
            f"{esc(inp.get('n_datasets', ''))} known data sets; most similar "
            f"({esc(out.get('similarity', ''))}): {esc(similar)}; "
            f"{len(out.get('initial') or [])} AutoML warm-start configuration(s). "
            f"{esc(_since(since.get(r.id)))}</p>"
        )
        parts.append(_strategies_table(out, str(inp.get("metric", ""))))
        if out.get("note"):
            parts.append(f"<p>Note: {esc(out['note'])}</p>")
    return "".join(parts)
