"""The pipeline file (strict spec, one-line errors), stage keys and the planner; no jobs run."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from pomlia_hpc.data.medmnist_info import flag_info
from pomlia_hpc.errors import ConfigError, NotFoundError
from pomlia_hpc.pipeline.runner import make_plan
from pomlia_hpc.pipeline.spec import load_pipeline, parse_pipeline
from pomlia_hpc.pipeline.stage import (
    PlannedJob,
    Stage,
    StageContext,
    is_fresh,
    run_stage,
    stage_key,
)
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import dry_run

REPO = Path(__file__).resolve().parents[1]
MINIMAL: dict[str, Any] = {"name": "p", "datasets": [{"name": "a", "medmnist": "bloodmnist"}]}
#: A task and its study: what the export, deploy and monitor sections need.
LEARN: dict[str, Any] = {"tasks": [{"name": "t", "dataset": "a"}], "automl": {"trials": 1}}


def _parse(data: dict[str, Any]) -> Any:
    return parse_pipeline(data, "p.yaml", Path("/data"))


@pytest.mark.parametrize("name", ["lookalikes", "medmnist2d", "medmnist2d-default"])
def test_shipped_pipelines_parse(name: str) -> None:
    spec = load_pipeline(REPO / "configs" / "pipelines" / f"{name}.yaml")
    assert spec.name == name and len(spec.datasets) == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"encoder": {"name": "e", "epoch": 3}},
            "p.yaml: unknown key 'encoder.epoch'; valid keys:",
        ),
        ({"datasets": [{"name": "a", "medmnist": "x", "sise": 28}]}, "'datasets.0.sise'"),
        ({"encoder": {"name": "e", "epochs": 0}}, "bad value for 'encoder.epochs'"),
        ({"encoder": {"name": "e", "latent_dim": "two"}}, "bad value for 'encoder.latent_dim'"),
        ({"datasets": [{"name": "a"}]}, "needs exactly one of medmnist, file, folder"),
        ({"tasks": [{"name": "t", "dataset": "zz"}]}, "dataset 'zz' is not declared"),
        ({"automl": {}}, "section 'automl' needs at least one entry under 'tasks'"),
        # refused by its study only, as "--seed -1", after the stages before it had run
        ({**LEARN, "automl": {"seed": -1}}, "bad value for 'automl.seed'"),
        ({**LEARN, "automl": {"seed": 2**32}}, "bad value for 'automl.seed'"),
        ({**LEARN, "automl": {"trials": 10**20}}, "bad value for 'automl.trials'"),
        ({"index": {}}, "section 'index' needs an 'encoder' section"),
        ({"execution": {"mode": "dag"}}, "bad value for 'execution.mode'"),
        ({"monitor": {"at": "25:00"}}, "bad value for 'monitor.at'"),
        # YAML's unquoted 2:00 is 120: said as such, not "expected text (got 120)"
        ({"monitor": {"at": 120}}, "read as the number 120 (YAML takes an unquoted H:MM as"),
        ({"monitor": {"window": "0h"}}, "bad value for 'monitor.window'"),  # was a cron line
        ({"name": "has space"}, "bad value for 'name'"),
        # A stage turned off, which an enabled one needs: that one failed after AutoML ran.
        (
            {**LEARN, "export": {"enabled": False}, "deploy": {}},
            "section 'deploy' needs the 'export' stage, which 'export.enabled: false' turns off",
        ),
        (
            {**LEARN, "export": {}, "deploy": {"enabled": False}, "monitor": {}},
            "section 'monitor' needs the 'deploy' stage, which 'deploy.enabled: false' turns off",
        ),
    ],
)
def test_bad_file_is_one_error_naming_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse({**MINIMAL, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("automl", "use_encoder"),
    [
        ({}, True),  # no archs named: the encoder's ResNet-18 trials are offered
        ({"archs": ["small_cnn"]}, False),  # the user's archs are respected
        ({"archs": ["small_cnn"], "use_encoder": True}, True),  # unless they ask for both
        ({"use_encoder": False}, False),
    ],
)
def test_named_archs_leave_out_encoder_trials(automl: dict[str, Any], use_encoder: bool) -> None:
    """`automl.archs: [small_cnn]` still added resnet18 trials from the encoder (use_encoder
    defaulted to true); it defaults to true only when archs is left out now."""
    tasks = [{"name": "t", "dataset": "a", "metric": "auc"}]
    encoder = {"name": "e"}  # asking for encoder trials needs one
    spec = _parse({**MINIMAL, "tasks": tasks, "automl": automl, "encoder": encoder})
    assert spec.automl.use_encoder is use_encoder


def test_relative_paths_are_relative_to_the_file() -> None:
    spec = _parse({**MINIMAL, "datasets": [{"name": "a", "file": "x/a.npz"}]})
    assert spec.path("x/a.npz") == Path("/data/x/a.npz")
    assert spec.path("/abs/a.npz") == Path("/abs/a.npz")


def test_cli_bad_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "encoder": {"name": "e", "epoch": 3}}))
    proc = dry_run(bad, tmp_path / "ws")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "unknown key 'encoder.epoch'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_malformed_yaml_or_a_folder_is_one_line(tmp_path: Path) -> None:
    """PyYAML's parse error spans lines (it quotes the source): the message was four lines; a
    folder given as the file was said not to exist."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ndatasets: [a, b\nencoder: {}\n")
    for path, message in (
        (broken, "broken.yaml: not valid YAML (line 3, column 8: expected ',' or ']'"),
        (tmp_path, f"pipeline file {tmp_path} is a folder: expected a YAML file"),
    ):
        proc = dry_run(path, tmp_path / "ws")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"encoder": {"name": "e", "latent_dim": True}}, "encoder.latent_dim"),
        ({"tasks": [{"name": "t", "dataset": "a"}], "automl": {"trials": True}}, "automl.trials"),
        ({"encoder": {"name": "e", "lr": True}}, "encoder.lr"),
        ({"execution": {"resources": {"mem_gb": False}}}, "execution.resources.mem_gb"),
    ],
)
def test_true_is_not_a_number(change: dict[str, Any], key: str) -> None:
    """`latent_dim: true` trained a d=1 encoder and `trials: true` ran one trial (pydantic's
    lax true -> 1)."""
    with pytest.raises(ConfigError) as err:
        _parse({**MINIMAL, **change})
    text = str(err.value)
    assert text.startswith(f"p.yaml: bad value for '{key}': expected a ") and "\n" not in text
    assert text.endswith(("(got true)", "(got false)")), text
    # A float YAML 1.1 reads as text is still a number.
    assert _parse({**MINIMAL, "encoder": {"name": "e", "lr": "1e-3"}}).encoder.lr == 1e-3


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """PyYAML kept the last of `latent_dim: 4` and `latent_dim: 9` silently."""
    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: p\ndatasets:\n  - {name: a, medmnist: bloodmnist}\nencoder:\n  name: e\n"
        "  latent_dim: 4\n  epochs: 1\n  latent_dim: 9\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(err.value) == (
        f"{path}: not valid YAML (line 8, column 3: key 'latent_dim' is given twice in one "
        "mapping (line 6, column 3 and line 8, column 3); expected each key once)"
    )
    proc = dry_run(path, tmp_path / "ws")
    assert proc.returncode == 2 and "key 'latent_dim' is given twice" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_dry_run_refuses_a_missing_source_or_a_bad_option(tmp_path: Path) -> None:
    """`--dry-run` showed `data: run` (exit 0) for a missing file or `val_fraction: 2`; the
    error came only from the real run. (The fraction's range is the data room's check; the
    dry run shows its refusal with the file and entry.)"""
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    env = {"POMLIA_HOME": str(tmp_path / "ws"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "pomlia_hpc", "init"], env=env, check=True)
    for data, message in (
        ({"name": "a", "file": str(tmp_path / "nope.npz")}, "nope.npz' does not exist"),
        (
            {"name": "a", "folder": str(folder), "options": {"val_fraction": 2}},
            "datasets.0 (data set 'a'): image folder",
        ),
    ):
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"name": "p", "datasets": [data]}))
        proc = dry_run(path, tmp_path / "ws")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


