"""Run it again, get the same thing: an AutoML study repeated with its seed, and the versions
every study and trial records so that it can be repeated (docs/guide/reproducibility.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pomlia_hpc.automl import records
from pomlia_hpc.automl.engine import EngineOptions, TrainRequest, train
from pomlia_hpc.automl.space import TrainConfig
from pomlia_hpc.automl.study import load_spec, run_study
from pomlia_hpc.data.store import open_version
from pomlia_hpc.provenance import software
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import tiny_dataset, tiny_study, tiny_task

pytestmark = pytest.mark.usefixtures("wide_console")


def _trials(reg: Registry, study: str) -> list[tuple[object, ...]]:
    """What a repeat must give again: each trial's configuration, seed and results."""
    return [
        (
            {k: v for k, v in r.config.items() if k != "engine"},
            r.config["engine"]["seed"],
            r.metrics["val"],
            r.metrics["test"],
            [h["train_loss"] for h in r.metrics["history"]],
        )
        for r in records.study_runs(reg, study)
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("restore_torch_threads")
def test_a_study_repeated_with_its_seed_gives_the_same_trials_and_records_its_versions(
    workspace: Workspace, reg: Registry
) -> None:
    """The same seed on the same data on CPU: the same configurations, training seeds,
    losses and metrics, to the bit, one trial at a time or two at once. The study records the
    versions its driver ran with, each run those its trial job trained with: before, neither
    named torch, NumPy or SMAC, so a result could not be told from a changed library."""
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    # "one": one trial at a time, each in this process (the debug executor); "two": both
    # trials side by side, each in a job process of its own (local: ~10 s of CPU a job).
    for name, parallel, executor in (("one", 1, "debug"), ("two", 2, "local")):
        spec = tiny_study(
            reg, workspace, "blood", name, seed=5, n_trials=2, parallel=parallel, executor=executor
        )
        run_study(reg, workspace, spec, poll_s=0.3)
    assert _trials(reg, "one") == _trials(reg, "two")
    assert len({json.dumps(t[0], sort_keys=True) for t in _trials(reg, "one")}) == 2

    spec = load_spec(workspace, "two")
    assert spec.software["packages"]["torch"] == metadata.version("torch")
    assert {"numpy", "smac", "ConfigSpace"} <= set(spec.software["packages"])
    assert spec.software["python"] and spec.software["pomlia"]["version"]
    for run in records.study_runs(reg, "two"):
        used = run.metrics["software"]
        assert used["packages"] == spec.software["packages"]
        assert used["torch_build"]["threads"] == run.config["engine"]["threads"]


def test_the_versions_are_read_without_importing_torch() -> None:
    """Registry commands load no torch: reading the versions must not import it either."""
    code = (
        "import sys; from pomlia_hpc.provenance import software; s = software(); "
        "assert 'torch' not in sys.modules and s['packages']['torch'], s; "
        "assert 'torch_build' not in s"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import torch  # where a job has loaded it, its build and thread count are named too

    assert software()["torch_build"]["threads"] == torch.get_num_threads()


@pytest.mark.usefixtures("restore_torch_threads")
def test_a_resumed_training_with_dropout_ends_as_one_that_ran_through(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """A trial requeued after an epoch resumes from its checkpoint. The data order and the
    augmentations were drawn per epoch, but dropout (MobileNetV3's head) drew from torch's
    global generator, seeded once per process: a resumed trial drew other masks than one
    that ran through, and ended with other weights and metrics. Each epoch now seeds it."""
    ref = tiny_dataset(workspace, reg, "blood", sizes=(24, 8, 8))
    store = str(open_version(reg, ref).path)
    cfg = TrainConfig(arch="mobilenet_v3_small", lr=3e-3, batch_size=8, optimizer="sgd")

    def request(folder: str, epochs: int) -> TrainRequest:
        work = tmp_path / folder
        return TrainRequest(
            store,
            "multi-class",
            cfg,
            epochs,
            str(work / "work"),
            str(work / f"model-e{epochs}.pt"),
            "k",
            options=EngineOptions(threads=1, seed=3),
        )

    through = train(request("through", 2))
    train(request("resumed", 1))
    resumed = train(request("resumed", 2))
    assert resumed.start_epoch == 1
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in through.history]
    assert resumed.metrics == through.metrics


#: A SMAC-Hyperband study's asks and tells without training: each configuration's cost a
#: fixed function of its key (smaller at a larger budget), its time 10 s.
SMAC_STUDY = """
import hashlib, json, sys
from pathlib import Path
from pomlia_hpc.automl.optimizers import SmacHyperband
from pomlia_hpc.automl.space import SpaceOptions, build_space
space = build_space(SpaceOptions(archs=("small_cnn",)), seed=3)
opt = SmacHyperband(space, Path(sys.argv[1]), n_trials=8, min_epochs=1, max_epochs=3, seed=3)
asked = []
for _ in range(8):
    p = opt.ask()
    cost = int(hashlib.sha1(p.key.encode()).hexdigest()[:6], 16) / 2**24 / p.epochs
    opt.tell(p, cost, crashed=False, time_s=10.0)
    asked.append([p.key, p.budget])
print(json.dumps(asked))
"""


def test_smac_asks_the_same_configurations_for_a_seed_in_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two drivers with the same seed told the same results asked for other configurations
    from SMAC's first model-based proposal on (a study's 4th trial): its local search took
    its start points from a set of configurations, ordered by Python's string hashing, which
    differs per process (PYTHONHASHSEED)."""
    root = Path(__file__).resolve().parents[1]
    # This process (its own hash seed, random unless PYTHONHASHSEED is set) and two others
    # with other seeds: three string hashings, one torch-free process start saved.
    monkeypatch.setattr(sys, "argv", ["smac-study", str(tmp_path / "here")])
    exec(SMAC_STUDY, {"__name__": "smac_study"})
    runs = [json.loads(capsys.readouterr().out.splitlines()[-1])]
    mine = os.environ.get("PYTHONHASHSEED")
    for hash_seed in [s for s in ("1", "2", "3") if s != mine][:2]:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", SMAC_STUDY, str(tmp_path / hash_seed)],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.splitlines()[-1]))
    assert runs[0] == runs[1] == runs[2]
    assert len({key for key, _budget in runs[0]}) >= 5  # model-based proposals among them
