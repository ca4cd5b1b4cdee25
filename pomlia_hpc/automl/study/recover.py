"""Recovery on ``--resume``: settle each trial that was out when the previous driver stopped.

Told already: nothing to do. Recorded but not told: tell the optimiser. Its job finished while
the driver was away: collect the result (or record the crash). Its job still runs: attach to it
(:mod:`pomlia_hpc.cluster.attach`) and wait. Cancelled, lost or never submitted: submit it again;
it continues from its last epoch checkpoint, so no finished trial runs twice.
"""

from __future__ import annotations

import time
from dataclasses import replace

from pomlia_hpc.automl import records
from pomlia_hpc.automl.metrics import objective_cost
from pomlia_hpc.automl.optimizers import Proposal, SearchOptimizer
from pomlia_hpc.automl.space import configs_from_values
from pomlia_hpc.automl.study.trialjobs import ActiveTrial, attach_trial_job, trial_wall_s
from pomlia_hpc.automl.study.trials import TrialRunner
from pomlia_hpc.automl.study.view import job_name, view_of_run
from pomlia_hpc.automl.trial import read_result
from pomlia_hpc.cluster.attach import poll_attached
from pomlia_hpc.errors import PomliaError

#: Keys of a run's recorded configuration that are not hyperparameters.
RUN_ONLY_KEYS = ("config_key", "origin", "smac_budget", "engine")


def recover_trial(runner: TrialRunner, opt: SearchOptimizer, proposal: Proposal) -> None:
    """Settle a trial of ``runner`` that was out when the previous driver stopped."""
    run = runner.known.pop((proposal.key, proposal.epochs), None)
    if run is None:  # asked, but the driver died before recording it
        if not runner.answer_repeat(opt, proposal):  # (or settled already: its outcome)
            runner.start(opt, proposal)
        return
    if run.status in (records.OK, records.CRASHED):
        # The cost every reader sees (an old ok run's is its Slurm job's Start to End).
        cost = records.job_run_cost_s(run, records.job_of(runner.registry, run.job_id)) or 0.0
    if run.status == records.OK:  # recorded, but not yet told
        m = dict(run.metrics or {})
        opt.tell(proposal, objective_cost(m["val"], runner.spec.metric), crashed=False, time_s=cost)
        return
    if run.status == records.CRASHED:
        opt.tell(proposal, 1.0, crashed=True, time_s=cost)
        return
    if run.status == records.CANCELLED:  # cancelled with its driver: it never had its chance
        _, _, result_path = runner.paths(proposal.key, proposal.epochs, run.id)
        result = read_result(result_path)
        if result is not None:  # it finished just before the cancel
            wall = trial_wall_s(
                runner.registry, run.job_id, result_path, default=float(result["cost_s"])
            )
            runner.record_ok(opt, run.id, proposal, result, wall)
        else:
            runner.start(opt, proposal, run_id=run.id)  # continues from its last checkpoint
        return
    _, _, result_path = runner.paths(proposal.key, proposal.epochs, run.id)
    job = records.job_of(runner.registry, run.job_id)
    if job is None and run.job_id is None and run.status == records.PENDING:
        # Perhaps submitted, but the driver stopped before linking the job to its run.
        job = records.newest_job_named(
            runner.registry, job_name(runner.spec.name, run.id), str(runner.executor.folder)
        )
        if job is not None:
            start = int(dict(run.metrics or {}).get("start_epoch", 0))
            records.mark_running(runner.registry, run.id, job.id, start_epoch=start)
    if job is None:
        result = read_result(result_path)
        if result is not None:  # finished while the driver was away
            wall = trial_wall_s(runner.registry, None, result_path, default=float(result["cost_s"]))
            runner.record_ok(opt, run.id, proposal, result, wall)
        else:  # never submitted, or refused: submit it now
            runner.start(opt, proposal, run_id=run.id)
        return
    orphan = attach_trial_job(runner.registry, job, result_path)
    act = ActiveTrial(run.id, proposal, orphan, time.time(), result_path, opt)
    runner.active[run.id] = act
    runner.views[run.id] = replace(
        view_of_run(runner.registry, run, runner.spec.metric),
        status=records.RUNNING,
        job=str(job.id),
    )
    if not result_path.is_file():
        poll_attached([orphan])
    if not orphan.done():
        return  # still queued or training (or the scheduler could not say): wait for it
    del runner.active[run.id]
    if orphan.lost(cancelled_too=True):
        # Cancelled or forgotten while nobody watched: the trial never had its chance.
        orphan.forget("trial")
        runner.start(opt, proposal, run_id=run.id)  # continues from its last checkpoint
        return
    runner.collect(opt, act)  # its result, or a crash (failed, timed out, out of memory)


def recover_untracked(runner: TrialRunner, opt: SearchOptimizer) -> None:
    """Settle the trials the registry holds as out (running or pending) that the optimiser's
    saved state does not know (a state saved before them, or lost): their jobs are waited for
    and their outcome recorded, as :func:`recover_trial` does, but told to ``opt`` (which may
    tell nothing), not to the study's optimiser. Without this a resumed study would end at once
    with such a trial ``running`` for good."""
    for (key, epochs), run in list(runner.known.items()):
        if run.status not in (records.RUNNING, records.PENDING):
            continue
        values = {k: v for k, v in (run.config or {}).items() if k not in RUN_ONLY_KEYS}
        try:
            config = configs_from_values([values], runner.space, f"run {run.id}")[0]
        except PomliaError:
            continue  # not of this study's space: nothing to train it again with
        config.origin = (run.config or {}).get("origin")
        proposal = Proposal(config, float(run.budget or epochs))
        if (proposal.key, proposal.epochs) == (key, epochs):
            recover_trial(runner, opt, proposal)
