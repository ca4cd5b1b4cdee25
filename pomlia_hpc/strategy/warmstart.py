"""A warm start for an AutoML study from the strategy recommender
(``pomlia automl run TASK --from-recommendation``).

:func:`from_recommendation` asks :func:`pomlia_hpc.strategy.recommend.recommend` for the task's
top-k strategies and turns them into the study's initial design (with the hyperparameters of
their best runs on similar tasks where known) and a narrower space: only the recommended
architectures, the pretrained sources they use, extra images only if recommended.
The recommender picks those sources by similarity alone: an encoder or model that trained on
the task's val/test images (which ``automl run --encoder`` / ``--init-model`` refuse) is left
out with the configurations that start from it, and the warm start says so
(:attr:`WarmStart.notes`). The check is the caller's (``seen``:
:func:`pomlia_hpc.automl.seen_init.seen_start_problems`, which reads the stores): this room
imports no torch, and the model catalog it would import does.
:func:`withdraw` removes the recorded answer again when the study it was for is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pomlia_hpc.errors import InputError
from pomlia_hpc.registry import Recommendation, Registry
from pomlia_hpc.strategy.recommend import recommend

#: ``seen(registry, task, encoder=E, init_model=M)``: ``{"encoder": why, "model": why}`` for
#: the weights among E and M that trained on ``task``'s val/test images.
SeenCheck = Callable[..., dict[str, str]]


@dataclass(frozen=True)
class WarmStart:
    """What a recommendation gives a study."""

    configs: list[dict[str, Any]]
    archs: tuple[str, ...]
    encoder: str | None
    init_model: str | None
    extra_data: bool
    recommendation_id: int | None
    notes: tuple[str, ...] = ()
    """What was left out of the recommendation's configurations, and why (one line each)."""


def from_recommendation(
    registry: Registry,
    task: str,
    k: int = 5,
    *,
    archs: tuple[str, ...] | None = None,
    sources: list[str] | None = None,
    exclude_own_runs: bool = False,
    seen: SeenCheck | None = None,
    own_weights: frozenset[str] = frozenset(),
) -> WarmStart:
    """The warm start for ``task`` from its top-``k`` recommended strategies (``archs``: only
    these architectures; ``sources``: knowledge-base sources, default all; ``seen``: leaves
    out the weights that trained on the task's val/test images, see the module docstring).
    ``own_weights`` names the inits (``"encoder"``, ``"model"``) whose weights the caller
    gives itself (``--encoder``, ``--init-model``): the study starts from those, not the
    recommended ones, and checks them itself, so the recommended ones are not checked."""
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
    rec_id = answer.get("recommendation_id")
    configs, notes = (
        _fair_configs(registry, task, configs, weights, rec_id, seen, own_weights)
        if seen
        else (configs, [])
    )
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
        recommendation_id=rec_id,
        notes=tuple(notes),
    )


def _fair_configs(
    registry: Registry,
    task: str,
    configs: list[dict[str, Any]],
    weights: dict[str, Any],
    rec_id: int | None,
    seen: SeenCheck,
    own_weights: frozenset[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """``configs`` less those starting from weights that trained on ``task``'s val/test
    images (see the module docstring), and one note per source left out. Refused (the
    recommendation withdrawn) when none is left: a study of the rest would be no warm start
    from this recommendation at all."""
    # Weights the caller gives itself replace the recommended ones: those are not used.
    uses = {c.get("init") for c in configs} - own_weights
    problems = seen(
        registry,
        task,
        encoder=weights.get("encoder") if "encoder" in uses else None,
        init_model=weights.get("model") if "model" in uses else None,
    )
    if not problems:
        return configs, []
    kept = [c for c in configs if c.get("init") not in problems]
    notes = [
        f"recommendation {rec_id}: left out its {sum(c.get('init') == init for c in configs)} "
        f"configuration(s) with init={init}: {why}"
        for init, why in problems.items()
    ]
    if not kept:
        withdraw(registry, rec_id)
        raise InputError(
            f"every configuration of the recommendation for task '{task}' starts from weights "
            f"that trained on its val/test images ({'; '.join(problems.values())}); run "
            "without --from-recommendation"
        )
    return kept, notes


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
