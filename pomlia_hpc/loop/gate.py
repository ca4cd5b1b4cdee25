"""The champion/challenger gate: score both models on the same images, decide, record.

The images come from a harvested dataset version (:mod:`pomlia_hpc.data.harvest`): its fixed
test split (the parent's test rows, where the challenger must not be worse, within
``margin``) and its production test subset (recent labelled production images never trained
on, where it must be better at level ``alpha``); see :mod:`pomlia_hpc.loop.stats`. A
single-label task compares per-image right/wrong (McNemar), a multi-label task per-image
label-wise accuracy (paired t), as its ACC is label-wise.

Neither model may have trained on the images it is scored on: a model trained on a version
other than the gate's data or that version's parent (a harvest keeps its parent's rows in their
splits, so neither holds the other's test images) has its training split read, as are the
extra images it trained on and everything the model its weights started from saw (its
``init_model_id``, up the chain: :mod:`pomlia_hpc.models.seen`), and the gate's images whose
pixels any of these hold are left out of both models' comparison (``trained_on`` in the
evidence counts them per range; ``pomlia deploy history`` shows it). A model trained on a
copy of a test image would otherwise be scored on what it learnt (a challenger trained on a
re-added dataset whose train split took in the parent's test images would pass on inflated
accuracy).

Every decision is a :class:`~pomlia_hpc.registry.GateDecision` row with its evidence (both
tests' counts, accuracies, bound and p-value, the data version and row ranges). ``force``
records the decision as forced: the caller may promote anyway, and the row says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import select

from pomlia_hpc.data.explicit_fingerprint import image_hashes
from pomlia_hpc.data.harvest import harvest_info
from pomlia_hpc.data.store import DatasetStore, find_version, open_store
from pomlia_hpc.errors import InputError
from pomlia_hpc.loop.bootstrap import (
    BOOTSTRAP,
    BOOTSTRAP_METRICS,
    PairedMetric,
    decide_bootstrap,
    paired_bootstrap,
)
from pomlia_hpc.loop.promote import (
    SlotEntry,
    already_champion,
    champion,
    check_promotable,
    is_superseded,
    put_on_slot,
    supersede_gate,
)
from pomlia_hpc.loop.stats import (
    MCNEMAR,
    NO_TEST,
    PAIRED_T,
    GateResult,
    PairedCounts,
    PairedScores,
    check_levels,
    decide,
    decide_labelwise,
)
from pomlia_hpc.models.card import ClassifierMeta
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.models.checkpoint import load_classifier
from pomlia_hpc.models.seen import Seen, seen_images
from pomlia_hpc.models.taskmetric import ModelMetric, model_metric, model_task
from pomlia_hpc.registry import DatasetVersion, GateDecision, Model, Registry
from pomlia_hpc.vocab import METRICS, TaskType, check_metric, normalize_task_type

#: Defaults: a challenger may be at most 2 accuracy points worse on the fixed test split
#: (at 95% confidence), and must be better on production data at alpha 0.05.
DEFAULT_MARGIN = 0.02
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class GateOutcome:
    """The recorded decision: its row id, the statistics, and whether it was forced."""

    id: int
    result: GateResult
    forced: bool
    champion: str | None
    challenger: str
    data: str
    lineage_unknown: tuple[str, ...] = ()
    """What either model's lineage cannot tell (``model M: why``): images it trained on that
    may be among those scored, not left out."""
    metric_note: str | None = None
    """How the metric was chosen, when it fell back (:func:`gate_metric`)."""

    @property
    def promote(self) -> bool:
        """Whether the challenger goes on the slot (passed, or forced)."""
        return self.result.passed or self.forced


def _logits(model: Model, images: np.ndarray, batch: int) -> tuple[ClassifierMeta, np.ndarray]:
    """``model``'s metadata and its logits (n, classes) on uint8 NHWC ``images``, scored
    ``batch`` images at once."""
    import torch

    loaded = load_classifier(model.path)
    meta = loaded.meta
    mean = torch.tensor(meta.pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.pre.std).view(1, -1, 1, 1)
    out = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[lo : lo + batch])).permute(0, 3, 1, 2)
            out.append(loaded.model((x.float() / 255.0 - mean) / std).numpy())
    return meta, (np.concatenate(out) if out else np.zeros((0, meta.num_classes), np.float32))


def correct(model: Model, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per-image correctness (bool) of ``model`` on uint8 NHWC ``images``; multi-label tasks
    count an image as right when every label is (the gate uses :func:`labelwise_accuracy`).
    An image whose output is not finite (a missing answer) is wrong, as in the task's metrics
    (:mod:`pomlia_hpc.automl.metrics`)."""
    meta, logits = _logits(model, images, batch)
    return correct_of(logits, labels, meta.task_type)