# -- stage keys, skipping, resuming ----------------------------------------------------------


def _toy(name: str, needs: tuple[str, ...], calls: list[str], fail: bool = False) -> Stage:
    def run(ctx: StageContext) -> dict[str, Any]:
        calls.append(name)
        if fail:
            raise RuntimeError(f"{name} broke")
        up = [ctx.outputs(n) for n in needs]
        return {"value": ctx.spec.encoder.epochs if ctx.spec.encoder else 0, "up": up}

    return Stage(
        name=name,
        needs=needs,
        summary=name,
        enabled=lambda s: True,
        section=lambda s: s.encoder,
        run=run,
        jobs=lambda s, p: [],
    )


@pytest.fixture
def ctx(workspace: Workspace, reg: Registry) -> StageContext:
    return StageContext(_parse({**MINIMAL, "encoder": {"name": "e", "epochs": 2}}), workspace, reg)


def test_stage_runs_once_then_is_skipped_until_its_inputs_change(ctx: StageContext) -> None:
    calls: list[str] = []
    a, b = _toy("a", (), calls), _toy("b", ("a",), calls)
    assert stage_key(ctx, b) is None  # upstream not finished: no key yet
    assert [run_stage(ctx, a), run_stage(ctx, b)] == ["done", "done"]
    assert [run_stage(ctx, a), run_stage(ctx, b)] == ["skipped", "skipped"]
    assert calls == ["a", "b"]
    # A changed section changes the key: a runs again; its outputs change, so b runs too.
    ctx.spec = _parse({**MINIMAL, "encoder": {"name": "e", "epochs": 3}})
    assert not is_fresh(ctx, a)
    assert [run_stage(ctx, a), run_stage(ctx, b)] == ["done", "done"]
    assert calls == ["a", "b", "a", "b"]


