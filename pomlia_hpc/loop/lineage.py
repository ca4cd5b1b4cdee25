"""``pomlia lineage MODEL``: how a model came to be and where it went, read from the registry.

For a model the chain is, newest first: its promotions (slot, kind, gate decision), the loop
run that produced it (trigger, retrain request, monitor report), the study and run it won,
the dataset version it was trained on (a harvest: which model's log, which window, how many
new images; its parent version), then the same for the champion it replaced, back to a
model that no loop produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from pomlia_hpc.data.harvest import harvest_info
from pomlia_hpc.loop.stats import MCNEMAR
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import (
    Dataset,
    DatasetVersion,
    GateDecision,
    LoopRun,
    Model,
    Promotion,
    Registry,
)

MAX_DEPTH = 20


@dataclass(frozen=True)
class Step:
    """One link: what (``kind``), its registry id, a line for people (it names what it is:
    ``model x ...``, ``study s ...``), details for machines."""

    kind: str
    id: int | None
    text: str
    details: dict[str, Any] = field(default_factory=dict)


def _version_ref(s: Any, version_id: int | None) -> tuple[str, DatasetVersion | None]:
    if version_id is None:
        return "?", None
    v = s.get(DatasetVersion, version_id)
    if v is None:
        return f"version id {version_id} (missing)", None
    ds = s.get(Dataset, v.dataset_id)
    return f"{ds.name if ds else '?'}@{v.version}", v


def _model_steps(registry: Registry, model: Model) -> tuple[list[Step], str | None]:
    """The steps of one model, and the name of the champion it replaced (if a loop made it)."""
    lin = model.lineage or {}
    steps: list[Step] = []
    with registry.session() as s:
        promos = s.scalars(
            select(Promotion).where(Promotion.model_id == model.id).order_by(Promotion.id.desc())
        ).all()
        for p in promos:
            text = f"promotion: {p.kind} on slot {p.slot} at {p.created_at:%Y-%m-%d %H:%M:%S}"
            if p.gate_id is not None and (g := s.get(GateDecision, p.gate_id)) is not None:
                ev = g.evidence or {}
                text += (
                    f" (gate {g.id}: {'passed' if g.passed else 'failed'}"
                    f"{', forced' if g.forced else ''}; p={ev.get('p_value')}, "
                    f"{ev.get('test', MCNEMAR)})"
                )
            steps.append(Step("promotion", p.id, text, {"slot": p.slot, "kind": p.kind}))
        steps.append(
            Step(
                "model",
                model.id,
                f"model {model.name} (created {model.created_at:%Y-%m-%d %H:%M:%S})",
                {"name": model.name},
            )
        )
        run_id = lin.get("loop_run_id")
        if isinstance(run_id, int) and (r := s.get(LoopRun, run_id)) is not None:
            bits = [f"loop run {r.id} ({r.status}, trigger {r.trigger}"]
            if r.request_id is not None:
                bits.append(f", retrain request {r.request_id}")
            if r.report_id is not None:
                bits.append(f", monitor report {r.report_id}")
            steps.append(Step("loop_run", r.id, "".join(bits) + ")", {"status": r.status}))
        if lin.get("study"):
            steps.append(
                Step(
                    "study",
                    lin.get("run_id") if isinstance(lin.get("run_id"), int) else None,
                    f"study {lin['study']} (best run {lin.get('run_id')}, task {lin.get('task')})",
                    {"study": lin["study"]},
                )
            )
        ref, version = _version_ref(s, lin.get("dataset_version_id"))
        if version is not None:
            info = harvest_info(version.meta)
            if info is not None:
                text = (
                    f"dataset {ref}: harvest of {info.get('n_new')} labelled production images "
                    f"from {info.get('model')}'s log (feedback {info.get('since') or 'start'} .. "
                    f"{info.get('until')}), parent {info.get('parent')}"
                )
            else:
                text = f"dataset {ref} ({version.n_images} images)"
            steps.append(Step("dataset_version", version.id, text, {"ref": ref}))
    previous = lin.get("champion")
    return steps, previous if isinstance(previous, str) else None


def lineage(registry: Registry, ref: str) -> list[Step]:
    """The chain of ``ref`` (a model name or id), newest first (module docstring)."""
    steps: list[Step] = []
    model: Model | None = resolve_model(registry, ref)
    seen: set[int] = set()
    while model is not None and model.id not in seen and len(seen) < MAX_DEPTH:
        seen.add(model.id)
        more, previous = _model_steps(registry, model)
        steps += more
        model = resolve_model(registry, previous) if previous else None
        if model is not None:
            steps.append(Step("replaced", model.id, f"replaced champion {model.name}"))
    return steps
