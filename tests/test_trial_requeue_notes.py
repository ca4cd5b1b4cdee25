"""What a study says of a trial whose Slurm job was requeued (at its time limit, or preempted):
the driver says the new attempt, the trial's log where it resumed, and the trial's record keeps
the epochs of every attempt. Before, only ``fingerprint train`` said either, and a trial
requeued at epoch 27 of 40 was recorded as having trained 13 epochs (``27→40``).
The real requeue at a time limit: tests/test_automl_slurm_requeue.py."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.automl import trial
from pomlia_hpc.automl.engine import TrainRequest
from pomlia_hpc.automl.space import TrainConfig
from pomlia_hpc.automl.study import StudyView, TrialLog, TrialView, trial_line
from pomlia_hpc.automl.study.trialjobs import trial_wall_s
from pomlia_hpc.cluster import records as cluster_records
from pomlia_hpc.cluster.batch import slurm_time
from pomlia_hpc.cluster.records import parse_sacct, record_submission, refresh_slurm_jobs
from pomlia_hpc.registry import Registry
from pomlia_hpc.training import resume_note
from tests.fixtures.waiting import wait_until


class Requeued(SystemExit):
    """What submitit's handler raises in the job when it has checkpointed and requeued it."""


def _request(tmp_path: Path) -> TrainRequest:
    return TrainRequest(
        store_path="x",
        task_type="multi-class",
        config=TrainConfig(lr=1e-3, optimizer="adamw", batch_size=64),
        epochs=40,
        workdir=str(tmp_path / "configs" / "k1"),
        model_path=str(tmp_path / "m.pt"),
        lineage={"run_id": 7, "study": "s1", "dataset": "blood@abc"},
    )


