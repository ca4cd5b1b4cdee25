"""An AutoML study: its specification, saved once, and the driver that runs it.

The package, one concern per module: :mod:`.spec` (options and ``study.json``), :mod:`.create`,
:mod:`.trials` (submit, collect, record one trial), :mod:`.driver` (the ask → submit → collect →
tell loop), :mod:`.recover` (``--resume``), :mod:`.view` (the live table), :mod:`.outcome`
(best model, ``summary.json``).

A study lives in ``<home>/runs/<study>/``::

    study.json               the specification (:class:`StudySpec`), written at creation
    smac/smac/<seed>/        SMAC's state (or random_search.json), saved after every ask/tell
    configs/<key>/           one folder per configuration: checkpoints (shared by its budgets,
                             removed when the study finishes: study.footprint),
                             model-e<E>.pt (the classifier trained to E epochs)
    trials/run-<id>/         result.json of each trial job
    init/, extra/            weights and extra images prepared for the jobs
    summary.json             written when the study finishes

The driver (:class:`StudyRunner`) asks the optimiser for trials, submits up to ``parallel`` at a
time through the cluster layer, records each as a registry run (:mod:`.records`), tells the
optimiser the outcome (a failed, cancelled, timed-out or out-of-memory job is ``crashed``, with
its cause and traceback kept) and goes on. A job the scheduler refuses stops the study (the run
is ``submit_failed``) until ``resume``. With ``resume`` it reloads the optimiser, adopts the
results of trials that finished while it was away, records those whose jobs failed (failed,
out of memory, timed out) as crashed, reattaches to jobs still queued or running, and resubmits
the ones cancelled, lost or never submitted (they continue from their last epoch checkpoint), so
no finished trial runs twice. At the end the best configuration's model is registered with its
lineage.
"""

from pomlia_hpc.automl.folders import SPEC_FILE, SUMMARY_FILE, study_dir, study_names
from pomlia_hpc.automl.study.create import create_study
from pomlia_hpc.automl.study.driver import StudyRunner, run_study
from pomlia_hpc.automl.study.spec import (
    StudyOptions,
    StudySpec,
    check_study_options,
    latest_study,
    load_spec,
    read_spec,
    study_to_resume,
)
from pomlia_hpc.automl.study.trialjobs import ActiveTrial, attach_trial_job, attached_result
from pomlia_hpc.automl.study.trials import ORPHAN_POLL_S, TrialRunner, UpdateFn
from pomlia_hpc.automl.study.view import (
    ENDED,
    StudyResult,
    StudyView,
    TrialLog,
    TrialView,
    job_name,
    trial_line,
)

__all__ = [
    "ENDED",
    "ORPHAN_POLL_S",
    "SPEC_FILE",
    "SUMMARY_FILE",
    "ActiveTrial",
    "StudyOptions",
    "StudyResult",
    "StudyRunner",
    "StudySpec",
    "StudyView",
    "TrialLog",
    "TrialRunner",
    "TrialView",
    "UpdateFn",
    "attach_trial_job",
    "attached_result",
    "check_study_options",
    "create_study",
    "job_name",
    "latest_study",
    "load_spec",
    "read_spec",
    "run_study",
    "study_dir",
    "study_names",
    "study_to_resume",
    "trial_line",
]
