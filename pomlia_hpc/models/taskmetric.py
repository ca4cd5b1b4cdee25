"""Which metric a model is judged by: the one rule the monitor's performance test
(:mod:`pomlia_hpc.monitor.metrictest`) and the champion/challenger gate
(:func:`pomlia_hpc.loop.gate.gate_metric`) share, so that a model's alarm and its promotion
watch the same number.

The model's task record decides (its ``metric``). A model without one (registered without
``--task-id``, or its task no longer in the registry) is judged by the metric its card names
(``task.metric``, written at export from the task the model had then), with a note saying so;
a model whose card names none either, by accuracy (``model demo``; no note). A card that names
another metric than the task record, or none, gets a note too (a bundle exported before cards
recorded the metric is reused as long as its weights stay the same). A named metric that is not
one of :data:`~pomlia_hpc.vocab.METRICS` (a record or card written by another version, or
edited by hand) is ``unknown``: the monitor then tests accuracy with a note (its drift tests do
not depend on the metric), the gate refuses (it decides a promotion and does not guess).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Model, Registry, Task
from pomlia_hpc.vocab import METRICS, check_metric

__all__ = ["ModelMetric", "model_metric", "model_task"]


@dataclass(frozen=True)
class ModelMetric:
    """The metric a model is judged by (see the module docstring)."""

    metric: str
    #: where it came from, in words (``task t of model m``)
    source: str
    #: what the monitor's report and the gate's evidence say about the choice, if anything
    note: str | None = None
    #: whether a task record or the card named it (False: accuracy, for want of a metric)
    named: bool = True
    #: a named metric that is not one of METRICS (``metric`` is then ``acc``), as named
    unknown: str | None = None


def model_task(registry: Registry, model: Model) -> tuple[str, str] | None:
    """(name, metric) of the task record ``model`` names, or None for a model of no task (or
    of a task no longer in the registry)."""
    if model.task_id is None:
        return None
    with registry.session() as s:
        row = s.get(Task, model.task_id)
        return (row.name, row.metric) if row is not None else None


def model_metric(
    model: str, card: Mapping[str, Any], where: str, task: tuple[str, str] | None
) -> ModelMetric:
    """The metric model ``model`` is judged by: ``task`` (:func:`model_task`) decides, else
    its ``card``'s ``task.metric``, else accuracy; see the module docstring. ``where`` names
    the card in the notes (``the bundle's card (PATH)``)."""
    value = (card.get("task") or {}).get("metric")
    if task is None:
        if value is None:
            return ModelMetric("acc", f"model {model} names no task metric: accuracy", named=False)
        known = _known(value, f"{where}, task.metric")
        if known.unknown is not None:
            return known
        return ModelMetric(
            known.metric,
            f"{where} of model {model} (no task record)",
            f"model {model} has no task record: {known.metric}, the metric {where} names, is "
            "tested by the monitor and compared by the champion/challenger gate",
        )
    name, recorded = task
    known = _known(recorded, f"task {name}'s record")
    if known.unknown is not None:
        return known
    said_metric = value.strip().lower() if isinstance(value, str) else value  # as check_metric
    note = None
    if said_metric != known.metric:
        said = "names no task metric" if value is None else f"names {value!r}"
        note = (
            f"{where} {said}, its task {name}'s record {known.metric!r}: "
            f"{known.metric} is tested, the metric the champion/challenger gate compares"
        )
    return ModelMetric(known.metric, f"task {name} of model {model}", note)


def _known(value: object, where: str) -> ModelMetric:
    """``value`` as a metric, or ``acc`` with ``unknown`` set and a note naming ``where``."""
    try:
        if isinstance(value, str):
            return ModelMetric(check_metric(value), where)
    except InputError:
        pass
    return ModelMetric(
        "acc",
        where,
        f"the task's metric {value!r} ({where}) is not one the monitor tests "
        f"(expected one of {', '.join(METRICS)}): accuracy is tested instead",
        unknown=str(value),
    )