def test_a_stage_that_runs_again_says_why(ctx: StageContext) -> None:
    """A stage that ran before said only "running: <summary>", as on its first run; it says
    what changed (or that it failed) now."""
    calls: list[str] = []
    logged: list[str] = []
    ctx.log = logged.append
    a, b = _toy("a", (), calls), _toy("b", ("a",), calls)
    run_stage(ctx, a), run_stage(ctx, b)
    assert "[a] running: a" in logged and "[b] running: b" in logged
    logged.clear()
    ctx.spec = _parse({**MINIMAL, "encoder": {"name": "e", "epochs": 3}})
    run_stage(ctx, a), run_stage(ctx, b)
    assert logged[0] == "[a] running again, since its part of the pipeline file ('a') changed: a"
    assert logged[2] == (
        "[b] running again, since its part of the pipeline file ('b') changed; the outputs of "
        "a changed: b"
    )
    logged.clear()
    broken = _toy("a", (), calls, fail=True)
    ctx.spec = _parse({**MINIMAL, "encoder": {"name": "e", "epochs": 4}})
    with pytest.raises(RuntimeError):
        run_stage(ctx, broken)
    ctx.log = logged.append
    logged.clear()
    run_stage(ctx, a)
    assert logged[0] == "[a] running again, since its last run failed: a"


def test_same_upstream_outputs_leave_downstream_skipped(ctx: StageContext) -> None:
    calls: list[str] = []
    a, b = _toy("a", (), calls), _toy("b", ("a",), calls)
    run_stage(ctx, a), run_stage(ctx, b)
    # a is forced to run again (record removed) and produces the same outputs: b stays fresh.
    ctx.record_path("a").unlink()
    assert run_stage(ctx, a) == "done" and is_fresh(ctx, b)
    assert run_stage(ctx, b) == "skipped"


def test_a_failed_stage_is_recorded_and_resumed(ctx: StageContext) -> None:
    calls: list[str] = []
    a = _toy("a", (), calls)
    broken = _toy("b", ("a",), calls, fail=True)
    run_stage(ctx, a)
    with pytest.raises(RuntimeError, match="b broke"):
        run_stage(ctx, broken)
    rec = ctx.record("b")
    assert rec is not None and rec["status"] == "failed" and "b broke" in rec["error"]
    # The next run skips a and runs b again.
    fixed = _toy("b", ("a",), calls)
    assert [run_stage(ctx, a), run_stage(ctx, fixed)] == ["skipped", "done"]
    assert calls == ["a", "b", "b"]


def test_deleted_outputs_make_a_stage_run_again(ctx: StageContext) -> None:
    calls: list[str] = []
    there = {"yes": True}
    a = replace(_toy("a", (), calls), still_there=lambda c, o: there["yes"])
    run_stage(ctx, a)
    there["yes"] = False
    assert run_stage(ctx, a) == "done" and calls == ["a", "a"]


# -- the plan (dry run) ----------------------------------------------------------------------


