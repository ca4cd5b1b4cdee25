"""A nightly chain scheduled for a deployment slot follows the slot's promotions: it was
scheduled for the champion of that moment and went on testing the old model (whose records
stop at the promotion: empty, quiet reports) after the loop put a new one on the slot.

Slurm is stood in for here (submission, queue, cancel); tests/test_monitor_slurm.py runs a
slot's chain across a promotion on the real test cluster."""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import QueuedJob
from pomlia_hpc.errors import NotFoundError, PomliaError
from pomlia_hpc.monitor import ending as ending_mod
from pomlia_hpc.monitor import schedule as schedule_mod
from pomlia_hpc.registry import Model, Promotion, Registry
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model, images, log_predictions

runner = CliRunner()


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Stand-ins for sbatch, squeue and scancel; returns what was submitted."""
    calls: list[dict[str, object]] = []

    def submit(script: Path, *, name: str, begin: datetime, env: dict[str, str], **kw: object):
        calls.append({"script": script, "name": name, "begin": begin, "env": dict(env)})
        return str(100 + len(calls))

    def none_queued(name: str, script: Path | None = None) -> list[QueuedJob]:
        return []

    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    monkeypatch.setattr(schedule_mod, "submit_script", submit)
    monkeypatch.setattr(schedule_mod, "jobs_named", none_queued)
    monkeypatch.setattr(ending_mod, "jobs_named", none_queued)
    monkeypatch.setattr(ending_mod, "cancel_named", lambda name, script=None: [])
    monkeypatch.setattr(ending_mod, "cancel_ids", lambda ids: None)
    return calls


def promote(reg: Registry, slot: str, model: str, bundle: Path, kind: str) -> None:
    """What `deploy promote` records once the slot's link has moved."""
    with reg.session() as s:
        model_id = s.query(Model.id).filter(Model.name == model).scalar()
        s.add(Promotion(slot=slot, model_id=model_id, bundle_path=str(bundle), kind=kind))


def conf_values(conf: Path) -> dict[str, str]:
    """The chain's settings as the job sees them once it sources the file."""
    values = {}
    for line in conf.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


