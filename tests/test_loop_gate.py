"""Harvest → gate → promote → rollback, on a registry and a workspace, with untrained models
whose predictions stand in for the truth (so which model is "better" is known exactly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import pomlia_hpc.loop.gate as gate_mod
from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.harvest import harvest_info
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.loop.gate import promote_with_gate, run_gate
from pomlia_hpc.loop.harvest import harvest
from pomlia_hpc.loop.lineage import lineage
from pomlia_hpc.loop.promote import champion, gate_decisions, history, put_on_slot, rollback
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import GateDecision, Model, Registry
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.serve.slots import current_bundle, current_link
from pomlia_hpc.workspace import Workspace
from tests.loop_support import CLASSES, make_model, predict, write_production


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)


def test_harvest_gate_promote_rollback(tmp_path: Path, workspace: Workspace, reg: Registry) -> None:
    # Parent data: its test labels are what the future challenger predicts.
    x = {s: _images(n, i) for i, (s, n) in enumerate((("train", 40), ("val", 10), ("test", 60)))}
    npz = tmp_path / "base.npz"
    np.savez(
        npz,
        **{f"{s}_images": v for s, v in x.items()},
        **{f"{s}_labels": np.zeros((len(v), 1), np.int64) for s, v in x.items()},
    )
    probe = ingest(workspace, reg, "probe", npz, class_names=CLASSES)  # to build the labeller
    chal_probe = make_model(reg, tmp_path, "probe-chal", 2, probe.id)
    labels = {s: predict(chal_probe, v) for s, v in x.items()}
    np.savez(
        npz,
        **{f"{s}_images": v for s, v in x.items()},
        **{f"{s}_labels": labels[s][:, None] for s in x},
    )
    base = ingest(workspace, reg, "shift", npz, class_names=CLASSES)
    make_model(reg, tmp_path, "champion", 1, base.id)

    first = put_on_slot(reg, workspace, "champion", "champion", kind="initial")
    link = current_link(workspace, "champion")
    assert current_bundle(link) == Path(first.bundle_path) and first.kind == "initial"

    # Production: 200 images labelled with what the challenger will say.
    prod = _images(200, 7)
    chal_like = make_model(reg, tmp_path, "oracle", 2, base.id)
    write_production(log_dir(workspace.path("logs"), "champion"), prod, predict(chal_like, prod))
    got = harvest(reg, workspace, "champion")
    assert got.record.parent == base.version and got.counts["used"] == 200
    info = harvest_info(open_store(got.record.store_path).meta)
    assert info is not None and info["model"] == "champion" and info["until"]
    again = harvest(reg, workspace, "champion", until=got.until)
    assert again.record.version == got.record.version and not again.record.created

    make_model(reg, tmp_path, "challenger", 2, got.record.id)
    with pytest.raises(InputError, match="not trained on a harvested"):
        run_gate(reg, "champion", "oracle")
    out = run_gate(reg, "champion", "challenger", loop_run_id=None)
    assert out.result.passed, out.result.reason
    ev = gate_decisions(reg, "champion")[-1].evidence
    assert ev["production"]["n"] == info["new_per_split"]["test"] and ev["p_value"] < 0.05
    assert ev["fixed_test"]["challenger_accuracy"] == 1.0
    put_on_slot(reg, workspace, "champion", "challenger", kind="promoted", gate_id=out.id)
    assert champion(reg, "champion").model == "challenger"  # type: ignore[union-attr]
    assert current_bundle(link) != Path(first.bundle_path)

    # The champion is now the challenger; the old model fails the gate, forced is recorded.
    back = run_gate(reg, "champion", "champion", data_ref=got.record.ref, force=True)
    assert not back.result.passed and back.forced and back.promote
    assert gate_decisions(reg, "champion")[-1].forced

    rb = rollback(reg, workspace, "champion")
    assert rb.model == "champion" and rb.kind == "rollback"
    assert current_bundle(link) == Path(first.bundle_path)
    assert [h.kind for h in history(reg, "champion")] == ["initial", "promoted", "rollback"]
    assert find_version(reg, got.record.ref).parent_id == base.id

    steps = lineage(reg, "challenger")
    kinds = [st.kind for st in steps]
    assert kinds[:3] == ["promotion", "model", "dataset_version"]
    assert "from champion's log" in steps[2].text and base.version in steps[2].text
    out = CliRunner().invoke(app, ["deploy", "history", "champion"])
    assert out.exit_code == 0 and "rollback" in out.output and "forced" in out.output
    with pytest.raises(PomliaError, match="slot 'champ' not found; known: champion"):
        CliRunner().invoke(app, ["deploy", "history", "champ"], catch_exceptions=False)
    out = CliRunner().invoke(app, ["lineage", "challenger"])
    assert out.exit_code == 0 and "promoted on slot champion" in out.output


def test_watch_runs_the_loop_for_a_request_of_a_served_model(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    from pomlia_hpc.loop.driver import LoopResult
    from pomlia_hpc.loop.watch import consume
    from pomlia_hpc.registry import RetrainRequest

    npz = tmp_path / "d.npz"
    np.savez(
        npz,
        **{f"{s}_images": _images(8, i) for i, s in enumerate(("train", "val", "test"))},
        **{f"{s}_labels": np.zeros((8, 1), np.int64) for s in ("train", "val", "test")},
    )
    v = ingest(workspace, reg, "d", npz, class_names=CLASSES)
    served = make_model(reg, tmp_path, "served", 1, v.id)
    lonely = make_model(reg, tmp_path, "lonely", 2, v.id)
    put_on_slot(reg, workspace, "slot1", "served", kind="initial")
    with reg.session() as s:
        s.add_all(
            [
                RetrainRequest(model_id=served.id, reason="alarm"),
                RetrainRequest(model_id=lonely.id, reason="alarm"),
            ]
        )
    calls = []

    def fake(*args: object, **kw: object) -> LoopResult:
        calls.append((args[2], kw["request_id"], kw["trigger"]))
        return LoopResult(7, "done", {}, [], ["harvest"])

    handled = consume(reg, workspace, run=fake, progress=lambda _l: None)
    assert [(h.request_id, h.slot) for h in handled] == [(1, "slot1")]
    assert calls == [("slot1", 1, "monitor")]
    with reg.session() as s:
        done, left = s.get(RetrainRequest, 1), s.get(RetrainRequest, 2)
        assert done is not None and done.status == "done" and done.meta["loop_run_id"] == 7
        assert left is not None and left.status == "open"  # no slot serves "lonely"
    assert consume(reg, workspace, run=fake, progress=lambda _l: None) == []


def test_harvest_without_kept_inputs_is_one_error_naming_the_log(
    tmp_path: Path, workspace: Workspace, reg: Registry
) -> None:
    """Feedback whose inputs were not kept (a server without --keep-inputs) stopped the
    harvest with a numpy traceback; a --log-dir that does not exist is named as such."""
    from pomlia_hpc.data.api import list_versions
    from pomlia_hpc.serve.predlog import PredictionLog
    from tests.fixtures.factories import log_line

    npz = tmp_path / "d.npz"
    np.savez(
        npz,
        **{f"{s}_images": _images(8, i) for i, s in enumerate(("train", "val", "test"))},
        **{f"{s}_labels": np.zeros((8, 1), np.int64) for s in ("train", "val", "test")},
    )
    v = ingest(workspace, reg, "d", npz, class_names=CLASSES)
    make_model(reg, tmp_path, "m", 1, v.id)
    logs = log_dir(workspace.path("logs"), "m")
    plog = PredictionLog(logs)  # no inputs kept
    plog.append([log_line("prediction", id=f"{i:032x}") for i in range(2)])
    plog.append([log_line("feedback", prediction_id=f"{i:032x}") for i in range(2)])
    plog.close()
    with pytest.raises(InputError) as err:
        harvest(reg, workspace, "m")
    assert str(err.value) == (
        f"0 labelled images with kept inputs in {logs} (2 feedback label(s), 0 outside the "
        "window, 2 without a kept input); serve with --keep-inputs and send feedback"
    )
    res = CliRunner().invoke(app, ["data", "harvest", "m", "--log-dir", str(tmp_path / "none")])
    assert isinstance(res.exception, NotFoundError)
    assert str(res.exception).startswith(f"--log-dir {tmp_path / 'none'}: no such folder")
    assert [x.version for x in list_versions(reg)] == [v.version]


def test_two_promotions_at_once_each_record_the_champion_they_replaced(
    tmp_path: Path, workspace: Workspace, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deploy promote p a --force & deploy promote p b --force`: both gates recorded the same
    old champion. The champion is read again, the slot locked, in the transaction that
    records the promotion: a promotion that landed after a forced gate was recorded becomes
    that gate's champion. Runs on SQLite and PostgreSQL."""
    for seed, name in enumerate(("first", "x1", "x2")):
        make_model(registry, tmp_path, name, seed, 0)
    promote_with_gate(registry, workspace, "p", "first")
    real = gate_mod.put_on_slot

    def x2_lands_first(*args: Any, **kwargs: Any) -> Any:
        # x1's gate is recorded (champion: first); x2's whole promotion lands before x1's
        if args[3] == "x1":
            monkeypatch.setattr(gate_mod, "put_on_slot", real)
            promote_with_gate(registry, workspace, "p", "x2", force=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(gate_mod, "put_on_slot", x2_lands_first)
    gate, entry = promote_with_gate(registry, workspace, "p", "x1", force=True)
    assert gate is not None and entry is not None and entry.model == "x1"
    ids = {m.name: m.id for m in (resolve_model(registry, n) for n in ("first", "x1", "x2"))}
    got = [
        (g.evidence["challenger"], g.evidence["champion"], g.champion_id)
        for g in gate_decisions(registry, "p")
    ]
    assert got == [("x1", "x2", ids["x2"]), ("x2", "first", ids["first"])]
    assert [h.model for h in history(registry, "p")] == ["first", "x2", "x1"]
    assert current_bundle(current_link(workspace, "p")) == Path(entry.bundle_path)

    # A gate that passed against a champion no longer on the slot promotes nothing.
    with registry.session() as s:
        stale = GateDecision(
            slot="p",
            champion_id=ids["x2"],
            challenger_id=ids["first"],
            passed=True,
            evidence={"champion": "x2", "challenger": "first"},
        )
        s.add(stale)
        s.flush()
        stale_id = stale.id
    with pytest.raises(InputError, match="slot 'p' changed while the gate ran: it now serves x1"):
        put_on_slot(registry, workspace, "p", "first", kind="promoted", gate_id=stale_id)
    assert champion(registry, "p").model == "x1"  # type: ignore[union-attr]


def test_deploy_history_names_the_champion_of_every_gate(
    tmp_path: Path, workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    """`deploy history` showed model ids (`2`) as the champion of forced gates and names for
    the others: names throughout now, also for gates recorded before (id only)."""
    for seed, name in enumerate(("first", "x1", "x2")):
        make_model(reg, tmp_path, name, seed, 0)
    promote_with_gate(reg, workspace, "p", "first")
    promote_with_gate(reg, workspace, "p", "x1", force=True)
    assert gate_decisions(reg, "p")[-1].evidence["champion"] == "first"
    with reg.session() as s:  # a forced gate as earlier versions recorded it
        old = s.get(GateDecision, gate_decisions(reg, "p")[-1].id)
        assert old is not None
        old.evidence = {k: v for k, v in old.evidence.items() if k != "champion"}
    promote_with_gate(reg, workspace, "p", "x2", force=True)
    out = CliRunner().invoke(app, ["deploy", "history", "p"])
    assert out.exit_code == 0, out.output
    gates = out.output.split("gate decisions")[1]
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in gates.splitlines()]
    rows = [c[:3] for c in cells if c and c[0].isdigit()]  # id, challenger, champion
    assert [r[1:] for r in rows] == [["x1", "first"], ["x2", "x1"]]


def test_lineage_names_each_step_once(
    tmp_path: Path, workspace: Workspace, reg: Registry, wide_console: None
) -> None:
    """`lineage s2-best` printed `model model s2-best` and `study study s2 (best run 3, ...)`:
    the step's kind was printed before a text that already names it."""
    make_model(reg, tmp_path, "s2-best", 0, 0)
    with reg.session() as s:
        row = s.get(Model, resolve_model(reg, "s2-best").id)
        assert row is not None
        row.lineage = {"study": "s2", "run_id": 3, "task": "t"}
    put_on_slot(reg, workspace, "p", "s2-best", kind="initial")
    out = CliRunner().invoke(app, ["lineage", "s2-best"])
    assert out.exit_code == 0, out.output
    lines = [" ".join(line.split()) for line in out.output.splitlines()]
    assert lines[0].startswith("promotion: initial on slot p at ")
    assert lines[1].startswith("model s2-best (created ")
    assert lines[2] == "study s2 (best run 3, task t)"
    for doubled in ("model model", "study study", "promotion promotion"):
        assert doubled not in out.output