def correct_of(logits: np.ndarray, labels: np.ndarray, task_type: str) -> np.ndarray:
    """:func:`correct` from the model's ``logits`` (n, classes)."""
    if len(logits) == 0:
        return np.zeros(0, bool)
    # argmax reads a NaN as the largest value: an all-NaN output would "predict" class 0 and
    # count as right on every image of class 0.
    answered = np.isfinite(logits).all(axis=1)
    if task_type == TaskType.MULTI_LABEL:
        return np.asarray(((logits > 0).astype(np.int64) == labels).all(axis=1) & answered)
    return np.asarray((logits.argmax(axis=1) == labels[:, 0]) & answered)


def labelwise_accuracy(
    model: Model, images: np.ndarray, labels: np.ndarray, batch: int = 256
) -> np.ndarray:
    """Per-image label-wise accuracy of multi-label ``model``: the fraction (0..1) of the
    image's 0/1 ``labels`` (n, L) it gets right, a label predicted when its logit > 0 (sigmoid
    > 0.5, as the task's ACC). NaN where the model's output for the image is not finite (a
    missing output; :class:`~pomlia_hpc.loop.stats.PairedScores` scores it 0). An
    :class:`InputError` for a model that is not multi-label or answers another number of labels."""
    meta, logits = _logits(model, images, batch)
    check_fits(model.name, meta, labels, TaskType.MULTI_LABEL)
    return labelwise_of(logits, labels)


