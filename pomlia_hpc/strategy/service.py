"""What the CLI calls: evaluation of a source, and (in :mod:`.recommend`) recommendations."""

from __future__ import annotations

from pomlia_hpc.registry import Registry
from pomlia_hpc.strategy.evaluate import EvalResult, loo
from pomlia_hpc.strategy.kb import load
from pomlia_hpc.strategy.learner import build_matrix


def evaluate_source(
    registry: Registry, source: str, metric: str, *, k: int = 3, cheap: bool = False
) -> EvalResult:
    """Leave-one-dataset-out over the results of ``source`` (an imported source or
    ``registry``) for ``metric``; see :func:`pomlia_hpc.strategy.evaluate.loo`."""
    kb = load(registry, metric, [source])
    result = loo(build_matrix(kb), k=k, cheap=cheap)
    result.metric = metric
    return result
