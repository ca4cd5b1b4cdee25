"""The loop driver: SIGKILL at every stage boundary (before a stage, and after its work but
before its output is recorded), then a rerun finishes the run with nothing done twice.

The stage table here has the real stage names and cheap stand-ins that create one row each in
a side table, the way the real stages do: look for it first, create it if missing. The real
stages are run end to end (with kills) in ``test_loop_e2e.py``."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from pomlia_hpc.loop.driver import KILL_ENV, LoopContext, open_run, run_stages
from pomlia_hpc.loop.stages import STAGE_NAMES
from pomlia_hpc.registry import LoopRun, Registry
from pomlia_hpc.workspace import Workspace


def _table(ws: Workspace) -> Path:
    return ws.home / "effects.db"


def _stage(name: str):  # type: ignore[no-untyped-def]
    def run(ctx: LoopContext) -> dict[str, object]:
        db = sqlite3.connect(_table(ctx.workspace), isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS calls (stage TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS made (run INT, stage TEXT, UNIQUE(run, stage))")
        db.execute("INSERT INTO calls VALUES (?)", (name,))
        db.execute("INSERT OR IGNORE INTO made VALUES (?, ?)", (ctx.run_id, name))
        for earlier in STAGE_NAMES[: STAGE_NAMES.index(name)]:
            ctx.out(earlier)  # every earlier output is there
        db.close()
        return {"made": name}

    return run


STAGES = tuple((n, _stage(n)) for n in STAGE_NAMES)


def _child(db_url: str, home: str, run_id: int, kill_at: str) -> None:
    os.environ[KILL_ENV] = kill_at
    reg = Registry(db_url)
    ws = Workspace(home=Path(home), db_url=db_url, cluster_profile="local")
    run_stages(reg, ws, run_id, STAGES, progress=lambda _l: None)
    os._exit(0)  # not reached when the hook fires


@pytest.mark.parametrize("when", ["before", "after"])
def test_killed_at_every_stage_boundary_then_rerun_finishes_once(
    workspace: Workspace, reg: Registry, when: str
) -> None:
    ctx = multiprocessing.get_context("fork")
    for stage in STAGE_NAMES:
        run_id, resumed = open_run(reg, f"slot-{when}-{stage}", champion_id=None, params={})
        assert not resumed
        proc = ctx.Process(
            target=_child, args=(workspace.db_url, str(workspace.home), run_id, f"{stage}:{when}")
        )
        proc.start()
        proc.join(60)
        assert proc.exitcode == -9, f"{stage}:{when} was not killed ({proc.exitcode})"
        again, resumed = open_run(reg, f"slot-{when}-{stage}", champion_id=None, params={})
        assert resumed and again == run_id
        res = run_stages(reg, workspace, run_id, STAGES, progress=lambda _l: None)
        assert res.status == "done"
        i = STAGE_NAMES.index(stage)
        # "after": the stage's work was done but not recorded, so it runs again (and finds
        # its row); every stage recorded before the kill is skipped.
        assert res.skipped == list(STAGE_NAMES[:i])
        assert res.ran == list(STAGE_NAMES[i:])
        db = sqlite3.connect(_table(workspace))
        made = db.execute("SELECT stage FROM made WHERE run = ?", (run_id,)).fetchall()
        calls = dict(db.execute("SELECT stage, COUNT(*) FROM calls GROUP BY stage").fetchall())
        db.execute("DELETE FROM calls")
        db.commit()
        db.close()
        assert sorted(s for (s,) in made) == sorted(STAGE_NAMES)
        # Only the interrupted stage may run twice, and only when its work was done.
        want = {n: 1 for n in STAGE_NAMES}
        want[stage] = 2 if when == "after" else 1
        assert calls == want
    with reg.session() as s:
        assert all(r.status == "done" for r in s.query(LoopRun))


def test_a_failing_stage_marks_the_run_and_a_rerun_retries_it(
    workspace: Workspace, reg: Registry
) -> None:
    from pomlia_hpc.loop.driver import LoopError

    tries = {"n": 0}

    def flaky(ctx: LoopContext) -> dict[str, object]:
        tries["n"] += 1
        if tries["n"] == 1:
            raise LoopError("not yet")
        return {"ok": True}

    table = (("harvest", flaky), ("gate", lambda c: {"stop": "refused"}), ("export", flaky))
    run_id, _ = open_run(reg, "s", champion_id=None, params={"x": 1})
    first = run_stages(reg, workspace, run_id, table, progress=lambda _l: None)
    assert first.status == "failed" and "harvest: not yet" in first.message
    second = run_stages(reg, workspace, run_id, table, progress=lambda _l: None)
    assert second.status == "stopped" and second.ran == ["harvest", "gate"]
    with reg.session() as s:
        row = s.get(LoopRun, run_id)
        assert row is not None and row.status == "stopped" and row.error == "refused"
        assert row.stages["params"]["x"] == 1


def test_the_progress_line_shows_the_gate_reason_whole_and_cuts_other_values_at_a_word(
    workspace: Workspace, reg: Registry
) -> None:
    # a reason over 200 characters was cut mid-word ("only champion righ") in `loop watch`
    reason = (
        "not shown non-inferior on the fixed test split: lower bound -0.041 <= -margin -0.020; "
        "not shown better on production data: McNemar p = 0.38 >= alpha 0.05 "
        "(only challenger right 12, only champion right 9), p_value=0.38"
    )
    hint = " ".join(f"word{i}" for i in range(60))  # 419 characters
    table = (("gate", lambda c: {"reason": reason, "hint": hint}),)
    run_id, _ = open_run(reg, "long", champion_id=None, params={})
    lines: list[str] = []
    run_stages(reg, workspace, run_id, table, progress=lines.append)
    (done,) = [line for line in lines if "gate done" in line]
    assert f"reason={reason}," in done
    shown = done.split("hint=", 1)[1].split(", seconds=")[0]
    assert shown.endswith(" …") and len(shown) <= 200
    assert hint.startswith(shown[:-2]) and shown[:-2].split()[-1] in hint.split()
