"""A study driver killed while its only trial's job was out: ``--resume`` waits for that job and
records its outcome, instead of ending at once with the trial ``running`` for good (SMAC started
afresh from a state with one trial asked and none told, and overwrote it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.automl import records
from pomlia_hpc.automl.optimizers import Proposal, SmacHyperband
from pomlia_hpc.automl.space import SpaceOptions, build_space, configs_from_values
from pomlia_hpc.automl.study import create_study, run_study
from pomlia_hpc.automl.study.driver import WARM_ORIGIN, StudyRunner, Untold
from pomlia_hpc.automl.study.view import FINAL_ORIGIN, view_of_run
from pomlia_hpc.registry import Job, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.factories import FAST, tiny_study, tiny_task

# Jobs run in this process (debug executor) set torch's thread count: put back after.
pytestmark = pytest.mark.usefixtures("restore_torch_threads")

#: How a trial's run reads when its job was cancelled together with the driver that submitted it.
WITH_THE_DRIVER = "cancelled (SIGTERM: scancel), with the job that submitted it"


def _cancelled_with_driver(
    reg: Registry, spec: Any, study: str, config: dict[str, Any], epochs: float, start_epoch: int
) -> int:
    """Record a run of ``config`` in ``study`` as cancelled with its driver; its id."""
    run_id = records.create_run(
        reg, task_id=spec.task_id, study=study, config=config, epochs=epochs,
        dataset_version_id=spec.dataset_version_id, encoder_id=None,
    )  # fmt: skip
    records.finish_run(
        reg, run_id, status=records.CANCELLED, cost_s=1.0, error=WITH_THE_DRIVER,
        metrics={"cause": WITH_THE_DRIVER, "state": "CANCELLED", "start_epoch": start_epoch},
    )  # fmt: skip
    return run_id


def _smac(space_seed: int, folder: Path, *, resume: bool) -> SmacHyperband:
    space = build_space(SpaceOptions(archs=("small_cnn",)), seed=space_seed)
    return SmacHyperband(
        space, folder, n_trials=1, min_epochs=3, max_epochs=3, seed=0, resume=resume
    )


def test_a_resumed_smac_keeps_its_only_trial_still_out(tmp_path: Path) -> None:
    first = _smac(0, tmp_path / "smac", resume=False)
    asked = first.ask()  # the driver is killed while this trial trains
    resumed = _smac(0, tmp_path / "smac", resume=True)
    out = resumed.running()
    assert [(p.key, p.epochs) for p in out] == [(asked.key, asked.epochs)]
    # and the state on disk still says so, for a resume after this one
    again = _smac(0, tmp_path / "smac", resume=True)
    assert [p.key for p in again.running()] == [asked.key]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures("slurm")
@pytest.mark.timeout(600)
def test_resume_waits_for_the_job_of_a_killed_driver(workspace: Workspace) -> None:
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    spec = create_study(
        reg,
        workspace,
        "blood",
        name="out1",
        n_trials=1,
        max_epochs=2,
        min_epochs=2,
        parallel=1,
        executor="slurm-local",
        space=SpaceOptions(archs=("small_cnn",)),
        initial_configs=[FAST],
        n_initial=1,
    )
    # The first driver asks, submits the trial's job and dies (nothing more of it runs).
    first = StudyRunner(reg, workspace, spec)
    opt = first.optimizer(resume=False)
    first.start(opt, opt.ask())
    (run,) = records.study_runs(reg, "out1")
    assert run.status == records.RUNNING and run.job_id is not None

    result = run_study(reg, workspace, spec, resume=True, poll_s=0.5)

    assert result.n_ok == 1, result
    (run,) = records.study_runs(reg, "out1")
    assert run.status == records.OK and run.metrics["epochs"] == 2
    with reg.session() as s:
        jobs = s.query(Job).all()
        assert [j.state for j in jobs] == ["COMPLETED"]  # waited for, not submitted again


@pytest.mark.timeout(600)
def test_resume_settles_a_trial_the_optimiser_state_lost(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMAC's saved state no longer knows the trial (overwritten by a resume before the fix):
    the registry's running run is still waited for and recorded, not left running for good."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    spec = create_study(
        reg,
        workspace,
        "blood",
        name="lost1",
        n_trials=1,
        max_epochs=1,
        min_epochs=1,
        parallel=1,
        space=SpaceOptions(archs=("small_cnn",)),
        initial_configs=[FAST],
        n_initial=1,
    )
    first = StudyRunner(reg, workspace, spec)
    opt = first.optimizer(resume=False)
    first.start(opt, opt.ask())
    monkeypatch.setattr(SmacHyperband, "running", lambda self: [])

    result = run_study(reg, workspace, spec, resume=True, poll_s=0.2)

    (run,) = records.study_runs(reg, "lost1")
    assert run.status == records.OK and result.n_ok == 1
    with reg.session() as s:
        assert s.query(Job).count() == 1  # its own job, waited for


@pytest.mark.timeout(600)
def test_resume_does_not_train_a_warm_start_beside_its_job_still_out(
    workspace: Workspace,
) -> None:
    """The driver is killed while the warm start's first configuration trains at the full
    budget; the resumed driver reattaches to that job, and SMAC then asks for the same
    configuration at its lowest rung. That was started as a second job in the same
    configuration's folder, beside the first (two trainings writing one checkpoint folder,
    the shorter one refused once the longer had passed its epochs); it is answered by the
    longer trial's outcome when it ends."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    spec = create_study(
        reg,
        workspace,
        "blood",
        name="warm1",
        n_trials=2,
        max_epochs=2,
        min_epochs=1,
        eta=2,
        parallel=2,
        space=SpaceOptions(archs=("small_cnn",)),
        initial_configs=[FAST],
        n_initial=1,
    )
    first = StudyRunner(reg, workspace, spec)
    first.optimizer(resume=False)  # SMAC's state, saved before the warm start
    (config,) = configs_from_values([FAST], first.space, "warm start")
    first.start(Untold(), Proposal(config, 2.0))  # ... and the driver dies while it trains
    (warm,) = records.study_runs(reg, "warm1")

    run_study(reg, workspace, spec, resume=True, poll_s=0.2)

    runs = records.study_runs(reg, "warm1")
    same = [r for r in runs if r.config["config_key"] == warm.config["config_key"]]
    assert [(r.id, r.budget) for r in same] == [(warm.id, 2.0)], [
        (r.id, r.budget, r.status) for r in runs
    ]
    assert same[0].status == records.OK


