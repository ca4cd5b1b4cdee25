"""AutoML search fixes for issue 12: no repeated (configuration, budget), the best configuration
trained on to the full budget, budgets that scale with the data, warm start from a
recommendation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pomlia_hpc.automl import records
from pomlia_hpc.automl.budget import MAX_EPOCHS, default_budget
from pomlia_hpc.automl.optimizers import Proposal
from pomlia_hpc.automl.space import configs_from_values
from pomlia_hpc.automl.study import StudyRunner, TrialView, create, load_spec, run_study
from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.files import host_field
from pomlia_hpc.registry import Recommendation, Registry
from pomlia_hpc.strategy import kb
from pomlia_hpc.strategy.warmstart import from_recommendation
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, donor_model, tiny_study, tiny_task

# Jobs run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")

DATA = Path(__file__).resolve().parents[1] / "pomlia_hpc" / "strategy" / "data"


def test_default_budget_scales_with_data_size() -> None:
    small, large = default_budget(500), default_budget(100_000)
    assert small[0] > large[0] and small[1] > large[1]  # fewer images: more epochs
    assert large == (1, 9)
    low, high = small
    assert low * 500 // 64 >= 60  # the lowest rung is >= 60 optimizer steps
    assert high >= 3 * low
    for n in (1, 60, 200, 500, 1257, 5000):  # never beyond MAX_EPOCHS, however small the set
        lo, hi = default_budget(n)
        assert lo >= 1 and 3 * lo <= hi <= MAX_EPOCHS, (n, lo, hi)


@pytest.mark.slow
def test_repeated_configuration_is_answered_not_trained_and_warm_start_first_at_full_budget(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    # The same configuration twice in the initial design, at the same budget.
    spec = tiny_study(
        reg,
        workspace,
        "blood",
        "dup",
        optimizer="smac",
        n_trials=2,
        n_initial=2,
        min_epochs=1,
        max_epochs=2,
        eta=2,
        initial_configs=[FAST, FAST],
        final_full_budget=True,
    )
    result = run_study(reg, workspace, spec, poll_s=0.2)
    runs = records.study_runs(reg, "dup")
    budgets = sorted((r.config["config_key"], r.budget) for r in runs)
    assert len(budgets) == len(set(budgets))  # never the same configuration at the same budget
    assert result.best_run_id is not None
    best = next(r for r in runs if r.id == result.best_run_id)
    # the best configuration was trained to max_epochs (promoted, or by the final training)
    assert any(r.config["config_key"] == best.config["config_key"] and r.budget == 2 for r in runs)
    # the warm start's first configuration trained at the full budget before the search; SMAC's
    # later asks for it at 1 epoch were answered from that record, not trained (no crash
    # against its 2-epoch checkpoint)
    first = min(runs, key=lambda r: r.id)
    assert first.budget == 2 and first.config["lr"] == FAST["lr"]
    assert all(r.status == records.OK for r in runs)
    assert not [
        r for r in runs if r.config["config_key"] == first.config["config_key"] and r.budget == 1
    ]


class _Recorder:
    """An optimiser that only records what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, int, float, bool]] = []

    def ask(self) -> Proposal:
        raise AssertionError("not asked here")

    def tell(self, proposal: Proposal, cost: float, *, crashed: bool, time_s: float) -> None:
        self.told.append((proposal.key, proposal.epochs, round(cost, 6), crashed))

    def running(self) -> list[Proposal]:
        return []


def test_repeat_is_told_the_recorded_result(workspace: Workspace, reg: Registry) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    spec = tiny_study(reg, workspace, "blood", "rep")
    runner = StudyRunner(reg, workspace, spec)
    config = configs_from_values([FAST], runner.space, "test")[0]
    done, running = Proposal(config, 1.0), Proposal(config, 2.0)
    opt = _Recorder()
    assert not runner.answer_repeat(opt, done)  # new: to be trained
    runner.trials[1] = TrialView(1, done.key, "", 1, records.OK, 0.75, 0.7, 3.0, "")
    runner.trials[2] = TrialView(2, done.key, "", 2, records.RUNNING, None, None, None, "")
    assert runner.answer_repeat(opt, done)  # trained at 1 epoch: answered at once
    assert opt.told == [(done.key, 1, 0.25, False)]
    assert runner.answer_repeat(opt, running)  # still training at 2 epochs: told later
    assert len(opt.told) == 1
    runner.tell_waiting(running, 0.1, crashed=False)
    assert opt.told[-1] == (done.key, 2, 0.1, False)


