"""The study's specification: the options a user gives (:class:`StudyOptions`, checked here, not
only in the CLI) and the specification saved once as ``study.json`` (:class:`StudySpec`, read
back strictly: an unknown or mistyped key is one error naming the file and the key)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError, model_validator

from pomlia_hpc.automl.folders import (
    SPEC_FILE,
    owning_pipeline,
    spec_files,
    study_dir,
    study_finished,
)
from pomlia_hpc.automl.options import EngineOptions, WeightSource, check_engine_options
from pomlia_hpc.automl.space import SpaceOptions, check_space_options
from pomlia_hpc.cluster.resources import check_local_gpus, with_overrides
from pomlia_hpc.config import load_cluster_profile, validate_model
from pomlia_hpc.errors import ConfigError, InputError, NotFoundError
from pomlia_hpc.files import write_json_atomic
from pomlia_hpc.names import validate_name
from pomlia_hpc.workspace import Workspace

#: Longest study name (its best model is ``<study>-best``, at most 128).
STUDY_NAME_MAX = 96
OPTIMIZERS = ("smac", "random")
#: The largest study seed: SMAC and the search space seed numpy (32 bits).
SEED_MAX = 2**32 - 1
#: The most trials, epochs or parallel jobs a study may ask for.
STUDY_COUNT_MAX = 1_000_000
#: The name of a loop run's study (and task): ``<slot>-loop<run id>``.
_LOOP_NAME = re.compile(r".+-loop(\d+)")


class StudyOptions(BaseModel):
    """What a user chooses for a study; :meth:`checked` turns the first problem into one
    :class:`~pomlia_hpc.errors.InputError` line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    n_trials: StrictInt = 20
    max_epochs: StrictInt = 9
    min_epochs: StrictInt = 1
    eta: StrictInt = 3
    parallel: StrictInt = 2
    executor: str = "local"
    optimizer: str = "smac"
    seed: StrictInt = 0
    budget_epochs: StrictInt | None = None
    n_initial: StrictInt | None = None
    resources: dict[str, Any] = {}
    encoder: str | None = None
    init_model: str | None = None
    extra_data: StrictBool = False
    recent_share: float | None = None

    @model_validator(mode="after")
    def _rules(self) -> StudyOptions:
        if self.name is not None:
            validate_name("study", self.name, max_len=STUDY_NAME_MAX)
        for key in ("n_trials", "max_epochs", "min_epochs", "eta", "parallel", "budget_epochs"):
            value = getattr(self, key)
            low = 2 if key == "eta" else 1
            if value is not None and value < low:
                raise ValueError(f"{option_name(key)} {value}: expected an integer >= {low}")
            # Past any study (`--trials 10**20` crashed in SMAC's initial design, its folder
            # already written): a million trials, epochs or parallel jobs.
            if value is not None and value > STUDY_COUNT_MAX:
                raise ValueError(
                    f"{option_name(key)} {value}: expected an integer from {low} to "
                    f"{STUDY_COUNT_MAX:,}"
                )
        if not 0 <= self.seed <= SEED_MAX:  # numpy's and ConfigSpace's seeds: 32 bits
            raise ValueError(f"--seed {self.seed}: expected an integer from 0 to {SEED_MAX}")
        if self.min_epochs > self.max_epochs:
            raise ValueError(
                f"--min-epochs {self.min_epochs} is larger than --max-epochs {self.max_epochs}"
            )
        if self.recent_share is not None and not 0 < self.recent_share < 1:
            raise ValueError(
                f"--recent-share {self.recent_share}: expected a fraction strictly between 0 and 1"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"--optimizer {self.optimizer!r}: not an optimizer; expected smac or random"
            )
        if self.extra_data and self.encoder is None:
            raise ValueError("extra data needs an encoder (the fingerprint index to search)")
        gpus = self.resources.get("gpus_per_node")
        if gpus is not None and not 0 <= gpus <= 1:
            # One process per trial (tasks_per_node=1) trains on one GPU: more would sit idle.
            raise ValueError(
                f"gpus_per_node={gpus}: expected 0 or 1; a trial trains on one GPU (multi-GPU "
                "trials need one process per GPU, which is not supported yet)"
            )
        return self

    @classmethod
    def checked(cls, **values: Any) -> StudyOptions:
        """Validated options; the first problem as one :class:`InputError` line."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "value_error":
                raise InputError(msg) from exc
            key = option_name(".".join(str(p) for p in err["loc"]))
            raise InputError(f"{key} {err.get('input')!r}: {msg}") from exc


#: Options whose command-line flag is not their field's name.
FLAGS = {"n_trials": "--trials"}


def option_name(field: str) -> str:
    """The command-line flag of a study option (the same key in a pipeline's ``automl:``)."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def check_study_options(
    *, engine: EngineOptions | None = None, space: SpaceOptions | None = None, **values: Any
) -> StudyOptions:
    """The checks a study's options get before anything is made (:func:`create_study` and
    ``pomlia loop run``/``watch`` before their first stage): :class:`StudyOptions`'
    ``values``, ``engine``, the cluster profile named ``executor`` and its ``resources``
    overrides, and ``space``'s architectures. The first problem is one :class:`InputError`
    or :class:`ConfigError` line."""
    options = StudyOptions.checked(**values)
    eng = engine or EngineOptions()
    check_engine_options(eng)  # now, not as every trial crashes on it
    profile = load_cluster_profile(options.executor)  # fails early, naming the known profiles
    # A bad trial resource now, not at submission; a GPU this machine lacks (local executor)
    # now, not as a crashed run that the recommender then counts as the strategy's failure.
    trial = with_overrides(profile, options.resources)
    asked = "--device cuda" if eng.device == "cuda" else f"--gpus {trial.gpus_per_node}"
    check_local_gpus(trial, cuda=eng.device == "cuda", what=asked)
    if space is not None:
        check_space_options(space)
    return options


