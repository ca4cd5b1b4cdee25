"""Finding what to monitor: the model (or deployment), its exported bundle and its reference.

``pomlia monitor run`` takes a model name or id, ``deployment:ID``, or a deployment slot's
name (the name ``pomlia serve SLOT`` uses: its champion is monitored, and the target says so;
a model of the same name wins; ``slot:NAME`` always means the slot); the reference is the
bundle's ``monitor-reference.npz`` written at export (:mod:`pomlia_hpc.serve.reference`).

A slot's champion is looked up each time (its newest promotion), so a nightly chain scheduled
for a slot follows the promotions onto it (:mod:`pomlia_hpc.monitor.schedule`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import Deployment, Model, Promotion, Registry
from pomlia_hpc.registry.lookup import not_found
from pomlia_hpc.serve.exported import CARD, ExportedBundle
from pomlia_hpc.serve.reference import (
    REFERENCE_FILE,
    Reference,
    model_dataset_meta,
    read_reference,
    reference_for_model,
)


@dataclass(frozen=True)
class Target:
    """What a monitor run looks at: a model, optionally one deployment of it."""

    model: Model
    deployment_id: int | None
    bundle: ExportedBundle
    #: The deployment slot named on the command line, whose champion ``model`` is.
    slot: str | None = None
    #: ``dataset@version`` the model was trained on, when its lineage says.
    trained_on: str | None = None

    @property
    def label(self) -> str:
        suffix = f" (deployment {self.deployment_id})" if self.deployment_id is not None else ""
        return f"{self.model.name}{suffix}"


def _how_to_create(name: str, bundle: ExportedBundle, trained_on: str | None = None) -> str:
    """The command that writes model ``name``'s reference, and the data set it needs: one with
    the model's classes (named alike, or unnamed) and input size (a MedMNIST data set has its
    own class names, which a model with other labels, such as `model demo`'s, refuses).
    ``trained_on``: the training data its lineage names; then no ``--data`` is needed."""
    if trained_on is not None:
        return (
            f"create it with: pomlia monitor reference {shlex.quote(name)} "
            f"(from its training data {trained_on}, val split; --split SPLIT for another, "
            "--data DATASET[@VERSION] for another data set with the model's classes)"
        )
    labels = bundle.labels
    shown = ", ".join(labels[:3]) + (", ..." if len(labels) > 3 else "")
    return (
        f"create it with: pomlia monitor reference {shlex.quote(name)} "
        f"--data DATASET[@VERSION] [--split val], a data set with the model's {len(labels)} "
        f"classes ({shown}: the same names in the same order, or unnamed, as an npz file "
        f"ingested without --class-names gives) and its {bundle.image_size} px, "
        f"{bundle.channels}-channel images"
    )


#: ``slot:NAME`` names a deployment slot even where a model has the same name.
SLOT_PREFIX = "slot:"


def slot_names(registry: Registry) -> list[str]:
    """Every deployment slot that has had a model, oldest first."""
    with registry.session() as s:
        rows = s.execute(
            select(Promotion.slot, func.min(Promotion.id)).group_by(Promotion.slot)
        ).all()
    return [slot for slot, _ in sorted(rows, key=lambda r: r[1])]


def named_slot(registry: Registry, ref: str) -> str | None:
    """The deployment slot ``ref`` names (``slot:NAME``, or a slot's name that is no model's),
    else None (a model, or nothing: :func:`resolve_target` says which). ``slot:NAME`` of an
    unknown slot is :class:`NotFoundError` with the known slots."""
    if ref.startswith(SLOT_PREFIX):
        slot = ref.removeprefix(SLOT_PREFIX)
        if slot_champion(registry, slot) is None:
            raise not_found("deployment slot", slot, slot_names(registry))
        return slot
    try:
        resolve_model(registry, ref)
    except NotFoundError:
        return ref if slot_champion(registry, ref) is not None else None
    return None


def replaced_note(registry: Registry, model: Model) -> str | None:
    """Why monitoring ``model`` may test nothing: it was put on deployment slots and no
    longer serves any of them (a promotion replaced it). None while it serves a slot, or when
    it never was on one (served by name, ``pomlia serve MODEL``). The text does not say the
    model is served nowhere: a server may serve it by name, which the registry cannot tell."""
    with registry.session() as s:
        slots = sorted(
            s.scalars(select(Promotion.slot).where(Promotion.model_id == model.id).distinct())
        )
    now: dict[str, str] = {}
    for slot in slots:
        champion = slot_champion(registry, slot)
        if champion == model.id:
            return None
        now[slot] = resolve_model(registry, str(champion)).name
    if not now:
        return None
    served = ", ".join(f"slot '{slot}' serves '{name}'" for slot, name in now.items())
    first = next(iter(now))
    # Said of the slots only: a server may still serve the model by name (`pomlia serve
    # MODEL`, its own log folder), which the registry does not record.
    return (
        f"model '{model.name}' is no longer any slot's champion ({served} now): a server "
        "following a slot logs its champion's predictions, so this model's come only from "
        f"servers that serve it by name (pomlia serve {shlex.quote(model.name)}), if any; to "
        f"monitor what a slot serves, use the slot: pomlia monitor run {SLOT_PREFIX}{first} "
        "(or schedule it)"
    )


def resolve_model_id(registry: Registry, ref: str) -> tuple[int, int | None]:
    """(model id, deployment id or None) of ``ref``: a model name or id, ``deployment:ID``, or
    a deployment slot (its champion now; ``slot:NAME`` or a slot name that is no model's)."""
    if ref.startswith(SLOT_PREFIX):
        slot = named_slot(registry, ref)
        champion = slot_champion(registry, slot) if slot is not None else None
        assert champion is not None  # named_slot refused an unknown slot
        return champion, None
    if ref.startswith("deployment:"):
        raw = ref.removeprefix("deployment:")
        if not raw.isdigit():
            raise InputError(f"'{ref}': expected deployment:ID with a number, e.g. deployment:3")
        with registry.session() as s:
            dep = s.get(Deployment, int(raw))
            if dep is None:
                raise NotFoundError(f"deployment {raw} is not in the registry")
            return dep.model_id, int(raw)
    try:
        return resolve_model(registry, ref).id, None
    except NotFoundError as exc:
        champion = slot_champion(registry, ref)
        if champion is None:
            # A bare name may be a slot's too: say which slots there are, not models alone.
            slots = ", ".join(slot_names(registry)) or "none"
            raise NotFoundError(
                f"{exc.message}; no deployment slot is named '{ref}' either (slots: {slots})",
                hint=exc.hint,
            ) from None
        return champion, None


def slot_champion(registry: Registry, slot: str) -> int | None:
    """The id of the model deployment slot ``slot`` serves now (its newest promotion), or
    None when no slot has that name."""
    with registry.session() as s:
        return s.scalar(
            select(Promotion.model_id)
            .where(Promotion.slot == slot)
            .order_by(Promotion.id.desc())
            .limit(1)
        )


def _trained_on(registry: Registry, model: Model) -> str | None:
    meta = model_dataset_meta(registry, model)
    if not meta or not meta.get("name") or not meta.get("version"):
        return None
    return f"{meta['name']}@{meta['version']}"


def resolve_target(registry: Registry, ref: str) -> Target:
    """``ref``: a model name or id, ``deployment:ID`` or a deployment slot (its champion;
    ``Target.slot`` says so; ``slot:NAME`` always means the slot). The model must be
    exported."""
    model_id, deployment_id = resolve_model_id(registry, ref)
    model = resolve_model(registry, str(model_id))
    slot = None
    if ref.startswith(SLOT_PREFIX):
        slot = ref.removeprefix(SLOT_PREFIX)
    elif deployment_id is None and model.name != ref and str(model.id) != ref:
        slot = ref
    # The bundle its last export recorded (serve.exported.bundle_for_model's rule, without
    # importing the exporter: it needs torch, and a monitor run should start fast).
    path = (model.card.get("export") or {}).get("bundle")
    bundle = ExportedBundle.open(path) if path and (Path(path) / CARD).is_file() else None
    if bundle is None:
        raise NotFoundError(
            f"model '{model.name}' has no exported bundle; export it first: "
            f"pomlia model export {shlex.quote(model.name)}"
        )
    return Target(model, deployment_id, bundle, slot, _trained_on(registry, model))


def load_reference(target: Target) -> Reference:
    """The reference of the target's bundle, checked to belong to this model version."""
    path = target.bundle.root / REFERENCE_FILE
    how = _how_to_create(target.model.name, target.bundle, target.trained_on)
    if not path.is_file():
        raise NotFoundError(
            f"model '{target.model.name}' (version {target.bundle.version}) has no monitoring "
            f"reference ({path} is missing)",
            hint=how,
        )
    try:
        ref = read_reference(path)
    except InputError as exc:
        # read_reference names the file and what is wrong; the way out is a new reference.
        raise InputError(f"{exc}; re{how}") from None
    if ref.model != target.bundle.name or ref.model_version != target.bundle.version:
        raise InputError(
            f"monitoring reference {path} was computed for model '{ref.model}' version "
            f"{ref.model_version}, not '{target.bundle.name}' version {target.bundle.version}",
            hint=how,
        )
    return ref


def create_reference(
    registry: Registry, ref: str, *, data: str | None = None, split: str = "val"
) -> Path:
    """(Re)compute the reference of model ``ref``'s bundle from ``data``'s ``split``
    (default: the dataset the model was trained on)."""
    target = resolve_target(registry, ref)
    path = reference_for_model(registry, target.bundle, target.model, data=data, split=split)
    if path is None:
        raise InputError(
            f"model '{target.model.name}' records no training dataset; pass one: "
            f"pomlia monitor reference {shlex.quote(target.model.name)} --data DATASET[@VERSION]"
        )
    return path