@pytest.mark.parametrize("driver_stops", [True, False])
def test_a_final_training_cancelled_with_its_driver_runs_on_resume(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, driver_stops: bool
) -> None:
    """The study's driver (a pipeline's automl stage) is cancelled during the final training
    of the best configuration, and its trial job with it (`runs list` records that run
    `cancelled`). The resumed study skipped the final training, taking the cancelled run for
    one that had trained to the full budget, and registered the shorter one as the best; the
    final training now continues (its run, from its checkpoint). A final training a user
    cancelled while its driver went on to finish the study stays cancelled: a resume of a
    finished study only reports it."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    # The epoch budget caps the warm start's first training at 1 epoch, below --max-epochs.
    spec = tiny_study(
        reg, workspace, "blood", "fin1", optimizer="smac", n_trials=2, max_epochs=2,
        eta=2, budget_epochs=1, final_full_budget=True, executor="debug",
    )  # fmt: skip
    cancelled: list[int] = []
    run_untold = StudyRunner.run_untold

    def cancelled_with_the_driver(
        self: StudyRunner, proposal: Proposal, run_id: int | None = None
    ) -> None:
        if proposal.origin != FINAL_ORIGIN:
            return run_untold(self, proposal, run_id)
        config = {**proposal.values, "config_key": proposal.key, "origin": proposal.origin}
        cancelled.append(_cancelled_with_driver(reg, spec, "fin1", config, proposal.epochs, 1))
        if driver_stops:
            raise KeyboardInterrupt  # the driver stops with it

    monkeypatch.setattr(StudyRunner, "run_untold", cancelled_with_the_driver)
    if driver_stops:
        with pytest.raises(KeyboardInterrupt):
            run_study(reg, workspace, spec, poll_s=0.1)
    else:
        run_study(reg, workspace, spec, poll_s=0.1)
    monkeypatch.undo()

    result = run_study(reg, workspace, spec, resume=True, poll_s=0.1)

    (final,) = cancelled
    runs = records.study_runs(reg, "fin1")
    status = records.OK if driver_stops else records.CANCELLED
    assert [(r.id, r.status) for r in runs if r.budget == 2] == [(final, status)], [
        (r.id, r.budget, r.status) for r in runs
    ]
    assert result.model_name == "fin1-best"


def test_a_warm_start_cancelled_with_its_driver_trains_on_resume(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver is cancelled during the warm start's first training (the top recommended
    configuration at the full budget), its job with it. The resumed study skipped it as
    trained and told SMAC, asking for it at the lowest rung, that it crashed: the top
    recommendation never trained. It goes on now, under its own run."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(
        reg, workspace, "blood", "ws1", optimizer="smac", n_trials=2, max_epochs=2,
        eta=2, executor="debug",
    )  # fmt: skip
    stopped: list[int] = []

    def cancelled_with_the_driver(
        self: StudyRunner, proposal: Proposal, run_id: int | None = None
    ) -> None:
        config = {**proposal.values, "config_key": proposal.key, "origin": proposal.origin}
        stopped.append(_cancelled_with_driver(reg, spec, "ws1", config, proposal.epochs, 0))
        raise KeyboardInterrupt  # the driver stops with it

    monkeypatch.setattr(StudyRunner, "run_untold", cancelled_with_the_driver)
    with pytest.raises(KeyboardInterrupt):
        run_study(reg, workspace, spec, poll_s=0.1)
    monkeypatch.undo()

    run_study(reg, workspace, spec, resume=True, poll_s=0.1)

    (warm,) = stopped
    runs = {r.id: r for r in records.study_runs(reg, "ws1")}
    assert (runs[warm].status, runs[warm].budget) == (records.OK, 2.0), [
        (r.id, r.budget, r.status) for r in runs.values()
    ]
    assert runs[warm].config["origin"] == WARM_ORIGIN


def test_a_final_training_that_finished_just_before_its_cancel_is_not_run_again(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final training's job wrote its result, then was cancelled with its driver before
    it exited (recorded `cancelled`): the resumed study records that result, as it does for
    a trial of the search, rather than submit the training again."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(
        reg, workspace, "blood", "fin2", optimizer="smac", n_trials=2, max_epochs=2,
        eta=2, budget_epochs=1, final_full_budget=True, executor="debug",
    )  # fmt: skip
    run_untold = StudyRunner.run_untold

    def finished_then_cancelled(
        self: StudyRunner, proposal: Proposal, run_id: int | None = None
    ) -> None:
        run_untold(self, proposal, run_id)
        if proposal.origin == FINAL_ORIGIN:
            final = records.study_runs(reg, "fin2")[-1]
            records.finish_run(
                reg, final.id, status=records.CANCELLED, cost_s=1.0, error="cancelled",
                metrics={"cause": "cancelled", "state": "CANCELLED", "start_epoch": 1},
            )  # fmt: skip
            raise KeyboardInterrupt  # the driver stops with it

    monkeypatch.setattr(StudyRunner, "run_untold", finished_then_cancelled)
    with pytest.raises(KeyboardInterrupt):
        run_study(reg, workspace, spec, poll_s=0.1)
    monkeypatch.undo()
    with reg.session() as s:
        jobs = s.query(Job).count()

    run_study(reg, workspace, spec, resume=True, poll_s=0.1)

    final = records.study_runs(reg, "fin2")[-1]
    assert (final.budget, final.status) == (2.0, records.OK)
    assert final.metrics["epochs"] == 2
    with reg.session() as s:
        assert s.query(Job).count() == jobs  # its result recorded, not trained again


@pytest.mark.timeout(600)
def test_a_second_resume_does_not_train_a_warm_start_beside_its_job_still_out(
    workspace: Workspace,
) -> None:
    """As above, but the resumed driver had asked SMAC for the warm start's configuration at
    its lowest rung (waiting for the full-budget job) and was killed too: a second resume
    settles SMAC's running trials before it reattaches to the warm start's job, and started
    that repeat as a second job in the same configuration's folder."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    spec = create_study(
        reg, workspace, "blood", name="warm2", n_trials=2, max_epochs=2, min_epochs=1, eta=2,
        parallel=2, space=SpaceOptions(archs=("small_cnn",)), initial_configs=[FAST],
        n_initial=1,
    )  # fmt: skip
    first = StudyRunner(reg, workspace, spec)
    opt = first.optimizer(resume=False)
    (config,) = configs_from_values([FAST], first.space, "warm start")
    first.start(Untold(), Proposal(config, 2.0))  # the warm start's job, still out
    repeat = opt.ask()  # asked by a resumed driver, which then died waiting
    (warm,) = records.study_runs(reg, "warm2")
    assert (repeat.key, repeat.epochs) == (warm.config["config_key"], 1)

    run_study(reg, workspace, spec, resume=True, poll_s=0.2)

    runs = records.study_runs(reg, "warm2")
    same = [r for r in runs if r.config["config_key"] == warm.config["config_key"]]
    assert [(r.id, r.budget, r.status) for r in same] == [(warm.id, 2.0, records.OK)], [
        (r.id, r.budget, r.status) for r in runs
    ]