class StudySpec(BaseModel):
    """Everything that defines a study (``study.json``); a resumed study reads it back.

    ``options``: what the user chose (as validated then); the rest is what creating the study
    derived from them: the task and its dataset, how trials run (``engine``), the search space,
    the initial weights prepared for ``init=encoder`` / ``init=model`` (``encoder``,
    ``init_model``) and the warm-start configurations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    options: StudyOptions
    name: str
    task: str
    task_id: int
    metric: str
    task_type: str
    dataset_version_id: int
    dataset: str
    store_path: str
    engine: EngineOptions = EngineOptions()
    space: SpaceOptions = SpaceOptions()
    encoder: WeightSource | None = None
    init_model: WeightSource | None = None
    initial_configs: list[dict[str, Any]] = []
    #: Why ``drop_unfit_initial`` left warm-start configurations out: each one that did not fit
    #: the space, then (SMAC) how many fitting ones came after the first ``n_trials``.
    dropped_initial: list[str] = []
    #: What the initial weights' lineage cannot tell (``lineage unknown``: a model registered
    #: by hand or before a lineage field existed), one warning each, shown when the study
    #: starts (:func:`pomlia_hpc.automl.seen_init.refuse_seen_init`).
    lineage_warnings: list[str] = []
    final_full_budget: bool = False
    #: Harvested training rows (the last ``recent_rows`` of the train split) and their share of
    #: each epoch (:mod:`pomlia_hpc.automl.sampling`); ``None``: plain shuffling.
    recent_rows: int = 0
    recent_share: float | None = None
    created_at: str = ""
    #: The pipeline whose automl stage created the study (resumed by running that pipeline
    #: again); None: made by ``automl run`` or the loop. Always written, so that a file
    #: without the key is one made before owners were recorded
    #: (:func:`~pomlia_hpc.automl.folders.owning_pipeline`).
    pipeline: str | None = None
    #: The loop run whose automl stage created the study (resumed by resuming that loop run,
    #: ``pomlia loop run SLOT``); None: not made by the loop. Studies made before it was
    #: recorded are told by their name and task, both ``<slot>-loop<run>``.
    loop_run: int | None = None
    #: What the driver that created the study ran with (:func:`pomlia_hpc.provenance.
    #: software`): the versions a repeat of the study needs; each trial records its own.
    software: dict[str, Any] = {}

    @property
    def extra_encoder(self) -> str | None:
        """The encoder whose index offers extra data, or None (no extra data)."""
        return self.options.encoder if self.options.extra_data else None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def read_spec(path: Path) -> StudySpec:
    """The specification in ``path``; a bad file is one error naming it and the key."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "options" not in data:
        data = _from_flat(data)
    return validate_model(StudySpec, json.dumps(data), str(path), error=ConfigError, strict=True)


def _from_flat(data: dict[str, Any]) -> dict[str, Any]:
    """A ``study.json`` written before the spec held the options (their keys at the top
    level, ``extra_encoder`` for the encoder whose index offers extra data), as it is now."""
    data = dict(data)
    mine = set(StudyOptions.model_fields) - {"name", "encoder", "init_model", "extra_data"}
    options = {k: data.pop(k) for k in mine if k in data}
    extra = data.pop("extra_encoder", None)
    options["name"] = data.get("name")
    for key in ("encoder", "init_model"):
        if isinstance(data.get(key), dict):
            options[key] = data[key].get("name")
    if extra is not None:
        options.update(encoder=extra, extra_data=True)
    return {**data, "options": options}


