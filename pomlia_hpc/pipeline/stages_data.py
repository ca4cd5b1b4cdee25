"""Stages ``lookalikes`` and ``data``: generate look-alikes, ingest every dataset."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.pipeline.options import OPTIONS
from pomlia_hpc.pipeline.spec import DatasetSpec, PipelineSpec
from pomlia_hpc.pipeline.stage import Stage, StageContext, content_key


def lookalike_dir(ctx_home: Path, spec: PipelineSpec) -> Path:
    """Where the look-alikes go: ``lookalikes.out``, relative to the workspace."""
    assert spec.lookalikes is not None
    out = Path(spec.lookalikes.out).expanduser()
    return out if out.is_absolute() else ctx_home / out


def _run_lookalikes(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.data.synth import write_lookalikes

    la = ctx.spec.lookalikes
    assert la is not None
    flags = la.flags or _medmnist_flags(ctx.spec)
    out = lookalike_dir(ctx.workspace.home, ctx.spec)
    paths = write_lookalikes(
        out,
        scale=la.scale,
        seed=la.seed,
        size=la.size,
        flags=flags,
        progress=lambda flag: ctx.log(f"  look-alike {flag} written"),
    )
    return {"folder": str(out), "files": sorted(p.name for p in paths)}


def _medmnist_flags(spec: PipelineSpec) -> list[str]:
    return [d.medmnist for d in spec.datasets if d.medmnist]


def _lookalikes_there(_ctx: StageContext, out: dict[str, Any]) -> bool:
    return all((Path(out["folder"]) / f).is_file() for f in out.get("files", []))


def source_of(spec: PipelineSpec, ds: DatasetSpec, home: Path) -> tuple[str, dict[str, Any]]:
    """``ingest``'s source and options for one dataset entry."""
    if ds.medmnist:
        root: Path | None = spec.path(ds.root) if ds.root else None
        if root is None and spec.lookalikes is not None:
            root = lookalike_dir(home, spec)
        opts: dict[str, Any] = {"size": ds.size, "download": ds.download, **ds.options}
        if root is not None:
            opts["root"] = str(root)
        return f"medmnist:{ds.medmnist}", opts
    path = spec.path(ds.file or ds.folder or "")
    return str(path), dict(ds.options)