def test_a_final_training_a_user_cancels_after_a_resume_is_not_run_again(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver stops while the final training's job is out; the resumed driver takes that
    job on, and a user cancels it while it watches (`pomlia jobs cancel`). As in a driver that
    never stopped, the study ends without it: it was trained once more, from its checkpoint,
    taken for one cancelled with an earlier driver."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(
        reg, workspace, "blood", "fin3", optimizer="smac", n_trials=2, max_epochs=2,
        eta=2, budget_epochs=1, final_full_budget=True, executor="debug",
    )  # fmt: skip
    run_untold = StudyRunner.run_untold

    def out_when_the_driver_stops(
        self: StudyRunner, proposal: Proposal, run_id: int | None = None
    ) -> None:
        if proposal.origin != FINAL_ORIGIN:
            return run_untold(self, proposal, run_id)
        config = {**proposal.values, "config_key": proposal.key, "origin": proposal.origin}
        records.create_run(
            reg, task_id=spec.task_id, study="fin3", config=config, epochs=proposal.epochs,
            dataset_version_id=spec.dataset_version_id, encoder_id=None,
        )  # fmt: skip
        raise KeyboardInterrupt  # the driver stops; the final training's job is out

    monkeypatch.setattr(StudyRunner, "run_untold", out_when_the_driver_stops)
    with pytest.raises(KeyboardInterrupt):
        run_study(reg, workspace, spec, poll_s=0.1)
    monkeypatch.undo()
    (final,) = [r for r in records.study_runs(reg, "fin3") if r.budget == 2]
    started: list[int] = []

    def cancelled_by_a_user(
        self: StudyRunner, opt: Untold, proposal: Proposal, run_id: int | None = None
    ) -> None:
        assert proposal.origin == FINAL_ORIGIN and run_id == final.id
        started.append(run_id)  # its job, cancelled while the driver watches
        cause = "cancelled (scancel or preemption)"
        self.record_crash(opt, run_id, proposal, cause, cause, 1.0, state="CANCELLED")

    monkeypatch.setattr(StudyRunner, "start", cancelled_by_a_user)
    result = run_study(reg, workspace, spec, resume=True, poll_s=0.1)

    assert started == [final.id]  # not trained again after the user's cancel
    runs = records.study_runs(reg, "fin3")
    assert [(r.id, r.status) for r in runs if r.budget == 2] == [(final.id, records.CANCELLED)]
    assert result.model_name == "fin3-best"


