"""``pomlia deploy history SLOT [--json]``: what a deployment slot served when, and each gate
decision with its evidence, as tables or as one JSON object (a registry query: no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pomlia_hpc.cli.app import STATE, console
from pomlia_hpc.cli.gatetable import gate_table
from pomlia_hpc.cli.jsonout import print_json
from pomlia_hpc.cli.loop import SlotArg
from pomlia_hpc.cli.serve import deploy_app
from pomlia_hpc.cli.tables import ListTable, shown, when

if TYPE_CHECKING:
    from pomlia_hpc.loop.promote import SlotEntry
    from pomlia_hpc.registry import GateDecision


@deploy_app.command("history")
def history_cmd(
    slot: SlotArg,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object (stable keys; see --help)."),
    ] = False,
) -> None:
    """What SLOT served when, and each gate decision with its evidence (the two models'
    figures on the task's metric, named in each cell; accuracies are label-wise for a
    multi-label task; `test` names the gate's test: McNemar, paired t, or paired bootstrap;
    `left out`: the gate's images not scored because either model trained on them, and
    `lineage unknown: model M` when a model's lineage could not say all it trained on).

    A console too narrow for the full table (80 columns) shows times as MM-DD HH:MM.

    --json: one object, keys slot, promotions (oldest first: id, created_at, model, model_id,
    kind, gate_id, loop_run_id, bundle_path), gates (oldest first: id, created_at, challenger,
    challenger_id, champion, champion_id, passed, forced, metric, test, p_value, fixed_test
    and production (each the two models' figures and n, as recorded; or null), trained_on
    (the images left out per range; null for gates recorded before it), lineage_unknown
    (why a model's lineage could not say all it trained on, one line each; null for gates
    recorded before it), loop_run_id,
    evidence: the whole record)."""
    from pomlia_hpc.loop.promote import gate_decisions, history, slots
    from pomlia_hpc.registry.lookup import not_found

    reg = STATE.registry()
    entries, decisions = history(reg, slot), gate_decisions(reg, slot)
    if not entries and not decisions:
        raise not_found("slot", slot, slots(reg))
    names = {e.model_id: e.model for e in entries}
    if as_json:
        print_json(
            {
                "slot": slot,
                "promotions": [_promotion_values(e) for e in entries],
                "gates": [_gate_values(g, names) for g in decisions],
            }
        )
        return
    table = ListTable(title=f"slot {slot}")
    # The narrow form (an 80-column terminal): times as MM-DD HH:MM.
    narrow = table.narrow = Table(title=f"slot {slot}")
    for col in ("id", "time", "model", "kind", "gate", "loop run"):
        table.add_column(col, no_wrap=col in ("id", "time"))
        narrow.add_column(col, no_wrap=col in ("id", "time"))
    for e in entries:
        rest = (e.model, e.kind, shown(e.gate_id), shown(e.loop_run_id))
        table.add_row(str(e.id), when(e.created_at, seconds=True), *rest)
        narrow.add_row(str(e.id), when(e.created_at, narrow=True), *rest)
    console.print(table)
    console.print(gate_table(decisions, names))


def _promotion_values(e: SlotEntry) -> dict[str, Any]:
    """One promotion of ``deploy history --json``."""
    keys = ("id", "created_at", "model", "model_id", "kind", "gate_id", "loop_run_id")
    return {k: getattr(e, k) for k in keys} | {"bundle_path": e.bundle_path}


def _champion(g: GateDecision, names: dict[int, str]) -> str | None:
    """The champion's name of gate ``g``: forced gates recorded by earlier versions hold only
    its id, and every champion served on the slot, so the slot's promotions (``names``, by
    model id) know it."""
    ev = g.evidence or {}
    name = ev.get("champion") or names.get(g.champion_id or -1)
    return str(name) if name is not None else None


def _gate_values(g: GateDecision, names: dict[int, str]) -> dict[str, Any]:
    """One gate decision of ``deploy history --json``: the table's values, unrounded."""
    from pomlia_hpc.loop.stats import MCNEMAR

    ev = g.evidence or {}
    p = ev.get("p_value")
    return {
        "id": g.id,
        "created_at": g.created_at,
        "challenger": str(ev.get("challenger") or names.get(g.challenger_id) or g.challenger_id),
        "challenger_id": g.challenger_id,
        "champion": _champion(g, names),
        "champion_id": g.champion_id,
        "passed": bool(g.passed),
        "forced": bool(g.forced),
        "metric": str(ev.get("metric", "acc")),  # gates before the key compared accuracy
        "test": str(ev.get("test", MCNEMAR)),  # gates recorded before the key were McNemar's
        "p_value": p if isinstance(p, float) else None,
        "fixed_test": ev.get("fixed_test") or None,
        "production": ev.get("production") or None,
        "trained_on": ev.get("trained_on"),
        "lineage_unknown": ev.get("lineage_unknown"),
        "loop_run_id": g.loop_run_id,
        "evidence": ev,
    }
