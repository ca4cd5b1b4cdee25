"""The slot changing under a promotion: a loop run's gate outdated by a manual rollback or
promotion before its redeploy, a rollback racing a promotion, two first promotions at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pomlia_hpc.loop.promote as promote_mod
import pomlia_hpc.loop.stages as stages_mod
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.driver import LoopContext, open_run
from pomlia_hpc.loop.gate import GateOutcome, promote_with_gate, run_gate
from pomlia_hpc.loop.promote import (
    champion,
    gate_decisions,
    history,
    is_superseded,
    put_on_slot,
    rollback,
)
from pomlia_hpc.loop.stages import redeploy_stage
from pomlia_hpc.loop.stats import GateResult, PairedCounts
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import GateDecision, LoopRun, Registry
from pomlia_hpc.serve.slots import current_bundle, current_link
from pomlia_hpc.workspace import Workspace
from tests.loop_support import make_model

EMPTY = PairedCounts(0, 0, 0, 0, 0)
PASSED = GateResult(True, True, True, 0.02, 0.05, EMPTY, EMPTY, 0.0, 0.01, "better")


def _gate(reg: Registry, champ: str, chal: str, run_id: int | None) -> int:
    with reg.session() as s:
        row = GateDecision(
            slot="p",
            champion_id=resolve_model(reg, champ).id,
            challenger_id=resolve_model(reg, chal).id,
            loop_run_id=run_id,
            passed=True,
            evidence={**PASSED.to_dict(), "data": "d@1", "champion": champ, "challenger": chal},
        )
        s.add(row)
        s.flush()
        return row.id


def test_a_loop_run_whose_slot_changed_after_its_gate_gates_again(
    tmp_path: Path, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate passed against `first`; then `x2` was promoted by hand. The redeploy was
    refused ("run the promotion again") and every resume read the same gate back, refused
    forever. Now the gate is marked superseded and the challenger gated against `x2`."""
    for seed, name in enumerate(("first", "x1", "x2")):
        make_model(reg, tmp_path, name, seed, 0)
    promote_with_gate(reg, workspace, "p", "first")
    run_id, _ = open_run(reg, "p", champion_id=resolve_model(reg, "first").id, params={})
    old = _gate(reg, "first", "x1", run_id)
    promote_with_gate(reg, workspace, "p", "x2", force=True)  # by hand, after the loop's gate

    # A superseded decision is not read back: the gate runs again (and here finds no data).
    assert run_gate(reg, "p", "x1", loop_run_id=run_id).id == old
    promote_mod.supersede_gate(reg, old, "x2")
    with pytest.raises(InputError, match="not trained on a harvested"):
        run_gate(reg, "p", "x1", loop_run_id=run_id)
    with reg.session() as s:  # as before the fix: not superseded yet
        row = s.get(GateDecision, old)
        assert row is not None
        row.evidence = {k: v for k, v in row.evidence.items() if k != "superseded"}

    calls: list[str | None] = []

    def regate(registry: Registry, slot: str, chal: str, **kw: Any) -> GateOutcome:
        calls.append(champion(registry, slot).model)  # type: ignore[union-attr]
        gid = _gate(registry, "x2", chal, kw["loop_run_id"])
        return GateOutcome(gid, PASSED, False, "x2", chal, "d@1")

    monkeypatch.setattr(stages_mod, "run_gate", regate)
    lines: list[str] = []
    ctx = LoopContext(
        reg,
        workspace,
        run_id,
        "p",
        {"settings": {}},
        {
            "ingest": {"ref": "d@1"},
            "challenger": {"model": "x1"},
            "gate": {"gate_id": old, "passed": True},
        },
        lines.append,
    )
    out = redeploy_stage(ctx)
    assert out["model"] == "x1" and calls == ["x2"]
    assert "now serves x2" in lines[0] and "gating the challenger again" in lines[0]
    gates = {g.id: g for g in gate_decisions(reg, "p")}
    assert is_superseded(gates[old]) and gates[old].evidence["superseded"]["champion_now"] == "x2"
    with reg.session() as s:
        recorded = s.get(LoopRun, run_id).stages["gate"]  # type: ignore[union-attr]
    assert recorded["regated_from"] == old and recorded["champion"] == "x2"
    assert not is_superseded(gates[recorded["gate_id"]])
    assert [h.model for h in history(reg, "p")] == ["first", "x2", "x1"]


