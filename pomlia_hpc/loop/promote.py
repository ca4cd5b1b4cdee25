"""What a deployment slot serves, and every change of it, recorded.

A slot (:mod:`pomlia_hpc.serve.slots`) is a stable name, a ``current`` link to a bundle and a
history of :class:`~pomlia_hpc.registry.Promotion` rows. The row is written after the link has
moved, in the same call; :func:`put_on_slot` first looks for a row of the same loop run and
model, so a driver killed between the two (or run twice) neither records nor moves twice.

Kinds: ``initial`` (the slot's first model), ``promoted`` (the gate passed), ``forced``
(``--force`` past a failed or missing gate), ``rollback`` (back to the previous champion).

Rollbacks walk back the history: a rollback undoes the promotion that put the current model
on the slot, so a second rollback goes to the champion before that one, and so on (not back
and forth between the last two models); a promotion after a rollback starts a new step.

A change of champion closes the open retrain requests it makes obsolete, in the same
transaction (:func:`pomlia_hpc.loop.requests.retire_stale`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.loop.requests import retire_stale
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import GateDecision, Model, Promotion, Registry
from pomlia_hpc.registry.db import lock_name
from pomlia_hpc.serve.exported import ExportedBundle, bundle_for_model, data_scaling, scale_max_of
from pomlia_hpc.serve.slots import (
    current_bundle,
    current_link,
    point,
    readable_bundle,
    spec_problem,
    swap_problem,
)
from pomlia_hpc.workspace import Workspace

KINDS = ("initial", "promoted", "forced", "rollback")

#: The evidence key of a gate decision that no longer counts (the slot changed after it).
SUPERSEDED = "superseded"


class SlotChangedError(InputError):
    """A passed gate compared its challenger with a model the slot no longer serves (a
    promotion or rollback landed after the gate): nothing was promoted."""

    def __init__(self, message: str, *, slot: str, gate_id: int, now: str | None) -> None:
        super().__init__(message)
        self.slot, self.gate_id, self.now = slot, gate_id, now


@dataclass(frozen=True)
class SlotEntry:
    """One promotion, readable without a session."""

    id: int
    slot: str
    model_id: int
    model: str
    bundle_path: str
    kind: str
    gate_id: int | None
    loop_run_id: int | None
    created_at: datetime


def _entry(p: Promotion, model_name: str) -> SlotEntry:
    return SlotEntry(
        p.id,
        p.slot,
        p.model_id,
        model_name,
        p.bundle_path,
        p.kind,
        p.gate_id,
        p.loop_run_id,
        p.created_at,
    )


def history(registry: Registry, slot: str) -> list[SlotEntry]:
    """The slot's promotions, oldest first."""
    with registry.session() as s:
        return _history(s, slot)


def _history(session: Session, slot: str) -> list[SlotEntry]:
    rows = session.execute(
        select(Promotion, Model.name)
        .join(Model, Model.id == Promotion.model_id)
        .where(Promotion.slot == slot)
        .order_by(Promotion.id)
    ).all()
    return [_entry(p, name) for p, name in rows]


def slots(registry: Registry) -> list[str]:
    """Every slot that has served a model, in the order they were first used."""
    with registry.session() as s:
        rows = s.execute(select(Promotion.slot, func.min(Promotion.id)).group_by(Promotion.slot))
        return [slot for slot, _ in sorted(rows, key=lambda r: r[1])]


def champion(registry: Registry, slot: str) -> SlotEntry | None:
    """What the slot serves now (its newest promotion), or None for a new slot."""
    rows = history(registry, slot)
    return rows[-1] if rows else None


