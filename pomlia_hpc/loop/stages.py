"""The loop's stages, in order: each a function of the :class:`~.driver.LoopContext` that
finds what it would create before creating it (see :mod:`.driver` for why).

harvest      labelled production inputs of the slot's log in the run's window → an npz file
ingest       parent (the champion's training version) + those images → a new dataset version
fingerprints embeddings of the new version with the champion's encoder, added to its index
recommend    a task on the new version; the recommender's top configurations (if it can)
automl       a study on that task, warm-started from the champion's configuration and the
             recommendation, with the configured budget (resumed if it exists); by default
             its first trial fine-tunes the champion's weights, and every trial draws half of
             each epoch from the harvested production images (see :class:`LoopSettings`)
challenger   the study's best model, linked to this loop run and the champion
gate         champion vs challenger on the fixed and production test rows (recorded)
export       the challenger's bundle (ONNX + torch.export program + card)
redeploy     the slot's link moves to the bundle (servers following it swap); recorded
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.data.harvest import NewImages, harvest_info, harvest_version
from pomlia_hpc.data.leakage import harvest_warning
from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.files import write_json_atomic, write_npz
from pomlia_hpc.loop.claim import run_dir
from pomlia_hpc.loop.driver import LoopContext, LoopError, Stage, StageOutput
from pomlia_hpc.loop.gate import DEFAULT_ALPHA, DEFAULT_MARGIN, run_gate
from pomlia_hpc.loop.harvest import training_version
from pomlia_hpc.loop.promote import SlotChangedError, put_on_slot, supersede_gate
from pomlia_hpc.loop.stats import champion_and_challenger, check_levels
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import Encoder, Model, Registry, Task
from pomlia_hpc.serve.labelled import labelled_inputs, retention_warning
from pomlia_hpc.serve.predlog import log_dir


@dataclass(frozen=True)
class LoopSettings:
    """The budget and the gate of a loop run (fixed when the run is created)."""

    trials: int = 6
    max_epochs: int = 6
    min_epochs: int = 1
    parallel: int = 2
    archs: tuple[str, ...] | None = None  # default: the champion's architecture
    optimizer: str = "smac"
    executor: str = "local"
    budget_epochs: int | None = None
    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    force: bool = False
    min_labels: int = 20
    seed: int = 0
    recommend: bool = True
    # Why these two defaults: a retrain after a shift adds a few hundred production images to
    # the old training data. Trained from scratch on the plain mix, or fine-tuned on it, the
    # network hardly learns them (on the contrast-shift showcase it stayed at the majority
    # class on the shifted stream); fine-tuned from the champion with the production images at
    # half of every epoch it learned them and kept its accuracy on the old data
    # (:mod:`pomlia_hpc.automl.sampling`, docs/BENCHMARKS.md "The loop").
    fine_tune: bool = True  # the champion's weights are a candidate initialisation
    recent_share: float | None = 0.5  # share of each epoch from the harvested images

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["archs"] = list(self.archs) if self.archs else None
        return d

    def study_options(self) -> dict[str, Any]:
        """The options its AutoML study is created with (and checked with, up front)."""
        return {
            "n_trials": self.trials,
            "max_epochs": self.max_epochs,
            "min_epochs": self.min_epochs,
            "parallel": self.parallel,
            "executor": self.executor,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "budget_epochs": self.budget_epochs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("archs"):
            known["archs"] = tuple(known["archs"])
        return cls(**known)


def check_settings(cfg: LoopSettings) -> None:
    """One :class:`InputError` (or :class:`~pomlia_hpc.errors.ConfigError`) for settings a
    loop run cannot finish with, before anything is recorded: they were found only at the
    stage that used them, after a harvest, a dataset version and a task were made. The study's
    options get the checks `pomlia automl run` gives them."""
    from pomlia_hpc.automl.space import SpaceOptions
    from pomlia_hpc.automl.study import check_study_options  # imports torch: not at the top

    if cfg.min_labels < 1:
        raise InputError(
            f"--min-labels {cfg.min_labels}: expected an integer >= 1 (the fewest labelled "
            "production images a loop run retrains on)"
        )
    check_levels(cfg.margin, cfg.alpha)
    check_study_options(
        space=SpaceOptions(archs=cfg.archs) if cfg.archs is not None else None,
        recent_share=cfg.recent_share,
        **cfg.study_options(),
    )


def settings(ctx: LoopContext) -> LoopSettings:
    return LoopSettings.from_dict(ctx.params.get("settings", {}))


def champion_model(ctx: LoopContext) -> Model:
    return resolve_model(ctx.registry, str(ctx.params["champion_id"]))


def champion_encoder(
    registry: Registry, champ: Model, archs: tuple[str, ...] | None = None
) -> str | None:
    """The fingerprint encoder (id, as text) whose weights initialised the champion's run
    (``init=encoder``), when it is still registered and its architecture is among ``archs``
    (None: any): the retraining study offers ``init=encoder`` from it too, so the champion's own
    configuration (and the recommendation's) fits its space. None otherwise: a champion that
    only took extra images found with an encoder (``extra_data=nearest``) names it in its
    lineage too, and offering it would add the encoder's architecture to the study's."""
    lineage = champ.lineage or {}
    encoder_id = lineage.get("encoder_id")
    config = lineage.get("config") or {}
    if encoder_id is None or config.get("init") != "encoder":
        return None
    if archs is not None and config.get("arch") not in archs:
        return None
    with registry.session() as s:
        return str(encoder_id) if s.get(Encoder, int(encoder_id)) is not None else None


def _fair_encoder(ctx: LoopContext, task: str, encoder: str | None) -> str | None:
    """``encoder`` unless its training read the val/test images of ``task``'s data, which
    ``automl run --encoder`` refuses (:mod:`pomlia_hpc.automl.seen_init`): the retraining
    study then goes on without it, and the loop's progress says why."""
    if encoder is None:
        return None
    from pomlia_hpc.automl.seen_init import seen_encoder_problem
    from pomlia_hpc.automl.tasks import get_task, task_dataset

    version, ref = task_dataset(ctx.registry, get_task(ctx.registry, task))
    problem = seen_encoder_problem(ctx.registry, encoder, version, ref)
    if problem is None:
        return encoder
    ctx.progress(f"warm start: left out the champion's encoder: {problem}")
    return None


def run_folder(ctx: LoopContext) -> Path:
    return run_dir(ctx.workspace, ctx.slot, ctx.run_id)


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def harvest_stage(ctx: LoopContext) -> StageOutput:
    cfg = settings(ctx)
    logs = log_dir(ctx.workspace.path("logs"), ctx.slot)
    since, until = _when(ctx.params.get("since")), _when(ctx.params["until"])
    parent, _ = training_version(ctx.registry, champion_model(ctx))
    multi = str(parent.meta.get("task_type", "")).startswith("multi-label")
    classes = int(parent.meta.get("n_classes", 0)) or None
    width = classes if multi else None
    got = labelled_inputs(
        logs, since=since, until=until, multi_label_width=width, n_classes=classes
    )
    gone = retention_warning(got)
    if len(got) < cfg.min_labels:
        raise LoopError(
            f"only {len(got)} labelled production image(s) with kept inputs in the window "
            f"(need {cfg.min_labels}; counts {got.counts}); serve with --keep-inputs and send "
            "feedback, or lower --min-labels" + (f"; {gone}" if gone else "")
        )
    folder = run_folder(ctx)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "harvest.npz"
    images, labels, ids = got.image_array(), got.label_array(), np.asarray(got.ids)
    write_npz(path, {"images": images, "labels": labels, "ids": ids}, compress=False)
    return {
        "file": str(path),
        "n": len(got),
        "counts": got.counts,
        "log": str(logs),
        "since": ctx.params.get("since"),
        "until": ctx.params["until"],
        **({"retention_warning": gone} if gone else {}),
    }


def ingest_stage(ctx: LoopContext) -> StageOutput:
    h = ctx.out("harvest")
    champ = champion_model(ctx)
    parent, dataset = training_version(ctx.registry, champ)
    with np.load(h["file"]) as z:
        new = NewImages(z["images"], z["labels"], [str(x) for x in z["ids"]])
    provenance = {
        "model": champ.name,
        "model_id": champ.id,
        "log": ctx.slot,
        "since": h["since"],
        "until": h["until"],
        "counts": h["counts"],
        "loop_run_id": ctx.run_id,
    }
    rec = harvest_version(ctx.workspace, ctx.registry, parent, dataset, new, provenance)
    info = harvest_info(rec.meta) or {}
    warning = harvest_warning(
        rec.fingerprint, parent.fingerprint or {}, f"{dataset}@{parent.version}"
    )
    if warning:  # said where `data harvest` and `data add` say it, not only at `task add`
        ctx.progress(f"warning: dataset {rec.ref}: {warning}")
    return {
        "dataset_version_id": rec.id,
        # The split may put none of a few new images into training: by hash, 60 % go to train
        # (odds 0.4^n that none of n does), but an image whose pixels the parent holds goes
        # to its copy's split and equal images share one, so fewer draws than images.
        "new_train_rows": int((info.get("new_per_split") or {}).get("train", 0)),
        "ref": rec.ref,
        "parent": f"{dataset}@{parent.version}",
        "created": rec.created,
        "n_images": rec.n_images,
        # Ids the parent already holds: skipped (same label) or replacing the parent's row
        # (a corrected label); see pomlia_hpc.data.harvest.
        "skipped_in_parent": int(info.get("skipped_in_parent", 0)),
        "replaced": int(info.get("replaced", 0)),
    }


def fingerprints_stage(ctx: LoopContext) -> StageOutput:
    from pomlia_hpc.serve.export import task_encoder

    champ = champion_model(ctx)
    encoder_id = task_encoder(ctx.registry, champ)
    if encoder_id is None:
        return {"skipped": "the champion has no fingerprint encoder (its task has none)"}
    from pomlia_hpc.fingerprint.extract import extract
    from pomlia_hpc.fingerprint.index import build_index

    ref = ctx.out("ingest")["ref"]
    results = extract(ctx.registry, ctx.workspace, encoder_id, [ref], shards=1)
    built = build_index(ctx.registry, ctx.workspace, encoder_id)
    return {
        "encoder_id": encoder_id,
        "n_vectors": sum(r.n_vectors for r in results),
        "index": str(built.path),
        "index_vectors": built.ntotal,
        "added": built.added_sets,
    }


def _task_of(ctx: LoopContext, champ: Model) -> tuple[str, int]:
    """The loop run's task on the new version (created once): ``<slot>-loop<run id>``."""
    from sqlalchemy import select

    from pomlia_hpc.automl.tasks import add_task

    name = f"{ctx.slot}-loop{ctx.run_id}"[:64]
    metric = "acc"
    with ctx.registry.session() as s:
        found = s.scalar(select(Task).where(Task.name == name))
        if found is not None:
            return found.name, found.id
        if champ.task_id is not None and (t := s.get(Task, champ.task_id)) is not None:
            metric = t.metric
    task = add_task(ctx.registry, name, ctx.out("ingest")["ref"], metric)
    return task.name, task.id


def recommend_stage(ctx: LoopContext) -> StageOutput:
    champ = champion_model(ctx)
    task, task_id = _task_of(ctx, champ)
    out: dict[str, Any] = {"task": task, "task_id": task_id}
    if not settings(ctx).recommend:
        return {**out, "skipped": "recommendation turned off"}
    try:
        from pomlia_hpc.strategy.recommend import recommend
    except ImportError:  # an installation without the strategy room
        return {**out, "skipped": "no recommender installed"}
    try:
        answer = recommend(ctx.registry, task, k=3)
    except PomliaError as exc:
        return {**out, "skipped": f"no recommendation: {exc}"}
    configs = list(answer.get("initial") or [])
    path = run_folder(ctx) / "recommended.json"
    write_json_atomic(path, configs, indent=None)
    return {**out, "recommendation_id": answer.get("recommendation_id"), "configs": str(path)}


_BOOKKEEPING = ("config_key", "origin", "smac_budget", "engine")


#: Hyperparameters a fine-tune of the champion does not take from its configuration: where
#: its weights came from, and the extra images its study may have offered (the loop's does not).
_NOT_FOR_FINE_TUNE = ("init", "mode", "lr_head", "unfreeze_epoch", "extra_data", "extra_n")


def _warm_configs(
    ctx: LoopContext, champ: Model, arch: str, fine_tune: bool
) -> list[tuple[str, dict[str, Any]]]:
    """(source, values) warm-start candidates: a full fine-tune of the champion's weights with
    its hyperparameters (when ``fine_tune``), the champion's configuration, the recommendation."""
    out: list[tuple[str, dict[str, Any]]] = []
    config = (champ.lineage or {}).get("config")
    # The run's record keeps bookkeeping beside the hyperparameters; only these warm-start.
    values = {k: v for k, v in (config or {}).items() if k not in _BOOKKEEPING}
    if fine_tune and arch:
        own = {k: v for k, v in values.items() if k not in _NOT_FOR_FINE_TUNE}
        out.append(("champion weights", {**own, "arch": arch, "init": "model", "mode": "full"}))
    if values:
        out.append(("champion", values))
    rec = ctx.out("recommend").get("configs")
    if rec and Path(rec).is_file():
        out += [("recommendation", dict(c)) for c in json.loads(Path(rec).read_text())]
    return out


def automl_stage(ctx: LoopContext) -> StageOutput:
    from pomlia_hpc.automl.space import SpaceOptions
    from pomlia_hpc.automl.study import (
        SPEC_FILE,
        StudySpec,
        TrialLog,
        create_study,
        load_spec,
        run_study,
        study_dir,
    )

    cfg = settings(ctx)
    champ = champion_model(ctx)
    task = ctx.out("recommend")["task"]
    name = f"{ctx.slot}-loop{ctx.run_id}"[:96]
    resumed = (study_dir(ctx.workspace, name) / SPEC_FILE).is_file()
    used: list[str] = []
    spec: StudySpec | None = None
    if resumed:
        spec = load_spec(ctx.workspace, name)
    else:
        arch = str((champ.card or {}).get("architecture") or "")
        archs = cfg.archs or ((arch,) if arch else None)
        fine_tune = cfg.fine_tune and bool(arch) and (archs is None or arch in archs)
        candidates = _warm_configs(ctx, champ, arch, fine_tune)
        if archs:
            candidates = [(k, c) for k, c in candidates if c.get("arch", archs[0]) in archs]
        # The recommendation may name values this study's space lacks (e.g. init=encoder when
        # the champion was not trained from an encoder): those are left out, one by one.
        spec = create_study(
            ctx.registry,
            ctx.workspace,
            task,
            name=name,
            space=SpaceOptions(archs=archs) if archs else None,
            initial_configs=[c for _, c in candidates],
            drop_unfit_initial=True,
            encoder=_fair_encoder(ctx, task, champion_encoder(ctx.registry, champ, archs)),
            init_model=str(champ.id) if fine_tune else None,
            recent_share=effective_recent_share(ctx, cfg.recent_share),
            loop_run=ctx.run_id,  # resumed by this loop run, not by `automl run --resume`
            **cfg.study_options(),
        )
        kept = spec.initial_configs
        used = [k for k, c in candidates if c in kept]
        for reason in spec.dropped_initial:
            ctx.progress(f"warm start: left out {reason}")
        for warning in spec.lineage_warnings:
            ctx.progress(f"warning: {warning}")
    assert spec is not None
    result = run_study(
        ctx.registry, ctx.workspace, spec, resume=resumed, on_update=TrialLog(ctx.progress)
    )
    if result.model_name is None:
        raise LoopError(
            f"study {name}: {result.model_refused}"
            if result.model_refused
            else f"study {name}: no trial produced a model ({result.n_ok} ok, "
            f"{result.n_crashed} crashed); see `pomlia runs list --study {shlex.quote(name)}`"
        )
    return {
        "study": name,
        "model": result.model_name,
        "best_run_id": result.best_run_id,
        "n_ok": result.n_ok,
        "n_crashed": result.n_crashed,
        "spent_epochs": result.spent_epochs,
        "warm_start": used,  # sources of the initial configurations (empty when resumed)
        "fine_tune": spec.init_model is not None,
        "recent_share": spec.recent_share,
        "recent_rows": spec.recent_rows,
        "resumed": resumed,
    }


def effective_recent_share(ctx: LoopContext, share: float | None) -> float | None:
    """The loop's recent share, or None when the harvest put no new image into training:
    there is nothing recent to weight, and a study refuses a share it cannot apply."""
    if share is None:
        return None
    new_train = ctx.out("ingest").get("new_train_rows")
    if new_train == 0:
        ctx.progress("no harvested image fell into the training split: no recent share")
        return None
    return share


def challenger_stage(ctx: LoopContext) -> StageOutput:
    champ = champion_model(ctx)
    name = ctx.out("automl")["model"]
    with ctx.registry.session() as s:
        from sqlalchemy import select

        row = s.scalar(select(Model).where(Model.name == name))
        if row is None:
            raise LoopError(f"the study's best model {name} is not in the registry")
        row.lineage = {
            **(row.lineage or {}),
            "loop_run_id": ctx.run_id,
            "slot": ctx.slot,
            "champion": champ.name,
        }
        metrics = (row.card or {}).get("metrics") or {}
        return {"model": row.name, "model_id": row.id, "test": metrics.get("test")}


def gate_stage(ctx: LoopContext) -> StageOutput:
    cfg = settings(ctx)
    outcome = run_gate(
        ctx.registry,
        ctx.slot,
        ctx.out("challenger")["model"],
        data_ref=ctx.out("ingest")["ref"],
        margin=cfg.margin,
        alpha=cfg.alpha,
        force=cfg.force,
        loop_run_id=ctx.run_id,
    )
    r = outcome.result
    out: StageOutput = {
        "gate_id": outcome.id,
        "passed": r.passed,
        "forced": outcome.forced,
        "champion": outcome.champion,
        "reason": r.reason,
        "test": r.test,
        "p_value": r.p_value,
        "metric": r.metric,
        # Named after the metric compared (accuracy keeps its old name): an AUC gate's figures
        # shown as "production_accuracy" would read as accuracies.
        f"production_{_figure(r.metric)}": champion_and_challenger(r.production),
        f"fixed_test_{_figure(r.metric)}": champion_and_challenger(r.fixed_test),
    }
    if outcome.lineage_unknown:
        out["lineage_unknown"] = list(outcome.lineage_unknown)
    for gap in outcome.lineage_unknown:
        ctx.progress(f"warning: gate: lineage unknown, {gap}")
    if outcome.metric_note is not None:  # the metric a model of no task is judged by
        ctx.progress(f"warning: gate: {outcome.metric_note}")
    if not outcome.promote:
        out["stop"] = f"gate refused the challenger: {r.reason}"
    return out


def _figure(metric: str) -> str:
    return "accuracy" if metric == "acc" else metric


def export_stage(ctx: LoopContext) -> StageOutput:
    from pomlia_hpc.serve.export import export_model

    res = export_model(ctx.registry, ctx.workspace, ctx.out("challenger")["model"])
    return {"bundle": str(res.bundle.root), "version": res.bundle.version, "reused": res.reused}


#: Gates a redeploy runs again when the slot keeps changing under it, before it gives up.
REGATES = 3


def redeploy_stage(ctx: LoopContext) -> StageOutput:
    for _ in range(REGATES):
        g = ctx.out("gate")
        try:
            entry = put_on_slot(
                ctx.registry,
                ctx.workspace,
                ctx.slot,
                ctx.out("challenger")["model"],
                kind="promoted" if g["passed"] else "forced",
                gate_id=g["gate_id"],
                loop_run_id=ctx.run_id,
            )
        except SlotChangedError as exc:
            # A manual rollback or promotion landed after the gate: its decision is about a
            # model the slot no longer serves. Read back, it would be refused on every resume,
            # so it is superseded and the challenger is gated against the current champion.
            supersede_gate(ctx.registry, exc.gate_id, exc.now)
            ctx.progress(
                f"slot {ctx.slot} now serves {exc.now}, not the champion the gate compared "
                f"with (gate {exc.gate_id}, superseded): gating the challenger again"
            )
            again = gate_stage(ctx)
            ctx.record("gate", {**again, "regated_from": exc.gate_id})
            if "stop" in again:
                return {"stop": again["stop"], "regated": True}
            continue
        return {"promotion_id": entry.id, "model": entry.model, "bundle": entry.bundle_path}
    raise LoopError(
        f"slot {ctx.slot} changed {REGATES} times while this loop run gated its challenger "
        "(manual promotions or rollbacks); nothing was promoted. Every gate of this run is "
        f"marked superseded: `pomlia loop run {shlex.quote(ctx.slot)} --new` retrains and "
        "gates once the slot is left alone"
    )


STAGES: tuple[Stage, ...] = (
    ("harvest", harvest_stage),
    ("ingest", ingest_stage),
    ("fingerprints", fingerprints_stage),
    ("recommend", recommend_stage),
    ("automl", automl_stage),
    ("challenger", challenger_stage),
    ("gate", gate_stage),
    ("export", export_stage),
    ("redeploy", redeploy_stage),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)