def test_rollback_reads_the_history_with_the_slot_locked(
    tmp_path: Path, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion of x2 landing between rollback's read of the history and its lock was
    undone: the rollback went back to `first` (the model before x1) instead of x1."""
    for seed, name in enumerate(("first", "x1", "x2")):
        make_model(reg, tmp_path, name, seed, 0)
    promote_with_gate(reg, workspace, "p", "first")
    promote_with_gate(reg, workspace, "p", "x1", force=True)
    real = promote_mod.lock_slot
    landed: list[bool] = []

    def x2_lands_first(session: Any, slot: str) -> None:
        if not landed:
            landed.append(True)
            monkeypatch.setattr(promote_mod, "lock_slot", real)
            promote_with_gate(reg, workspace, "p", "x2", force=True)
        real(session, slot)

    monkeypatch.setattr(promote_mod, "lock_slot", x2_lands_first)
    back = rollback(reg, workspace, "p")
    assert back.model == "x1"
    assert [h.model for h in history(reg, "p")] == ["first", "x1", "x2", "x1"]
    assert current_bundle(current_link(workspace, "p")) == Path(back.bundle_path)


def test_a_second_first_promotion_does_not_replace_the_first(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """`deploy promote p a & deploy promote p b` on an empty slot: both saw it empty, both
    recorded `initial`, and b silently replaced a without a gate."""
    for seed, name in enumerate(("a", "b")):
        make_model(reg, tmp_path, name, seed, 0)
    first = put_on_slot(reg, workspace, "p", "a", kind="initial")
    with pytest.raises(InputError) as err:
        put_on_slot(reg, workspace, "p", "b", kind="initial")
    msg = str(err.value)
    assert "slot 'p' was empty when this promotion of b began, but a was put on it" in msg
    assert "nothing was promoted" in msg and "`pomlia deploy promote p b`" in msg
    assert [(h.model, h.kind) for h in history(reg, "p")] == [("a", "initial")]
    assert current_bundle(current_link(workspace, "p")) == Path(first.bundle_path)


def _twice_at_once(
    reg: Registry, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, model: str
) -> pytest.ExceptionInfo[InputError]:
    """`deploy promote p MODEL --force` twice at once: the other one takes the slot lock
    first (both read the champion before either held it); returns this one's refusal."""
    real = promote_mod.lock_slot
    landed: list[bool] = []

    def other_lands_first(session: Any, slot: str) -> None:
        if not landed:
            landed.append(True)
            monkeypatch.setattr(promote_mod, "lock_slot", real)
            promote_with_gate(reg, workspace, "p", model, force=True)
        real(session, slot)

    monkeypatch.setattr(promote_mod, "lock_slot", other_lands_first)
    with pytest.raises(InputError) as err:
        promote_with_gate(reg, workspace, "p", model, force=True)
    return err


def test_the_same_forced_promotion_twice_at_once_promotes_once(
    tmp_path: Path, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both promoted x1 (two history rows) and the second gate was rewritten to compare x1
    with itself. Now the second is refused as when run alone."""
    for seed, name in enumerate(("first", "x1")):
        make_model(reg, tmp_path, name, seed, 0)
    promote_with_gate(reg, workspace, "p", "first")
    err = _twice_at_once(reg, workspace, monkeypatch, "x1")
    assert "model x1 is already the champion of slot p" in str(err.value)
    assert "nothing to promote" in str(err.value)
    assert [(h.model, h.kind) for h in history(reg, "p")] == [
        ("first", "initial"),
        ("x1", "forced"),
    ]
    gates = gate_decisions(reg, "p")
    assert all(g.champion_id != g.challenger_id for g in gates)
    assert all(g.evidence["champion"] == "first" for g in gates)
    used = {h.gate_id for h in history(reg, "p")}
    assert [is_superseded(g) for g in gates if g.id not in used] == [True]


def test_the_same_first_promotion_twice_at_once_is_refused_once(
    tmp_path: Path, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both printed success on an empty slot while only one recorded anything."""
    make_model(reg, tmp_path, "a", 0, 0)
    err = _twice_at_once(reg, workspace, monkeypatch, "a")
    assert "model a is already the champion of slot p" in str(err.value)
    assert [(h.model, h.kind) for h in history(reg, "p")] == [("a", "initial")]
