"""`pomlia serve --log-retention-days D` beside the monitor chains of its model or slot: a
retention shorter than a chain's window deleted the files each nightly run tests, and nothing
said so; one shorter than the window plus the label look-back (7 days) deleted the predictions
of the labels that come late. The first is refused; the others (and one shorter than the window
plus the look-back plus a period) are warned about."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError
from pomlia_hpc.monitor.keep import check_retention
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.workspace import Workspace

runner = CliRunner()


def chain(home: Path, key: str, window: str, every: str = "1d") -> None:
    """The settings `monitor schedule` writes for a chain (the keys this check reads)."""
    folder = home / "jobs" / "monitor" / key
    folder.mkdir(parents=True)
    (folder / "schedule.env").write_text(
        f"# written by `pomlia monitor schedule`\nexport MODEL={key}\n"
        f"export EVERY={every}\nexport AT=02:00\nexport WINDOW={window}\n"
    )


def test_retention_against_the_chains_of_a_model_and_its_slot(tmp_path: Path) -> None:
    ws = Workspace(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'r.db'}", cluster_profile="local")
    assert check_retention(ws, "blood", "pneu", 1) == []  # no chain: nothing to say
    chain(tmp_path, "slot:pneu", "7d")
    with pytest.raises(InputError, match=r"monitor chain of 'slot:pneu' \(window 7 day"):
        check_retention(ws, "blood", "pneu", 3)
    (late,) = check_retention(ws, "blood", "pneu", 13.5)  # the window, not its labels'
    assert "looked up 7 day(s) before the window" in late
    assert "more than 6.5 day(s) late are deleted" in late and "15 day(s)" in late
    (warning,) = check_retention(ws, "blood", "pneu", 14.5)
    assert "held in the queue" in warning and "15 day(s)" in warning
    assert check_retention(ws, "blood", "pneu", 15) == []
    assert check_retention(ws, "blood", None, 3) == []  # another slot's chain


def test_serve_refuses_a_retention_shorter_than_the_chain_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = cached_demo_bundle(tmp_path / "cache", num_classes=4)
    home = tmp_path / "home"
    chain(home, "demo", "14d")
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    # The folder the chain reads, named as a deployment's serve.sbatch names it (--log-dir).
    logs = home / "logs" / "predictions" / "demo"
    # An address no server can bind: without the check the command fails there, not hangs.
    args = ["--log-retention-days", "3", "--log-dir", str(logs), "--host", "999.0.0.1"]
    res = runner.invoke(app, ["serve", str(bundle), *args])
    assert isinstance(res.exception, InputError), res.output
    said = str(res.exception)
    assert "monitor chain of 'demo' (window 14 day(s)" in said and "at least 22 day(s)" in said
    assert list(logs.glob("*.jsonl")) == []


def test_a_log_no_chain_reads_may_be_kept_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server logging outside the workspace's log folder (a staging server's --log-dir) was
    refused for a chain of its model's name, though the monitor never reads that folder."""
    bundle = cached_demo_bundle(tmp_path / "cache", num_classes=4)
    home = tmp_path / "home"
    chain(home, "demo", "14d")
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    args = [
        "--log-retention-days",
        "3",
        "--log-dir",
        str(tmp_path / "staging"),
        "--host",
        "999.0.0.1",
    ]
    res = runner.invoke(app, ["serve", str(bundle), *args])
    assert res.exit_code != 0  # the address, not the retention
    assert "monitor chain" not in f"{res.output}{res.exception}", res.output


def test_serve_warns_of_a_retention_that_deletes_the_predictions_of_late_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nightly chain of a day's window and a retention of two days: each run looks up the
    predictions of its labels up to 7 days before the window, and those of labels that came
    days late were deleted (counted as unknown, never tested); it is said. Refused, a server
    kept to a short retention on purpose could not start beside a chain at all (its runs
    take no shorter look-back, and no `monitor schedule --window` gets below 7 days), and a
    server restarted with the retention it had run with was refused."""
    bundle = cached_demo_bundle(tmp_path / "cache", num_classes=4)
    home = tmp_path / "home"
    chain(home, "demo", "1d")
    monkeypatch.setenv("POMLIA_HOME", str(home))
    monkeypatch.delenv("POMLIA_DB_URL", raising=False)
    logs = home / "logs" / "predictions" / "demo"
    args = ["--log-retention-days", "2", "--log-dir", str(logs), "--host", "999.0.0.1"]
    res = runner.invoke(app, ["serve", str(bundle), *args])
    said = " ".join(res.output.split())  # rich wraps the warning
    assert not isinstance(res.exception, InputError), res.exception
    assert res.exit_code != 0  # the address, not the retention
    assert "looked up 7 day(s) before the window" in said, said
    assert "more than 1 day(s) late are deleted" in said and "9 day(s)" in said