def put_on_slot(
    registry: Registry,
    workspace: Workspace,
    slot: str,
    model_ref: str,
    *,
    kind: str,
    gate_id: int | None = None,
    loop_run_id: int | None = None,
) -> SlotEntry:
    """Export ``model_ref`` if needed, point the slot's link at its bundle and record it."""
    if kind not in KINDS:
        raise InputError(f"promotion kind '{kind}' is not known: expected one of {KINDS}")
    # Imported here: exporting loads torch, which the history, rollback and status need not.
    from pomlia_hpc.serve.export import export_model
    from pomlia_hpc.serve.exported import bundle_for_model

    bundle = (
        bundle_for_model(registry, model_ref) or export_model(registry, workspace, model_ref).bundle
    )
    link = current_link(workspace, slot)
    # One transaction, the slot locked, from reading the champion to recording the promotion:
    # two promotions at once must each record (in the gate) the champion they replaced, and
    # the link must end on the model the newest row names.
    with registry.session() as s:
        lock_slot(s, slot)
        model = s.scalar(select(Model).where(Model.name == bundle.name))
        if model is None:
            raise NotFoundError(f"model '{bundle.name}' is not in the registry")
        if loop_run_id is not None:
            done = s.scalar(
                select(Promotion).where(
                    Promotion.loop_run_id == loop_run_id, Promotion.model_id == model.id
                )
            )
            if done is not None:
                point(link, Path(done.bundle_path))  # the link may not have moved before a kill
                return _entry(done, model.name)
        if kind == "initial":
            _first_model(s, slot, model)
        elif loop_run_id is None:
            _not_champion_yet(s, slot, model)
        if gate_id is not None:
            _settle_gate(s, slot, gate_id)
        check_swap(link, bundle, slot)  # --force cannot skip it: the servers would not swap
        point(link, bundle.root)
        row = Promotion(
            slot=slot,
            model_id=model.id,
            bundle_path=str(bundle.root),
            kind=kind,
            gate_id=gate_id,
            loop_run_id=loop_run_id,
        )
        s.add(row)
        s.flush()
        retire_stale(s, slot, workspace)  # alarms about the champion it replaced no longer apply
        return _entry(row, model.name)


class SwapRefusedError(InputError):
    """A model the servers following a slot would refuse to swap to (another input spec or
    label set than the bundle they serve): nothing was promoted."""


def check_swap(link: Path, new: ExportedBundle, slot: str) -> None:
    """Refuse to point ``slot``'s ``link`` at ``new`` when a server following the link would
    refuse the hot swap (:func:`~pomlia_hpc.serve.slots.incompatible`): it would keep serving
    the old bundle while the registry named ``new`` the champion."""
    found = swap_problem(link, new)
    if found is not None:
        raise swap_refused(slot, new.name, *found)


def check_promotable(registry: Registry, workspace: Workspace, slot: str, model_ref: str) -> None:
    """Before a gate runs, refuse what :func:`check_swap` refuses after it: the model's bundle
    when it is exported, else the spec its export would record (its registered card's image
    size, channels, task type and labels, its training data set's 16-bit maximum) against the
    bundle the slot's link names. A gate is then not run (nor recorded) for nothing."""
    # Imported here: the reference module (numpy, the runtime's names) is a promotion's alone.
    from pomlia_hpc.serve.reference import model_dataset_meta

    link = current_link(workspace, slot)
    bundle = bundle_for_model(registry, model_ref)
    if bundle is not None:
        check_swap(link, bundle, slot)
        return
    old = readable_bundle(current_bundle(link))
    if old is None:
        return
    row = resolve_model(registry, model_ref)
    problem = spec_problem(
        old,
        _card_spec(row.card or {})
        | {
            "16-bit intensity scaling maximum": scale_max_of(
                data_scaling(model_dataset_meta(registry, row) or {})
            )
        },
    )
    if problem is not None:
        raise swap_refused(slot, row.name, old, problem)


def _card_spec(card: dict[str, Any]) -> dict[str, object]:
    """The serving spec (:func:`~pomlia_hpc.serve.slots.serving_spec`'s keys) a registered
    model's card records, as its export copies it into the bundle's card; what it does not
    record is left out (not compared)."""
    given, task = (v if isinstance(v := card.get(k), dict) else {} for k in ("input", "task"))
    found: dict[str, object] = {}
    for key, value in (
        ("image size", given.get("image_size")),
        ("channel count", given.get("channels")),
        ("task type", task.get("type")),
    ):
        if value is not None:
            found[key] = str(value) if key == "task type" else int(value)
    if isinstance(card.get("label_names"), list):
        found["label names"] = [str(x) for x in card["label_names"]]
    return found


def swap_refused(slot: str, model: str, old: ExportedBundle, problem: str) -> SwapRefusedError:
    """The refusal of ``model`` on ``slot``, whose servers serve ``old`` and would refuse to
    swap to ``model`` for ``problem``."""
    # Retraining helps only where the scaling differs; another size or label set is the data's.
    retrain = (
        f", or train it on data scaled as {old.name}'s (a version harvested from that data "
        "keeps its scaling)"
        if "intensity scaling" in problem
        else ""
    )
    return SwapRefusedError(
        f"model {model} cannot go on slot '{slot}': {problem} ({old.name}); a server "
        f"following the slot would refuse the hot swap and keep serving {old.name}, so "
        f"nothing was promoted. Serve {model} on a slot of its own (`pomlia deploy promote "
        f"NEW_SLOT {shlex.quote(model)}`){retrain}"
    )


def lock_slot(session: Session, slot: str) -> None:
    """Hold the slot's write lock until ``session``'s transaction ends (a new slot has no
    row to lock with ``SELECT ... FOR UPDATE``): :func:`~pomlia_hpc.registry.db.lock_name`."""
    lock_name(session, f"slot:{slot}")


