"""Creating a study: check the options, prepare the initial weights, write ``study.json``."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pomlia_hpc.automl.defined import require_defined_metric
from pomlia_hpc.automl.engine import EngineOptions
from pomlia_hpc.automl.folders import SPEC_FILE, study_dir
from pomlia_hpc.automl.liveness import CLAIM_FILE, busy_message, driver_gone, read_driver
from pomlia_hpc.automl.options import WeightSource
from pomlia_hpc.automl.space import SpaceOptions, build_space, configs_from_values, split_fitting
from pomlia_hpc.automl.study.spec import (
    StudySpec,
    check_study_options,
    write_json,
)
from pomlia_hpc.automl.tasks import check_trainable, get_task, task_dataset
from pomlia_hpc.config import load_cluster_profile
from pomlia_hpc.data.store import open_store
from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.files import (
    TEMP_SUFFIX,
    held_lock,
    publish_dir,
    sweep_stale_temps,
    temp_name,
    temp_writer,
    writer_alive,
)
from pomlia_hpc.models.catalog import ModelNameTakenError, check_model_free
from pomlia_hpc.provenance import software
from pomlia_hpc.registry import DatasetVersion, Registry, Task
from pomlia_hpc.vocab import check_metric
from pomlia_hpc.workspace import Workspace


def create_study(
    registry: Registry,
    workspace: Workspace,
    task: str,
    *,
    name: str | None = None,
    n_trials: int = 20,
    max_epochs: int = 9,
    min_epochs: int = 1,
    eta: int = 3,
    parallel: int = 2,
    executor: str = "local",
    optimizer: str = "smac",
    seed: int = 0,
    budget_epochs: int | None = None,
    n_initial: int | None = None,
    engine: EngineOptions | None = None,
    space: SpaceOptions | None = None,
    resources: dict[str, Any] | None = None,
    encoder: str | None = None,
    init_model: str | None = None,
    extra_data: bool = False,
    initial_configs: list[dict[str, Any]] | None = None,
    initial_source: str = "initial configurations",
    initial_task: str | None = None,
    drop_unfit_initial: bool = False,
    final_full_budget: bool = False,
    recent_share: float | None = None,
    pipeline: str | None = None,
    loop_run: int | None = None,
) -> StudySpec:
    """Validate the arguments, prepare initial weights, and write the study's ``study.json``.

    ``encoder``: a fingerprint encoder (name or id) whose weights become ``init=encoder``;
    ``init_model``: a registered model whose weights become ``init=model``; ``extra_data``: offer
    nearest images from similar datasets (found with ``encoder``'s index). ``initial_configs``:
    warm-start configurations (SMAC's initial design) from ``initial_source`` (named in messages),
    for ``initial_task`` (refused unless ``task``). ``drop_unfit_initial``: leave out the warm-start
    configurations this study's space cannot hold (e.g. ``init=encoder`` where no encoder is given)
    and, with SMAC, those beyond ``n_trials``; the spec keeps the reasons in ``dropped_initial``.
    Otherwise either is an error (the random optimizer runs the first ``n_trials`` of them).
    ``final_full_budget``: train the best configuration on to ``max_epochs`` (from its checkpoint)
    after the search, outside the budget, when it trained fewer. ``recent_share``: on a harvested
    version, the share of every epoch from its production images; ``pipeline``/``loop_run``: the
    study's owner (``--resume`` without ``--study`` skips it)."""
    t, version, ref, start = _checked_task(registry, task, init_model, encoder, extra_data)
    _check_initial_task(initial_source, initial_task, t.name)
    stamp = datetime.now(UTC)
    with _study_name(workspace, name, f"{t.name}-{stamp:%Y%m%d-%H%M%S}") as name:
        options = check_study_options(
            engine=engine,
            space=space,
            name=name,
            n_trials=n_trials,
            max_epochs=max_epochs,
            min_epochs=min_epochs,
            eta=eta,
            parallel=parallel,
            executor=executor,
            optimizer=optimizer,
            seed=seed,
            budget_epochs=budget_epochs,
            n_initial=n_initial,
            resources=dict(resources or {}),
            encoder=encoder,
            init_model=init_model,
            extra_data=extra_data,
            recent_share=recent_share,
        )
        recent_rows = _recent_rows(version.meta, ref) if recent_share is not None else 0
        folder = _new_study_folder(workspace, name)
        _check_best_name_free(registry, workspace, name)
        channels = open_store(version.store_path).image_shape[2]
        with _staged_init(folder) as staged:  # copies of tens of MB: in place with study.json
            enc, model = _initial_weights(registry, staged, channels, start.encoder, init_model)
            opts = _space_options(space or SpaceOptions(), enc, model, extra_data)
            cs = build_space(opts, seed=seed)
            warm = (cs, optimizer, n_trials, drop_unfit_initial, initial_source)
            initial, dropped = _warm_start(initial_configs or [], *warm)
            eng = _engine_options(engine, resources, load_cluster_profile(executor).cpus_per_task)
            spec = StudySpec(
                options=options,
                name=name,
                **_task_fields(t, version, ref),
                engine=eng,
                space=opts,
                encoder=_placed(enc, folder),
                init_model=_placed(model, folder),
                initial_configs=initial,
                dropped_initial=dropped,
                lineage_warnings=start.warnings,
                final_full_budget=final_full_budget,
                recent_rows=recent_rows,
                recent_share=recent_share,
                **_made(stamp),
                pipeline=pipeline,
                loop_run=loop_run,
            )
            _claim_study(workspace, spec, staged)
        return spec


def _made(stamp: datetime) -> dict[str, Any]:
    """When and with what a study was made: ``created_at`` and the driver's ``software``
    (:func:`pomlia_hpc.provenance.software`), which a repeat of the study needs."""
    return {"created_at": stamp.isoformat(), "software": software()}


#: Generated names tried per start: ``TASK-TIME``, then ``TASK-TIME-2`` and on.
NAME_TRIES = 100


@contextlib.contextmanager
def _study_name(workspace: Workspace, chosen: str | None, generated: str) -> Iterator[str]:
    """The study's name: ``chosen``, or for a study not named by the user the first of
    ``generated``, ``generated-2``, ... whose folder this call could make (``mkdir`` is atomic,
    so two starts in the same second never get one name, and never hear that a name they did
    not choose exists). A start refused afterwards removes the folder it made, when empty."""
    if chosen is not None:
        yield chosen
        return
    root = study_dir(workspace, generated).parent
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, NAME_TRIES + 1):
        name = generated if k == 1 else f"{generated}-{k}"
        try:
            study_dir(workspace, name).mkdir()
        except FileExistsError:
            continue  # another study, or another start of this second, has it
        try:
            yield name
        except BaseException:
            with contextlib.suppress(OSError):  # not empty: keep what is there
                study_dir(workspace, name).rmdir()
            raise
        return
    raise PomliaError(
        f"studies {generated} to {generated}-{NAME_TRIES} all exist: name this one with --study"
    )


def _check_initial_task(source: str, written_for: str | None, task: str) -> None:
    """Refuse warm-start configurations written for another task than ``task`` (a file of
    ``pomlia recommend OTHER --write-initial``: recommended for another data set)."""
    if written_for is not None and written_for != task:
        raise InputError(
            f"{source} was written for task '{written_for}', not for task '{task}': its "
            "configurations were recommended for another data set; write one for this task "
            f"with `pomlia recommend {task} --write-initial FILE`"
        )


def _task_fields(t: Task, version: DatasetVersion, ref: str) -> dict[str, Any]:
    """The fields of a :class:`StudySpec` that name its task and that task's dataset."""
    return {
        "task": t.name,
        "task_id": t.id,
        "metric": t.metric,
        "task_type": t.task_type,
        "dataset_version_id": version.id,
        "dataset": ref,
        "store_path": version.store_path,
    }


def _claim_study(workspace: Workspace, spec: StudySpec, staged_init: Path) -> None:
    """Write ``spec``'s ``study.json``, refused (nothing written) when a study of its name
    exists. Checked again under the study's lock: a start of the same name racing this one may
    have written its study.json since the first check, and one of the two must be refused,
    not overwritten. The initial weights copied into ``staged_init`` (if any) become the
    study's ``init/`` just before, under the same lock; an ``init/`` already there is a start's
    killed between the two (no study.json names it) and is replaced, or removed. An
    interruption before study.json is in place takes ``init/`` out again; one after (Ctrl-C in
    the flush that follows its rename) leaves it: the study it names exists."""
    folder = study_dir(workspace, spec.name)
    with held_lock(folder / CLAIM_FILE, f"study '{spec.name}'"):
        _new_study_folder(workspace, spec.name, racing=True)
        init = folder / INIT_DIR
        try:
            if staged_init.is_dir():
                publish_dir(staged_init, init, replace=True)
            else:
                shutil.rmtree(init, ignore_errors=True)
            write_json(folder / SPEC_FILE, spec.to_dict())
        except BaseException:
            if not (folder / SPEC_FILE).exists():  # no study claimed: its weights are no one's
                shutil.rmtree(init, ignore_errors=True)
            raise


def _check_best_name_free(registry: Registry, workspace: Workspace, name: str) -> None:
    """Refuse study ``name`` when ``<name>-best``, the model it ends by registering, is a model
    already (or a file in ``models/``): that model, not this study's, would be kept."""
    try:
        check_model_free(registry, workspace, f"{name}-best")
    except ModelNameTakenError as exc:
        raise PomliaError(
            exc.message,
            hint=f"study '{name}' registers its best model as '{name}-best'; choose another "
            "--study name (or remove that model)",
        ) from None


class _Start(NamedTuple):
    """The initial weights a study may take, as checked against its task's val/test images."""

    encoder: str | None
    """The encoder whose weights trials may start from (None: none, or it finds extra images
    only: :func:`~pomlia_hpc.automl.seen_init.encoder_for_weights`)."""
    warnings: list[str]
    """What the initial weights' lineage cannot tell, and an encoder kept for extra images."""


def _checked_task(
    registry: Registry,
    task: str,
    init_model: str | None = None,
    encoder: str | None = None,
    extra_data: bool = False,
) -> tuple[Task, DatasetVersion, str, _Start]:
    """Task ``task``, its dataset version and that version's ref, refused before any job
    starts if no trial could learn from it (a task registered before `task add` checked its
    data) or its metric is unknown or undefined on its val or test split, or when the model
    ``init_model`` or the encoder ``encoder`` (initial weights) trained on its val or test
    images (:mod:`pomlia_hpc.automl.seen_init`); last, the initial weights it may take."""
    t = get_task(registry, task)
    version, ref = task_dataset(registry, t)
    check_metric(t.metric)
    check_trainable(version.meta, ref)
    require_defined_metric(version.meta, t.metric, ref)
    # Before any folder or copy of weights is made.
    from pomlia_hpc.automl.seen_init import encoder_for_weights, refuse_seen_init

    warnings = refuse_seen_init(registry, init_model, version, ref) if init_model else []
    # An encoder that saw them is refused, or kept to find --extra-data images alone.
    weights, more = encoder_for_weights(registry, encoder, version, ref, extra_data=extra_data)
    return t, version, ref, _Start(weights, warnings + more)


def _new_study_folder(workspace: Workspace, name: str, *, racing: bool = False) -> Path:
    """The folder of study ``name``, refused when a study of that name exists: while its
    driver is at work (or, ``racing``, since this start's first check: another start of the
    same name just created it) without advice to ``--resume`` it, which that driver would
    make wait or refuse."""
    folder = study_dir(workspace, name)
    if (folder / SPEC_FILE).exists():
        driver = read_driver(workspace, name)
        if driver is not None and driver_gone(driver) is None:
            raise PomliaError(
                f"study '{name}' already exists: {busy_message(name, driver)}; choose "
                "another --study name for a new study"
            )
        if racing:
            raise PomliaError(
                f"study '{name}' was created by another `automl run` at the same time; choose "
                "another --study name"
            )
        raise PomliaError(
            f"study '{name}' already exists; pass --resume to continue it or "
            "choose another --study name"
        )
    return folder


def _engine_options(
    engine: EngineOptions | None, resources: dict[str, Any] | None, profile_cpus: int
) -> EngineOptions:
    """The engine options, their CPU threads (when not given) those of one trial's job."""
    eng = engine or EngineOptions()
    if eng.threads is None:
        cpus = (resources or {}).get("cpus_per_task") or profile_cpus
        eng = eng.model_copy(update={"threads": int(cpus)})
    return eng


def _initial_weights(
    registry: Registry,
    folder: Path,
    channels: int,
    encoder: str | None,
    init_model: str | None,
) -> tuple[WeightSource | None, WeightSource | None]:
    """(encoder weights, model weights) the study may start from, copied into ``folder``
    (the staged ``init/``); None for each not asked for."""
    enc = model = None
    if encoder is not None:
        from pomlia_hpc.automl.sources import encoder_weights

        enc = encoder_weights(registry, encoder, channels, folder / "encoder.pt")
    if init_model is not None:
        from pomlia_hpc.automl.sources import model_weights

        model = model_weights(registry, init_model, folder / "model.pt")
    return enc, model


#: The folder of a study's copies of its initial weights.
INIT_DIR = "init"


@contextlib.contextmanager
def _staged_init(folder: Path) -> Iterator[Path]:
    """The folder this start copies the study's initial weights into: a temporary name of
    its own beside ``init/`` (:func:`~pomlia_hpc.files.temp_name`, swept once its process is
    gone, a SIGTERM or SIGKILL included), which :func:`_claim_study` renames into place.
    Whatever is left of it when the block ends (a refused or interrupted start, Ctrl-C
    included) is removed, and ``folder`` too when that leaves it empty; never anything
    else, as a start of the same study name racing this one may have claimed the folder."""
    staged = temp_name(folder / INIT_DIR)
    sweep_stale_temps(folder)  # those of starts of this name killed before
    _sweep_killed_starts(folder.parent)
    # One left under this very name is a killed start's whose pid this process has now (pids
    # repeat, in a job's container often): the sweep may keep it, its writer seeming alive.
    shutil.rmtree(staged, ignore_errors=True)
    try:
        yield staged
    finally:  # an interrupted start is no study either: nothing of it stays
        shutil.rmtree(staged, ignore_errors=True)
        with contextlib.suppress(OSError):  # absent, or holds a study or another start's files
            folder.rmdir()


def _sweep_killed_starts(runs: Path) -> None:
    """Remove the copies of initial weights (``<study>/.init.<host>.<pid>.tmp``) that starts
    of any study in ``runs``, killed by a signal, left: the next start of the same name swept
    them, and a name never started again kept them for good. Only those of this host's
    writers that are gone (:func:`~pomlia_hpc.files.writer_alive`)."""
    host = socket.gethostname()
    for left in runs.glob(f"*/.{INIT_DIR}.*{TEMP_SUFFIX}"):
        pid = temp_writer(left.name, host)
        if pid is not None and not writer_alive(pid, left):
            shutil.rmtree(left, ignore_errors=True)


def _placed(source: WeightSource | None, folder: Path) -> WeightSource | None:
    """``source`` as the study records it: its file in ``folder/init/``, where
    :func:`_claim_study` puts the staged copy."""
    if source is None:
        return None
    return source.model_copy(update={"path": str(folder / INIT_DIR / Path(source.path).name)})


def _space_options(
    space: SpaceOptions, enc: WeightSource | None, model: WeightSource | None, extra_data: bool
) -> SpaceOptions:
    """The study's space: ``space``'s architectures, and the weight sources and extra images
    it was given."""
    return SpaceOptions(
        archs=space.archs,
        max_extra=space.max_extra,
        encoder_arch=enc.arch if enc else None,
        model_arch=model.arch if model else None,
        extra_data=extra_data,
    )


def _warm_start(
    initial_configs: list[dict[str, Any]],
    cs: Any,
    optimizer: str,
    n_trials: int,
    drop_unfit: bool,
    source: str = "initial configurations",
) -> tuple[list[dict[str, Any]], list[str]]:
    """(the warm-start configurations the study keeps, why each other one was left out); see
    :func:`create_study`'s ``drop_unfit_initial``."""
    initial = list(initial_configs)
    dropped: list[str] = []
    if drop_unfit:
        kept, dropped = split_fitting(initial, cs, source)
        initial = [initial[i] for i in kept]
        if optimizer == "smac" and len(initial) > n_trials:
            dropped.append(
                f"{source}: {len(initial) - n_trials} fitting one(s) after the "
                f"first {n_trials} (the study has {n_trials} trial(s))"
            )
            initial = initial[:n_trials]
    _check_warm_start(initial, cs, optimizer, n_trials, source)
    return initial, dropped


def _check_warm_start(
    initial_configs: list[dict[str, Any]],
    cs: Any,
    optimizer: str,
    n_trials: int,
    source: str = "initial configurations",
) -> None:
    """Validate the warm start now, with a message naming the entry; SMAC refuses an initial
    design larger than its trials with a bare ValueError, so that is refused here too."""
    configs_from_values(initial_configs, cs, source)
    if optimizer == "smac" and len(initial_configs) > n_trials:
        raise InputError(
            f"the warm start has {len(initial_configs)} configurations but the study "
            f"has {n_trials} trial(s): expected at most as many; give more --trials or fewer "
            "initial configurations (--recommend-k)"
        )


def _recent_rows(meta: dict[str, Any], ref: str) -> int:
    """How many training rows of a harvested version are new (an :class:`InputError` for a
    version that is not a harvest: it has no recent rows to weight)."""
    from pomlia_hpc.data.harvest import harvest_info

    info = harvest_info(meta)
    if info is None:
        raise InputError(
            f"recent-share: {ref} is not a harvested dataset version, so it has no recent "
            "production images to weight; expected a version made by `pomlia data harvest`"
        )
    rows = int((info.get("new_per_split") or {}).get("train", 0))
    if rows <= 0:
        # Without new training rows there is nothing to weight: a study that silently dropped
        # the share would train as if it had not been asked for.
        raise InputError(
            f"recent-share: {ref} is a harvest without new training images (new training "
            "rows: 0), so there is no recent share to weight; run without --recent-share or "
            "harvest a version with new training images"
        )
    return rows