def test_plan_of_the_paper_pipeline_on_haicore(workspace: Workspace, reg: Registry) -> None:
    spec = load_pipeline(REPO / "configs" / "pipelines" / "medmnist2d.yaml")
    plan = make_plan(StageContext(spec, workspace, reg), "haicore")
    assert plan.mode == "chain"
    assert [sp.stage.name for sp in plan.stages] == [
        "data",
        "encoder",
        "extract",
        "index",
        "figures",
    ]
    assert all(sp.action == "run" for sp in plan.stages)
    (train,) = plan.stages[1].jobs
    # The 12 train splits of MedMNIST 2D, 10 epochs at the 8323 images/s the mse objective
    # ran at on one H200 (the file's `estimate:`; the default is the contrastive objective's).
    n_train = sum(flag_info(d.medmnist or "").n_samples["train"] for d in spec.datasets)
    assert n_train == 518_175
    assert train.resources.gpus_per_node == 1
    assert train.hours == pytest.approx(n_train * 10 / 8323 / 3600)
    (ex,) = plan.stages[2].jobs
    # 708,069 images: 16 shards of at most 100,000 (tissuemnist's 236,386 in 3), packed into
    # tasks of at most 100,000 as extraction packs them; shards end on chunk boundaries.
    assert (ex.count, ex.bound) == (11, "about")
    assert plan.gpu_hours == pytest.approx(train.gpu_hours + ex.gpu_hours)
    assert plan.driver is not None and plan.driver.resources.gpus_per_node == 0


def test_estimate_defaults_are_the_gpu_checks_figures() -> None:
    """The dry run's encoder and extraction throughputs are the H200 figures of record in
    docs/BENCHMARKS.md ("GPU check"), not the older guesses (6000 and 20000 img/s, which
    halved the encoder's GPU-hours)."""
    import re

    from pomlia_hpc.pipeline.spec import Assumptions

    text = (REPO / "docs" / "BENCHMARKS.md").read_text()
    section = text[text.index("## GPU check") : text.index("### AutoML trials on the GPU")]

    def measured(step: str) -> float:
        found = re.search(rf"^\s+{re.escape(step)}\s+(\d+) img/s", section, re.MULTILINE)
        assert found, step
        return float(found.group(1))

    defaults = Assumptions()
    assert defaults.train_images_per_s == measured("contrastive objective epoch")
    assert defaults.extract_images_per_s == measured("extraction (cuda)")
    guide = " ".join((REPO / "docs" / "guide" / "pipeline.md").read_text().split())
    assert "measured on one NVIDIA H200" in guide


def test_plan_counts_gpu_hours_only_for_gpu_jobs(workspace: Workspace, reg: Registry) -> None:
    spec = load_pipeline(REPO / "configs" / "pipelines" / "lookalikes.yaml")
    plan = make_plan(StageContext(spec, workspace, reg), "local")
    assert plan.mode == "in-process" and plan.driver is None
    assert plan.gpu_hours == 0
    assert any(isinstance(j, PlannedJob) and j.hours for sp in plan.stages for j in sp.jobs)


def test_job_dependencies_need_slurm() -> None:
    from pomlia_hpc.cluster.resources import after_ok_parameters
    from pomlia_hpc.config import load_cluster_profile

    with pytest.raises(ConfigError, match="need the slurm backend"):
        after_ok_parameters(load_cluster_profile("local"), ["12"])
    params = after_ok_parameters(load_cluster_profile("slurm-local"), ["12", "13"])
    extra = params["slurm_additional_parameters"]
    # export=ALL: a site's SBATCH_EXPORT=NONE must not start the job without its environment
    assert extra == {"dependency": "afterok:12:13", "kill-on-invalid-dep": "yes", "export": "ALL"}


