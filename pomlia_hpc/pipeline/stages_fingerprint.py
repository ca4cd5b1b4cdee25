"""Stages ``encoder``, ``extract``, ``index`` and ``figures``: the fingerprint room's work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pomlia_hpc.config import ClusterProfile
from pomlia_hpc.errors import ConfigError, InputError
from pomlia_hpc.pipeline.spec import (
    DatasetSpec,
    EncoderSpec,
    ExtractSpec,
    PipelineSpec,
    dataset_name,
)
from pomlia_hpc.pipeline.stage import PlannedJob, StageContext, resources_of, section_stage
from pomlia_hpc.pipeline.stages_data import estimated_images, source_split_sizes
from pomlia_hpc.pipeline.wording import expected_words


def _enc(spec: PipelineSpec) -> EncoderSpec:
    assert spec.encoder is not None
    return spec.encoder


def _train_config(spec: PipelineSpec) -> Any:
    """The fingerprint room's training config; a value it refuses is one error naming the
    pipeline file and key (``encoder.objective``) in words, not a traceback."""
    from pydantic import ValidationError

    from pomlia_hpc.fingerprint.train import TrainConfig

    enc = _enc(spec)
    data: dict[str, Any] = {
        "encoder": {"latent_dim": enc.latent_dim, "image_size": enc.image_size, "stem": enc.stem},
        "epochs": enc.epochs,
        "batch_size": enc.batch_size,
        "lr": enc.lr,
        "max_images_per_dataset": enc.max_images,
        "processes": enc.processes,
        "precision": enc.precision,
        "seed": enc.seed,
    }
    if enc.objective is not None:
        data["objective"] = enc.objective
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][-1]) if err["loc"] else "encoder"
        words = expected_words(err["type"], err.get("ctx") or {}, list(err["loc"]), {})
        raise ConfigError(
            f"{spec.source}: bad value for 'encoder.{key}': "
            + (f"expected {words}" if words else str(err["msg"]))
            + f" (got {err.get('input')!r})"
        ) from exc


def _check_batch(spec: PipelineSpec, rows: int, exact: bool) -> None:
    """Refuse a training set of ``rows`` images (``exact``: counted; else at most) that gives
    no process a full batch, naming the pipeline's keys (the trainer names its CLI flags)."""
    enc = _enc(spec)
    need = enc.batch_size * enc.processes
    if rows >= need:
        return
    count = f"{rows}" if exact else f"at most {rows}"
    raise ConfigError(
        f"{spec.source}: encoder '{enc.name}' would train on {count} images (after "
        f"encoder.max_images and the rows held out for early stopping), fewer than one batch: "
        f"expected at least encoder.batch_size {enc.batch_size} x encoder.processes "
        f"{enc.processes} = {need}; lower encoder.batch_size (or encoder.processes)"
        + (", or raise encoder.max_images" if enc.max_images is not None else "")
    )


def _trained_on(spec: PipelineSpec) -> list[tuple[int, DatasetSpec]]:
    """The data set entries (index, entry) the encoder trains on: ``encoder.datasets``
    (``name``, or ``name@version`` naming the version the file ingests), or all."""
    enc = _enc(spec)
    names = {dataset_name(r) for r in enc.datasets} if enc.datasets else None
    return [(i, d) for i, d in enumerate(spec.datasets) if names is None or d.name in names]


def _check_versions(spec: PipelineSpec, upstream: dict[str, dict[str, Any]]) -> None:
    """Refuse an ``encoder.datasets`` entry ``name@version`` whose version is not the one the
    file ingests (``upstream["data"]["versions"]``, when known): the stage trains on what the
    file ingests, so another version there would be silently replaced."""
    from pomlia_hpc.data.store import parse_ref

    enc, data = _enc(spec), upstream.get("data")
    if data is None:
        return  # ingest has not run yet: checked when the encoder stage starts
    for i, ref in enumerate(enc.datasets or ()):
        name, version = parse_ref(ref)
        ingested = data["versions"].get(name)
        if version is None or ingested is None:
            continue
        have = parse_ref(ingested)[1] or ""
        if not have.startswith(version):
            raise ConfigError(
                f"{spec.source}: encoder.datasets.{i}: '{ref}' asks for version {version} of "
                f"data set '{name}', but the file ingests version {have}: expected '{name}' "
                f"or '{name}@{have}' (the encoder trains on the version the file ingests)"
            )


def _check_encoder(spec: PipelineSpec) -> None:
    """Before anything runs: the training options hold, and the training set fills a batch
    (counted from MedMNIST's tables and the file and folder sources, capped at
    ``encoder.max_images``)."""
    from pomlia_hpc.fingerprint.rows import held_out

    enc = _enc(spec)
    config = _train_config(spec)
    split = None if config.split == "all" else config.split
    rows = 0
    for i, ds in _trained_on(spec):
        known = estimated_images(spec, ds, split)
        sizes = source_split_sizes(spec, i) if known is None else None
        if sizes is not None:
            known = sizes.get(split, 0) if split else sum(sizes.values())
        if known is None and enc.max_images is None:
            return  # no bound on the training set: the stage counts it after ingest
        n = min(n for n in (known, enc.max_images) if n is not None)
        rows += n - held_out(n, config.holdout)
    _check_batch(spec, rows, exact=False)


