"""``deploy history``'s table of gate decisions: the two models' figures on the gate's metric,
its test and p, and the images left out because a model trained on them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from pomlia_hpc.cli.tables import MISSING, ListTable, shown, stack

if TYPE_CHECKING:
    from pomlia_hpc.registry import GateDecision


def gate_table(decisions: list[GateDecision], names: dict[int, str]) -> ListTable:
    """``deploy history``'s gate decisions, with a narrow form for an 80-column terminal (the
    two models, the decision with its test and p, the two accuracies stacked); ``names``: the
    slot's models by id."""
    from pomlia_hpc.loop.stats import MCNEMAR

    gates = ListTable(title="gate decisions")
    narrow = gates.narrow = Table(title="gate decisions")
    for col in ("id", "challenger", "champion", "decision", "fixed test", "production"):
        gates.add_column(col)
    for col in ("p", "test", "left out"):
        gates.add_column(col)
    for col in ("id", "challenger\nchampion", "decision\ntest\np", "fixed test\nproduction"):
        narrow.add_column(col)
    for g in decisions:
        ev = g.evidence or {}
        # Forced gates recorded by earlier versions hold only the champion's id; every
        # champion served on the slot, so the slot's promotions know its name.
        champ = ev.get("champion") or names.get(g.champion_id or -1) or g.champion_id
        fixed, prod = ev.get("fixed_test") or {}, ev.get("production") or {}
        models = (str(ev.get("challenger", g.challenger_id)), shown(champ))
        decision = ("passed" if g.passed else "failed") + (", forced" if g.forced else "")
        p = f"{ev['p_value']:.3g}" if isinstance(ev.get("p_value"), float) else MISSING
        # Gates recorded before the key existed were all McNemar's.
        test = str(ev.get("test", MCNEMAR))
        left = left_out(ev)
        pairs = pair(fixed), pair(prod)
        gates.add_row(str(g.id), *models, decision, *pairs, p, test, left)
        cells = pairs + ((f"left out {left}",) if left[:1].isalpha() or ";" in left else ())
        narrow.add_row(str(g.id), stack(*models), stack(decision, test, p), stack(*cells))
    return gates


def left_out(evidence: dict[str, Any]) -> str:
    """The gate's images left out of the comparison because a model trained on them (its
    training split, extra images or init model's data: ``trained_on``), per range: ``0``,
    ``fixed 20, production 3``; ``-`` for a gate recorded before they were counted; with
    ``; lineage unknown: model M`` when a model's lineage could not say all it trained on."""
    counts = evidence.get("trained_on")
    if not isinstance(counts, dict):
        return MISSING
    fixed, prod = (
        int(counts.get("fixed_test_rows") or 0),
        int(counts.get("production_test_rows") or 0),
    )
    shown = f"fixed {fixed}, production {prod}" if fixed or prod else "0"
    # The models whose lineage could not say all they trained on: the count may be short.
    gaps = [str(g).split(":", 1)[0] for g in evidence.get("lineage_unknown") or ()]
    unknown = ", ".join(dict.fromkeys(gaps))
    return f"{shown}; lineage unknown: {unknown}" if unknown else shown


def pair(counts: dict[str, object]) -> str:
    """``0.912 → 0.874 (n=60)``: the champion's and the challenger's figure on one split, on
    the metric the gate's test names (accuracy for McNemar and paired t)."""
    a = counts.get("champion_value", counts.get("champion_accuracy"))
    b = counts.get("challenger_value", counts.get("challenger_accuracy"))
    if not isinstance(a, float) or not isinstance(b, float):
        return MISSING
    return f"{a:.3f} → {b:.3f} (n={counts.get('n')})"