def already_champion(slot: str, model: str, since: datetime) -> InputError:
    """The refusal of a promotion of the model the slot already serves (since ``since``)."""
    return InputError(
        f"model {model} is already the champion of slot {slot} (since "
        f"{since:%Y-%m-%d %H:%M}); nothing to promote"
    )


def _not_champion_yet(session: Session, slot: str, model: Model) -> None:
    """Under the slot's lock, for a promotion by hand: refuse it when the slot already serves
    ``model``. The same promotion run twice at once both read the old champion before either
    held the lock; the second would record a gate of the model against itself and a second
    history row, where run alone it is refused (:func:`already_champion`)."""
    newest = session.scalar(
        select(Promotion).where(Promotion.slot == slot).order_by(Promotion.id.desc()).limit(1)
    )
    if newest is not None and newest.model_id == model.id:
        raise already_champion(slot, model.name, newest.created_at)


def _first_model(session: Session, slot: str, model: Model) -> None:
    """Under the slot's lock, for an ``initial`` promotion: nothing while the slot is empty;
    otherwise an :class:`InputError`. When it serves ``model`` already, the same first
    promotion ran twice at once: the second is refused as when run alone
    (:func:`already_champion`). Another first model landed since the slot was read empty:
    replacing it silently would skip the gate."""
    newest = session.scalar(
        select(Promotion).where(Promotion.slot == slot).order_by(Promotion.id.desc()).limit(1)
    )
    if newest is None:
        return
    if newest.model_id == model.id:
        raise already_champion(slot, model.name, newest.created_at)
    now = session.get(Model, newest.model_id)
    raise InputError(
        f"slot '{slot}' was empty when this promotion of {model.name} began, but "
        f"{now.name if now else newest.model_id} was put on it meanwhile; nothing was "
        f"promoted: run `pomlia deploy promote {shlex.quote(slot)} {shlex.quote(model.name)}` "
        "again to gate it against that champion"
    )


def _settle_gate(session: Session, slot: str, gate_id: int) -> None:
    """Make gate ``gate_id`` name the champion its promotion replaces, read under the slot's
    lock. Another promotion may have landed after the gate read the champion: a forced gate
    then records the champion it replaced (a gate with evidence keeps the model it was
    compared with as ``compared_with``); a passed gate compared with another model than the
    one on the slot now is refused, nothing promoted."""
    gate = session.get(GateDecision, gate_id)
    if gate is None:
        raise NotFoundError(f"gate decision {gate_id} is not in the registry")
    newest = session.scalar(
        select(Promotion).where(Promotion.slot == slot).order_by(Promotion.id.desc()).limit(1)
    )
    now_id = newest.model_id if newest is not None else None
    if now_id == gate.champion_id:
        return
    now = session.get(Model, now_id) if now_id is not None else None
    now_name = now.name if now is not None else None
    was = (gate.evidence or {}).get("champion")
    if not gate.forced:
        raise SlotChangedError(
            f"slot '{slot}' changed while the gate ran: it now serves {now_name}, not {was} "
            "that the gate compared with; nothing was promoted: run the promotion again",
            slot=slot,
            gate_id=gate_id,
            now=now_name,
        )
    evidence = dict(gate.evidence or {}, champion=now_name)
    if was is not None and evidence.get("data") is not None:
        evidence["compared_with"] = was  # the statistics are against that model
    gate.champion_id, gate.evidence = now_id, evidence  # a new dict: JSON changes are unseen


def rollback(registry: Registry, workspace: Workspace, slot: str) -> SlotEntry:
    """Serve the champion before the current one again (recorded as ``rollback``). The
    history is read with the slot locked: a promotion landing between the read and the
    lock would otherwise be undone by a rollback to the model before it."""
    with registry.session() as s:
        lock_slot(s, slot)
        rows = _history(s, slot)
        if not rows:
            raise NotFoundError(f"slot '{slot}' has never served a model; nothing to roll back")
        now = rows[-1]
        back = _walk_back(rows)
        if back is None:
            served = (
                "only " + now.model
                if all(r.model_id == now.model_id for r in rows)
                else (f"{now.model}, its first champion, again after rolling back")
            )
            raise InputError(
                f"slot '{slot}' serves {served}; there is no earlier champion to roll back "
                f"to (put another model on it with `pomlia deploy promote "
                f"{shlex.quote(slot)} MODEL`)"
            )
        if not (Path(back.bundle_path) / "card.json").is_file():
            raise NotFoundError(
                f"the bundle of {back.model} ({back.bundle_path}) is gone; export it again with "
                f"`pomlia model export {shlex.quote(back.model)}` and promote it with --force"
            )
        link = current_link(workspace, slot)
        earlier = readable_bundle(Path(back.bundle_path))
        if earlier is not None and (found := swap_problem(link, earlier)) is not None:
            raise _rollback_refused(slot, back, rows, link, *found)
        point(link, Path(back.bundle_path))
        row = Promotion(
            slot=slot, model_id=back.model_id, bundle_path=back.bundle_path, kind="rollback"
        )
        s.add(row)
        s.flush()
        retire_stale(s, slot, workspace)
        return _entry(row, back.model)


