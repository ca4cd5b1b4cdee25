"""A warm start for an AutoML study from the strategy recommender
(``pomlia automl run TASK --from-recommendation``).

:func:`from_recommendation` asks :func:`pomlia_hpc.strategy.recommend.recommend` for the task's
top-k strategies and turns them into the study's initial design (with the hyperparameters of
their best runs on similar tasks where known) and a narrower space: only the recommended
architectures, the pretrained sources they use, extra images only if recommended.
:func:`withdraw` removes the recorded answer again when the study it was for is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Recommendation, Registry
from pomlia_hpc.strategy.recommend import recommend


@dataclass(frozen=True)
class WarmStart:
    """What a recommendation gives a study."""

    configs: list[dict[str, Any]]
    archs: tuple[str, ...]
    encoder: str | None
    init_model: str | None
    extra_data: bool
    recommendation_id: int | None


def from_recommendation(
    registry: Registry,
    task: str,
    k: int = 5,
    *,
    archs: tuple[str, ...] | None = None,
    sources: list[str] | None = None,
    exclude_own_runs: bool = False,
) -> WarmStart:
    """The warm start for ``task`` from its top-``k`` recommended strategies (``archs``: only
    these architectures; ``sources``: knowledge-base sources, default all)."""
    answer = recommend(
        registry, task, k=k, archs=archs, sources=sources, exclude_own_runs=exclude_own_runs
    )
    configs = list(answer.get("initial") or [])
    if not configs:
        withdraw(registry, answer.get("recommendation_id"))
        raise InputError(
            f"the recommendation for task '{task}' has no strategy the AutoML space can "
            "express (architectures or pretrained weights missing here); run without "
            "--from-recommendation"
        )
    weights: dict[str, Any] = answer.get("sources_of_weights") or {}
    uses = {c.get("init", "scratch") for c in configs}
    extra = any(c.get("extra_data") == "nearest" for c in configs)
    # (a configuration asks for extra images only where the encoder's index can find them)
    encoder = weights.get("encoder") if ("encoder" in uses or extra) else None
    return WarmStart(
        configs=configs,
        archs=tuple(dict.fromkeys(str(c["arch"]) for c in configs)),
        encoder=encoder,
        init_model=weights.get("model") if "model" in uses else None,
        extra_data=extra and encoder is not None,
        recommendation_id=answer.get("recommendation_id"),
    )


def check_archs(warm: WarmStart, archs: tuple[str, ...]) -> None:
    """Refuse ``archs`` (the user's ``--archs``) when they leave out an architecture that the
    recommendation's warm-start configurations train: an :class:`InputError` naming the
    recommendation and what to do, not an error about an "initial configurations" entry that
    the user never wrote."""
    missing = [a for a in warm.archs if a not in archs]
    if missing:
        names = ", ".join(missing)
        raise InputError(
            f"recommendation {warm.recommendation_id} for this task starts from {names}, not "
            f"among --archs {','.join(archs)}: drop --archs to search the recommendation's "
            f"architectures ({','.join(warm.archs)}), or add {names} to --archs"
        )


def withdraw(registry: Registry, recommendation_id: int | None) -> None:
    """Delete the record of a recommendation whose warm start was refused (the study never
    ran): `pomlia strategy outcomes` must not score an answer that nothing used, once per
    refused attempt. Nothing to do for ``None`` (an answer that was not recorded)."""
    if recommendation_id is None:
        return
    with registry.session() as s:
        row = s.get(Recommendation, recommendation_id)
        if row is not None:
            s.delete(row)
