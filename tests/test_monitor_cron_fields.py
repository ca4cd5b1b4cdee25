"""The cron and scrontab lines that `monitor schedule` prints run when the chain runs: a weekly
line named Sunday whatever day the chain runs on, and their logs went to cron's working
directory (the user's home) instead of the chain's folder."""

from __future__ import annotations

from datetime import timedelta

from pomlia_hpc.monitor.cronlines import cron_lines, cron_run_line, next_begin
from pomlia_hpc.workspace import Workspace


def test_a_weekly_line_runs_on_the_chain_s_weekday(workspace: Workspace) -> None:
    week = timedelta(weeks=1)
    first = next_begin("02:00", week)
    line = cron_run_line(workspace, "blood", at="02:00", every=week, window="1w")
    assert line is not None
    assert line.split()[:5] == ["0", "2", "*", "*", str(first.isoweekday() % 7)], line
    daily = cron_run_line(workspace, "blood", at="02:00", every=timedelta(days=1), window="1d")
    assert daily is not None and daily.startswith("0 2 * * * "), daily


def test_the_cron_and_scrontab_jobs_log_beside_the_chain_s(workspace: Workspace) -> None:
    folder = workspace.path("jobs", "monitor", "blood")
    cron, scron = cron_lines(
        "02:30",
        timedelta(days=1),
        "pomlia-monitor-blood",
        folder / "schedule.env",
        folder / "monitor.sbatch",
        workspace,
        "blood",
        "1d",
        None,
    )
    assert cron is not None and scron is not None
    # cron reads % as a newline: escaped there with a backslash, for sbatch to see %j.
    assert f" --output={folder}/slurm-\\%j.out " in cron, cron
    assert f"--output={folder}/slurm-%j.out" in scron.splitlines()[0], scron