def test_no_final_training_for_a_best_whose_full_budget_trial_a_user_cancelled(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best configuration's trial of the search at the full budget was cancelled by a user
    (SMAC told it crashed); the final training skipped it, as one trained to the full budget
    already, until the final training's resume took any cancelled run for one never ended."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(
        reg, workspace, "blood", "fin4", optimizer="smac", n_trials=2, max_epochs=2,
        eta=2, final_full_budget=True, executor="debug",
    )  # fmt: skip
    runner = StudyRunner(reg, workspace, spec)
    (config,) = configs_from_values([FAST], runner.space, "initial configurations")
    for epochs in (1, 2):
        proposal = Proposal(config, float(epochs))
        values = {**proposal.values, "config_key": proposal.key, "origin": "Initial design"}
        run_id = records.create_run(
            reg, task_id=spec.task_id, study="fin4", config=values, epochs=epochs,
            dataset_version_id=spec.dataset_version_id, encoder_id=None,
        )  # fmt: skip
        if epochs == 1:
            split = {spec.metric: 0.8}
            records.finish_run(
                reg, run_id, status=records.OK, cost_s=1.0,
                metrics={"val": split, "test": split, "epochs": 1, "start_epoch": 0},
            )  # fmt: skip
        else:
            cause = "cancelled (scancel or preemption)"
            records.finish_run(
                reg, run_id, status=records.CANCELLED, cost_s=1.0, error=cause,
                metrics={"cause": cause, "state": "CANCELLED", "start_epoch": 1},
            )  # fmt: skip
    for run in records.study_runs(reg, "fin4"):
        runner.views[run.id] = view_of_run(reg, run, spec.metric)
    trained: list[Proposal] = []
    monkeypatch.setattr(
        StudyRunner, "run_untold", lambda self, proposal, run_id=None: trained.append(proposal)
    )

    runner.train_best_to_full_budget()

    assert trained == []


