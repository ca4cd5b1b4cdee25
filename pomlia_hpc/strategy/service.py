"""What the CLI calls: evaluation of a source, and (in :mod:`.recommend`) recommendations."""

from __future__ import annotations

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Registry
from pomlia_hpc.strategy.evaluate import EvalResult, loo
from pomlia_hpc.strategy.fpdist import fingerprint_distances
from pomlia_hpc.strategy.kb import (
    REGISTRY_SOURCE,
    KnowledgeBase,
    dimensionality,
    list_sources,
    load,
)
from pomlia_hpc.strategy.learner import build_matrix


def evaluate_source(
    registry: Registry, source: str, metric: str, *, k: int = 3, cheap: bool = False
) -> EvalResult:
    """Leave-one-dataset-out over the results of ``source`` (an imported source or
    ``registry``) for ``metric``; see :func:`pomlia_hpc.strategy.evaluate.loo` and
    :func:`evaluate_kb`."""
    kb = load(registry, metric, [source])
    if not kb.datasets() and not kb.short:  # short runs: evaluate_kb names them
        _no_results(registry, source, kb.metric)
    return evaluate_kb(registry, kb, k=k, cheap=cheap, registry_tasks=source == REGISTRY_SOURCE)


def _no_results(registry: Registry, source: str, metric: str) -> None:
    """Refuse an evaluation of a metric ``source`` has no value of, naming the metrics it
    has: "needs at least 3 data sets; this selection has 0 (none)" did not say that the
    metric was the problem."""
    if source == REGISTRY_SOURCE:
        raise InputError(
            f"the registry has no counted run of a task with metric '{metric}' (runs of such "
            "tasks that reached at least a third of their full budget, or 9 epochs); expected "
            "finished AutoML studies of such tasks, or another --metric"
        )
    (info,) = [s for s in list_sources(registry) if s.name == source]
    has = ", ".join(info.metrics) or "none"
    raise InputError(
        f"knowledge-base source '{source}' has no results for metric '{metric}' (its metrics: "
        f"{has}); expected --metric one of them"
    )


def evaluate_kb(
    registry: Registry,
    kb: KnowledgeBase,
    *,
    k: int = 3,
    cheap: bool = False,
    registry_tasks: bool = True,
) -> EvalResult:
    """Leave-one-dataset-out over ``kb``. With ``registry_tasks`` (its data sets are the
    registry's tasks), tasks that share an encoder with complete embeddings are compared by
    their fingerprints too, as ``pomlia recommend`` compares them
    (:mod:`pomlia_hpc.strategy.fpdist`); and, as it does, a data set is recommended from those
    of its dimensionality (2D or 3D) only."""
    m = build_matrix(kb)
    fp = fingerprint_distances(registry, m.datasets) if registry_tasks else None
    try:
        result = loo(
            m,
            k=k,
            cheap=cheap,
            fingerprints=fp.pairs if fp else None,
            encoder=fp.encoder if fp else None,
            dims=[dimensionality(kb.meta.get(d, {})) for d in m.datasets],
        )
    except InputError as exc:
        short = sorted({task for task, _ in kb.short} - set(m.datasets))
        if not short:
            raise
        # say why tasks with runs are missing: their runs are all far below the budget
        raise InputError(
            f"{exc}; the runs of {', '.join(short)} reached less than a third of their full "
            "budget (or 9 epochs) and give no value (docs/strategy.md)"
        ) from exc
    result.metric = kb.metric
    return result
