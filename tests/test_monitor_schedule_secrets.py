"""`monitor schedule` keeps the registry password private and prints lines that run as shown:
the chain's settings file (which holds the URL) is the owner's alone; the cron and scrontab
lines name the registry as a `POMLIA_DB_URL` environment line with the password as `***`
(not `--db-url` on a command line, which every user sees in `ps`), carry `--on-alarm`, and
quote every path (a workspace under a folder with a space and a `$`)."""

from __future__ import annotations

import dataclasses
import shlex
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import QueuedJob
from pomlia_hpc.errors import InputError
from pomlia_hpc.monitor import schedule as schedule_mod
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model

SECRET = "s3cr3t-pw"
PG = f"postgresql+psycopg://pomlia:{SECRET}@db.example:5432/reg?options=-csearch_path%3Dx"
SHOWN = "POMLIA_DB_URL=postgresql+psycopg://pomlia:***@db.example:5432/reg"


@pytest.fixture
def odd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A workspace whose real path holds a space and a `$` (selected through a link: the CLI
    expands `$` in POMLIA_HOME, the link resolves to the odd path), on a Slurm profile whose
    sbatch and squeue are stand-ins (the chain's job is recorded, not run)."""
    real = tmp_path / "sp ace $x" / "home"
    link = tmp_path / "link"
    real.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    ws = Workspace(home=real, db_url=f"sqlite:///{real / 'registry.db'}", cluster_profile="x")
    ws.create()
    monkeypatch.setenv("POMLIA_HOME", str(link))
    monkeypatch.setenv("POMLIA_CLUSTER", "slurm-local")
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)

    def none_queued(name: str, script: Path | None = None) -> list[QueuedJob]:
        return []

    monkeypatch.setattr(schedule_mod, "submit_script", lambda *a, **k: "77")
    monkeypatch.setattr(schedule_mod, "jobs_named", none_queued)
    return dataclasses.replace(ws, cluster_profile="slurm-local")


@pytest.fixture
def odd_reg(odd_home: Workspace) -> Registry:
    reg = Registry.open(odd_home.db_url)
    demo_model(reg, odd_home, n_ref=50)
    return reg


def words(line: str) -> list[str]:
    """A crontab line's command as the shell splits it (the five time fields dropped)."""
    return shlex.split(line.split(" ", 5)[5].replace("\\%", "%"))


def test_the_settings_file_is_created_private(
    odd_home: Workspace, odd_reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """schedule.env (sourced by every job of the chain) held the registry URL with its
    password, mode 0644. It is made 0600, also when a permissive umask is in force."""
    import os

    old = os.umask(0o002)
    try:
        res = schedule_mod.schedule(
            odd_reg, dataclasses.replace(odd_home, db_url=PG), "blood", at="02:00"
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(res.conf.stat().st_mode) == 0o600
    assert SECRET in res.conf.read_text()  # the jobs need it; only the owner can read it


def test_printed_lines_quote_paths_and_carry_the_registry_and_alarm_action(
    odd_home: Workspace, odd_reg: Registry
) -> None:
    ws = dataclasses.replace(odd_home, db_url=PG)
    res = schedule_mod.schedule(odd_reg, ws, "blood", at="02:30", on_alarm="pomlia loop run b")
    assert res.cron is not None and res.scrontab is not None
    assert SECRET not in res.cron + res.scrontab
    # cron: the chain's script, which sources the settings (registry, alarm action).
    assert res.cron.startswith("30 2 * * * ")
    cron = words(res.cron)
    assert cron[:3] == [f"POMLIA_MONITOR_CONF={res.conf}", "POMLIA_MONITOR_ONCE=1", "sbatch"]
    assert cron[-1] == str(res.script) and "sp ace $x" in cron[-1]
    # scrontab: the registry as an environment line, then the run with the alarm action.
    env, scron, line = res.scrontab.splitlines()
    assert env.startswith(SHOWN) and scron.startswith("#SCRON --job-name=pomlia-monitor-blood")
    # what the chain's script asks for (a scrontab job runs the monitor without the script)
    assert "--cpus-per-task=2 --mem=4G --time=01:00:00 --output=" in scron, scron
    run = shlex.split(line.split(" ", 5)[5])
    assert run[1:5] == ["-m", "pomlia_hpc", "--home", str(ws.home)]
    assert run[5:] == [
        "monitor",
        "run",
        "blood",
        "--window",
        "1d",
        "--on-alarm",
        "pomlia loop run b",
    ]
    assert "--db-url" not in res.scrontab


def test_cli_prints_quoted_lines_for_a_home_with_a_space_and_a_dollar(
    odd_home: Workspace, odd_reg: Registry
) -> None:
    res = CliRunner().invoke(app, ["monitor", "schedule", "blood", "--at", "02:30"])
    assert res.exit_code == 0, (res.output, res.exception)
    lines = [line.strip() for line in res.output.splitlines()]
    (cron,) = [line for line in lines if line.startswith("30 2 * * * POMLIA_MONITOR_CONF=")]
    conf = odd_home.path("jobs", "monitor", "blood", "schedule.env")
    assert words(cron)[0] == f"POMLIA_MONITOR_CONF={conf}", cron
    assert words(cron)[-1] == str(conf.with_name("monitor.sbatch")), cron
    (scron,) = [line for line in lines if line.startswith("30 2 * * * ") and "monitor run" in line]
    assert words(scron)[4] == str(odd_home.home), scron  # --home's value, one word
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


def test_without_slurm_the_hint_masks_the_password_and_uses_the_environment(
    odd_home: Workspace, odd_reg: Registry
) -> None:
    """The hint printed the URL with its password and put it on the cron command line as
    --db-url (visible in ps to every user of the machine)."""
    ws = dataclasses.replace(odd_home, db_url=PG, cluster_profile="local")
    with pytest.raises(InputError) as err:
        schedule_mod.schedule(odd_reg, ws, "blood", at="02:30", on_alarm="pomlia loop run b")
    text = str(err.value)
    assert SECRET not in text and "--db-url" not in text.split("(the registry")[0]
    lines = [line.strip() for line in text.splitlines()]
    (env,) = [line for line in lines if line.startswith("POMLIA_DB_URL=")]
    assert env.startswith(SHOWN + "?"), env
    (cron,) = [line for line in lines if line.startswith("30 2 * * * ")]
    assert words(cron)[4] == str(ws.home) and words(cron)[-2:] == [
        "--on-alarm",
        "pomlia loop run b",
    ]
    assert "password is shown as ***" in text and "POMLIA_DB_URL" in text
    assert not ws.path("jobs", "monitor", "blood", "schedule.env").exists()


def test_the_default_registry_needs_no_environment_line(
    odd_home: Workspace, odd_reg: Registry
) -> None:
    ws = dataclasses.replace(odd_home, cluster_profile="local")
    with pytest.raises(InputError) as err:
        schedule_mod.schedule(odd_reg, ws, "blood", at="02:30")
    assert "POMLIA_DB_URL" not in str(err.value)