def _run_encoder(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.fingerprint.rows import training_rows
    from pomlia_hpc.fingerprint.shards import checkpoint_digest
    from pomlia_hpc.fingerprint.train import train_encoder

    enc = _enc(ctx.spec)
    _check_versions(ctx.spec, {"data": ctx.outputs("data")})
    versions = ctx.outputs("data")["versions"]
    names = enc.datasets or tuple(versions)
    refs = [versions[dataset_name(n)] for n in names]
    config = _train_config(ctx.spec)
    rows = training_rows(
        ctx.registry, refs, config.split, config.max_images_per_dataset, config.holdout
    )
    _check_batch(ctx.spec, rows, exact=True)
    row = train_encoder(
        ctx.registry,
        ctx.workspace,
        enc.name,
        refs,
        config,
        resources=enc.resources.as_overrides(),
        progress=ctx.progress("encoder epochs"),
        # The file owns the encoder this stage trained: an edited `encoder` section retrains
        # it under its name; an encoder made otherwise is refused, not replaced.
        pipeline=ctx.spec.name,
        owned=_trained_here(ctx, enc.name),
    )
    return {
        "encoder": row.name,
        "id": row.id,
        "checkpoint": row.checkpoint_path,
        "digest": checkpoint_digest(row.checkpoint_path),
        "loss": list(row.loss_curve),
    }


def _trained_here(ctx: StageContext, name: str) -> bool:
    """Whether this stage's last finished run made the weights now registered as encoder
    ``name`` (same name, same weights' digest). Encoders trained before their training record
    named the pipeline are owned through this."""
    from pomlia_hpc.fingerprint.shards import checkpoint_digest

    prev = ctx.previous or {}
    out = prev.get("outputs") or {}
    if prev.get("status") != "done" or out.get("encoder") != name:
        return False
    path = Path(str(out.get("checkpoint", "")))
    return path.is_file() and checkpoint_digest(path) == out.get("digest")


def _encoder_there(_ctx: StageContext, out: dict[str, Any]) -> bool:
    return Path(out.get("checkpoint", "")).is_file()


def _train_images(spec: PipelineSpec) -> int | None:
    """Training images of the encoder, at most ``encoder.max_images`` per data set (for the
    plan's time estimate); None when a data set's size is known only after ingest."""
    enc = _enc(spec)
    total = 0
    for _i, ds in _trained_on(spec):
        n = estimated_images(spec, ds, "train")
        if n is None:
            return None
        total += min(n, enc.max_images or n)
    return total


def _encoder_jobs(spec: PipelineSpec, profile: ClusterProfile) -> list[PlannedJob]:
    enc = _enc(spec)
    n = _train_images(spec)
    hours = None if n is None else n * enc.epochs / spec.estimate.train_images_per_s / 3600
    res = resources_of(profile, enc.resources)
    return [PlannedJob(f"train encoder '{enc.name}' (d={enc.latent_dim})", 1, res, hours)]


def _run_extract(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.fingerprint.extract import extract

    ex = ctx.spec.extract or ExtractSpec()
    enc = ctx.outputs("encoder")["encoder"]
    refs = list(ctx.outputs("data")["versions"].values())
    results = extract(
        ctx.registry,
        ctx.workspace,
        enc,
        refs,
        shards=ex.shards,
        shard_rows=ex.shard_rows,
        batch_size=ex.batch_size,
        resources=ex.resources.as_overrides(),
        progress=ctx.progress("extraction tasks"),
    )
    return {"sets": {r.ref: r.n_vectors for r in results}, "encoder": enc}


def _extract_there(ctx: StageContext, out: dict[str, Any]) -> bool:
    from pomlia_hpc.fingerprint.candidates import fingerprint_set

    try:
        for ref in out["sets"]:
            fs, _ = fingerprint_set(ctx.registry, out["encoder"], ref)
            if not Path(fs.embeddings_path).exists():
                return False
    except Exception:
        return False
    return True


def _extract_jobs(spec: PipelineSpec, profile: ClusterProfile) -> list[PlannedJob]:
    ex = spec.extract or ExtractSpec()
    counts = [estimated_images(spec, ds) for ds in spec.datasets]
    known = [c for c in counts if c is not None]
    total = sum(known) if len(known) == len(counts) else None
    if ex.shards is not None:  # a dataset of fewer chunks than that gets fewer shards
        tasks, bound = ex.shards * len(spec.datasets), "up to"
    elif total is not None:
        tasks, bound = _packed_tasks(known, ex.shard_rows)
    else:  # small datasets share a task: how many depends on sizes known after ingest
        tasks, bound = 1, "at least"
    hours = None if total is None else total / spec.estimate.extract_images_per_s / 3600 / tasks
    res = resources_of(profile, ex.resources)
    return [PlannedJob("extract embeddings (array)", tasks, res, hours, bound)]


def _packed_tasks(counts: list[int], shard_rows: int | None) -> tuple[int, str]:
    """Array tasks for datasets of ``counts`` images, packed as
    :func:`pomlia_hpc.fingerprint.extract.group_shards` packs them, and the plan's word for
    the count: exact when every dataset is one shard, else ``about`` (shards end on chunk
    boundaries, which are known after ingest)."""
    from pomlia_hpc.fingerprint.extract import DEFAULT_SHARD_ROWS

    target = shard_rows or DEFAULT_SHARD_ROWS
    shards: list[int] = []
    for n in counts:
        k = max(1, -(-n // target))
        shards += [n // k + (1 if i < n % k else 0) for i in range(k)]
    tasks, rows = 0, 0
    for n in shards:
        if tasks == 0 or rows + n > target:
            tasks, rows = tasks + 1, 0
        rows += n
    return tasks, "" if len(shards) == len(counts) else "about"


def _check_index(spec: PipelineSpec) -> None:
    """Before anything runs: ``index.factory`` is one faiss builds for the encoder's vectors
    (``encoder.latent_dim`` wide), checked as the index build checks it; a bad one failed only
    after encoder training and extraction."""
    from pomlia_hpc.fingerprint.index import new_index

    assert spec.index is not None
    if spec.index.factory is None:
        return
    try:
        new_index(_enc(spec).latent_dim, spec.index.factory, spec.index.metric)
    except InputError as exc:
        raise ConfigError(f"{spec.source}: bad value for 'index.factory': {exc}") from exc


def _run_index(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.fingerprint.index import build_index

    assert ctx.spec.index is not None
    enc = ctx.outputs("encoder")["encoder"]
    res = build_index(
        ctx.registry,
        ctx.workspace,
        enc,
        factory=ctx.spec.index.factory,
        metric=ctx.spec.index.metric,
    )
    ctx.log(f"  index {res.factory}: {res.ntotal} vectors, generation {res.generation}")
    return {"path": str(res.path), "generation": res.generation, "ntotal": res.ntotal}


def _index_there(_ctx: StageContext, out: dict[str, Any]) -> bool:
    return Path(out.get("path", "")).exists()


def _run_figures(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.fingerprint.plots import latent_figures
    from pomlia_hpc.pipeline.paper import dataset_groups_ari

    fig = ctx.spec.figures
    assert fig is not None
    enc = ctx.outputs("encoder")["encoder"]
    versions = ctx.outputs("data")["versions"]
    out_dir = ctx.workspace.path("reports", "pipelines", ctx.spec.name)
    outputs: dict[str, Any] = {"folder": str(out_dir)}
    if fig.latent:
        # The rule of `pomlia plot latent` and the report: no means figure of one data set
        # (one point, axes of rounding noise); the reason is logged and recorded instead.
        paths, skipped = latent_figures(ctx.registry, enc, list(versions.values()), out_dir)
        outputs.update(dict(zip(("scatter", "means"), map(str, paths), strict=False)))
        ctx.log(f"  wrote {' and '.join(map(str, paths))}")
        if skipped:
            # A means figure of an earlier run (of other data sets) would read as this one's.
            (out_dir / "latent_means.png").unlink(missing_ok=True)
            outputs["means_note"] = skipped
            ctx.log(f"  {skipped}")
    if fig.groups:
        ari = dataset_groups_ari(ctx.registry, enc, versions, fig.groups, fig.linkage, out_dir)
        outputs["clustering"] = ari
        ctx.log(
            f"  agglomerative clustering of dataset fingerprints vs the given groups: "
            f"ARI {ari['ari']:.3f} (explicit-fingerprint baseline {ari['baseline_ari']:.3f})"
        )
    return outputs


def _figures_there(_ctx: StageContext, out: dict[str, Any]) -> bool:
    return all(Path(out[k]).is_file() for k in ("scatter", "means") if k in out)


ENCODER = section_stage(
    "encoder",
    needs=("data",),
    summary="train the fingerprint encoder as one cluster job",
    run=_run_encoder,
    jobs=_encoder_jobs,
    still_there=_encoder_there,
    check=_check_encoder,
    check_upstream=_check_versions,
)

EXTRACT = section_stage(
    "extract",
    when="encoder",
    needs=("data", "encoder"),
    summary="embed every dataset as an array job of shards",
    run=_run_extract,
    jobs=_extract_jobs,
    still_there=_extract_there,
)

INDEX = section_stage(
    "index",
    needs=("encoder", "extract"),
    summary="build or extend the FAISS index",
    run=_run_index,
    still_there=_index_there,
    check=_check_index,
)

FIGURES = section_stage(
    "figures",
    needs=("data", "encoder", "extract"),
    summary="Figures 5/6 and the clustering of dataset fingerprints (ARI)",
    run=_run_figures,
    still_there=_figures_there,
)