class _Submitted:
    """An executor that keeps what it is given and runs nothing."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def submit(self, job: Any, name: str, resources: Any = None) -> SimpleNamespace:
        self.jobs.append(job)
        return SimpleNamespace(record_id=None, job_id=str(len(self.jobs)))


def test_run_record_holds_the_training_seed_its_trial_used(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    seeds = []
    for study_seed in (0, 1):
        spec = tiny_study(reg, workspace, "blood", f"s{study_seed}", seed=study_seed)
        executor = _Submitted()
        runner = StudyRunner(reg, workspace, spec, executor=executor)  # type: ignore[arg-type]
        config = configs_from_values([FAST], runner.space, "test")[0]
        runner.start(_Recorder(), Proposal(config, 1.0))
        (run,) = records.study_runs(reg, spec.name)
        (job,) = executor.jobs
        trained = job.request.options.seed
        # Was the study's seed (0) whatever seed the trial trained with.
        assert run.config["engine"]["seed"] == trained
        assert {**run.config["engine"], "seed": 0} == {**spec.engine.to_dict(), "seed": 0}
        seeds.append(trained)
    assert seeds[0] != seeds[1]  # the same configuration, another training seed


def test_from_recommendation_needs_expressible_strategies(
    workspace: Workspace, reg: Registry
) -> None:
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_v2_yang2023.csv", "v2", meta_path=meta)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    warm = from_recommendation(reg, "blood", k=3)
    assert warm.configs and set(warm.archs) <= {"resnet18", "small_cnn", "mobilenet_v3_small"}
    assert warm.recommendation_id is not None
    res = CliRunner().invoke(
        app, ["automl", "run", "blood", "--from-recommendation", "--initial", "x.yaml"]
    )
    assert isinstance(res.exception, InputError) and "choose one" in str(res.exception)


def test_a_bad_recommend_k_names_the_option(workspace: Workspace, reg: Registry) -> None:
    """`--recommend-k 0` was refused as "--k 0", an option automl run does not have."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    res = CliRunner().invoke(
        app, ["automl", "run", "blood", "--from-recommendation", "--recommend-k", "0"]
    )
    assert isinstance(res.exception, InputError)
    assert str(res.exception) == "--recommend-k 0: expected an integer >= 1"