def test_status_by_name_and_by_file_agree_on_staleness(
    workspace: Workspace, tmp_path: Path, wide_console: None
) -> None:
    """`pipeline status NAME` compared the records with the spec as it last ran (all done)
    while `pipeline status FILE` compared them with the edited file (data stale): both now
    compare with the file as it is, by one code path."""
    from typer.testing import CliRunner

    from pomlia_hpc.cli import app
    from tests.fixtures.factories import tiny_npz

    tiny_npz(tmp_path / "a.npz")
    file = tmp_path / "p.yaml"
    data = {"name": "p", "datasets": [{"name": "a", "file": "a.npz"}]}
    file.write_text(yaml.safe_dump(data))
    cli = CliRunner()
    assert cli.invoke(app, ["pipeline", "run", str(file)]).exit_code == 0

    def states(arg: str) -> str:
        res = cli.invoke(app, ["pipeline", "status", arg])
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split())

    assert "│ data │ done │" in states("p") and "│ data │ done │" in states(str(file))
    data["datasets"][0]["options"] = {"task_type": "multi-class"}  # type: ignore[index]
    file.write_text(yaml.safe_dump(data))
    by_name, by_file = states("p"), states(str(file))
    assert "│ data │ stale │" in by_name and "│ data │ stale │" in by_file
    assert by_name == by_file


def test_status_by_name_and_by_file_agree_before_any_run(
    workspace: Workspace, tmp_path: Path
) -> None:
    """On a new workspace `pipeline status FILE` showed a table of stages "not run" while
    `pipeline status NAME` said the pipeline has not run: both say it now."""
    from typer.testing import CliRunner

    from pomlia_hpc.cli import app

    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(MINIMAL))
    cli = CliRunner()
    by_name = cli.invoke(app, ["pipeline", "status", "p"])
    by_file = cli.invoke(app, ["pipeline", "status", str(file)])
    for res in (by_name, by_file):
        assert isinstance(res.exception, NotFoundError), res.output
        message = " ".join(str(res.exception).split())
        assert "pipeline 'p'" in message and "has not run" in message, message
        assert "start it with `pomlia pipeline run" in message, message


