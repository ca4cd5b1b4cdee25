"""Stage ``recommend``: the strategy recommender's warm start for each task's AutoML study.

It registers itself after ``tasks`` (see :func:`pomlia_hpc.pipeline.stages.register_stage`).
With ``recommend.shipped_tables`` the published MedMNIST tables shipped with pomlia-hpc are
imported into the knowledge base first (once; an existing source of that name is kept).
"""

from __future__ import annotations

from typing import Any

from pomlia_hpc.errors import ConfigError
from pomlia_hpc.pipeline.stage import StageContext, section_stage
from pomlia_hpc.pipeline.stages import register_stage


def import_shipped(ctx: StageContext) -> list[str]:
    """Import the shipped tables that the knowledge base lacks; returns the names imported."""
    from pomlia_hpc.strategy.kb import (
        SHIPPED_DATA,
        SHIPPED_META,
        SHIPPED_TABLES,
        import_table,
        list_sources,
    )

    have = {s.name for s in list_sources(ctx.registry)}
    done = []
    for source, file in SHIPPED_TABLES:
        if source not in have:
            meta = SHIPPED_DATA / SHIPPED_META
            import_table(ctx.registry, SHIPPED_DATA / file, source, meta_path=meta)
            done.append(source)
    return done


def _run(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.strategy.recommend import NothingFitsError, recommend

    rec = ctx.spec.recommend
    assert rec is not None
    if rec.shipped_tables:
        for name in import_shipped(ctx):
            ctx.log(f"  knowledge base: imported the shipped table '{name}'")
    out: dict[str, Any] = {}
    for key, t in ctx.outputs("tasks").items():
        try:
            answer = recommend(
                ctx.registry,
                t["task"],
                k=rec.k,
                max_gpu_hours=rec.max_gpu_hours,
                sources=list(rec.sources) if rec.sources else None,
            )
        except NothingFitsError as exc:
            # as before the limit was checked: the study runs without a warm start
            ctx.log(f"  {t['task']}: recommend.max_gpu_hours: {exc}; no warm start")
            out[key] = {"recommendation_id": None, "configs": [], "top": []}
            continue
        configs = list(answer.get("initial") or [])
        out[key] = {
            "recommendation_id": answer.get("recommendation_id"),
            "configs": configs,
            "top": [
                {k: (s.get("strategy") or {}).get(k) for k in ("arch", "init", "mode", "img_size")}
                for s in answer.get("strategies", [])[: rec.k]
            ],
        }
        ctx.log(
            f"  {t['task']}: recommendation {answer.get('recommendation_id')}, "
            f"{len(configs)} warm-start configuration(s)"
        )
    return out


def _check_sources(ctx: StageContext) -> None:
    """Before anything runs: each of ``recommend.sources`` is a source the stage will find
    (imported, ``registry``, or a shipped table the stage imports first); a misspelt one
    failed only after ingest, naming neither the file nor the key."""
    from pomlia_hpc.strategy.kb import REGISTRY_SOURCE, SHIPPED_TABLES, list_sources

    rec = ctx.spec.recommend
    if rec is None or not rec.sources:
        return
    known = {s.name for s in list_sources(ctx.registry)} | {REGISTRY_SOURCE}
    if rec.shipped_tables:
        known |= {name for name, _file in SHIPPED_TABLES}
    hint = "`pomlia strategy sources` lists them"
    if not rec.shipped_tables:
        hint += "; `shipped_tables: true` adds " + ", ".join(n for n, _f in SHIPPED_TABLES)
    for i, name in enumerate(rec.sources):
        if name not in known:
            raise ConfigError(
                f"{ctx.spec.source}: bad value for 'recommend.sources.{i}': knowledge-base "
                f"source '{name}' is not imported; expected one of {', '.join(sorted(known))} "
                f"({hint})"
            )


RECOMMEND = section_stage(
    "recommend",
    needs=("tasks", "extract"),
    summary="recommend strategies per task (warm start of its study)",
    run=_run,
    check_workspace=_check_sources,
)

register_stage(RECOMMEND, after="tasks")
