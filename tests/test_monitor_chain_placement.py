"""A monitoring chain's jobs run where its cluster profile says (partition, account, QOS), on
the real single-node Slurm: they are batch scripts, not executor jobs, and asked for none."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cluster.batch import cancel_named, jobs_named
from pomlia_hpc.config import config_dir
from pomlia_hpc.errors import ClusterError
from pomlia_hpc.monitor.placement import SETTING, recorded_args
from pomlia_hpc.monitor.schedule import job_name, resubmit
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.monitor_support import demo_model

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]
runner = CliRunner()


def _profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partition: str) -> None:
    """The workspace's cluster profile: slurm-local with ``partition``."""
    data = yaml.safe_load((config_dir() / "cluster" / "slurm-local.yaml").read_text())
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({**data, "partition": partition}))
    monkeypatch.setenv("POMLIA_CLUSTER", str(path))


def test_a_chain_asks_for_its_profiles_partition(
    tmp_path: Path, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile's partition that does not exist is sbatch's refusal, so it was asked for
    (the chain was queued on the cluster's default partition instead)."""
    _profile(tmp_path, monkeypatch, "no-such-partition")
    demo_model(reg, workspace, name="blood-placed", n_ref=50)
    try:
        res = runner.invoke(app, ["monitor", "schedule", "blood-placed", "--at", "02:30"])
        assert isinstance(res.exception, ClusterError), (res.output, res.exception)
        assert "Invalid partition" in str(res.exception)
        assert not workspace.path("jobs", "monitor", "blood-placed", "schedule.env").exists()
        assert jobs_named(job_name("blood-placed")) == []
    finally:
        runner.invoke(app, ["monitor", "unschedule", "blood-placed"])


def test_every_run_of_a_chain_and_its_cron_lines_ask_for_the_same_partition(
    tmp_path: Path, workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _profile(tmp_path, monkeypatch, "debug")
    demo_model(reg, workspace, name="blood-placed", n_ref=50)
    name = job_name("blood-placed")
    conf = workspace.path("jobs", "monitor", "blood-placed", "schedule.env")
    try:
        res = runner.invoke(app, ["monitor", "schedule", "blood-placed", "--at", "02:30"])
        assert res.exit_code == 0, (res.output, res.exception)
        out = " ".join(res.output.split())
        assert "--partition=debug" in out.split("#SCRON", 1)[0]  # the cron line
        assert "#SCRON --job-name=pomlia-monitor-blood-placed" in out
        assert "--partition=debug" in out.split("#SCRON", 1)[1]
        assert recorded_args(conf) == ["--partition=debug"]
        # The next run, submitted from a job of the chain, asks for what the settings record
        # (a job of the chain may see another profile than the one it was scheduled with).
        cancel_named(name)
        text = conf.read_text().replace("--partition=debug", "--partition=no-such-partition")
        conf.write_text(text)
        monkeypatch.setenv("POMLIA_MONITOR_RESUBMIT_TRIES", "1")
        with pytest.raises(ClusterError, match="Invalid partition"):
            resubmit(lambda: reg, workspace, "blood-placed", every="1d", at="02:30")
        assert f"export {SETTING}=" in text
    finally:
        runner.invoke(app, ["monitor", "unschedule", "blood-placed"])
    assert jobs_named(name) == []