def test_a_requeued_trial_says_where_it_resumed_and_keeps_its_whole_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    req = _request(tmp_path)
    workdir = Path(req.workdir)
    calls: list[int] = []

    def fake_train(request: TrainRequest, progress: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the first attempt: 27 epochs checkpointed, then the signal
            # the checkpoint itself too: a record whose checkpoint is gone is no resume point
            (workdir / "ckpt" / "epoch-27").mkdir(parents=True)
            state = {"epoch": 27, "tag": "epoch-27", "config_key": "", "history": []}
            (workdir / "state.json").write_text(json.dumps(state))
            raise Requeued(0)

        class Result:  # as train() says it: from the checkpoint this attempt restored
            def to_dict(self) -> dict[str, Any]:
                return {"start_epoch": 27, "epochs": 40}

        return Result()

    monkeypatch.setattr(trial, "train", fake_train)
    job = trial.TrialJob(req, str(tmp_path / "result.json"))
    with pytest.raises(Requeued):
        job()
    again = pickle.loads(pickle.dumps(job))  # what submitit requeues: the job as it stopped
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    result = again()
    assert result["start_epoch"] == 0  # the trial's span, 0 to 40, not the attempt's
    assert json.loads((tmp_path / "result.json").read_text())["start_epoch"] == 0
    first, second = [x for x in capsys.readouterr().out.splitlines() if "trial: run 7" in x]
    assert first.endswith("to 40 epochs")  # a first attempt from scratch: nothing more
    ckpt = workdir / "ckpt" / "epoch-27"
    assert second.endswith(f"to 40 epochs; resumed from epoch 27 (checkpoint {ckpt}, attempt 2)")


def test_a_trial_requeued_without_a_checkpoint_keeps_its_whole_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node failure, ``scontrol requeue`` or a preemption by SIGTERM requeues the job
    without submitit's checkpoint: the next attempt runs the job as first submitted, which
    knows nothing of the attempt before it (it was recorded as trained 27 -> 40)."""
    req = _request(tmp_path)
    workdir = Path(req.workdir)
    submitted = pickle.dumps(trial.TrialJob(req, str(tmp_path / "result.json")))
    calls: list[int] = []

    def fake_train(request: TrainRequest, progress: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the first attempt: 27 epochs checkpointed, then the node died
            workdir.mkdir(parents=True)
            state = {"epoch": 27, "tag": "epoch-27", "config_key": "", "history": []}
            (workdir / "state.json").write_text(json.dumps(state))
            raise Requeued(0)

        class Result:
            def to_dict(self) -> dict[str, Any]:
                return {"start_epoch": 27, "epochs": 40}

        return Result()

    monkeypatch.setattr(trial, "train", fake_train)
    with pytest.raises(Requeued):
        pickle.loads(submitted)()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    result = pickle.loads(submitted)()  # the submitted job again, not a checkpointed one
    assert result["start_epoch"] == 0


def test_the_resume_note_is_the_encoders_and_the_trials() -> None:
    assert resume_note(0, "c", 1) == ""
    assert resume_note(4, "c/e4", 2) == "resumed from epoch 4 (checkpoint c/e4, attempt 2)"
    # requeued before any epoch was saved: said too, not taken for a first start
    assert resume_note(0, "c", 3) == "attempt 3, no epoch checkpointed yet: from epoch 0"


def _trial(status: str, attempt: int) -> TrialView:
    return TrialView(
        3, "k", "small_cnn lr=1.0e-03 adamw bs=64", 9, status, None, None, None, "12", "", 0,
        False, attempt,
    )  # fmt: skip


def _view(t: TrialView) -> StudyView:
    return StudyView("s", "acc", [t], None, 0, 4, None)


def test_the_driver_says_a_trials_requeue_once() -> None:
    lines: list[str] = []
    log = TrialLog(lines.append, counts=False)
    log(_view(_trial("running", 1)))
    log(_view(_trial("running", 2)))
    log(_view(_trial("running", 2)))  # nothing new: nothing said
    log(_view(_trial("ok", 2)))
    assert lines == [
        "run 3 small_cnn lr=1.0e-03 adamw bs=64, 9 epochs: running",
        "run 3 small_cnn lr=1.0e-03 adamw bs=64, 9 epochs: job 12 requeued (attempt 2 of 4 at "
        "its time limit): it resumes from its last checkpoint",
        "run 3 small_cnn lr=1.0e-03 adamw bs=64, 9 epochs: ok",
    ]
    # A resumed driver's view of trials that ended after a requeue says no requeue.
    again: list[str] = []
    TrialLog(again.append, counts=False)(_view(_trial("ok", 3)))
    assert not any("requeued" in x for x in again)
    assert re.search(r"attempt \d of \d", lines[1])


def test_a_requeue_the_driver_only_sees_once_the_trial_ended_is_said() -> None:
    """The second attempt finished between two of the driver's views (a short last attempt
    under a raised time limit): the requeue was never said, only "running" then "ok"."""
    lines: list[str] = []
    log = TrialLog(lines.append, counts=False)
    log(_view(_trial("running", 1)))
    log(_view(_trial("ok", 2)))
    assert len(lines) == 3, lines
    assert "job 12 requeued (attempt 2 of 4 " in lines[1] and lines[2].endswith(": ok"), lines


def test_a_trials_give_up_cause_is_said_whole() -> None:
    """The driver's line for a trial that timed out 4 times ended in `...; raise ti)`."""
    cause = (
        "timed out after 4 attempts at its 1 min time limit (signal 5 s before it), then "
        "submitit gave up requeueing it; raise time_min"
    )
    line = trial_line(replace(_trial("crashed", 4), cause=cause), "acc")
    assert line.endswith(f"9 epochs: crashed ({cause})"), line
    long = trial_line(replace(_trial("crashed", 1), cause="word " * 100), "acc")
    assert long.endswith("word ...)") and len(long) < 320  # cut between words