def load_spec(workspace: Workspace, name: str, task: str | None = None) -> StudySpec:
    """The saved specification of study ``name``; with ``task`` (a task's name or id, as
    ``automl run TASK --study NAME --resume`` gives it), refused as an :class:`InputError`
    when the study is another task's: resumed, it would train that task's data silently."""
    # A name, not a path: `--study ../runs/s1 --resume` read another folder's study.
    validate_name("study", name, max_len=STUDY_NAME_MAX)
    path = study_dir(workspace, name) / SPEC_FILE
    if not path.is_file():
        raise NotFoundError(f"study '{name}' does not exist (no {path})")
    spec = read_spec(path)
    if task is not None and task not in (spec.task, str(spec.task_id)):
        raise InputError(
            f"study '{name}' is a study of task '{spec.task}', not of task '{task}'; resume "
            f"it with `pomlia automl run {shlex.quote(spec.task)} --study {shlex.quote(name)} "
            "--resume`"
        )
    return spec


def latest_study(workspace: Workspace, task: str) -> str:
    """The newest study of ``task`` in this workspace."""
    studies = _task_studies(workspace, task)
    return studies[0][1]


def study_to_resume(workspace: Workspace, task: str) -> tuple[str, str]:
    """The study of ``task`` that ``--resume`` without ``--study`` takes up, and a note ("" or
    why it is not the newest): the newest study not finished (no ``summary.json``: stopped,
    interrupted, its runs stale), else the newest. A finished newest study beside an
    unfinished older one would only report its result again and leave the other stale.

    Only studies of ``automl run`` count: one a pipeline or a loop run made is resumed by that
    pipeline or loop run (resumed here, it would start trials nobody asked for). An
    :class:`InputError` naming them when the task has no other."""
    found = _task_studies(workspace, task)
    studies = [(at, name) for at, name, owner in found if not owner]
    if not studies:
        owned = ", ".join(f"{name} ({owner})" for _, name, owner in found)
        raise InputError(
            f"task '{task}' has no study of `automl run` to resume; its studies belong to a "
            f"pipeline or a loop run, which resume them: {owned}. Name one with --study NAME "
            "--resume to take it up all the same"
        )
    newest = studies[0][1]
    unfinished = [name for _, name in studies if not study_finished(workspace, name)]
    if not unfinished or unfinished[0] == newest:
        return newest, ""
    return unfinished[0], (
        f"resuming study {unfinished[0]}, the newest of task '{task}' that has not finished; "
        f"the newest, {newest}, has finished (--study {newest} --resume to take it instead)"
    )


def _task_studies(workspace: Workspace, task: str) -> list[tuple[str, str, str]]:
    """(created_at, name, owner) of the studies of ``task`` (a task's name or id, as
    ``automl run TASK`` takes it), newest first; the owner is "" for a study of ``automl
    run``, else "pipeline P" or "loop run N". NotFoundError if none."""
    found: list[tuple[str, str, str]] = []
    for spec_file in spec_files(workspace):
        data = _spec_json(spec_file)
        if task in (data.get("task"), str(data.get("task_id"))):
            name = str(data["name"])
            owner = _owner(workspace, name, data)
            found.append((str(data.get("created_at", "")), name, owner))
    if not found:
        raise NotFoundError(f"no study of task '{task}' to resume in {workspace.path('runs')}")
    return sorted(found, reverse=True)


def _spec_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a study's ``study.json``), or one :class:`ConfigError`
    naming the file: any study's damaged file (edited by hand, cut by a full disk) stops the
    look for a task's study to resume, and names the way round it."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        problem = f"not readable as JSON ({exc})"
    else:
        if isinstance(data, dict):
            return data
        problem = f"expected a JSON object, got {type(data).__name__}"
    raise ConfigError(
        f"{path}: {problem}; the study to resume cannot be chosen among the workspace's "
        "studies: name it with --study NAME, or repair or remove that file"
    )


def _owner(workspace: Workspace, name: str, data: dict[str, Any]) -> str:
    """Who made study ``name`` (its ``study.json`` as ``data``), if not ``automl run``."""
    pipeline = owning_pipeline(workspace, name)
    if pipeline is not None:
        return f"pipeline {pipeline}"
    if "loop_run" in data:
        run = data["loop_run"]
        return f"loop run {run}" if run is not None else ""
    # Made before the loop run was recorded: the loop names its task and study <slot>-loop<run>.
    legacy = _LOOP_NAME.fullmatch(name)
    if legacy and str(data.get("task")) == name[:64]:
        return f"loop run {legacy.group(1)}"
    return ""


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (:func:`~pomlia_hpc.files.write_json_atomic`)."""
    write_json_atomic(path, data)
