"""`pomlia fingerprint train|extract`, `pomlia index build`, `pomlia similar` and
`pomlia plot latent` end to end on ingested look-alikes, with jobs on the local executor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pomlia_hpc.cli import app
from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner

pytestmark = pytest.mark.usefixtures("wide_console")


def test_train_extract_index_similar_plot(workspace: Workspace, tmp_path: Path) -> None:
    la = tmp_path / "la"
    flags = ("bloodmnist", "organamnist", "pneumoniamnist")  # only the files added below
    cli_ok("data", "synth", "--scale", "0.005", "--flags", ",".join(flags), str(la))
    for flag in flags:
        cli_ok("data", "add", flag, "--root", str(la))

    # Steps of 8 images, 16 a data set (2 of them held out): the commands are under test, not
    # what the encoder learns.
    res = runner.invoke(app, [
        "fingerprint", "train", "-n", "ae", "bloodmnist", "organamnist", "pneumoniamnist",
        "-d", "2", "--epochs", "1", "--batch-size", "8", "--max-images", "16",
        "--workers", "0", "--objective", "mse",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    text = res.output
    # progress and notes on stderr: stdout holds the result table alone
    assert "encoder ae" in res.stdout and "elapsed" not in res.stdout, res.stdout
    assert "submitted" not in res.stdout and "submitted" in res.stderr
    assert "encoder ae (id 1, objective mse)" in text and "held-out loss" in text
    # Off a terminal (as in a Slurm output file) progress comes as plain lines.
    assert "training 'ae': 1/1 epochs (100%)" in text
    assert re.search(r"training job \d+ \(local \d+\) submitted; its log: \S+\.out", text)
    # the figure's path as well as the checkpoint's (only the checkpoint was printed)
    png = workspace.path("models", "encoders", "ae", "loss_curves.png")
    assert f"loss curves {png}" in text and png.is_file()

    # `extract ... > o 2> e`: the result table in o, the progress lines in e.
    res = runner.invoke(
        app,
        ["fingerprint", "extract", "bloodmnist", "organamnist", "pneumoniamnist",
         "--patch-grid", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout.count("complete") == 3 and "pneumoniamnist" in res.stdout
    assert "] extracting: " in res.stderr and " array tasks (100%)" in res.stderr
    assert "extracting: 0 array tasks," not in res.stderr  # the first line has the total
    assert "extracting" not in res.stdout and "elapsed" not in res.stdout, res.stdout

    res = runner.invoke(app, ["index", "build"])  # the only encoder is the default
    assert res.exit_code == 0, res.output
    assert "index built: Flat" in res.stdout and "generation 1" in res.stdout
    assert "] adding vectors: " in res.stderr and " vectors (100%)" in res.stderr
    assert "adding vectors" not in res.stdout

    text = cli_ok("similar", "bloodmnist", "--k", "2", "--distance", "mmd", "--json")
    found = json.loads(text)
    assert len(found) == 2 and {r["dataset"].split("@")[0] for r in found} == {
        "organamnist",
        "pneumoniamnist",
    }
    text = cli_ok("similar", "bloodmnist", "--images", "7", "--json", "-e", "ae")
    hits = json.loads(text)
    assert len(hits) == 7 and not any(h["dataset"].startswith("bloodmnist@") for h in hits)
    assert {h["split"] for h in hits} <= {"train", "val", "test"}
    # `row` counts the whole store; the row within the split (what a user looks up) was not
    # shown: a test split of 72 images listed row 1065.
    reg = Registry.open(workspace.db_url)
    for h in hits:
        lo, hi = open_store(find_version(reg, h["dataset"]).store_path).split_range(h["split"])
        assert h["split_row"] == h["row"] - lo and 0 <= h["split_row"] < hi - lo, h
    reg.dispose()
    text = " ".join(cli_ok("similar", "bloodmnist", "--images", "3", "-e", "ae").split())
    assert "row in split" in text and "store row" in text
    text = cli_ok("similar", "organamnist")
    assert "combined distance" in text and "explicit" in text
    found = json.loads(cli_ok("similar", "organamnist", "--json"))
    assert found[0]["kind"] == "combined"
    assert {"trimmed", "explicit", "weight"} <= set(found[0]["components"])
    found = json.loads(
        cli_ok("similar", "organamnist", "--patches", "--distance", "frechet", "--json")
    )
    assert len(found) == 2 and found[0]["distance"] <= found[1]["distance"]
    cli_ok("index", "build", "--patches")
    hits = json.loads(cli_ok("similar", "organamnist", "--images", "3", "--patches", "--json"))
    assert len(hits) == 3 and all(h["tile"] in (0, 1, 2, 3) for h in hits)
    fp = json.loads(cli_ok("fingerprint", "show", "pneumoniamnist"))
    assert len(fp["mean"]) == 2 and fp["explicit"] and fp["dataset"].startswith("pneumoniamnist@")

    out = tmp_path / "figs"
    text = cli_ok("plot", "latent", "--out", str(out))
    assert (out / "latent_scatter.png").is_file() and (out / "latent_means.png").is_file()

    # Bad input once an encoder exists: --k 0 was taken for the default 5, and an --out that
    # is a file failed in mkdir with a traceback.
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    for args, message in [
        (("similar", "bloodmnist", "--k", "0"), "--k 0: expected a number of datasets >= 1"),
        (("plot", "latent", "--out", str(afile)), "latent_scatter.png' cannot be written"),
    ]:
        res = runner.invoke(app, list(args))
        assert isinstance(res.exception, PomliaError), (args, res.output, res.exception)
        assert message in str(res.exception), (args, str(res.exception))
    assert afile.read_text() == "mine"


def test_errors_are_one_line_exit_2_or_4(tmp_path: Path) -> None:
    # In-process: the library raises one PomliaError with the message ...
    # A workspace made by `pomlia init`, so each command reaches its own error.
    assert runner.invoke(app, ["--home", str(tmp_path / "ws"), "init"]).exit_code == 0
    for args, message in [
        (("similar", "pathmnist"), "no encoder is registered"),
        (("fingerprint", "train", "-n", "ae", "pathmnist"), "dataset 'pathmnist' not found"),
        (("fingerprint", "train", "-n", "ae", "x", "--size", "32"), "option '--size': expected"),
        (("fingerprint", "extract", "-e", "ae", "pathmnist"), "encoder 'ae' not found; known:"),
        (("index", "build", "-e", "ae", "--metric", "cos"), "expected 'l2' or 'ip'"),
        (("index", "build", "-e", "ae"), "encoder 'ae' not found; known:"),
        (("plot", "latent", "-e", "ae"), "encoder 'ae' not found; known:"),
        (("similar", "x", "--split", "test"), "option '--split' needs --images N"),
        (("similar", "x", "--images", "5", "--distance", "mmd"), "option '--distance' applies"),
        (("similar", "x", "--images", "5", "--k", "3"), "option '--k' applies"),
        (
            ("fingerprint", "extract", "-e", "ae", "x", "--shards", "2", "--shard-rows", "9"),
            "--shards 2 and --shard-rows 9: expected at most one",
        ),
    ]:
        res = runner.invoke(app, ["--home", str(tmp_path / "ws"), *args])
        assert isinstance(res.exception, PomliaError), (args, res.output, res.exception)
        assert message in str(res.exception), (args, str(res.exception))
        # No progress line ("0 array tasks, 0s elapsed") before the refusal.
        assert "elapsed" not in res.output, (args, res.output)
    # ... which the console script prints as one line, exit status 2.
    env = {**os.environ, "POMLIA_HOME": str(tmp_path / "ws")}
    proc = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "similar", "pathmnist"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 4 and "Traceback" not in proc.stderr  # nothing to find
    assert proc.stderr.startswith("error: no encoder is registered"), proc.stderr
    # Shard counts, sizes and CPUs below 1 are usage errors (exit 2), not silent defaults.
    for cmd, option in (
        (["extract", "x"], "--shards"),
        (["extract", "x"], "--shard-rows"),
        (["extract", "x"], "--cpus"),
        (["train", "-n", "ae", "x"], "--cpus"),
    ):
        res = runner.invoke(app, ["--home", str(tmp_path / "ws"), "fingerprint", *cmd, option, "0"])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and f"{option} 0: expected a whole number >= 1" in text, text


@pytest.mark.parametrize("name", ["x.png", "fig.PDF", "a/b.svg"])
def test_plot_out_naming_an_image_file_is_refused(
    workspace: Workspace, tmp_path: Path, name: str
) -> None:
    """`plot latent --out x.png` made a folder named x.png with the figures in it: --out is a
    folder (the command writes up to two PNGs), so an image file name is refused up front
    with one line saying so, and nothing is made."""
    res = runner.invoke(app, ["plot", "latent", "--out", str(tmp_path / name)])
    assert isinstance(res.exception, PomliaError), res.output
    said = str(res.exception)
    assert "is an image file name, but --out is a folder" in said, said
    assert "latent_scatter.png" in said and "latent_means.png" in said, said
    assert not (tmp_path / name).exists() and not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", float("inf")), ("lr", 1e308), ("num_workers", 100_000)],
)
def test_training_settings_past_any_use_are_refused(field: str, value: float) -> None:
    """`--lr inf` trained NaN weights that were registered and broke `similar` (exit 70);
    `--workers 100000` forked DataLoader workers of ~0.5 GB each until memory ran out."""
    from pydantic import ValidationError

    from pomlia_hpc.fingerprint.train import TrainConfig

    with pytest.raises(ValidationError, match=field):
        TrainConfig(**{field: value})