def test_a_requeued_trials_cost_counts_every_attempt(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial that ran 105 s, was requeued at its time limit and finished in 80 s more cost
    80 s in `runs list` and the recommender's statistics: Slurm's Start and End are its
    latest attempt's. The wait in the queue between the attempts (10 s here) is no cost."""
    now = datetime.now(UTC).replace(microsecond=0)
    t = [slurm_time(now + timedelta(seconds=s)) for s in (0, 105, 115, 195)]
    answer = f"56|REQUEUED|{t[0]}|{t[1]}|0:0\n56|COMPLETED|{t[2]}|{t[3]}|0:0"
    monkeypatch.setattr(cluster_records, "sacct_states", lambda ids, *_: parse_sacct(answer))
    (rid,) = record_submission(reg, backend="slurm", scheduler_ids=["56"], name="t", folder="/")
    refresh_slurm_jobs(reg)
    assert trial_wall_s(reg, rid, None) == 185.0


def test_a_job_cancelled_before_its_next_attempt_started_costs_what_it_ran(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial that ran 105 s, was requeued, and was cancelled 300 s later while its next
    attempt waited in the queue cost 510 s: the row kept the first attempt's Start (the last
    attempt has none), so its span counted that attempt a second time and the wait too."""
    now = datetime.now(UTC).replace(microsecond=0)
    t = [slurm_time(now + timedelta(seconds=s)) for s in (0, 105, 405)]
    first = f"57|REQUEUED|{t[0]}|{t[1]}|0:0"
    answer = first
    monkeypatch.setattr(cluster_records, "sacct_states", lambda ids, *_: parse_sacct(answer))
    (rid,) = record_submission(reg, backend="slurm", scheduler_ids=["57"], name="t", folder="/")
    refresh_slurm_jobs(reg)  # seen requeued: the row has the first attempt's Start
    answer = f"{first}\n57|CANCELLED by 0|None|{t[2]}|0:0"  # as the real sacct prints it
    refresh_slurm_jobs(reg)
    assert trial_wall_s(reg, rid, None) == 105.0


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_real_job_cancelled_while_its_next_attempt_waits_costs_its_first_attempt(
    reg: Registry, tmp_path: Path
) -> None:
    """The same on the real Slurm: a job requeued and held (`scontrol requeuehold`), then
    cancelled while it waits. sacct gives its second attempt no Start (`None`) or, at other
    times, a Start equal to its End (the controller's estimate): either way it ran 0 s."""
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/sh\n#SBATCH --partition=debug\n#SBATCH --time=5\nsleep 300\n")
    submit = ["sbatch", "--parsable", f"--output={tmp_path}/%j.out", str(script)]
    job = subprocess.run(submit, capture_output=True, text=True, check=True).stdout.strip()
    try:
        (rid,) = record_submission(reg, backend="slurm", scheduler_ids=[job], name="t", folder="/")
        wait_until(
            lambda: _controller_state(job) == "RUNNING",
            120,
            interval=0.5,
            what=f"job {job} to start",
        )
        time.sleep(2)
        subprocess.run(["scontrol", "requeuehold", job], check=True)
        wait_until(
            lambda: _controller_state(job) == "PENDING",
            60,
            interval=0.5,
            what=f"job {job} requeued",
        )
        time.sleep(3)  # the wait in the queue: no cost
        subprocess.run(["scancel", job], check=True)
        lines: list[list[str]] = []

        def two_lines() -> bool:
            lines[:] = [x.split("|") for x in _sacct_lines(job)]
            return len(lines) == 2 and lines[1][1].startswith("CANCELLED")

        wait_until(two_lines, 60, interval=0.5, what=f"sacct to give job {job}'s two attempts")
        first_s = datetime.fromisoformat(lines[0][3]) - datetime.fromisoformat(lines[0][2])
        refresh_slurm_jobs(reg)
        assert trial_wall_s(reg, rid, None) == first_s.total_seconds()
    finally:
        subprocess.run(["scancel", job], check=False)


def _controller_state(job: str) -> str:
    """The controller's state of Slurm job ``job`` (empty once it forgot it)."""
    out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], capture_output=True, text=True)
    return out.stdout.strip()


def _sacct_lines(job: str) -> list[str]:
    """sacct's lines for ``job``, one per attempt (``JobID|State|Start|End``)."""
    cmd = ["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State,Start,End", "-j", job]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_a_job_waiting_for_its_next_attempt_counts_its_requeue() -> None:
    """Between a requeue and the next attempt's start `jobs list` said `REQUEUED` with 0
    requeues: sacct has one line (REQUEUED) for the job then."""
    waiting = parse_sacct("56|REQUEUED|2026-12-05T21:46:24|2026-12-05T21:48:08|0:0")["56"]
    assert (waiting.state, waiting.requeue_count, waiting.attempts_run) == ("REQUEUED", 1, 1)
    started = parse_sacct(
        "56|REQUEUED|2026-12-05T21:46:24|2026-12-05T21:48:08|0:0\n"
        "56|RUNNING|2026-12-05T21:48:19|Unknown|0:0"
    )["56"]
    assert (started.state, started.requeue_count, started.attempts_run) == ("RUNNING", 1, 2)
