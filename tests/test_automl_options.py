"""The study's options and saved specification are checked by the library (not only by the CLI):
one clear line per problem; a damaged ``study.json`` names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pomlia_hpc.automl.study as study_mod
from pomlia_hpc.automl.budget import default_budget
from pomlia_hpc.automl.optimizers import RandomSearch
from pomlia_hpc.automl.options import EngineOptions
from pomlia_hpc.automl.space import SpaceOptions, build_space, plain_values
from pomlia_hpc.automl.study import SPEC_FILE, StudyOptions, create_study, load_spec, study_dir
from pomlia_hpc.cli import app
from pomlia_hpc.errors import ConfigError, InputError, PomliaError
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main as pomlia
from tests.fixtures.factories import donor_model, tiny_task


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_epochs": 3, "max_epochs": 2}, "--min-epochs 3 is larger than --max-epochs 2"),
        ({"eta": 1}, "--eta 1: expected an integer >= 2"),
        ({"n_trials": 0}, "--trials 0: expected an integer >= 1"),
        ({"optimizer": "grid"}, "--optimizer 'grid': not an optimizer; expected smac or random"),
        ({"extra_data": True}, "extra data needs an encoder"),
        ({"resources": {"gpus_per_node": 2}}, "gpus_per_node=2: expected 0 or 1"),
        ({"name": "../escape"}, "study name '../escape' is not valid"),
        ({"parallel": "2"}, "--parallel '2': Input should be a valid integer"),
        ({"seed": -1}, "--seed -1: expected an integer from 0 to 4294967295"),
        ({"seed": 2**32}, "--seed 4294967296: expected an integer from 0 to 4294967295"),
        # crashed in SMAC's initial design (exit 70), its study folder already written
        ({"n_trials": 10**20}, "--trials 100000000000000000000: expected an integer from 1 to"),
        ({"parallel": 10**7}, "--parallel 10000000: expected an integer from 1 to 1,000,000"),
    ],
)
def test_each_rule_is_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as exc:
        StudyOptions.checked(**options)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_random_search_takes_any_study_seed(tmp_path: Path) -> None:
    """`automl run T --optimizer random --seed 5000` was created, then its driver failed with
    a traceback at the first ask: the per-trial seed (seed x 1,000,003 + trial) passed numpy's
    32 bits from seed 4295 on. A seed below that keeps its sequence."""
    space = build_space(SpaceOptions(archs=("small_cnn",)), seed=0)
    for seed in (5000, 2**32 - 1):
        search = RandomSearch(space, tmp_path / str(seed), max_epochs=1, seed=seed)
        assert search.ask().key != search.ask().key
    space.seed(3 * 1_000_003)  # the first trial of seed 3, as before
    first = plain_values(space.sample_configuration())
    assert RandomSearch(space, tmp_path / "3", max_epochs=1, seed=3).ask().values == first


def test_defaults_and_a_gpu_are_fine() -> None:
    opts = StudyOptions.checked(resources={"gpus_per_node": 1}, extra_data=True, encoder="enc")
    assert (opts.n_trials, opts.max_epochs, opts.optimizer) == (20, 9, "smac")


def test_create_refuses_bad_options_and_writes_nothing(workspace: Workspace, reg: Registry) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    with pytest.raises(InputError, match="extra data needs an encoder"):
        create_study(reg, workspace, "blood", name="s", extra_data=True)
    with pytest.raises(InputError, match="gpus_per_node=4"):
        create_study(reg, workspace, "blood", name="s", resources={"gpus_per_node": 4})
    assert not study_dir(workspace, "s").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine": EngineOptions(device="tpu")}, "--device 'tpu': not a device; expected auto"),
        ({"engine": EngineOptions(zero_stage=7)}, "--zero-stage 7: not a DeepSpeed ZeRO stage"),
        ({"resources": {"mem_gb": -1.0}}, "bad value for 'mem_gb'"),
        ({"resources": {"time_min": 0}}, "bad value for 'time_min'"),
    ],
)
def test_create_refuses_how_trials_would_run(
    workspace: Workspace, reg: Registry, kwargs: dict[str, Any], message: str
) -> None:
    """A device, ZeRO stage or trial resource no trial can run with is refused when the study
    is created (it was found only as every trial crashed, or at the first submission)."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    with pytest.raises(PomliaError, match=message) as exc:
        create_study(reg, workspace, "blood", name="s", **kwargs)
    assert "\n" not in str(exc.value)
    assert not study_dir(workspace, "s").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--device", "gpu"], "error: --device 'gpu': not a device; expected auto, cpu or cuda"),
        (
            ["--zero-stage", "4"],
            "error: --zero-stage 4: not a DeepSpeed ZeRO stage; expected 0, 1, 2 or 3",
        ),
        (["--optimizer", "grid"], "error: --optimizer 'grid': not an optimizer; expected smac"),
        (
            ["--archs", "small_cnn,resnet50"],
            "error: --archs 'small_cnn,resnet50': architecture 'resnet50' is not known",
        ),
        (["--mem-gb", "-1"], "error: --mem-gb -1: expected a memory per trial job above 0 GB"),
        (["--mem-gb", "nan"], "error: --mem-gb nan: expected a memory per trial job above 0 GB"),
        (["--time-min", "0"], "error: --time-min 0: expected a time limit of at least 1 minute"),
    ],
)
def test_a_bad_engine_option_is_one_line_naming_it(
    workspace: Workspace,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    line: str,
) -> None:
    """`automl run T --device gpu` said "device 'gpu' is not known" and `--zero-stage 4`
    "zero_stage=4"; `--archs resnet50` "search space: architecture ...", `--mem-gb -1` "job
    resources: bad value for 'mem_gb'": none named the option the user typed."""
    tiny_task(workspace, reg, "t", sizes=(16, 8, 8))
    code, out, err = pomlia(monkeypatch, capsys, "automl", "run", "t", "--study", "s", *args)
    assert code == 2 and out == "" and err.startswith(line) and err.count("\n") == 1, err
    assert not study_dir(workspace, "s").exists()