def _rollback_refused(
    slot: str,
    back: SlotEntry,
    rows: list[SlotEntry],
    link: Path,
    old: ExportedBundle,
    problem: str,
) -> SwapRefusedError:
    """The refusal of a rollback of ``slot`` to ``back``, whose bundle the servers serving
    ``old`` would refuse to swap to for ``problem`` (a history from before promotions were
    checked, or of a slot whose link was moved by hand). Every further rollback would try
    ``back`` again, so it names the way on: the latest earlier champion of the slot (in
    ``rows``) that they can swap to, promoted by hand, or a slot of ``back``'s own."""
    stack = _champions(rows)
    earlier = stack[:-2]
    # The served model may have been champion before too (A, B, A): naming it would advise
    # a promotion that is refused as "already the champion".
    skip = {back.model_id, stack[-1].model_id}
    fits = [
        e
        for e in reversed(earlier)
        if e.model_id not in skip
        and (b := readable_bundle(Path(e.bundle_path))) is not None
        and swap_problem(link, b) is None
    ]
    if fits:
        way = (
            f"the latest earlier champion they can swap to is {fits[0].model}: promote it "
            f"with `pomlia deploy promote {shlex.quote(slot)} {shlex.quote(fits[0].model)} "
            "--force`"
        )
    else:
        names = ", ".join(
            dict.fromkeys(e.model for e in [*earlier, back] if e.model_id != stack[-1].model_id)
        )
        way = (
            f"none of its earlier champions ({names}) has the served model's input and labels: "
            f"to serve {back.model} again, put it on a slot of its own (`pomlia deploy promote "
            f"NEW_SLOT {shlex.quote(back.model)}`) and send requests to that slot's server"
        )
    return SwapRefusedError(
        f"slot '{slot}' cannot roll back to {back.model}, its previous champion: {problem} "
        f"({old.name}); a server following the slot would refuse the hot swap and keep "
        f"serving {old.name}, so nothing was changed, and a rollback would try {back.model} "
        f"again; {way}"
    )


def _walk_back(rows: list[SlotEntry]) -> SlotEntry | None:
    """The promotion a rollback returns to: the entry below the top of the champions' stack
    (:func:`_champions`), or None when the stack holds one model."""
    stack = _champions(rows)
    return stack[-2] if len(stack) > 1 else None


def _champions(rows: list[SlotEntry]) -> list[SlotEntry]:
    """The champions of a slot's history ``rows`` as a stack, where a promotion pushes its
    model and a rollback pops back to the model it restored (the current one on top)."""
    stack: list[SlotEntry] = []
    for row in rows:
        if row.kind == "rollback":
            while stack and stack[-1].model_id != row.model_id:
                stack.pop()
            if not stack:  # a rollback to a model no longer on the stack: it starts anew
                stack.append(row)
        elif not stack or stack[-1].model_id != row.model_id:
            stack.append(row)
    return stack


def supersede_gate(registry: Registry, gate_id: int, champion_now: str | None) -> None:
    """Mark gate decision ``gate_id`` superseded: the slot serves ``champion_now`` since, so
    the decision no longer says whether its challenger should replace the champion. A loop
    run then gates its challenger again instead of reading this decision back."""
    with registry.session() as s:
        gate = s.get(GateDecision, gate_id)
        if gate is None:
            raise NotFoundError(f"gate decision {gate_id} is not in the registry")
        # A new dict: SQLAlchemy does not see changes inside a JSON value.
        gate.evidence = {**(gate.evidence or {}), SUPERSEDED: {"champion_now": champion_now}}


def is_superseded(gate: GateDecision) -> bool:
    """Whether ``gate`` was marked by :func:`supersede_gate`."""
    return SUPERSEDED in (gate.evidence or {})


def gate_decisions(registry: Registry, slot: str) -> list[GateDecision]:
    """The slot's gate decisions, oldest first."""
    with registry.session() as s:
        return list(
            s.scalars(
                select(GateDecision).where(GateDecision.slot == slot).order_by(GateDecision.id)
            )
        )