def test_a_warm_start_cancelled_while_its_repeat_waited_trains_on_resume(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed driver had asked SMAC for the warm start's configuration at its lowest rung,
    waiting for the warm start's full-budget job, and was cancelled with that job (recorded
    `cancelled` by `runs list`). The next resume told SMAC that repeat crashed, from the
    cancelled run: the top recommendation's first result was a crash that never happened.
    The warm start goes on under its own run, and its outcome answers the repeat."""
    reg = Registry.open(workspace.db_url)
    tiny_task(workspace, reg, "blood", sizes=(16, 8, 8))
    spec = tiny_study(
        reg, workspace, "blood", "ws2", optimizer="smac", n_trials=2, max_epochs=2,
        eta=2, parallel=2, executor="debug",
    )  # fmt: skip
    first = StudyRunner(reg, workspace, spec)
    opt = first.optimizer(resume=False)
    (config,) = configs_from_values([FAST], first.space, "initial configurations")
    warm = Proposal(config, 2.0)
    values = {**warm.values, "config_key": warm.key, "origin": WARM_ORIGIN}
    warm_id = _cancelled_with_driver(reg, spec, "ws2", values, 2, 0)
    repeat = opt.ask()  # waiting for the warm start when the driver was cancelled
    assert (repeat.key, repeat.epochs) == (warm.key, 1)
    told: list[tuple[str, int, bool]] = []
    tell = SmacHyperband.tell

    def noted(self: SmacHyperband, proposal: Proposal, cost: float, **kw: Any) -> None:
        told.append((proposal.key, proposal.epochs, kw["crashed"]))
        tell(self, proposal, cost, **kw)

    monkeypatch.setattr(SmacHyperband, "tell", noted)

    run_study(reg, workspace, spec, resume=True, poll_s=0.1)

    runs = {r.id: r for r in records.study_runs(reg, "ws2")}
    assert (runs[warm_id].status, runs[warm_id].budget) == (records.OK, 2.0)
    assert (warm.key, 1, False) in told and (warm.key, 1, True) not in told, told