def test_the_default_budget_refuses_eta_below_two() -> None:
    """`pomlia automl run --eta 0` divided by zero (a traceback) before the options were
    checked."""
    with pytest.raises(InputError, match="--eta 0: expected an integer >= 2"):
        default_budget(1000, eta=0)


def test_a_damaged_spec_names_the_file_and_key(workspace: Workspace, reg: Registry) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = create_study(reg, workspace, "blood", name="s", optimizer="random")
    assert load_spec(workspace, "s") == spec
    path: Path = study_dir(workspace, "s") / SPEC_FILE
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "n_trails": 3}))
    with pytest.raises(ConfigError) as exc:
        load_spec(workspace, "s")
    assert str(path) in str(exc.value) and "unknown key 'n_trails'" in str(exc.value)
    path.write_text(json.dumps({**data, "options": {**data["options"], "max_epochs": "nine"}}))
    with pytest.raises(ConfigError, match=r"bad value for 'options\.max_epochs'"):
        load_spec(workspace, "s")
    assert not list(path.parent.glob(".*.tmp"))  # the atomic writer left no temp file
    # A study.json of the earlier layout (options at the top level) still resumes.
    options = {k: v for k, v in data["options"].items() if k not in ("encoder", "init_model")}
    flat = {**{k: v for k, v in data.items() if k != "options"}, **options}
    flat.pop("extra_data")
    path.write_text(json.dumps({**flat, "extra_encoder": None}))
    assert load_spec(workspace, "s") == spec