def _stat(path: Path) -> list[Any]:
    """Size and modification time of a file, or of every file below a folder (summed)."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file()]
        newest = max((p.stat().st_mtime_ns for p in files), default=0)
        return [len(files), sum(p.stat().st_size for p in files), newest]
    return ["missing"]


def _external(spec: PipelineSpec) -> dict[str, Any]:
    """What identifies the source files outside the workspace (look-alikes are keyed by the
    ``lookalikes`` stage's outputs instead)."""
    out: dict[str, Any] = {}
    for ds in spec.datasets:
        if ds.file or ds.folder:
            out[ds.name] = _stat(spec.path(ds.file or ds.folder or ""))
        elif ds.root:
            from pomlia_hpc.data.medmnist_info import flag_info

            try:
                name = flag_info(ds.medmnist or "").file_name(ds.size)
            except Exception:  # an unknown flag fails in the stage, with its own message
                continue
            out[ds.name] = _stat(spec.path(ds.root) / name)
    return out


def _check_data(spec: PipelineSpec) -> None:
    """Open each file or folder source as ingest would (it exists, its options hold), so a
    missing file or a bad option is refused before anything runs. Of a MedMNIST source only
    the flag is checked (against the table shipped with pomlia): opening one may download it."""
    from pomlia_hpc.data.medmnist_info import flag_info

    for i, ds in enumerate(spec.datasets):
        if ds.medmnist:
            with in_entry(spec, i):
                flag_info(ds.medmnist)
        else:
            source_split_sizes(spec, i)


#: How many opened sources' split sizes a process keeps (least recently used dropped first):
#: the data and encoder checks of one dry run open a folder (which hashes its files) once,
#: and a long-lived process (a test session, a notebook) does not grow without bound.
OPENED_MAX = 64


def source_split_sizes(spec: PipelineSpec, index: int) -> dict[str, int] | None:
    """Images per split of data set entry ``index`` when it is a file or folder, opened and
    checked as ingest would open it; None for MedMNIST (opening one may download it)."""
    ds = spec.datasets[index]
    if not (ds.file or ds.folder):
        return None
    source, opts = source_of(spec, ds, Path())  # the home is read for MedMNIST only
    for own in ("workers", "parent", "progress"):  # ingest's, not the source's
        opts.pop(own, None)
    # The file stamps are part of the cache key: an edited source is opened (checked) again.
    stamp = content_key(_stat(Path(source)))
    with in_entry(spec, index):
        return dict(opened_split_sizes(source, json.dumps(opts, sort_keys=True), stamp))


@functools.lru_cache(maxsize=OPENED_MAX)
def opened_split_sizes(source: str, options: str, stamp: str) -> tuple[tuple[str, int], ...]:
    """(split, images) of ``source`` opened with ``options`` (JSON text) as ingest opens it;
    cached by source, options and ``stamp`` (of the files' sizes and times), a refusal not."""
    from pomlia_hpc.data.sources import open_source

    opened = open_source(source, **json.loads(options))
    close = getattr(opened, "close", None)
    if close is not None:
        close()
    return tuple(opened.split_sizes.items())


@contextmanager
def in_entry(spec: PipelineSpec, index: int) -> Iterator[None]:
    """Re-raise the data room's :class:`InputError` with the pipeline file and data set entry
    in front, and its command-line flags (``--val-fraction``) as the file's keys. A source
    file that is not there is a value of the pipeline file: bad input too (exit 2), not the
    command line's not found (exit 4)."""
    try:
        yield
    except (InputError, NotFoundError) as exc:
        message = exc.message
        for key in OPTIONS:
            flag = "--" + key.replace("_", "-")
            message = re.sub(rf"{flag}\b", f"'options.{key}'", message)
        where = f"datasets.{index} (data set '{spec.datasets[index].name}')"
        raise InputError(f"{spec.source}: {where}: {message}", hint=exc.hint) from exc


def _run_data(ctx: StageContext) -> dict[str, Any]:
    from pomlia_hpc.data.api import ingest

    versions: dict[str, str] = {}
    for i, ds in enumerate(ctx.spec.datasets):
        source, opts = source_of(ctx.spec, ds, ctx.workspace.home)
        with in_entry(ctx.spec, i):
            rec = ingest(ctx.workspace, ctx.registry, ds.name, source, **opts)
        versions[ds.name] = rec.ref
        ctx.log(f"  {rec.ref}: {rec.n_images} images{' (new)' if rec.created else ''}")
    return {"versions": versions}


def _data_there(ctx: StageContext, out: dict[str, Any]) -> bool:
    from pomlia_hpc.data.store import find_version

    try:
        return all(
            Path(find_version(ctx.registry, r).store_path).exists()
            for r in out["versions"].values()
        )
    except Exception:
        return False


def estimated_images(spec: PipelineSpec, ds: DatasetSpec, split: str | None = None) -> int | None:
    """Images of a dataset entry (one split, or all) from MedMNIST's tables, scaled for
    look-alikes as the generator sizes them (each split rounded on its own, at least 1);
    None when unknown before ingest (files and folders)."""
    if not ds.medmnist:
        return None
    from pomlia_hpc.data.medmnist_info import flag_info
    from pomlia_hpc.data.synth import split_sizes

    try:
        n = flag_info(ds.medmnist).n_samples
        if spec.lookalikes is not None and ds.root is None:
            n = split_sizes(ds.medmnist, spec.lookalikes.scale)
    except Exception:  # an unknown flag (or scale) fails in its own stage, with its message
        return None
    return int(n.get(split, 0) if split else sum(n.values()))


LOOKALIKES = Stage(
    name="lookalikes",
    needs=(),
    summary="write MedMNIST look-alike npz files (no download)",
    enabled=lambda s: s.lookalikes is not None,
    section=lambda s: {"lookalikes": s.lookalikes, "flags": _medmnist_flags(s)},
    run=_run_lookalikes,
    still_there=_lookalikes_there,
)

DATA = Stage(
    name="data",
    needs=("lookalikes",),
    summary="ingest every dataset into a versioned Zarr store",
    enabled=lambda s: True,
    section=lambda s: [d.model_dump(mode="json") for d in s.datasets],
    run=_run_data,
    still_there=_data_there,
    external=_external,
    check=_check_data,
)
