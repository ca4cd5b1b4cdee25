"""FAISS index over all embeddings of one encoder (image level, or patch level).

Ids. A vector's 64-bit FAISS id is ``fingerprint_set_id << 32 | local`` where ``local`` is the
row of the dataset version (image index) or ``row * tiles + tile`` for patch indexes; the
manifest maps each fingerprint set to its ``name@version`` and split row ranges, so every hit
maps back to (dataset version, split, row).

Kinds. ``Flat`` (exact; L2 or inner product) is the default up to :data:`EXACT_LIMIT` vectors;
an :func:`faiss.index_factory` string of an index that can leave a data set's own vectors
out of a search (``IVF4096,Flat``, ``IVF1024,PQ16``, ``SQ8``, ...: :mod:`.exclusion`) can be
given instead, and above the limit the default becomes ``IVF{4*sqrt(N)},Flat``. With
``metric="ip"`` vectors are L2-normalised (cosine similarity). When ``faiss-gpu`` and a GPU are
present, the IVF coarse quantiser is trained on the GPU.

Publishing. Each build writes a new generation folder ``gen-NNNNNN`` (index.faiss +
manifest.json) under a temporary name, flushes it to disk, renames it into place (the next free
number: two concurrent builds never share one) and then atomically replaces the ``current``
symlink, so a reader never sees a half-written index. Temporary folders of killed builds on this
host are removed by the next build (:mod:`pomlia_hpc.files` does all three). Adding a newly
extracted dataset version loads the current index, adds only the new vectors (an IVF index keeps its
trained quantiser) and publishes the result as the next generation; the rest is not rebuilt.

Layout: ``<home>/indexes/<encoder>/{images,patches}/{current -> gen-NNNNNN, gen-NNNNNN/}``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import zarr

from pomlia_hpc.errors import InputError, NotFoundError, PomliaError
from pomlia_hpc.files import (
    held_lock,
    publish_dir,
    replace_link,
    sweep_stale_temps,
    temp_name,
    write_atomic,
)
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.exclusion import (
    SEARCHABLE,
    check_index_type,
    check_leaves_out,
    search_params,
)
from pomlia_hpc.fingerprint.generation import (
    DamagedIndexError,
    Kind,
    Manifest,
    SetEntry,
    build_command,
    faiss_reason,
    read_generation,
)
from pomlia_hpc.fingerprint.io import group_meta, open_array
from pomlia_hpc.fingerprint.usable import (
    LeftOut,
    Unrecorded,
    Usable,
    extract_command,
    left_out_note,
    patch_extract_command,
    unrecorded,
    usable_sets,
)
from pomlia_hpc.registry import Encoder, FingerprintSet, Registry
from pomlia_hpc.storage import storage_error
from pomlia_hpc.workspace import Workspace

#: Up to this many vectors the default index is exact (Flat).
EXACT_LIMIT = 1_000_000
#: Vectors used to train an IVF/PQ index (sampled evenly from all sets).
TRAIN_SAMPLE = 262_144
#: Generations kept on disk besides the current one (readers may still hold the previous one).
KEEP_OLD_GENERATIONS = 1
#: The lock file, in an index's folder, that publishing builds take turns on.
PUBLISH_LOCK = ".publish.lock"

Metric = Literal["l2", "ip"]
SPLITS = ("train", "val", "test")


def default_factory(n_vectors: int) -> str:
    """``Flat`` up to :data:`EXACT_LIMIT` vectors, else an IVF with about 4 sqrt(N) lists."""
    if n_vectors <= EXACT_LIMIT:
        return "Flat"
    nlist = 1 << round(math.log2(4 * math.sqrt(n_vectors)))
    return f"IVF{nlist},Flat"


def new_index(dim: int, factory: str, metric: Metric) -> faiss.Index:
    """An empty index of ``factory`` that accepts 64-bit ids (IDMap-wrapped when needed)."""
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    try:
        index = faiss.index_factory(dim, factory, faiss_metric)
    except RuntimeError as exc:
        why = faiss_reason(exc)
        raise InputError(
            f"index factory string '{factory}' is not valid for {dim}-dimensional vectors"
            f"{f' ({why})' if why else ''}: expected a faiss index_factory string of " + SEARCHABLE
        ) from exc
    check_index_type(index, factory)  # before any training: the dry run's check too
    if faiss.try_extract_index_ivf(index) is None and not isinstance(index, faiss.IndexIDMap):
        index = faiss.IndexIDMap2(index)
    return index


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def train_index(index: faiss.Index, sample: np.ndarray, *, use_gpu: bool | None = None) -> str:
    """Train ``index`` on ``sample`` (float32 (n, d)) if it needs training; returns where it
    was trained: "none", "cpu" or "gpu"."""
    if index.is_trained:
        return "none"
    ivf = faiss.try_extract_index_ivf(index)
    if (use_gpu if use_gpu is not None else gpu_available()) and ivf is not None:
        # Train the coarse quantiser with GPU k-means (the slow part), then the rest on CPU.
        d, nlist = ivf.d, ivf.nlist
        km = faiss.Clustering(d, nlist)
        km.niter, km.max_points_per_centroid = 20, 256
        res = faiss.StandardGpuResources()
        flat = (
            faiss.GpuIndexFlatIP(res, d)
            if ivf.metric_type == faiss.METRIC_INNER_PRODUCT
            else faiss.GpuIndexFlatL2(res, d)
        )
        km.train(sample, flat)
        centroids = faiss.vector_float_to_array(km.centroids).reshape(nlist, d)
        ivf.quantizer.add(centroids)
        index.train(sample)  # fine quantiser (PQ) if any; the coarse one is now trained
        return "gpu"
    ivf_lists = ivf.nlist if ivf is not None else 0
    if len(sample) < ivf_lists:
        raise InputError(
            f"an index with {ivf_lists} inverted lists needs at least that many training "
            f"vectors, got {len(sample)}: use fewer lists (e.g. IVF{max(1, len(sample) // 39)}"
            ",Flat) or the exact default"
        )
    try:
        index.train(sample)
    except RuntimeError as exc:  # e.g. PQ's 256 centroids per sub-vector from 82 vectors
        raise InputError(
            f"the index cannot be trained on {len(sample)} vectors ({faiss_reason(exc)}): use "
            "a smaller one (e.g. 'IVF16,PQ16x4': 16 lists, 16 centroids per sub-vector, or "
            "'SQ8') or the exact default"
        ) from exc
    return "cpu"


@dataclass(frozen=True)
class Hit:
    """One search result mapped back to its image (and tile for patch indexes)."""

    ref: str
    split: str
    row: int
    distance: float
    tile: int | None = None
    fs_id: int = 0
    #: The row within ``split`` (``row`` counts the whole store): the index a user looks the
    #: image up by, e.g. ``test_images[split_row]`` of a MedMNIST file.
    split_row: int = 0


def _split_of(splits: dict[str, list[int]], row: int) -> tuple[str, int]:
    """(the split holding store row ``row``, the row within that split)."""
    for name in SPLITS:
        lo, hi = splits.get(name, [0, 0])
        if lo <= row < hi:
            return name, row - lo
    return "unknown", row


# ----------------------------------------------------------------------------- loaded index


class LoadedIndex:
    """An index generation opened for search."""

    def __init__(self, index: faiss.Index, manifest: Manifest, path: Path) -> None:
        self.index = index
        self.manifest = manifest
        self.path = path
        self._gpu: Any = None

    @property
    def normalize(self) -> bool:
        return self.manifest.metric == "ip"

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude_sets: tuple[int, ...] = (),
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (q, k); distances are L2 (not squared) or 1 - cosine, and
        missing results have id -1. Vectors of ``exclude_sets`` are never returned."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.normalize:
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        excl = [(s << 32, (s + 1) << 32) for s in exclude_sets]
        params, _keep = search_params(self.index, nprobe or self.manifest.nprobe, excl)
        try:
            dist, ids = self.index.search(q, k, params=params)
        except RuntimeError as exc:  # an index built before its type was checked
            m = self.manifest
            kind: Kind = "patches" if m.kind == "patches" else "images"
            raise InputError(
                f"the {m.kind} index of encoder '{m.encoder}' ({m.factory}) cannot be searched "
                f"({faiss_reason(exc)})",
                hint=f"rebuild it: `{build_command(m.encoder, kind)} --rebuild --factory Flat"
                f"{' --metric ip' if self.normalize else ''}`",
            ) from exc
        dist = 1.0 - dist if self.normalize else np.sqrt(np.maximum(dist, 0.0))
        return dist, ids

    def decode(self, vector_id: int, distance: float = 0.0) -> Hit:
        """Map a FAISS id back to (dataset version, split, row[, tile])."""
        fs_id, local = int(vector_id) >> 32, int(vector_id) & 0xFFFFFFFF
        entry = self.manifest.sets.get(fs_id)
        if entry is None:
            raise NotFoundError(f"id {vector_id} belongs to no dataset of index {self.path}")
        row, tile = (
            (local // entry.tiles, local % entry.tiles) if entry.tiles > 1 else (local, None)
        )
        split, split_row = _split_of(entry.splits, row)
        return Hit(entry.ref, split, row, float(distance), tile, fs_id, split_row)


def index_root(workspace: Workspace, encoder: str, kind: Kind = "images") -> Path:
    return workspace.path("indexes", encoder, kind)


def load_index(
    registry: Registry, workspace: Workspace, encoder: int | str | Encoder, kind: Kind = "images"
) -> LoadedIndex:
    """Open the current index generation of ``encoder``: a :class:`NotFoundError` when there
    is none, a :class:`DamagedIndexError` when its files cannot be read."""
    enc = get_encoder(registry, encoder)
    current = index_root(workspace, enc.name, kind) / "current"
    try:
        gen = current.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise NotFoundError(
            f"encoder '{enc.name}' has no {kind} index at {current}",
            hint=f"run `{build_command(enc.name, kind)}`",
        ) from exc
    return LoadedIndex(*read_generation(gen, enc.name, kind), gen)


# ----------------------------------------------------------------------------- building


def _sets_to_index(
    registry: Registry, enc: Encoder, kind: Kind
) -> tuple[Usable, list[tuple[FingerprintSet, str]]]:
    """The encoder's usable sets (:func:`usable_sets`, whose ``left_out`` also lists, for a
    patch index, the sets without patches) and those the index takes; none is an error."""
    usable = usable_sets(registry, enc)
    sets = usable.sets
    if kind == "patches":  # the others are named, not a reason to index none
        sets, without = _with_patches(sets, enc.name)
        usable.left_out.extend(without)
    if not sets:
        left = f" ({left_out_note(usable.left_out)})" if usable.left_out else ""
        raise NotFoundError(
            f"encoder '{enc.name}' has no complete embeddings of its current weights{left}",
            hint=f"run `{extract_command('DATASET...', enc.name)}`",
        )
    return usable, sets


def _with_patches(
    sets: list[tuple[FingerprintSet, str]], encoder: str
) -> tuple[list[tuple[FingerprintSet, str]], list[LeftOut]]:
    """The sets whose embeddings hold patches, and the others as left out (extracted
    without ``--patch-grid``, so one such data set no longer refuses the whole index)."""
    kept, without = [], []
    for fs, ref in sets:
        if "patches" in zarr.open_group(fs.embeddings_path, mode="r"):
            kept.append((fs, ref))
        else:
            run = patch_extract_command(ref, encoder)
            without.append(
                LeftOut(ref, "extracted without --patch-grid", run, fs.dataset_version_id, fs.id)
            )
    return kept, without


def _entry(fs: FingerprintSet, ref: str, kind: Kind) -> SetEntry:
    g = zarr.open_group(fs.embeddings_path, mode="r")
    meta = group_meta(fs.embeddings_path)
    if kind == "patches":
        if "patches" not in g:
            raise InputError(
                f"embeddings of '{ref}' ({fs.embeddings_path}) have no patches: expected an "
                "extraction with --patch-grid > 1"
            )
        tiles = int(open_array(fs.embeddings_path, "patches").shape[1])
    else:
        tiles = 1
    stamp = (Path(fs.embeddings_path) / "zarr.json").stat().st_mtime_ns
    return SetEntry(
        fs_id=fs.id,
        ref=ref,
        n_images=int(fs.n_vectors),
        tiles=tiles,
        splits=dict(meta.get("splits", {})),
        stamp=stamp,
    )


def _blocks(entry: SetEntry, path: str, kind: Kind) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of one set, a chunk of rows at a time."""
    arr = open_array(path, "z" if kind == "images" else "patches")
    rows = int(arr.chunks[0])
    step = rows * max(1, 65536 // (rows * entry.tiles))  # whole chunks, ~64k vectors a block
    for a in range(0, entry.n_images, step):
        b = min(entry.n_images, a + step)
        x = np.asarray(arr[a:b], dtype=np.float32).reshape(-1, arr.shape[-1])
        ids = entry.id_base + np.arange(a * entry.tiles, b * entry.tiles, dtype=np.int64)
        yield ids, x


def _prep(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "ip":
        faiss.normalize_L2(x)
    return x


def _sample(entries: list[tuple[SetEntry, str]], kind: Kind, n: int, metric: str) -> np.ndarray:
    total = sum(e.n_images * e.tiles for e, _ in entries)
    keep = min(1.0, n / max(total, 1))
    rng = np.random.default_rng(0)
    parts = [x[rng.random(len(x)) < keep] for e, p in entries for _ids, x in _blocks(e, p, kind)]
    return _prep(np.concatenate(parts), metric)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    generation: int
    factory: str
    ntotal: int
    added_sets: list[str]
    rebuilt: bool
    #: No index of this encoder and kind existed before: built, not rebuilt.
    first: bool = False
    #: Sets of the encoder not indexed, as they are not usable (:mod:`.usable`): the index
    #: holds no vectors of them (one it held before is rebuilt without them).
    left_out: list[LeftOut] = field(default_factory=list)
    #: Sets indexed as their unrecorded extraction left them (:mod:`.usable`): nothing about
    #: them is recorded; the extraction command records them.
    unrecorded: list[Unrecorded] = field(default_factory=list)
    #: Why the current generation could not be read, when that made this build a rebuild.
    damaged: str = ""
    #: A new nprobe was recorded for an index that was otherwise kept as it was.
    nprobe_set: bool = False


def build_index(
    registry: Registry,
    workspace: Workspace,
    encoder: int | str | Encoder,
    *,
    factory: str | None = None,
    metric: Metric = "l2",
    kind: Kind = "images",
    nprobe: int | None = None,
    rebuild: bool = False,
    use_gpu: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Build or extend the ``kind`` index of ``encoder`` over its complete fingerprint sets.

    Without ``rebuild``, a current index of the same factory/metric gets only the sets it lacks
    (nothing to add: nothing is written). Only usable sets are indexed (complete, on disk,
    made with the encoder's current weights: :mod:`.usable`); a set that vanished, became
    unusable or was extracted again (``--force``) forces a rebuild, and so does a current
    generation that cannot be read (``BuildResult.damaged`` says why).
    ``progress(vectors_done, vectors_total)`` is called while adding.
    """
    if metric not in ("l2", "ip"):
        raise InputError(f"metric '{metric}': expected 'l2' or 'ip'")
    if nprobe is not None and nprobe < 1:  # stored, it failed every later search
        raise InputError(f"nprobe {nprobe}: expected a whole number >= 1")
    enc = get_encoder(registry, encoder)
    usable, sets = _sets_to_index(registry, enc, kind)
    entries = {fs.id: (_entry(fs, ref, kind), fs.embeddings_path) for fs, ref in sets}
    dim = int(open_array(sets[0][0].embeddings_path, "z").shape[1])
    total = sum(e.n_images * e.tiles for e, _ in entries.values())
    root = index_root(workspace, enc.name, kind)
    first = not (root / "current").exists()
    current, damaged = None, ""
    if not rebuild and not first:
        current, damaged = _extendable(
            (registry, workspace, enc, kind), entries, (factory, metric, dim)
        )
    nprobe_set = False
    if current is not None:
        index, manifest = current.index, current.manifest
        new = [sid for sid in entries if sid not in manifest.sets]
        # A new nprobe alone is a new generation too (it was dropped on an up-to-date index).
        nprobe_set = (  # an exact index visits no lists: nothing to record for it
            nprobe is not None
            and nprobe != manifest.nprobe
            and faiss.try_extract_index_ivf(index) is not None
        )
        if not new and not nprobe_set:
            return BuildResult(
                current.path,
                manifest.generation,
                manifest.factory,
                manifest.ntotal,
                [],
                False,
                left_out=usable.left_out,
                unrecorded=unrecorded(sets, enc),
            )
        if nprobe is not None:
            manifest.nprobe = nprobe
    else:
        fac = factory or default_factory(total)
        index = new_index(dim, fac, metric)
        manifest = Manifest(
            encoder=enc.name, kind=kind, factory=fac, metric=metric, dim=dim, nprobe=nprobe
        )
        new = list(entries)
        if not index.is_trained:
            manifest.trained_on = train_index(
                index, _sample(list(entries.values()), kind, TRAIN_SAMPLE, metric), use_gpu=use_gpu
            )
        check_leaves_out(index, dim, fac)  # before the vectors are added: nothing published
    todo = sum(entries[s][0].n_images * entries[s][0].tiles for s in new)
    done = 0
    for sid in new:
        entry, path = entries[sid]
        for ids, x in _blocks(entry, path, kind):
            index.add_with_ids(_prep(x, metric), ids)
            done += len(ids)
            if progress is not None:
                progress(done, todo)
        manifest.sets[sid] = entry
    manifest.ntotal = int(index.ntotal)
    published = _publish(root, index, manifest)
    return BuildResult(
        published,
        manifest.generation,
        manifest.factory,
        manifest.ntotal,
        [entries[s][0].ref for s in new],
        current is None,
        first,
        usable.left_out,
        unrecorded(sets, enc),
        damaged,
        nprobe_set,
    )


def _extendable(
    where: tuple[Registry, Workspace, Encoder, Kind],
    entries: dict[int, tuple[SetEntry, str]],
    asked: tuple[str | None, str, int],
) -> tuple[LoadedIndex | None, str]:
    """The current generation (:func:`load_index` of ``where``) if a build may extend it:
    same factory (``asked``: factory or None, metric, dimension) and every set it holds still
    usable and as it was indexed; else None, with why when it could not be read (a damaged
    generation is rebuilt, not refused: that is how a user repairs it)."""
    try:
        current = load_index(*where)
    except DamagedIndexError as exc:
        return None, exc.message
    m = current.manifest
    factory, metric, dim = asked
    same = (factory in (None, m.factory)) and m.metric == metric and m.dim == dim
    unchanged = all(
        sid in entries
        and (entries[sid][0].n_images, entries[sid][0].stamp) == (e.n_images, e.stamp)
        for sid, e in m.sets.items()
    )
    return (current if same and unchanged else None), ""


def _generations(root: Path) -> list[int]:
    """Published generation numbers under ``root``, ascending."""
    return sorted(
        int(p.name[4:]) for p in root.glob("gen-*") if p.name[4:].isdigit() and p.is_dir()
    )


def next_generation(root: Path) -> int:
    gens = _generations(root)
    return gens[-1] + 1 if gens else 1


def _publish(root: Path, index: faiss.Index, manifest: Manifest) -> Path:
    """Write ``index`` and ``manifest`` as the next generation and point ``current`` at it.

    Files are flushed to disk before the rename, so a crash never leaves a published but empty
    generation. Two builds that pick the same number: the later rename fails (the folder is
    not empty) and that build takes the next number."""
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(root)
    tmp = temp_name(root / "gen")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()  # the umask's mode, as every workspace folder but the prediction log's
    try:
        faiss.write_index(index, str(tmp / "index.faiss"))
        for _attempt in range(1000):
            manifest.generation = next_generation(root)
            write_atomic(tmp / "manifest.json", manifest.to_json(), fsync=False)
            final = root / f"gen-{manifest.generation:06d}"
            if publish_dir(tmp, final):
                break
        else:
            raise PomliaError(f"index folder '{root}': no free generation number after 1000 tries")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # first: the free space the message shows is real
        # faiss says a full disk only in its RuntimeError's text: one line, not a traceback
        full = storage_error(root, exc, kept=False)
        if full is not None and full is not exc:
            raise full from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with held_lock(root / PUBLISH_LOCK, f"index folder '{root}'"):
        # Two builds publishing at once: `current` only ever moves to a newer generation (the
        # slower build's link pointed it back at the older one).
        now = _current_generation(root)
        if now is None or manifest.generation > now:
            replace_link(root / "current", final.name)
        # Older generations beyond the ones kept go; newer ones belong to a concurrent build.
        current = (root / "current").resolve()
        older = [g for g in _generations(root) if g < manifest.generation]
        for g in older[: max(0, len(older) - KEEP_OLD_GENERATIONS)]:
            if (old := root / f"gen-{g:06d}") != current:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _current_generation(root: Path) -> int | None:
    """The generation ``root/current`` points to; None without a link, or with one to no
    folder (its generation removed: a rebuild repairs it, so the link must move)."""
    target = (root / "current").resolve()
    name = target.name
    if not target.is_dir() or not name.startswith("gen-") or not name[4:].isdigit():
        return None
    return int(name[4:])