def test_the_atomic_writer_and_the_stale_temp_sweep(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from pomlia_hpc.files import sweep_stale_temps, temp_name, write_atomic

    target = tmp_path / "d" / "x.json"
    write_atomic(target, "one")
    with pytest.raises(RuntimeError):

        def half(f: object) -> None:
            f.write(b"half")  # type: ignore[attr-defined]
            raise RuntimeError("disk gone")

        write_atomic(target, half)
    assert target.read_text() == "one" and [p.name for p in target.parent.iterdir()] == ["x.json"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = temp_name(target).with_name(temp_name(target).name.replace(
        f".{os.getpid()}.", f".{dead.stdout.strip()}."))  # fmt: skip
    stale.write_text("left by a writer that died")
    mine = temp_name(target)
    mine.write_text("being written by this live process")
    assert sweep_stale_temps(target.parent) == [stale]
    assert mine.exists() and not stale.exists()


def test_a_trial_job_of_the_small_cnn_does_not_import_torchvision() -> None:
    """Importing torchvision pulls in its detection ops and ``torch._dynamo`` (seconds in every
    trial job's start-up); the trial module and the small CNN do without it."""
    import subprocess
    import sys

    code = (
        "import sys, pomlia_hpc.automl.trial\n"
        "from pomlia_hpc.models.nets import build_classifier\n"
        "build_classifier('small_cnn', 3, 1)\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "build_classifier('mobilenet_v3_small', 3, 1)\n"
        "assert 'torchvision' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ctrl_c_during_a_study_says_how_to_resume_without_a_traceback(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_a: Any, **_k: Any) -> None:
        raise KeyboardInterrupt

    tiny_task(workspace, reg, "t", "bloodmnist", "acc")
    monkeypatch.setattr(study_mod, "run_study", interrupted)
    res = CliRunner().invoke(app, ["automl", "run", "t", "--study", "s", "--trials", "1"])
    assert res.exit_code == 130 and not isinstance(res.exception, KeyboardInterrupt)
    said = " ".join(res.output.split())
    assert "interrupted: study s stopped" in said
    assert "pomlia automl run t --study s --resume" in said


def test_init_model_outside_archs_is_said(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--init-model M --archs resnet18 --trials 1` trained only a small_cnn (M's architecture,
    which the space adds) and said nothing about it."""

    def interrupted(*_a: Any, **_k: Any) -> None:
        raise KeyboardInterrupt

    tiny_task(workspace, reg, "t", "bloodmnist", "acc")
    donor = donor_model(workspace, reg)
    monkeypatch.setattr(study_mod, "run_study", interrupted)
    args = ["automl", "run", "t", "--init-model", donor, "--trials", "1", "--study"]
    res = CliRunner().invoke(app, [*args, "s", "--archs", "resnet18"])
    said = " ".join(res.output.split())
    assert "note: --init-model donor is a small_cnn, not among --archs (resnet18)" in said, said
    res = CliRunner().invoke(app, [*args, "s2", "--archs", "resnet18,small_cnn"])
    assert "note:" not in res.output


def test_a_gpu_missing_here_is_refused_before_the_study_on_the_local_executor(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`automl run T --device cuda` (or `--gpus 1`) on the local executor of a machine without
    a GPU submitted trials that crashed and counted as the strategy's failures; a Slurm
    profile's GPUs are on the compute node, but `--device cuda` with none asked is refused."""
    import torch

    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cuda = EngineOptions(device="cuda")
    for kwargs in ({"engine": cuda}, {"resources": {"gpus_per_node": 1}}):
        with pytest.raises(InputError, match="torch sees 0 on this machine") as exc:
            create_study(reg, workspace, "blood", name="s", **kwargs)  # type: ignore[arg-type]
        assert "--cluster PROFILE" in str(exc.value) and "\n" not in str(exc.value)
    assert not study_dir(workspace, "s").exists()
    # A Slurm trial that asks for no GPU sees none: every trial crashed 9 s into its job.
    with pytest.raises(InputError, match="asks Slurm for no GPU") as exc:
        study_mod.check_study_options(engine=cuda, executor="slurm-local", name="s")
    assert "add --gpus 1" in str(exc.value) and "\n" not in str(exc.value)
    study_mod.check_study_options(
        engine=cuda, executor="slurm-local", resources={"gpus_per_node": 1}, name="s"
    )  # its GPU is on the compute node: not checked here
    # With a GPU here, a local job still sees none unless it asks for one (CUDA_VISIBLE_DEVICES).
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match="add --gpus 1"):
        create_study(reg, workspace, "blood", name="s", engine=cuda)
    study_mod.check_study_options(engine=cuda, resources={"gpus_per_node": 1}, name="s")


def test_a_study_to_resume_is_named_never_given_as_a_path(
    workspace: Workspace, reg: Registry
) -> None:
    """`automl run blood --study ../runs/s1 --resume` resumed the study in that folder (a new
    study refuses the same name)."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    res = CliRunner().invoke(app, ["automl", "run", "blood", "--study", "../runs/s1", "--resume"])
    assert isinstance(res.exception, InputError), res.output
    assert str(res.exception).startswith("study name '../runs/s1' is not valid"), res.exception
    with pytest.raises(InputError, match=r"^study name '\.\./x' is not valid"):
        load_spec(workspace, "../x")
