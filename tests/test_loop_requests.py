"""Retrain requests between the monitor and the watcher: one open request per model (alarms
are added to it), one loop per slot, requests closed when the slot moves on or by hand, a loop
run held by another live watcher skipped, and a failed run's reason and exit status."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pomlia_hpc.cli import app
from pomlia_hpc.data.api import ingest
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.loop.api import run_loop
from pomlia_hpc.loop.claim import LoopBusyError
from pomlia_hpc.loop.driver import LoopResult, open_run
from pomlia_hpc.loop.promote import put_on_slot, rollback
from pomlia_hpc.loop.requests import take
from pomlia_hpc.loop.watch import WatchState, consume
from pomlia_hpc.registry import Promotion, Registry, RetrainRequest
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import runner
from tests.loop_support import CLASSES, make_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def served(tmp_path: Path, workspace: Workspace, reg: Registry) -> Registry:
    """Models ``m`` (on slot ``s``), ``n`` and ``lonely`` (on no slot), trained on ``d``."""
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        **{
            f"{s}_images": rng.integers(0, 256, (8, 28, 28, 3), dtype=np.uint8)
            for s in ("train", "val", "test")
        },
        **{f"{s}_labels": np.zeros((8, 1), np.int64) for s in ("train", "val", "test")},
    )
    v = ingest(workspace, reg, "d", npz, class_names=CLASSES)
    for seed, name in enumerate(("m", "n", "lonely")):
        make_model(reg, tmp_path, name, seed, v.id)
    put_on_slot(reg, workspace, "s", "m", kind="initial")
    return reg


def _request(reg: Registry, model: str = "m") -> int:
    from pomlia_hpc.models.catalog import resolve_model

    with reg.session() as s:
        row = RetrainRequest(model_id=resolve_model(reg, model).id, reason="monitor alarm: mmd")
        s.add(row)
        s.flush()
        return row.id


def _status(reg: Registry, request_id: int) -> tuple[str, dict[str, Any]]:
    with reg.session() as s:
        row = s.get(RetrainRequest, request_id)
        assert row is not None
        return row.status, dict(row.meta or {})


class Calls:
    """A stand-in for the loop: records its calls, returns ``status``."""

    def __init__(self, status: str = "done", message: str = "") -> None:
        self.calls: list[tuple[str, int]] = []
        self.status, self.message = status, message

    def __call__(self, *args: Any, **kw: Any) -> LoopResult:
        self.calls.append((args[2], kw["request_id"]))
        return LoopResult(len(self.calls), self.status, {}, [], [], self.message)


def test_an_alarm_while_a_request_is_open_is_added_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five alarming monitor runs over the same traffic recorded five requests, and the
    watcher ran five loops (five studies) for them."""
    from pomlia_hpc.data.synth import make_split
    from tests.monitor_support import demo_model, log_predictions

    home = tmp_path / "ws"
    ws = Workspace(home=home, db_url=f"sqlite:///{home / 'registry.db'}", cluster_profile="local")
    ws.create()
    reg = Registry.open(ws.db_url)
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    bundle = demo_model(reg, ws, n_ref=100)
    foreign, _ = make_split("pathmnist", 100, size=28)
    log_predictions(ws, bundle, foreign)
    said = []
    for _ in range(3):
        res = runner.invoke(app, ["monitor", "run", "blood", "--permutations", "50"])
        assert res.exit_code == 1, (res.output, res.exception)  # the alarm
        said.append(" ".join(res.output.split()))
    assert "retrain request 1 recorded" in said[0]
    assert all("retrain request 1 already open: alarm added to it" in t for t in said[1:])
    with reg.session() as s:
        rows = s.query(RetrainRequest).all()
        assert len(rows) == 1 and rows[0].meta["alarms"] == 3
        assert rows[0].meta["last_alarm"]["report_id"] == 3
    reg.dispose()