def test_warm_start_larger_than_the_trials_is_one_clear_error(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    with pytest.raises(InputError, match="3 configurations but the study has 2 trial"):
        tiny_study(reg, workspace, "blood", "big", optimizer="smac", initial_configs=[FAST] * 3)
    assert not (workspace.path("runs", "big") / "study.json").exists()  # nothing written


def test_a_refused_warm_start_leaves_no_copied_weights(workspace: Workspace, reg: Registry) -> None:
    """A study refused for its warm start had already copied its initial weights (44 MB for
    a recommended model) into the study folder, and left them there."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    donor = donor_model(workspace, reg)
    with pytest.raises(InputError, match="3 configurations but the study has 2 trial"):
        tiny_study(
            reg, workspace, "blood", "big", optimizer="smac", init_model=donor,
            initial_configs=[FAST] * 3,
        )  # fmt: skip
    assert not workspace.path("runs", "big").exists()
    # What it did not write stays (a start of the same name racing it may own the folder).
    theirs = workspace.path("runs", "big2", "theirs.txt")
    theirs.parent.mkdir(parents=True)
    theirs.write_text("x")
    with pytest.raises(InputError):
        tiny_study(
            reg, workspace, "blood", "big2", optimizer="smac", init_model=donor,
            initial_configs=[FAST] * 3,
        )  # fmt: skip
    assert theirs.exists() and not workspace.path("runs", "big2", "init").exists()


def test_a_start_interrupted_after_copying_its_weights_leaves_nothing(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a study was being created, after its initial weights were copied (tens of
    MB, seconds to load and save), left the study's folder with those weights and no
    study.json: a half-made study, and for a generated name a folder no listing shows."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    donor = donor_model(workspace, reg)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        assert list(workspace.path("runs").rglob("model.pt")), "no weights copied yet"
        raise KeyboardInterrupt

    monkeypatch.setattr(create, "build_space", interrupted)
    for name in ("ki", None):
        with pytest.raises(KeyboardInterrupt):
            tiny_study(reg, workspace, "blood", name, optimizer="smac", init_model=donor)
    assert list(workspace.path("runs").iterdir()) == []


def test_a_start_interrupted_at_its_claim_leaves_no_copied_weights(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the study's options were checked, while it wrote study.json: the copied
    weights stayed in a folder without one (a half-made study), and a start of the same name
    found them there."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    donor = donor_model(workspace, reg)
    write_json = create.write_json

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        assert list(workspace.path("runs").rglob("model.pt")), "no weights copied yet"
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(create, "write_json", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tiny_study(reg, workspace, "blood", "kc", optimizer="smac", init_model=donor)
    left = [p.name for p in workspace.path("runs").rglob("*")]
    assert left == ["kc", ".driver.lock"], left  # the claim's lock file, no weights
    assert create.write_json is write_json
    spec = tiny_study(reg, workspace, "blood", "kc", optimizer="smac", init_model=donor)
    assert spec.init_model is not None and Path(spec.init_model.path).is_file()
    assert Path(spec.init_model.path) == workspace.path("runs", "kc", "init", "model.pt")


def test_a_start_interrupted_once_its_study_json_is_in_place_keeps_its_weights(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the flush after study.json's rename (its write had not returned) took the
    study's ``init/`` out again: a study whose study.json names weights that are gone."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    donor = donor_model(workspace, reg)
    write_json = create.write_json

    def written_then_interrupted(*args: Any, **kwargs: Any) -> Any:
        write_json(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(create, "write_json", written_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_study(reg, workspace, "blood", "kw", optimizer="smac", init_model=donor)
    spec = load_spec(workspace, "kw")
    assert spec.init_model is not None and Path(spec.init_model.path).is_file()


def test_a_start_without_weights_removes_those_a_killed_start_put_in_place(
    workspace: Workspace, reg: Registry
) -> None:
    """A start killed between putting its weights in place as ``init/`` and writing
    study.json left them there; the next start of the name without initial weights kept
    them in its study, named by nothing."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    left = workspace.path("runs", "kn", "init", "model.pt")
    left.parent.mkdir(parents=True)
    left.write_bytes(b"weights of a start killed before its study.json")
    spec = tiny_study(reg, workspace, "blood", "kn", optimizer="smac")
    assert spec.init_model is None and not left.parent.exists()


def test_the_weights_of_a_start_killed_by_a_signal_are_swept_by_the_next(
    workspace: Workspace, reg: Registry
) -> None:
    """SIGTERM or SIGKILL runs no clean-up: the copies it made stay under the start's own
    temporary name, never as the study's ``init/``, and the next start of the name sweeps them."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    donor = donor_model(workspace, reg)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    killed = workspace.path("runs", "ks", f".init.{host_field()}.{gone.stdout.strip()}.tmp")
    killed.mkdir(parents=True)
    (killed / "model.pt").write_bytes(b"copied by a start killed before its claim")
    other = killed.parent.with_name("never-again") / killed.name  # a name not started again
    shutil.copytree(killed, other)
    spec = tiny_study(reg, workspace, "blood", "ks", optimizer="smac", init_model=donor)
    assert not killed.exists() and spec.init_model is not None
    assert Path(spec.init_model.path).is_file()
    assert not other.exists()  # any start sweeps them: weight copies kept for ever before


def test_weights_a_killed_start_left_under_this_starts_pid_are_not_put_in_place(
    workspace: Workspace, reg: Registry
) -> None:
    """A start killed while it copied left its copies under its temporary name; a later
    start of the name with the same pid (pids repeat) kept them, the sweep taking it for
    their live writer, and put them in place as the ``init/`` of a study without weights."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    left = workspace.path("runs", "kp", f".init.{host_field()}.{os.getpid()}.tmp", "model.pt")
    left.parent.mkdir(parents=True)
    left.write_bytes(b"copied by a killed start with this pid")
    spec = tiny_study(reg, workspace, "blood", "kp", optimizer="smac")
    assert spec.init_model is None
    assert sorted(p.name for p in workspace.path("runs", "kp").iterdir()) == [
        ".driver.lock",
        "study.json",
    ]


def test_an_interrupted_start_leaves_the_weights_of_the_start_that_claimed_the_name(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts of one study name: the one interrupted after the other claimed the name
    removed the weights it had copied, which the other's copy had replaced: the claimed study
    lost its initial weights."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    donor = donor_model(workspace, reg)
    theirs = workspace.path("runs", "kr", "init", "model.pt")

    def claimed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        theirs.parent.mkdir(parents=True, exist_ok=True)
        theirs.write_bytes(b"the other start's weights")
        (theirs.parent.parent / "study.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(create, "build_space", claimed_meanwhile)
    with pytest.raises(KeyboardInterrupt):
        tiny_study(reg, workspace, "blood", "kr", optimizer="smac", init_model=donor)
    assert theirs.read_bytes() == b"the other start's weights"
    assert sorted(p.name for p in theirs.parent.parent.iterdir()) == ["init", "study.json"]


def test_unfit_warm_start_configurations_are_left_out_one_by_one_when_asked(
    workspace: Workspace, reg: Registry
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    # No weights are given, so a configuration naming init=encoder cannot be held by the space.
    wants_encoder = {**FAST, "init": "encoder", "mode": "full"}
    with pytest.raises(InputError, match=r"entry 1: unknown hyperparameter\(s\) init"):
        tiny_study(reg, workspace, "blood", "strict", initial_configs=[FAST, wants_encoder])
    spec = tiny_study(
        reg,
        workspace,
        "blood",
        "lenient",
        optimizer="smac",
        n_trials=2,
        initial_configs=[wants_encoder, FAST, FAST, FAST],
        drop_unfit_initial=True,
    )
    # The unfit one and the one beyond the 2 trials are left out; each reason is kept.
    assert spec.initial_configs == [FAST, FAST]
    assert len(spec.dropped_initial) == 2
    assert "entry 0" in spec.dropped_initial[0] and "init" in spec.dropped_initial[0]
    assert "1 fitting one(s) after the first 2" in spec.dropped_initial[1]


def test_warm_start_first_training_keeps_to_the_epoch_budget(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    trained: list[int] = []
    monkeypatch.setattr(StudyRunner, "run_untold", lambda self, p: trained.append(p.epochs))

    def first_training(name: str, budget: int | None, min_epochs: int = 1) -> list[int]:
        trained.clear()
        spec = tiny_study(
            reg,
            workspace,
            "blood",
            name,
            optimizer="smac",
            min_epochs=min_epochs,
            max_epochs=9,
            eta=3,
            budget_epochs=budget,
        )
        StudyRunner(reg, workspace, spec).train_warm_start_first()
        return list(trained)

    assert first_training("free", None) == [9]  # no epoch budget: the full budget
    assert first_training("capped", 4) == [4]  # was 9: more than the whole study's budget
    assert first_training("tiny", 2, min_epochs=3) == []  # below the lowest rung: searched


def test_a_refused_study_from_a_recommendation_records_no_recommendation(
    workspace: Workspace, reg: Registry
) -> None:
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, DATA / "medmnist_v2_yang2023.csv", "v2", meta_path=meta)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    tiny_study(reg, workspace, "blood", "s0")  # the name a new study is refused
    args = ["automl", "run", "blood", "--study", "s0", "--from-recommendation"]
    for _ in range(2):
        with pytest.raises(PomliaError, match="study 's0' already exists"):
            CliRunner().invoke(app, args, catch_exceptions=False)
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(Recommendation)) == 0