def labelwise_of(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`labelwise_accuracy` from a multi-label model's ``logits`` (n, labels)."""
    right = ((logits > 0).astype(np.int64) == labels).mean(axis=1)
    return np.where(np.isfinite(logits).all(axis=1), right, np.nan)


def check_fits(name: str, meta: ClassifierMeta, labels: np.ndarray, task_type: str) -> None:
    """An :class:`InputError` when model ``name`` cannot be scored on the gate's ``labels`` of
    ``task_type``: a multi-label model on single-label data or the reverse, another number of
    labels, or a class index it has no output for."""
    multi = task_type == TaskType.MULTI_LABEL
    if multi != (meta.task_type == TaskType.MULTI_LABEL):
        want = "a multi-label model (one sigmoid per label)" if multi else "a single-label model"
        raise InputError(
            f"model {name} is a {meta.task_type} model but the gate's data is {task_type}: "
            f"expected {want}"
        )
    if multi:
        width = labels.shape[1] if labels.ndim == 2 else 0
        if meta.num_classes != width:
            raise InputError(
                f"model {name} answers {meta.num_classes} labels per image but the gate's "
                f"data has {width}: expected the same labels"
            )
    elif labels.size and int(labels.max()) >= meta.num_classes:
        raise InputError(
            f"model {name} answers {meta.num_classes} classes but the gate's data holds class "
            f"index {int(labels.max())}: expected indices below {meta.num_classes}"
        )


def _rows(store: DatasetStore, rng: list[int]) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = int(rng[0]), int(rng[1])
    return store.read_rows(lo, hi), store.read_labels(lo, hi).astype(np.int64)


def gate_data(registry: Registry, challenger: Model, data_ref: str | None) -> DatasetVersion:
    """The harvested version the gate reads: ``data_ref``, else the challenger's training
    version; an :class:`InputError` if it has no production test subset."""
    if data_ref is not None:
        return find_version(registry, data_ref)
    vid = (challenger.lineage or {}).get("dataset_version_id")
    with registry.session() as s:
        row = s.get(DatasetVersion, vid) if isinstance(vid, int) else None
    if row is None or harvest_info(row.meta) is None:
        raise InputError(
            f"model {challenger.name} was not trained on a harvested dataset version, so there "
            "is no production test subset to gate on; pass --data NAME@VERSION of a harvested "
            "version (`pomlia data harvest`), or --force to promote without a gate"
        )
    return row


def trained_on(registry: Registry, model: Model, version: DatasetVersion) -> Seen:
    """The images ``model`` trained on (:func:`~pomlia_hpc.models.seen.seen_images`): the
    training split of its training version (its lineage's; not read when that version is
    ``version`` or its parent: nothing to leave out, see the module docstring), the extra
    images it trained on, the encoder it started from, and what the model its weights started
    from saw, up that chain; with what its lineage cannot tell (``unknown``)."""
    return seen_images(registry, model, skip_versions=(version.id, version.parent_id))


def run_gate(
    registry: Registry,
    slot: str,
    challenger_ref: str,
    *,
    data_ref: str | None = None,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    force: bool = False,
    loop_run_id: int | None = None,
    metric: str | None = None,
) -> GateOutcome:
    """Compare the slot's champion with ``challenger_ref`` on ``metric`` (else the task's,
    :func:`gate_metric`) and record the decision (see the module docstring). Within one loop
    run a decision is made once and then read back, unless it was superseded (the slot
    changed before the redeploy)."""
    chal = resolve_model(registry, challenger_ref)
    champ_entry = champion(registry, slot)
    if champ_entry is None:
        raise InputError(f"slot '{slot}' serves no model yet: promote a first one (no gate needed)")
    if loop_run_id is not None:
        with registry.session() as s:
            # A superseded decision compared with a model the slot no longer serves: gate again.
            done = next(
                (
                    g
                    for g in s.scalars(
                        select(GateDecision)
                        .where(
                            GateDecision.loop_run_id == loop_run_id,
                            GateDecision.challenger_id == chal.id,
                        )
                        .order_by(GateDecision.id.desc())
                    )
                    if not is_superseded(g)
                ),
                None,
            )
        if done is not None:
            return _outcome(done, champ_entry.model, chal.name)
    champ = resolve_model(registry, str(champ_entry.model_id))
    version = gate_data(registry, chal, data_ref)
    info = harvest_info(version.meta)
    if info is None:
        raise InputError(
            f"dataset version {version.version} is not a harvest: it has no production test subset"
        )
    store = open_store(version.store_path)
    champ_seen, chal_seen = (
        trained_on(registry, champ, version),
        trained_on(registry, chal, version),
    )
    seen = np.union1d(champ_seen.hashes, chal_seen.hashes)
    # Said, not passed silently: a model of unknown lineage may have trained on scored images.
    unknown = list(dict.fromkeys(champ_seen.unknown + chal_seen.unknown))
    metric, metric_from, metric_note = gate_metric(registry, champ, chal, metric)
    result, left_out = _compare(
        store, info, champ, chal, seen, metric=metric, margin=margin, alpha=alpha
    )
    result = _said_left_out(result, left_out)
    evidence: dict[str, Any] = {
        **_finite(result.to_dict()),
        "metric": metric,
        "metric_from": metric_from,
        "metric_note": metric_note,
        "data": store.ref,
        "fixed_test_rows": info["fixed_test_rows"],
        "production_test_rows": info["production_test_rows"],
        "trained_on": left_out,
        "lineage_unknown": unknown,
        "champion": champ.name,
        "challenger": chal.name,
    }
    with registry.session() as s:
        row = GateDecision(
            slot=slot,
            champion_id=champ.id,
            challenger_id=chal.id,
            loop_run_id=loop_run_id,
            passed=result.passed,
            forced=force,
            evidence=evidence,
        )
        s.add(row)
        s.flush()
        return GateOutcome(
            row.id, result, force, champ.name, chal.name, store.ref, tuple(unknown), metric_note
        )


def _said_left_out(result: GateResult, left_out: dict[str, int]) -> GateResult:
    """``result``, whose reason says so where a range had no images to score because a model
    trained on all of them (``no fixed test images`` alone reads as an empty range)."""
    reason = result.reason
    for phrase, key in (
        ("no fixed test images", "fixed_test_rows"),
        ("no labelled production test images", "production_test_rows"),
    ):
        if left_out.get(key) and phrase in reason:
            said = f"{phrase} left ({left_out[key]} left out: a model trained on them)"
            reason = reason.replace(phrase, said)
    return replace(result, reason=reason)


def _compare(
    store: DatasetStore,
    info: dict[str, Any],
    champ: Model,
    chal: Model,
    seen: np.ndarray,
    *,
    metric: str,
    margin: float,
    alpha: float,
) -> tuple[GateResult, dict[str, int]]:
    """Score both models on the version's fixed test and production test rows, less those
    whose pixels are in ``seen`` (sorted hashes of images a model trained on; how many were
    left out, per range, is returned too), and decide on the task's ``metric``. Accuracy:
    per-image right/wrong and McNemar for a single-label task; per-image label-wise accuracy
    and the paired t test for a multi-label one, whose task ACC is label-wise (exact match
    would count an image with 13 of 14 labels right as wrong, for both models alike, and hide
    a challenger that is better label by label). AUC and macro F1 are no means of per-image
    scores: the paired bootstrap (:mod:`pomlia_hpc.loop.bootstrap`)."""
    task_type = normalize_task_type(store.task_type)
    paired: dict[str, PairedCounts | PairedScores | PairedMetric] = {}
    left_out: dict[str, int] = {}
    for key in ("fixed_test_rows", "production_test_rows"):
        x, y = _rows(store, info[key])
        keep = ~np.isin(image_hashes(x), seen) if len(seen) else np.ones(len(x), bool)
        x, y, left_out[key] = x[keep], y[keep], int((~keep).sum())
        outputs = []
        for model in (champ, chal):
            meta, logits = _logits(model, x, 256)
            check_fits(model.name, meta, y, task_type)
            outputs.append(logits)
        if metric in BOOTSTRAP_METRICS:
            paired[key] = paired_bootstrap(metric, task_type, y, outputs[0], outputs[1], alpha)
        elif task_type == TaskType.MULTI_LABEL:
            paired[key] = PairedScores.of(*(labelwise_of(o, y) for o in outputs))
        else:
            paired[key] = PairedCounts.of(*(correct_of(o, y, task_type) for o in outputs))
    fixed, prod = paired["fixed_test_rows"], paired["production_test_rows"]
    if isinstance(fixed, PairedMetric) and isinstance(prod, PairedMetric):
        return decide_bootstrap(fixed, prod, margin=margin, alpha=alpha), left_out
    if isinstance(fixed, PairedScores) and isinstance(prod, PairedScores):
        return decide_labelwise(fixed, prod, margin=margin, alpha=alpha), left_out
    assert isinstance(fixed, PairedCounts) and isinstance(prod, PairedCounts)
    return decide(fixed, prod, margin=margin, alpha=alpha), left_out


def gate_metric(
    registry: Registry, champ: Model, chal: Model, chosen: str | None = None
) -> tuple[str, str, str | None]:
    """The metric the gate compares on, where it came from and a note on it (or None):
    ``chosen`` (``--metric``), else the metric each model is judged by
    (:func:`~pomlia_hpc.models.taskmetric.model_metric`, the monitor's rule too: its task
    record's, else its card's, with a note), the challenger's first (a loop's challenger is
    trained on a task with the champion's metric), else accuracy when neither names one. An
    :class:`InputError` when the two name different metrics and none is chosen (the gate would
    otherwise pick one silently), or when a named metric is not one the gate compares."""
    if chosen is not None:
        return check_metric(chosen), "chosen (--metric)", None
    named: list[tuple[Model, ModelMetric]] = []
    for model in (chal, champ):
        card, task = f"the registry's card of model {model.name}", model_task(registry, model)
        decided = model_metric(model.name, model.card or {}, card, task)
        if decided.unknown is not None:
            said = f"task {task[0]} is scored by" if task else "card names the task metric"
            raise InputError(
                f"model {model.name}'s {said} {decided.unknown!r}, a metric the gate cannot "
                f"compare: expected one of {', '.join(METRICS)}; pass --metric to say which "
                "the gate compares"
            )
        if decided.named:
            named.append((model, decided))
    if len({d.metric for _, d in named}) > 1:
        said = " and ".join(f"{m.name} by {d.metric} ({d.source})" for m, d in named)
        raise InputError(
            f"the models are scored by different metrics ({said}): expected one; "
            "pass --metric to say which the gate compares"
        )
    if not named:
        return "acc", "neither model names a task metric: accuracy", None
    _, decided = named[0]
    return decided.metric, decided.source, decided.note


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities (no images) as None: JSON columns on PostgreSQL refuse them."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _finite(v)
        elif isinstance(v, float) and not np.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _outcome(row: GateDecision, champion_name: str, challenger_name: str) -> GateOutcome:
    ev = row.evidence
    test = str(ev.get("test", MCNEMAR))  # recorded before multi-label gates: McNemar
    fixed: PairedCounts | PairedScores | PairedMetric
    prod: PairedCounts | PairedScores | PairedMetric
    if test == PAIRED_T:
        fixed, prod = (
            PairedScores.from_dict(ev["fixed_test"]),
            PairedScores.from_dict(ev["production"]),
        )
    elif test.startswith(BOOTSTRAP):
        fixed, prod = (
            PairedMetric.from_dict(ev["fixed_test"]),
            PairedMetric.from_dict(ev["production"]),
        )
    else:
        fixed = PairedCounts(**{k: ev["fixed_test"][k] for k in PairedCounts.__dataclass_fields__})
        prod = PairedCounts(**{k: ev["production"][k] for k in PairedCounts.__dataclass_fields__})
    result = GateResult(
        bool(ev["passed"]),
        bool(ev["noninferior"]),
        bool(ev["superior"]),
        float(ev["margin"]),
        float(ev["alpha"]),
        fixed,
        prod,
        _num(ev["lower_bound"]),
        _num(ev["p_value"]),
        str(ev["reason"]),
        test,
        str(ev.get("metric", "acc")),  # recorded before gates took the task's metric: acc
    )
    unknown = tuple(str(u) for u in ev.get("lineage_unknown") or ())
    note = ev.get("metric_note")
    return GateOutcome(
        row.id,
        result,
        row.forced,
        champion_name,
        challenger_name,
        str(ev["data"]),
        unknown,
        str(note) if note is not None else None,
    )


def promote_with_gate(
    registry: Registry,
    workspace: Any,
    slot: str,
    model_ref: str,
    *,
    force: bool = False,
    data_ref: str | None = None,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    metric: str | None = None,
) -> tuple[GateOutcome | None, SlotEntry | None]:
    """Put ``model_ref`` on ``slot`` by hand: directly on an empty slot, else through the gate
    on ``metric`` (else the task's; a failed gate leaves the champion, unless ``force``).
    Returns (gate, promotion or None)."""
    check_levels(margin, alpha)
    if metric is not None:
        check_metric(metric)
    if data_ref is not None:
        # Refused in every case, also where it would not be read (a slot's first model needs
        # no gate; a forced promotion goes on without one): a typo must not pass unnoticed.
        find_version(registry, data_ref)
    entry = champion(registry, slot)
    if entry is None:
        return None, put_on_slot(registry, workspace, slot, model_ref, kind="initial")
    if resolve_model(registry, model_ref).id == entry.model_id:
        # The gate would compare the model with itself and say it was not trained on a
        # harvested version, which is beside the point.
        raise already_champion(slot, entry.model, entry.created_at)
    check_same_labels(registry, slot, entry.model, model_ref)  # --force cannot skip this
    check_promotable(registry, workspace, slot, model_ref)  # nor this: servers would not swap
    try:
        outcome = run_gate(
            registry,
            slot,
            model_ref,
            data_ref=data_ref,
            margin=margin,
            alpha=alpha,
            force=force,
            metric=metric,
        )
    except InputError as exc:
        if not force:
            raise
        outcome = _forced_without_data(registry, slot, model_ref, str(exc))
    if not outcome.promote:
        return outcome, None
    kind = "promoted" if outcome.result.passed else "forced"
    try:
        entry = put_on_slot(registry, workspace, slot, model_ref, kind=kind, gate_id=outcome.id)
    except InputError:
        # Another promotion landed under the slot lock first (the same one run at once, or
        # one that changed the champion): this gate replaced nothing, so it is marked
        # superseded; it keeps the champion it compared with, never the model itself.
        now = champion(registry, slot)
        supersede_gate(registry, outcome.id, now.model if now else None)
        raise
    return outcome, entry


def check_same_labels(registry: Registry, slot: str, champion_ref: str, model_ref: str) -> None:
    """Refuse a challenger whose classes are not the champion's: the slot's clients read its
    label names and indices, so a model with another label set belongs on another slot (a
    forced promotion skips the gate's evidence, not this)."""
    champ, chal = resolve_model(registry, champion_ref), resolve_model(registry, model_ref)
    theirs = list((champ.card or {}).get("label_names") or [])
    mine = list((chal.card or {}).get("label_names") or [])
    if theirs and mine and theirs != mine:
        raise InputError(
            f"model {chal.name} predicts {len(mine)} classes ({', '.join(mine[:4])}"
            f"{', …' if len(mine) > 4 else ''}) but slot {slot} serves {champ.name}'s "
            f"{len(theirs)} ({', '.join(theirs[:4])}{', …' if len(theirs) > 4 else ''}): a "
            "slot keeps its label set; put the model on another slot"
        )


def _forced_without_data(registry: Registry, slot: str, model_ref: str, why: str) -> GateOutcome:
    """A forced promotion whose gate could not run (no harvested data, tasks of two metrics:
    ``why``): recorded as a failed, forced decision with that reason."""
    chal = resolve_model(registry, model_ref)
    entry = champion(registry, slot)
    empty = PairedCounts(0, 0, 0, 0, 0)
    # The gate's own refusal, not a guess: it was "no harvested data" for every refusal, also
    # for one that had data (tasks of two metrics, a model of other labels).
    reason = f"forced without a gate: {why}"
    result = GateResult(
        False, False, False, 0.0, 0.5, empty, empty, float("nan"), 1.0, reason, NO_TEST
    )
    with registry.session() as s:
        row = GateDecision(
            slot=slot,
            champion_id=entry.model_id if entry else None,
            challenger_id=chal.id,
            passed=False,
            forced=True,
            evidence={
                **_finite(result.to_dict()),
                "data": None,
                "champion": entry.model if entry else None,
                "challenger": chal.name,
            },
        )
        s.add(row)
        s.flush()
        return GateOutcome(row.id, result, True, entry.model if entry else None, chal.name, "")