def test_the_watcher_runs_one_loop_for_requests_of_the_same_model(
    workspace: Workspace, served: Registry
) -> None:
    """Requests recorded before alarms were merged (or by two monitors at once): one loop."""
    first, second = _request(served), _request(served)
    loop, lines = Calls(), []
    handled = consume(served, workspace, run=loop, progress=lines.append)
    assert loop.calls == [("s", first)] and [h.request_id for h in handled] == [first]
    assert _status(served, first)[0] == "done"
    status, meta = _status(served, second)
    assert status == "merged" and meta["merged_into"] == first
    assert f"retrain request {first}: request(s) {second} of the same model merged" in lines[0]
    assert consume(served, workspace, run=loop, progress=lines.append) == []


def test_a_change_of_champion_closes_the_requests_about_the_old_one(
    workspace: Workspace, served: Registry
) -> None:
    """After the slot moved to another model the request stayed open ("no deployment slot
    serves model 1" on every pass), and a promotion back started a retrain on the old alarm."""
    req = _request(served)
    put_on_slot(served, workspace, "s", "n", kind="forced")
    status, meta = _status(served, req)
    assert status == "obsolete"
    assert meta["outcome"].startswith("obsolete: slot s moved from m to n (forced, promotion 2")
    rollback(served, workspace, "s")  # m serves again: the old alarm must not start a retrain
    loop = Calls()
    assert consume(served, workspace, run=loop, progress=lambda _l: None) == []
    assert loop.calls == []
    # A request of m's second tenure is closed by the next change, and a rollback is one.
    again = _request(served)
    put_on_slot(served, workspace, "s", "n", kind="forced")
    assert _status(served, again)[0] == "obsolete"
    about_n = _request(served, "n")
    rollback(served, workspace, "s")  # back to m: n's alarm no longer applies
    assert _status(served, about_n)[0] == "obsolete"


def test_the_watcher_closes_stale_requests_and_reports_a_lonely_one_once(
    workspace: Workspace, served: Registry
) -> None:
    """A request recorded before changes closed requests (the promotion row written directly
    here) is closed by the watcher; one for a model no slot ever served is said once."""
    stale, lonely = _request(served), _request(served, "lonely")
    with served.session() as s:
        m = s.get(Promotion, 1)
        assert m is not None
        n_id = m.model_id + 1
        s.add(Promotion(slot="s", model_id=n_id, bundle_path=m.bundle_path, kind="forced"))
    lines: list[str] = []
    state = WatchState()
    for _ in range(3):
        assert consume(served, workspace, run=Calls(), progress=lines.append, state=state) == []
    assert _status(served, stale)[0] == "obsolete"
    assert lines[0].startswith(f"retrain request {stale}: obsolete, closed: slot s moved from m")
    assert lines[1:] == [
        f"retrain request {lonely}: no deployment slot serves model lonely (id 3); left open "
        f"(`pomlia loop dismiss {lonely}` closes it)"
    ]