def invoke(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, " ".join(res.output.split())


def test_a_slot_chain_monitors_the_slot_s_champion_of_each_run(
    workspace: Workspace, reg: Registry, submitted: list[dict[str, object]]
) -> None:
    old = demo_model(reg, workspace, name="ward-a", n_ref=50)
    new = demo_model(reg, workspace, name="ward-b", n_ref=50)
    promote(reg, "ward", "ward-a", old, "initial")
    code, out = invoke("monitor", "schedule", "ward", "--at", "", "--every", "1h")
    assert code == 0, out
    assert "pomlia-monitor-slot:ward) submitted" in out, out
    assert "slot 'ward' serves model 'ward-a' now; each run monitors the model" in out, out
    (job,) = submitted
    assert job["name"] == "pomlia-monitor-slot:ward"
    conf = workspace.path("jobs", "monitor", "slot:ward", "schedule.env")
    settings = conf_values(conf)
    assert settings["MODEL"] == "slot:ward"

    # The loop promotes ward-b onto the slot; the server, following the slot, logs its
    # predictions under the slot's name.
    promote(reg, "ward", "ward-b", new, "promoted")
    x, _ = images(30)
    log_predictions(workspace, new, x, log_name="ward")
    # The chain's next run: `monitor run $MODEL` with the settings it sourced.
    res = runner.invoke(app, ["monitor", "run", settings["MODEL"], "--window", "1h", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    report = json.loads(res.stdout)
    assert report["model"] == "ward-b" and report["slot"] == "ward"
    assert report["volume"]["predictions"] == 30
    assert "slot 'ward' serves model 'ward-b': monitoring that model" in res.stderr

    # Its resubmission needs no more than the slot (not the champion's reference), and the
    # slot's chain is ended by the slot's name.
    code, out = invoke("monitor", "schedule", "slot:ward", "--every", "1h", "--at", "", "--chain")
    assert code == 0 and len(submitted) == 2, out
    assert submitted[1]["name"] == "pomlia-monitor-slot:ward"
    code, out = invoke("monitor", "unschedule", "ward")
    assert code == 0 and not conf.exists(), out


def test_scheduling_a_model_no_slot_serves_any_more_warns(
    workspace: Workspace, reg: Registry, submitted: list[dict[str, object]]
) -> None:
    old = demo_model(reg, workspace, name="pneu-a", n_ref=50)
    new = demo_model(reg, workspace, name="pneu-b", n_ref=50)
    promote(reg, "pneu", "pneu-a", old, "initial")
    code, out = invoke("monitor", "schedule", "pneu-a", "--at", "", "--every", "1h")
    assert code == 0 and "warning" not in out, out  # it serves the slot: nothing to say
    promote(reg, "pneu", "pneu-b", new, "promoted")
    code, out = invoke("monitor", "schedule", "pneu-a", "--at", "", "--every", "1h", "--replace")
    assert code == 0, out
    assert (
        "warning: model 'pneu-a' is no longer any slot's champion (slot 'pneu' serves "
        "'pneu-b' now)" in out
    ), out
    assert "pomlia monitor run slot:pneu" in out, out
    # Each run of that chain says so too, in its output and its report.
    res = runner.invoke(app, ["monitor", "run", "pneu-a", "--window", "1h", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    report = json.loads(res.stdout)
    assert report["slot"] is None and report["volume"]["predictions"] == 0
    assert any("no longer any slot's champion" in n for n in report["notes"]), report["notes"]
    assert "warning: model 'pneu-a' is no longer" in " ".join(res.stderr.split())


def test_an_unknown_slot_is_one_message(workspace: Workspace, reg: Registry) -> None:
    # The console script prints a NotFoundError as one line, exit status 2.
    demo_model(reg, workspace, name="ward-a", n_ref=50)
    promote(reg, "ward", "ward-a", workspace.home, "initial")
    with pytest.raises(NotFoundError, match="deployment slot 'nope' not found; known: ward"):
        runner.invoke(app, ["monitor", "run", "slot:nope"], catch_exceptions=False)


def refusal(*args: str) -> str:
    """The one-line message of the error a command stops with (the console script prints it
    as such, exit status 2), whitespace folded."""
    with pytest.raises(PomliaError) as info:
        runner.invoke(app, list(args), catch_exceptions=False)
    return " ".join(str(info.value).split())


def legacy_chain(workspace: Workspace, champion: str) -> Path:
    """The settings of a chain `monitor schedule SLOT` made before slot chains: keyed by the
    champion's name, MODEL=<champion>."""
    conf = workspace.path("jobs", "monitor", champion, "schedule.env")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"export MODEL={champion}\nexport EVERY=1d\n")
    return conf


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, submitted: list[dict[str, object]]) -> dict:
    """A queue stand-in: {job name: [ids]}; cancel_named empties a name and says what went."""
    jobs: dict[str, list[str]] = {}

    def named(name: str, script: Path | None = None) -> list[QueuedJob]:
        return [QueuedJob(i, "PENDING", "N/A") for i in jobs.get(name, [])]

    def cancel(name: str, script: Path | None = None) -> list[str]:
        return jobs.pop(name, [])

    def cancel_ids(ids: list[str]) -> None:
        for name in list(jobs):
            jobs[name] = [i for i in jobs[name] if i not in ids]

    monkeypatch.setattr(schedule_mod, "jobs_named", named)
    monkeypatch.setattr(ending_mod, "jobs_named", named)
    monkeypatch.setattr(ending_mod, "cancel_named", cancel)
    monkeypatch.setattr(ending_mod, "cancel_ids", cancel_ids)
    monkeypatch.setattr(schedule_mod.time, "sleep", lambda s: None)
    return jobs


def test_a_chain_under_the_champion_s_name_is_refused_then_replaced(
    workspace: Workspace, reg: Registry, submitted: list[dict[str, object]], queue: dict
) -> None:
    bundle = demo_model(reg, workspace, name="ward-a", n_ref=50)
    promote(reg, "ward", "ward-a", bundle, "initial")
    conf = legacy_chain(workspace, "ward-a")
    queue["pomlia-monitor-ward-a"] = ["77"]
    out = refusal("monitor", "schedule", "ward", "--at", "", "--every", "1h")
    assert not submitted, out
    assert "slot 'ward' is already monitored by a chain under its champion's name 'ward-a'" in out
    assert "pomlia-monitor-ward-a: slurm job 77 pending" in out and "--replace" in out, out
    assert "pomlia monitor unschedule ward-a" in out, out
    code, out = invoke("monitor", "schedule", "slot:ward", "--at", "", "--every", "1h", "--replace")
    assert code == 0, out
    (job,) = submitted
    assert job["name"] == "pomlia-monitor-slot:ward"
    assert "replaced (cancelled): slurm job 77" in out, out
    assert not conf.exists() and "pomlia-monitor-ward-a" not in queue


def test_unscheduling_a_slot_ends_the_chain_under_its_champion_s_name(
    workspace: Workspace, reg: Registry, submitted: list[dict[str, object]], queue: dict
) -> None:
    bundle = demo_model(reg, workspace, name="ward-a", n_ref=50)
    promote(reg, "ward", "ward-a", bundle, "initial")
    conf = legacy_chain(workspace, "ward-a")  # settings only: its next job not queued yet
    queue["pomlia-monitor-ward-a"] = []
    code, out = invoke("monitor", "unschedule", "slot:ward")
    assert code == 0 and not conf.exists(), out
    # Settings alone (no job queued) are a chain too: scheduling refuses beside them.
    legacy_chain(workspace, "ward-a")
    out = refusal("monitor", "schedule", "ward", "--at", "", "--every", "1h")
    assert "'ward-a' (job pomlia-monitor-ward-a: no job queued;" in out, out


def test_the_refusals_name_a_slot_as_a_slot_and_list_the_slots(
    workspace: Workspace, reg: Registry, submitted: list[dict[str, object]], queue: dict
) -> None:
    bundle = demo_model(reg, workspace, name="ward-a", n_ref=50)
    promote(reg, "ward", "ward-a", bundle, "initial")
    queue["pomlia-monitor-slot:ward"] = ["5"]
    out = refusal("monitor", "schedule", "ward", "--at", "", "--every", "1h")
    assert "slot 'ward' is already scheduled (slurm job 5 pending)" in out, out
    with pytest.raises(NotFoundError, match="no deployment slot is named 'nope' either"):
        runner.invoke(app, ["monitor", "run", "nope"], catch_exceptions=False)
    with pytest.raises(NotFoundError, match=r"\(slots: ward\)"):
        runner.invoke(app, ["monitor", "schedule", "nope"], catch_exceptions=False)


def test_the_replaced_note_does_not_say_the_model_is_served_nowhere(
    workspace: Workspace, reg: Registry
) -> None:
    from pomlia_hpc.monitor.reference import replaced_note

    old = demo_model(reg, workspace, name="pneu-a", n_ref=50)
    new = demo_model(reg, workspace, name="pneu-b", n_ref=50)
    promote(reg, "pneu", "pneu-a", old, "initial")
    promote(reg, "pneu", "pneu-b", new, "promoted")
    with reg.session() as s:
        model = s.query(Model).filter(Model.name == "pneu-a").one()
    note = replaced_note(reg, model) or ""
    assert "have stopped" not in note
    assert "only from servers that serve it by name (pomlia serve pneu-a), if any" in note


def test_a_chain_scheduled_for_the_champion_by_name_is_the_model_s_own(
    workspace: Workspace, reg: Registry, submitted: list[dict[str, object]], queue: dict
) -> None:
    """`monitor schedule ward-a` (the slot's champion, by name, on purpose) looked like the
    chain `schedule SLOT` made before slot chains: `schedule ward` refused beside it,
    `--replace` and `unschedule ward` ended it. Its settings and job record it as the model's
    chain now, and the slot's commands leave it alone."""
    from pomlia_hpc.registry import Job

    bundle = demo_model(reg, workspace, name="ward-a", n_ref=50)
    promote(reg, "ward", "ward-a", bundle, "initial")
    code, out = invoke("monitor", "schedule", "ward-a", "--at", "", "--every", "1h")
    assert code == 0, out
    conf = workspace.path("jobs", "monitor", "ward-a", "schedule.env")
    queue["pomlia-monitor-ward-a"] = ["101"]
    code, out = invoke("monitor", "schedule", "ward", "--at", "", "--every", "1h")
    assert code == 0, out
    code, out = invoke("monitor", "schedule", "ward", "--at", "", "--every", "1h", "--replace")
    assert code == 0 and "replaced" not in out, out
    code, out = invoke("monitor", "unschedule", "ward")
    assert code == 0, out
    assert conf.is_file() and queue["pomlia-monitor-ward-a"] == ["101"]  # the model's chain
    assert conf_values(conf)["CHAIN_KIND"] == "model"  # what records it
    with reg.session() as s:
        (meta,) = [j.meta for j in s.query(Job).filter(Job.name == "pomlia-monitor-ward-a")]
    assert meta["kind"] == "model", meta
    slot_conf = workspace.path("jobs", "monitor", "slot:ward", "schedule.env")
    assert not slot_conf.exists()  # unscheduled; the next schedule records the slot's kind
    invoke("monitor", "schedule", "ward", "--at", "", "--every", "1h")
    assert conf_values(slot_conf)["CHAIN_KIND"] == "slot"
    invoke("monitor", "unschedule", "ward")
    # Its settings gone, a job still queued: the job's record decides, not the name.
    conf.unlink()
    code, out = invoke("monitor", "unschedule", "slot:ward")
    assert code == 0 and queue["pomlia-monitor-ward-a"] == ["101"], out