def test_status_of_a_workspace_without_pipelines_is_an_empty_listing(
    workspace: Workspace,
) -> None:
    """`pipeline status` said `error: 0 pipelines in ... name one` (exit 2) where every other
    listing shows an empty table."""
    from typer.testing import CliRunner

    from pomlia_hpc.cli import app

    res = CliRunner().invoke(app, ["pipeline", "status"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and res.exception is None, said
    assert "pipelines (0)" in said and "pomlia pipeline run FILE" in said, said


def test_stage_summaries_name_what_export_writes() -> None:
    """The export stage said "TorchScript + ONNX + card" while export writes ONNX and a
    torch.export program (TorchScript is no longer written or loaded)."""
    from pomlia_hpc.pipeline.stages import STAGES

    export = next(s for s in STAGES if s.name == "export")
    assert "torch.export" in export.summary and "ONNX" in export.summary
    assert not [s.name for s in STAGES if "TorchScript" in s.summary]


def _stopped_stage(how: str, child: list[Any], tmp: Path, reg: Registry) -> Stage:
    """A stage that starts a local child job, then is stopped: by SIGINT (Ctrl-C, `pomlia
    jobs cancel` of a local stage job), or by SIGTERM (scancel) that surfaces as another error,
    as a DataLoader worker killed by the same signal makes it."""
    import os
    import signal

    from pomlia_hpc.cluster import Executor
    from pomlia_hpc.cluster.terminate import JobStopped
    from tests.fixtures import jobfns

    def run(ctx: StageContext) -> dict[str, Any]:
        child.append(Executor.from_profile("local", tmp, reg).submit(jobfns.sleep_for, 120))
        if how == "sigint":
            raise KeyboardInterrupt
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except JobStopped:  # what the signal raised, whatever it turns out to mean
            raise RuntimeError(
                "DataLoader worker (pid 1) is killed by signal: Terminated"
            ) from None
        return {}

    return Stage(
        name="s", needs=(), summary="s", enabled=lambda s: True, section=lambda s: None, run=run
    )


@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_a_cancelled_stage_says_so_and_cancels_its_child_jobs(
    ctx: StageContext, tmp_path: Path, reg: Registry, how: str
) -> None:
    """A cancelled stage recorded an empty error (KeyboardInterrupt) or a DataLoader error
    (SIGTERM), and its child jobs ran on: now the cause is the cancellation, and the children
    are cancelled with it."""
    from pomlia_hpc.cluster.terminate import SIGINT_CAUSE, SIGTERM_CAUSE, cancel_children_on_stop
    from pomlia_hpc.registry import Job

    child: list[Any] = []
    stage = _stopped_stage(how, child, tmp_path / "jobs", reg)
    with pytest.raises((KeyboardInterrupt, RuntimeError)), cancel_children_on_stop():
        run_stage(ctx, stage)
    cause = SIGINT_CAUSE if how == "sigint" else SIGTERM_CAUSE
    record = ctx.record("s") or {}
    assert (record.get("status"), record.get("error")) == ("cancelled", cause)
    assert record.get("jobs") == [child[0].record_id]  # what `pipeline status` shows
    with reg.session() as s:
        row = s.get(Job, child[0].record_id)
        assert row is not None and row.state == "CANCELLED"
        assert row.exit_cause == f"{cause}, with the job that submitted it"


def test_execution_resources_given_in_part_keep_the_other_defaults() -> None:
    # {mem_gb: 64} alone used to take time_min from the profile (30 min), not 24 h.
    spec = _parse({**MINIMAL, "execution": {"resources": {"mem_gb": 64}}})
    res = spec.execution.resources
    assert (res.cpus_per_task, res.mem_gb, res.time_min) == (1, 64, 24 * 60)
    spec = _parse({**MINIMAL, "execution": {"mode": "driver", "resources": {"time_min": 90}}})
    assert spec.execution.resources.time_min == 90 and spec.execution.resources.mem_gb == 4


def test_status_shows_the_stages_after_a_stale_one_stale(
    workspace: Workspace, tmp_path: Path, wide_console: None
) -> None:
    """A changed section made its stage stale while the stages after it, recorded from the old
    run, still showed `done`: they are stale too, saying which stage they wait for."""
    from typer.testing import CliRunner

    from pomlia_hpc.cli import app
    from tests.fixtures.factories import tiny_npz

    tiny_npz(tmp_path / "a.npz")
    file = tmp_path / "p.yaml"
    data: dict[str, Any] = {
        "name": "p",
        "datasets": [{"name": "a", "file": "a.npz"}],
        "tasks": [{"name": "t", "dataset": "a", "metric": "acc"}],
    }
    file.write_text(yaml.safe_dump(data))
    cli = CliRunner()
    res = cli.invoke(app, ["pipeline", "run", str(file)])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["pipeline", "status", "p"])
    assert "│ tasks │ done │" in " ".join(res.output.split()), res.output
    data["datasets"][0]["options"] = {"task_type": "multi-class"}
    file.write_text(yaml.safe_dump(data))
    res = cli.invoke(app, ["pipeline", "status", "p"])
    said = " ".join(res.output.split())
    assert "│ data │ stale │" in said and "│ tasks │ stale │" in said, res.output
    assert "needs data" in said


def test_the_monitor_stage_runs_again_after_unschedule(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `monitor unschedule M` the pipeline counted its monitor stage up to date. (A
    chain that ended with its settings in place: tests/test_monitor_chain_status.py.)"""
    from pomlia_hpc.cluster.batch import QueuedJob
    from pomlia_hpc.monitor import chains
    from pomlia_hpc.pipeline.stage import StageContext
    from pomlia_hpc.pipeline.stages_monitor import MONITOR

    queued = [QueuedJob("7", "PENDING", "N/A")]  # the chain's next run, as squeue lists it
    monkeypatch.setattr(chains, "jobs_named", lambda name, script=None: queued)

    ctx: Any = StageContext(spec=_parse(MINIMAL), workspace=workspace, registry=None)  # type: ignore[arg-type]
    conf = workspace.path("jobs", "monitor", "m", "schedule.env")
    conf.parent.mkdir(parents=True)
    conf.write_text("AT=02:00\n")
    out = {"t": {"model": "m", "scheduled": True}, "u": {"model": "n", "scheduled": False}}
    assert MONITOR.still_there(ctx, out)
    conf.unlink()  # what `monitor unschedule m` does
    assert not MONITOR.still_there(ctx, out)


# -- status after interruptions ----------------------------------------------------------------


def _write_stage(ctx: StageContext, name: str, status: str, started: str, ended: str = "") -> None:
    from pomlia_hpc.files import write_json_atomic

    rec: dict[str, Any] = {"stage": name, "status": status, "started_at": started, "outputs": {}}
    if ended:
        rec["ended_at"] = ended
    write_json_atomic(ctx.record_path(name), rec)


def test_a_stage_whose_driver_was_killed_shows_interrupted(ctx: StageContext) -> None:
    """`pipeline run` SIGKILLed left its stage recorded `running`, and `pipeline status` showed
    it running for good; no process holds the pipeline's lock then: it was interrupted."""
    from pomlia_hpc.pipeline.lock import pipeline_lock
    from pomlia_hpc.pipeline.runner import pipeline_status
    from pomlia_hpc.pipeline.stage import now

    _write_stage(ctx, "encoder", "running", now())
    with pipeline_lock(ctx.folder):  # a process at work: running it is
        assert {r.stage: r.state for r in pipeline_status(ctx)}["encoder"] == "running"
    row = {r.stage: r for r in pipeline_status(ctx)}["encoder"]
    assert row.state == "interrupted" and "run the pipeline again" in row.detail


def test_a_queued_stage_job_shows_no_times_of_an_earlier_run(
    ctx: StageContext, reg: Registry
) -> None:
    """A stage job still pending showed the start and end of the stage's earlier run (`pending
    ... 01:51:10 01:51:11`); a record its own job wrote was overruled by a lagging job state."""
    from pomlia_hpc.cluster.records import record_submission
    from pomlia_hpc.files import write_json_atomic
    from pomlia_hpc.pipeline.runner import RUN_FILE, pipeline_status

    old_start, old_end = "2020-01-01T00:00:00+00:00", "2020-01-01T00:00:05+00:00"
    _write_stage(ctx, "data", "done", old_start, old_end)
    (job,) = record_submission(
        reg, backend="debug", scheduler_ids=["1"], name="pipeline-p-data", folder="/x"
    )
    stages = {"data": {"action": "run", "job": job}}
    run = {"mode": "chain", "stages": stages, "submitted_at": "2026-01-01T00:00:00+00:00"}
    write_json_atomic(ctx.folder / RUN_FILE, run)
    row = {r.stage: r for r in pipeline_status(ctx)}["data"]
    assert (row.state, row.started_at, row.ended_at) == ("pending", "", "")
    # The job's own run recorded the stage done while the job still shows PENDING: done.
    _write_stage(ctx, "data", "done", "2999-01-01T00:00:00+00:00", "2999-01-01T00:00:01+00:00")
    row = {r.stage: r for r in pipeline_status(ctx)}["data"]
    assert row.state in ("done", "stale") and row.ended_at.startswith("2999")


@pytest.mark.parametrize("submit", [True, False])
def test_the_plan_counts_the_serving_job_a_deploy_submits(
    workspace: Workspace, reg: Registry, submit: bool
) -> None:
    """`deploy: {submit: true}` submits a GPU server that holds its allocation until its time
    limit, yet the dry run showed the stage as "(in the stage process)" and left its
    GPU-hours out of the estimate."""
    data = {
        **MINIMAL,
        "tasks": [{"name": "t", "dataset": "a"}],
        "automl": {"trials": 1},
        "export": {},
        "deploy": {"submit": submit},
    }
    plan = make_plan(StageContext(_parse(data), workspace, reg), "haicore")
    deploy = next(sp for sp in plan.stages if sp.stage.name == "deploy")
    if not submit:
        assert deploy.jobs == []
        return
    (job,) = deploy.jobs
    # serve.sbatch's #SBATCH lines on haicore: 1 GPU, 8 CPUs, 64 GB, 240 min
    r = job.resources
    assert (r.gpus_per_node, r.cpus_per_task, r.mem_gb, r.time_min) == (1, 8, 64, 240)
    assert job.count == 1 and job.hours == pytest.approx(4.0) and "serving job" in job.what
    others = sum(j.gpu_hours for sp in plan.stages if sp is not deploy for j in sp.jobs)
    assert plan.gpu_hours == pytest.approx(others + 4.0)


def test_dataset_names_follow_data_adds_rule_and_a_task_metric_any_case() -> None:
    """A pipeline's data set name was capped at 64 characters where `data add` takes 128, and
    `metric: AUC` was refused where `task add --metric AUC` is taken."""
    long = "d" * 128
    spec = _parse(
        {
            "name": "p",
            "datasets": [{"name": long, "medmnist": "bloodmnist"}],
            "tasks": [{"name": "t", "dataset": long, "metric": "AUC"}],
        }
    )
    assert spec.datasets[0].name == long and spec.tasks[0].metric == "auc"
    with pytest.raises(ConfigError, match=r"'datasets\.0\.name'.*at most 128"):
        _parse({"name": "p", "datasets": [{"name": long + "d", "medmnist": "bloodmnist"}]})