def test_dismiss_closes_a_request_and_loop_show_lists_it(
    workspace: Workspace, served: Registry
) -> None:
    req = _request(served)
    res = runner.invoke(app, ["loop", "dismiss", str(req), "--reason", "known shift"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert f"retrain request {req} dismissed (was open): known shift" in res.output
    status, meta = _status(served, req)
    assert status == "dismissed" and meta["outcome"] == "dismissed: known shift"
    res = runner.invoke(app, ["loop", "show", "s"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"request {req} dismissed: model m;" in said, said
    assert "dismissed: known shift" in said
    res = runner.invoke(app, ["loop", "dismiss", str(req)])
    assert isinstance(res.exception, PomliaError)
    assert f"retrain request {req} is dismissed already" in str(res.exception)
    res = runner.invoke(app, ["loop", "dismiss", "99"])
    assert "retrain request '99' not found; known: 1" in str(res.exception)
    assert consume(served, workspace, run=Calls(), progress=lambda _l: None) == []


HOLDER = """
import sys, time
from pathlib import Path
from pomlia_hpc.loop.claim import holding
from pomlia_hpc.workspace import Workspace
ws = Workspace(home=Path(sys.argv[1]), db_url=sys.argv[2], cluster_profile="local")
with holding(ws, sys.argv[3], int(sys.argv[4])):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(workspace: Workspace, served: Registry) -> Iterator[tuple[int, int, Any]]:
    """Request 1 taken by a watcher at work on its loop run: a live process holding it."""
    req = _request(served)
    assert take(served, req, "s", workspace).taken
    run_id, _ = open_run(served, "s", champion_id=1, params={}, request_id=req)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workspace.home), workspace.db_url, "s", str(run_id)],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield req, run_id, proc
    proc.kill()
    proc.wait()


def test_a_loop_run_held_by_a_live_watcher_is_skipped(
    workspace: Workspace, served: Registry, holder: tuple[int, int, Any]
) -> None:
    """A second watcher resumed the first one's loop run, failed at once and recorded the
    run `failed` while the first was still training."""
    req, run_id, proc = holder
    loop, lines = Calls(), []
    assert consume(served, workspace, run=loop, progress=lines.append) == []
    assert loop.calls == []
    assert lines == [
        f"retrain request {req}: loop run {run_id} of slot s is held by pid {proc.pid} on host "
        + lines[0].split(" on host ")[1]
    ]
    assert lines[0].endswith("s ago); skipped") and "(since " in lines[0]
    assert _status(served, req)[0] == "taken"
    with pytest.raises(LoopBusyError, match=f"loop run {run_id} of slot s is held by pid"):
        run_loop(served, workspace, "s", request_id=req, progress=lambda _l: None)
    proc.kill()  # the holder is gone (SIGKILL: no end written): the next watcher takes over
    proc.wait()
    assert consume(served, workspace, run=loop, progress=lines.append)
    assert loop.calls == [("s", req)]


def test_a_failed_loop_run_prints_its_reason_and_watch_once_exits_1(
    workspace: Workspace, served: Registry
) -> None:
    req = _request(served)
    res = runner.invoke(app, ["loop", "watch", "--once", "--min-labels", "5"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1, (said, res.exception)
    assert f"request {req} → slot s: loop run 1 failed: harvest: only 0 labelled" in said
    assert _status(served, req)[0] == "failed"


def _alarm(reg: Registry, model_id: int = 1) -> tuple[int, bool]:
    """A monitor alarm of model ``model_id`` (a report row and its request): (request, merged)."""
    from pomlia_hpc.monitor.requests import record_alarm
    from pomlia_hpc.registry import MonitorReport

    with reg.session() as s:
        report = MonitorReport(model_id=model_id, triggered=True)
        s.add(report)
        s.flush()
        got = record_alarm(s, model_id=model_id, report_id=report.id, reason="alarm", meta={})
        return got.request_id, got.merged


def _set_run(reg: Registry, run_id: int, status: str) -> None:
    from pomlia_hpc.registry import LoopRun

    with reg.session() as s:
        row = s.get(LoopRun, run_id)
        assert row is not None
        row.status = status


def _interrupted_run(reg: Registry, workspace: Workspace, request_id: int) -> int:
    """Request ``request_id`` taken, its loop run recorded interrupted (a stopped watcher)."""
    assert take(reg, request_id, "s", workspace).taken
    run_id, _ = open_run(reg, "s", champion_id=1, params={}, request_id=request_id)
    _set_run(reg, run_id, "interrupted")
    return run_id


def test_a_stopped_watcher_leaves_its_request_taken_and_a_later_alarm_is_not_merged(
    workspace: Workspace, served: Registry
) -> None:
    """The stopped watcher put the request back to `open`: the next alarms were merged into a
    request whose resumed run's window does not hold their traffic."""
    req, _ = _alarm(served)

    def stopped(*args: Any, **kw: Any) -> LoopResult:
        run_id, _ = open_run(served, "s", champion_id=1, params={}, request_id=kw["request_id"])
        _set_run(served, run_id, "interrupted")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        consume(served, workspace, run=stopped, progress=lambda _l: None)
    status, meta = _status(served, req)
    assert status == "taken" and meta["outcome"] == "interrupted; resumed by the next watch"
    later, merged = _alarm(served)
    assert later != req and not merged
    loop = Calls()
    consume(served, workspace, run=loop, progress=lambda _l: None)
    assert loop.calls == [("s", req)]  # the interrupted run resumed; one loop per slot a pass
    assert _status(served, req)[0] == "done" and _status(served, later)[0] == "open"
    assert "merged" not in _status(served, req)[1]
    consume(served, workspace, run=loop, progress=lambda _l: None)
    assert loop.calls[1:] == [("s", later)] and _status(served, later)[0] == "done"


def test_a_watcher_stopped_before_its_loop_run_started_reopens_the_request(
    workspace: Workspace, served: Registry
) -> None:
    req = _request(served)

    def stopped(*args: Any, **kw: Any) -> LoopResult:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        consume(served, workspace, run=stopped, progress=lambda _l: None)
    assert _status(served, req)[0] == "open"


def test_a_taken_request_with_an_interrupted_run_is_retired_when_the_slot_moves_on(
    workspace: Workspace, served: Registry
) -> None:
    from pomlia_hpc.registry import LoopRun

    req = _request(served)
    run_id = _interrupted_run(served, workspace, req)
    at_work = _request(served)  # taken by a watcher whose loop run is running: left to it
    assert take(served, at_work, "s", workspace).taken
    busy, _ = open_run(served, "s", champion_id=1, params={}, request_id=at_work)
    put_on_slot(served, workspace, "s", "n", kind="forced")
    status, meta = _status(served, req)
    assert status == "obsolete" and meta["outcome"].startswith("obsolete: slot s moved from m")
    assert _status(served, at_work)[0] == "taken"
    with served.session() as s:
        assert s.get(LoopRun, run_id).status == "stopped"  # type: ignore[union-attr]
        assert s.get(LoopRun, busy).status == "running"  # type: ignore[union-attr]


def test_loop_run_resuming_a_requests_run_records_the_request(
    workspace: Workspace, served: Registry
) -> None:
    """`loop run SLOT` resumed the interrupted run of a request and left the request open
    (or taken): the next watcher retrained for it again."""
    req = _request(served)
    run_id = _interrupted_run(served, workspace, req)
    res = run_loop(
        served, workspace, "s", stages=(("harvest", lambda _ctx: {"n": 1}),), progress=print
    )
    assert res.run_id == run_id and res.status == "done"
    status, meta = _status(served, req)
    assert status == "done" and meta["loop_run_id"] == run_id
    loop = Calls()
    assert consume(served, workspace, run=loop, progress=lambda _l: None) == []
    assert loop.calls == []


def test_take_refuses_a_taken_request_without_a_run_to_resume(
    workspace: Workspace, served: Registry
) -> None:
    """A watcher working from an older list took a request another had just taken (or whose
    run had just ended) and started a second loop run for it."""
    req = _request(served)
    assert take(served, req, "s", workspace).taken
    again = take(served, req, "s", workspace)
    assert not again.taken and again.why_not == "another watcher took it (no loop run to resume)"
    run_id, _ = open_run(served, "s", champion_id=1, params={}, request_id=req)
    assert take(served, req, "s", workspace).taken  # running: its driver may be gone, resumed
    _set_run(served, run_id, "done")  # ended, not yet finished by its watcher
    assert not take(served, req, "s", workspace).taken
    _set_run(served, run_id, "interrupted")
    assert take(served, req, "s", workspace).taken


# -- a watcher killed (SIGKILL): its request is abandoned, retired or taken over --------------

TAKER = """
import os, signal, sys
from pathlib import Path
from pomlia_hpc.loop.claim import holding
from pomlia_hpc.loop.driver import open_run
from pomlia_hpc.loop.requests import take
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
ws = Workspace(home=Path(sys.argv[1]), db_url=sys.argv[2], cluster_profile="local")
reg = Registry.open(ws.db_url)
req, then = int(sys.argv[3]), sys.argv[4]
if then == "wait":  # a second watcher: take it when told (stdin), then live until stdin ends
    sys.stdin.readline()
got = take(reg, req, "s", ws)
print("taken" if got.taken else "refused: " + got.why_not, flush=True)
if then == "die":  # killed between its take and its loop run
    os.kill(os.getpid(), signal.SIGKILL)
if then == "run":  # killed while it holds its loop run (as at a stage's start)
    run_id, _ = open_run(reg, "s", champion_id=1, params={}, request_id=req)
    with holding(ws, "s", run_id):
        os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def _taker(workspace: Workspace, req: int, then: str) -> subprocess.Popen[str]:
    """A watcher process that takes request ``req`` (``then``: what it does next)."""
    return subprocess.Popen(
        [sys.executable, "-c", TAKER, str(workspace.home), workspace.db_url, str(req), then],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def _killed(workspace: Workspace, req: int, then: str) -> None:
    """Request ``req`` taken by a watcher that was SIGKILLed (``then``: before or in its run)."""
    proc = _taker(workspace, req, then)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -9 and out.strip() == "taken", (proc.returncode, out)


def _run_status(reg: Registry, request_id: int) -> str:
    from pomlia_hpc.registry import LoopRun

    with reg.session() as s:
        run = s.query(LoopRun).filter(LoopRun.request_id == request_id).one()
        return run.status


def test_a_killed_watchers_request_is_retired_when_the_slot_moves_on(
    workspace: Workspace, served: Registry
) -> None:
    """A `loop watch` SIGKILLed at work left its request `taken` for good: a promotion of
    another model did not retire it, and every watcher said "no deployment slot serves
    model m" (only `loop dismiss` closed it), though `loop show` said the run was stale."""
    req = _request(served)
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "loop", "watch", "--once", "--min-labels", "1"],
        env={
            "PYTHONPATH": str(REPO),
            "PATH": "/usr/bin:/bin",
            "POMLIA_HOME": str(workspace.home),
            "POMLIA_LOOP_KILL_AT": "harvest:before",  # SIGKILL, its run held and `running`
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)
    assert _status(served, req)[0] == "taken" and _run_status(served, req) == "running"
    said = " ".join(runner.invoke(app, ["loop", "show", "s"]).output.split())
    assert "stale: its driver (pid" in said, said
    put_on_slot(served, workspace, "s", "n", kind="forced")
    status, meta = _status(served, req)
    assert status == "obsolete" and meta["outcome"].startswith("obsolete: slot s moved from m")
    assert _run_status(served, req) == "stopped"


def test_the_watcher_retires_a_killed_watchers_request_about_a_model_no_longer_served(
    workspace: Workspace, served: Registry
) -> None:
    """The same, with the promotion recorded before promotions retired requests: the
    watcher applies the rule."""
    req = _request(served)
    _killed(workspace, req, "run")
    with served.session() as s:
        m = s.get(Promotion, 1)
        assert m is not None
        s.add(
            Promotion(slot="s", model_id=m.model_id + 1, bundle_path=m.bundle_path, kind="forced")
        )
    lines: list[str] = []
    assert consume(served, workspace, run=Calls(), progress=lines.append) == []
    assert lines == [lines[0]] and lines[0].startswith(
        f"retrain request {req}: obsolete, closed: slot s moved from m"
    )
    assert _status(served, req)[0] == "obsolete"


def test_a_request_whose_watcher_was_killed_before_its_loop_run_is_taken_over(
    workspace: Workspace, served: Registry
) -> None:
    """Taken, then its watcher SIGKILLed before it created a loop run: no watcher listed it
    again (nothing to resume), and it stayed `taken` for good."""
    req = _request(served)
    _killed(workspace, req, "die")
    later = _request(served)  # recorded meanwhile: merged, as into an open request
    loop = Calls()
    handled = consume(served, workspace, run=loop, progress=lambda _l: None)
    assert loop.calls == [("s", req)] and [h.request_id for h in handled] == [req]
    assert _status(served, req)[0] == "done" and _status(served, later)[0] == "merged"


@pytest.mark.parametrize("then", ["die", "run"])
def test_two_watchers_take_over_a_killed_watchers_request_once(
    workspace: Workspace, served: Registry, then: str
) -> None:
    """Two watchers found a request whose watcher was killed (before or in its loop run) and
    both took it; the second must find the first recorded as its taker, alive."""
    req = _request(served)
    _killed(workspace, req, then)
    pair = [_taker(workspace, req, "wait") for _ in range(2)]
    try:
        for proc in pair:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        said = [proc.stdout.readline().strip() for proc in pair if proc.stdout is not None]
        assert sorted(said)[1] == "taken", said
        winner = pair[said.index("taken")]
        busy = f"another watcher took it (pid {winner.pid} on "
        assert sorted(said)[0].startswith("refused: " + busy), said
        again = take(served, req, "s", workspace)
        assert not again.taken and again.why_not.startswith(busy)
        assert consume(served, workspace, run=Calls(), progress=lambda _l: None) == []
        winner.kill()  # SIGKILL: the third watcher takes it over
        winner.wait()
        assert take(served, req, "s", workspace).taken
    finally:
        for proc in pair:
            proc.kill()
            proc.wait()


# -- who the taker is: the same host and pid may be another process ---------------------------


def _set_taker(reg: Registry, request_id: int, record: Any) -> None:
    from dataclasses import asdict

    from pomlia_hpc.loop.requests import TAKER

    with reg.session() as s:
        row = s.get(RetrainRequest, request_id)
        assert row is not None
        row.status = "taken"
        row.meta = {**(row.meta or {}), TAKER: asdict(record)}


def test_a_dead_watcher_with_this_processs_pid_is_not_this_process(
    workspace: Workspace, served: Registry
) -> None:
    """A container restarted: its new watcher is pid 1 on the same host name, like the dead
    one that took the request. Taken for this process, the request was neither abandoned nor
    taken over ("another watcher took it"): stuck."""
    from dataclasses import replace

    from pomlia_hpc.automl.liveness import this_process
    from pomlia_hpc.loop.requests import abandoned

    req = _request(served)
    me = this_process()
    dead = replace(me, proc_ticks="another-boot:1", proc_start=(me.proc_start or 0.0) - 3600)
    _set_taker(served, req, dead)
    with served.session() as s:
        row = s.get(RetrainRequest, req)
        assert row is not None
        assert abandoned(s, row, workspace) is not None  # its taker is not running
    assert take(served, req, "s", workspace).taken


def test_release_leaves_a_request_another_watcher_took_over(
    workspace: Workspace, served: Registry
) -> None:
    """A watcher shutting down let go of a request that another had taken over meanwhile:
    the other's record was removed and the request put back to open under it."""
    import time
    from dataclasses import replace

    from pomlia_hpc.automl.liveness import this_process
    from pomlia_hpc.loop.requests import TAKER, release

    req = _request(served)
    assert take(served, req, "s", workspace).taken
    other = replace(this_process(), host="other-node", pid=4242, beat=time.time())
    _set_taker(served, req, other)  # taken over by a live watcher on another node
    release(served, req)
    status, meta = _status(served, req)
    assert status == "taken" and meta[TAKER]["host"] == "other-node" and "outcome" not in meta
    _set_taker(served, req, this_process())  # its own: let go (no run: open again)
    release(served, req)
    status, meta = _status(served, req)
    assert status == "open" and TAKER not in meta
