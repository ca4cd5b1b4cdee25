"""Similar datasets and nearest images — what AutoML and the strategy recommender call.

Public API::

    dataset_fingerprint(registry, encoder, "pathmnist") -> dict
        mean embedding (the paper's fingerprint), n, plus the explicit fingerprint JSON
    similar_datasets(registry, encoder, "pathmnist", k=5, distance="combined")
        -> [SimilarDataset(ref, distance, n_vectors, components), ...] nearest first
    nearest_images(registry, workspace, encoder, "pathmnist", n=1000)
        -> [NearestImage(ref, split, row, distance), ...] from other datasets, nearest first
    embedding_sample(registry, encoder, "pathmnist", max_n=5000, split=None) -> (n, d) array

``encoder`` is an encoder id, name or registry row; datasets are ``name`` (newest version) or
``name@version`` and must have been extracted with that encoder (``pomlia fingerprint
extract``). Distances are those of :mod:`pomlia_hpc.fingerprint.ranking`, computed from the
per-version summaries stored at extraction (:mod:`pomlia_hpc.fingerprint.summary`). Other
versions of the query's own dataset are left out unless ``include_same_dataset=True``. Of every
other dataset only its newest version with embeddings under the encoder is compared (in the
index: the newest version the index holds), unless ``all_versions=True``: a dataset is never
listed twice, and its images never come twice (once per version) by default;
:func:`superseded_refs` names the versions left out.

Nearest images: up to ``max_queries`` embeddings of the query dataset (evenly spaced) are
searched in the encoder's FAISS index with the query dataset excluded by an id selector; each
candidate image is ranked by its smallest distance to any query image, and the ``n`` best are
returned (the search widens until no query's nearest vectors left out can be nearer than the
``n``-th image, or each query asked for 1024: so the first ``m`` of ``n`` are the answer for ``m``).
Read the images with ``open_version(registry, hit.ref).read_rows(hit.row, hit.row + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pomlia_hpc.data.store import current_versions, find_version, open_store
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.index import load_index
from pomlia_hpc.fingerprint.ranking import DEFAULT_DISTANCE, check_distance, fields_for, score
from pomlia_hpc.fingerprint.summary import Summary, compute_summary, read_summary
from pomlia_hpc.fingerprint.usable import (
    LeftOut,
    Unrecorded,
    extract_command,
    index_build_command,
    left_out_note,
    unrecorded,
    usable_set,
    usable_sets,
)
from pomlia_hpc.registry import Encoder, FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace

EncoderRef = int | str | Encoder


@dataclass(frozen=True)
class SimilarDataset:
    """``same_content``: the version has the query's content hash (the same images under
    another name), so its distance is about 0 by construction."""

    ref: str
    distance: float
    n_vectors: int
    components: dict[str, float] = field(default_factory=dict)
    same_content: bool = False


@dataclass(frozen=True)
class NearestImage:
    """``row``: the image's row in the whole store (what ``read_rows`` takes);
    ``split_row``: its row within ``split`` (what a user looks up, e.g. ``test_images[i]``)."""

    ref: str
    split: str
    row: int
    distance: float
    tile: int | None = None
    split_row: int = 0


def fingerprint_set(
    registry: Registry, encoder: EncoderRef, ref: str
) -> tuple[FingerprintSet, str]:
    """The usable fingerprint set of dataset ``ref`` under ``encoder`` (complete, on disk, made
    with the encoder's current weights: :mod:`.usable`), with its full ref; else one
    :class:`NotFoundError` saying why and what to run."""
    return usable_set(registry, encoder, ref)


def _preference(registry: Registry) -> Callable[[int], tuple[bool, int]]:
    """Sort key of a dataset version id: the version the plain name means
    (:func:`~pomlia_hpc.data.store.current_versions`) first, then the highest id."""
    current = {v.id for v in current_versions(registry).values()}
    return lambda version_id: (version_id in current, version_id)


def newest_sets(
    registry: Registry, sets: list[tuple[FingerprintSet, str]]
) -> list[tuple[FingerprintSet, str]]:
    """Of ``sets`` (``(set, name@version)`` pairs, as :func:`candidates` gives them), the one
    of each dataset's current version (as ``name`` alone resolves), else of its newest version
    among ``sets``, in their order."""
    key = _preference(registry)
    best: dict[str, int] = {}
    for fs, ref in sets:
        name = ref.split("@")[0]
        best[name] = max(best.get(name, fs.dataset_version_id), fs.dataset_version_id, key=key)
    return [(fs, r) for fs, r in sets if fs.dataset_version_id == best[r.split("@")[0]]]


def superseded_refs(registry: Registry, encoder: EncoderRef) -> list[str]:
    """The ``name@version`` of every usable fingerprint set of ``encoder`` whose dataset has
    another version with usable embeddings that is preferred (:func:`newest_sets`): what
    similar datasets, nearest images and the latent plots leave out unless asked for all
    versions."""
    sets = usable_sets(registry, encoder).sets
    kept = {fs.id for fs, _ref in newest_sets(registry, sets)}
    return [ref for fs, ref in sets if fs.id not in kept]


def candidates(
    registry: Registry, encoder: EncoderRef, *, all_versions: bool = False
) -> tuple[list[tuple[FingerprintSet, str]], list[LeftOut]]:
    """The sets a reader compares (usable ones; of each dataset only its newest unless
    ``all_versions``) and the versions it left out for being unusable (:mod:`.usable`). With
    one version per dataset, an unusable version is named only when it would have been
    preferred to the one used (an older one would not have been used anyway)."""
    found = usable_sets(registry, encoder)
    embedded = {fs.dataset_version_id for fs, _r in found.sets} | {
        x.version_id for x in found.left_out
    }
    if all_versions:  # every version with embeddings: the current one is still named if none
        stale = _current_not_extracted(registry, encoder, found.sets, embedded)
        return found.sets, found.left_out + stale
    sets = newest_sets(registry, found.sets)
    prefer = _preference(registry)
    used = {ref.split("@")[0]: prefer(fs.dataset_version_id) for fs, ref in sets}
    left = [
        x
        for x in found.left_out
        if x.ref.split("@")[0] not in used or prefer(x.version_id) > used[x.ref.split("@")[0]]
    ]
    return sets, left + _current_not_extracted(registry, encoder, sets, embedded)


def _current_not_extracted(
    registry: Registry,
    encoder: EncoderRef,
    sets: list[tuple[FingerprintSet, str]],
    embedded: set[int],
) -> list[LeftOut]:
    """The current versions never embedded with ``encoder`` (no version id in ``embedded``)
    of the datasets compared through another version (``sets``): a dataset that got a new
    version after its extraction is compared as it was, and must not be so silently."""
    current = current_versions(registry)
    enc = get_encoder(registry, encoder).name
    compared: dict[str, list[str]] = {}  # one note a dataset, though several versions stand in
    for fs, ref in sets:
        now = current.get(name := ref.split("@")[0])
        if now is not None and now.id != fs.dataset_version_id and now.id not in embedded:
            compared.setdefault(name, []).append(ref)
    return [
        LeftOut(
            name,
            f"current version not extracted; {', '.join(refs)} compared instead",
            extract_command(name, enc),
            current[name].id,
        )
        for name, refs in compared.items()
    ]


#: A sample of a large range reads at least this many of its chunks (all of them if fewer).
SAMPLE_MIN_CHUNKS = 64
#: ... and at least this many times as many chunks as would hold the sample.
SAMPLE_CHUNK_FACTOR = 8


def sample_rows(path: str, lo: int, hi: int, max_n: int, array: str = "z") -> np.ndarray:
    """Up to ``max_n`` rows of ``array`` (``z``, or ``patches``: (rows, tiles, d)) in
    [lo, hi), evenly spaced (deterministic).

    A large range is sampled from a subset of its chunks, evenly spread over the range: many
    more chunks than would hold ``max_n`` rows, since rows are often sorted by class within a
    split (image folders, HDF5 files) and a few chunks would cover only a few classes."""
    arr: Any = zarr.open_group(path, mode="r")[array]
    n = hi - lo
    if n <= 0:
        return np.zeros((0, arr.shape[1]), np.float32)
    if n > 4 * max_n:
        step = int(arr.chunks[0])
        chunks = list(range(lo // step, math.ceil(hi / step)))
        want = max(SAMPLE_MIN_CHUNKS, SAMPLE_CHUNK_FACTOR * math.ceil(max_n / step))
        pick = np.linspace(0, len(chunks) - 1, min(len(chunks), want)).round().astype(int)
        x = np.concatenate(
            [
                np.asarray(arr[max(lo, c * step) : min(hi, (c + 1) * step)])
                for c in sorted({chunks[i] for i in pick})
            ]
        )
    else:
        x = np.asarray(arr[lo:hi])
    if len(x) > max_n:
        x = x[np.linspace(0, len(x) - 1, max_n).round().astype(int)]
    return x


def embedding_sample(
    registry: Registry,
    encoder: EncoderRef,
    ref: str,
    max_n: int = 5000,
    split: str | None = None,
) -> np.ndarray:
    """Up to ``max_n`` embeddings (float32 (n, d)) of dataset ``ref``, evenly spaced over its
    rows (or over one ``split``)."""
    fs, full = fingerprint_set(registry, encoder, ref)
    lo, hi = 0, fs.n_vectors
    if split is not None:
        lo, hi = open_store(find_version(registry, full).store_path).split_range(split)
    return sample_rows(fs.embeddings_path, lo, hi, max_n)


def dataset_fingerprint(
    registry: Registry,
    encoder: EncoderRef,
    ref: str,
    *,
    unrecorded_out: list[Unrecorded] | None = None,
) -> dict[str, Any]:
    """The dataset-level fingerprint: mean embedding, size, and the explicit fingerprint. A
    set used as its unrecorded extraction left it (:mod:`.usable`) is appended to
    ``unrecorded_out``."""
    fs, full = fingerprint_set(registry, encoder, ref)
    if unrecorded_out is not None:
        unrecorded_out.extend(unrecorded([(fs, full)], get_encoder(registry, encoder)))
    store = open_store(find_version(registry, full).store_path)
    return {
        "dataset": full,
        "encoder": get_encoder(registry, encoder).name,
        "n_vectors": fs.n_vectors,
        "mean": list(fs.mean),
        "explicit": store.fingerprint,
    }


def load_summary(
    registry: Registry, fs: FingerprintSet, ref: str, fields: frozenset[str] | None = None
) -> Summary:
    """The stored summary of a complete fingerprint set (only ``fields`` of it, see
    :func:`read_summary`); sets extracted before summaries existed get theirs computed from
    the embeddings now, in memory: a reader writes nothing (`pomlia fingerprint extract` run
    again on such a set stores it, :func:`~pomlia_hpc.fingerprint.usable.record_finished`)."""
    found = read_summary(fs.embeddings_path, fields)
    if found is not None:
        return found
    fp = open_store(find_version(registry, ref).store_path).fingerprint
    return compute_summary(fs.embeddings_path, fp)


#: A data set of fewer images than this is named under the results: its summaries (mean,
#: covariance, quantiles) rest on too few embeddings to rank it with confidence. At 30 the
#: standard error of a mean embedding is 1/sqrt(30), under a fifth of the spread, and the
#: covariance of a 16-dimensional latent (the default) has about two images per dimension;
#: below 17 it is singular, so the Fréchet distance is mostly its regularisation.
FEW_IMAGES = 30


def few_images_note(query: str, query_images: int, found: list[SimilarDataset]) -> str:
    """The note naming the query (``query_images`` images) and the data sets of ``found``
    with fewer than :data:`FEW_IMAGES` images (empty when none)."""
    few = [f"{r.ref} ({r.n_vectors})" for r in found if r.n_vectors < FEW_IMAGES]
    if query_images < FEW_IMAGES:
        few.insert(0, f"{query} (the query, {query_images})")
    if not few:
        return ""
    return (
        f"few images: {', '.join(few)}: a distance over fewer than {FEW_IMAGES} images rests "
        "on little data (their mean and spread are uncertain); rank them with care"
    )


def _left_out_clause(left: list[LeftOut]) -> str:
    """`` (left out: ...)`` for an error that would otherwise hide why nothing was left."""
    return f" ({left_out_note(left)})" if left else ""


def similar_datasets(
    registry: Registry,
    encoder: EncoderRef,
    ref: str,
    k: int = 5,
    distance: str = DEFAULT_DISTANCE,
    *,
    include_same_dataset: bool = False,
    patches: bool = False,
    all_versions: bool = False,
    left_out: list[LeftOut] | None = None,
    unrecorded_out: list[Unrecorded] | None = None,
    notes_out: list[str] | None = None,
) -> list[SimilarDataset]:
    """The ``k`` datasets nearest to ``ref`` by ``distance`` (see
    :mod:`pomlia_hpc.fingerprint.ranking`), each with the components of its distance.

    Reads only the per-version summaries stored at extraction, never the embeddings.
    ``patches=True`` compares the patch embeddings (``--patch-grid``) instead of whole-image
    ones (latent distances only; the explicit part is the same). Of every other dataset only
    its newest version with usable embeddings is compared unless ``all_versions=True``.
    Versions left out as unusable (:func:`candidates`) are appended to ``left_out``, those
    used as their unrecorded extraction left them (:mod:`.usable`) to ``unrecorded_out``, the
    note naming data sets of few images (:func:`few_images_note`) to ``notes_out``; a
    version with the query's content hash is compared and marked ``same_content``."""
    if k < 1:
        raise InputError(f"--k {k}: expected a number of datasets >= 1")
    check_distance(distance)
    enc = get_encoder(registry, encoder)
    fs, full = fingerprint_set(registry, enc, ref)
    name, content = full.split("@")
    sets, left = candidates(registry, enc, all_versions=all_versions)
    others = [
        (other, other_ref)
        for other, other_ref in sets
        if other.id != fs.id and (include_same_dataset or other_ref.split("@")[0] != name)
    ]
    left = [x for x in left if include_same_dataset or x.ref.split("@")[0] != name]
    if left_out is not None:
        left_out.extend(left)
    if not others:
        raise NotFoundError(
            f"nothing to compare '{full}' with: no other dataset has usable embeddings under "
            f"encoder '{enc.name}'{_left_out_clause(left)}",
            hint=f"embed another dataset first: `{extract_command('DATASET', enc.name)}`",
        )
    if unrecorded_out is not None:
        unrecorded_out.extend(unrecorded([(fs, full), *others], enc))
    need = fields_for(distance)
    query = load_summary(registry, fs, full, need)
    summaries = [load_summary(registry, o, r, need) for o, r in others]
    scored = score(query, summaries, distance, patches=patches) if summaries else []
    out = [
        SimilarDataset(r, sc.distance, o.n_vectors, sc.components, r.split("@")[1] == content)
        for (o, r), sc in zip(others, scored, strict=True)
    ]
    out.sort(key=lambda r: (r.distance, r.ref))
    few = few_images_note(full, fs.n_vectors, out[:k])
    if notes_out is not None and few:
        notes_out.append(few)
    return out[:k]


def same_content_note(query: str, found: list[SimilarDataset]) -> str:
    """The note naming the versions of ``found`` that hold ``query``'s own images under
    another name (empty when none)."""
    same = [r.ref for r in found if r.same_content]
    if not same:
        return ""
    return (
        f"same content as {query}: {', '.join(same)} (the same images under another name, "
        "at distance about 0)"
    )


def _older_in_index(
    registry: Registry, version_ids: dict[int, int], entries: dict[int, Any]
) -> set[int]:
    """Ids of the sets in an index (``entries``: set id -> entry with ``ref``) whose dataset
    has a preferred version in the same index (as :func:`newest_sets` prefers: the current
    version, then the highest id); ``version_ids``: set id -> dataset version id of the usable
    sets (any other set counts as oldest)."""
    prefer = _preference(registry)
    newest: dict[str, tuple[tuple[bool, int], int]] = {}
    for sid, e in entries.items():
        key = (prefer(version_ids.get(sid, -1)), sid)
        newest[e.ref.split("@")[0]] = max(newest.get(e.ref.split("@")[0], key), key)
    return {sid for sid, e in entries.items() if newest[e.ref.split("@")[0]][1] != sid}


def _index_left_out(
    registry: Registry,
    enc: Encoder,
    entries: dict[int, Any],
    query: FingerprintSet,
    content: str,
    all_versions: bool,
) -> tuple[set[int], list[LeftOut], dict[int, tuple[FingerprintSet, str]]]:
    """The ids of the index's sets (``entries``) a search must skip besides the query's
    dataset: the query's own, unusable sets, sets re-extracted since the index was built,
    exact copies of the query (its content hash under another name) and, unless
    ``all_versions``, older versions; with what the caller names as left out and the usable
    sets by id."""
    found = usable_sets(registry, enc)
    usable = {fs.id: (fs, ref) for fs, ref in found.sets}
    skip = {sid for sid in entries if sid not in usable or sid == query.id}
    if not all_versions:
        version_ids = {sid: fs.dataset_version_id for sid, (fs, _r) in usable.items()}
        skip |= _older_in_index(registry, version_ids, entries)
    left = candidates(registry, enc, all_versions=all_versions)[1]
    for sid, e in entries.items():
        if sid in skip:
            continue
        stamp = (Path(usable[sid][0].embeddings_path) / "zarr.json").stat().st_mtime_ns
        if e.stamp and stamp != e.stamp:
            skip.add(sid)
            why = "the index holds vectors of an earlier extraction of it"
            left.append(LeftOut(e.ref, why, index_build_command(enc.name), 0, sid))
        elif e.ref.split("@")[1] == content:
            skip.add(sid)
            left.append(LeftOut(e.ref, "same content as the query: copies of its own images"))
    newest = usable.values() if all_versions else newest_sets(registry, found.sets)
    left += [
        LeftOut(ref, "not in the index", index_build_command(enc.name), 0, fs.id)
        for fs, ref in newest
        if fs.id not in entries and fs.id != query.id
    ]
    return skip, left, usable


#: The most neighbours one query vector asks the index for (:func:`nearest_images`).
MAX_K = 1024


#: The first ``k`` of :func:`nearest_images`' search and the factor it widens by, for an
#: approximate index and an exact one (``Flat``: every k scans all; bench/similar_images.py)
FIRST_K, WIDEN, EXACT_FIRST_K, EXACT_WIDEN = 4, 4, 64, 16


def _best_images(index: Any, dist: np.ndarray, ids: np.ndarray, n: int) -> list[tuple[float, int]]:
    """The ``n`` nearest images among search results ``dist``, ``ids`` (q, k) as (distance,
    vector id), nearest first, ties by id; one entry per image (a patch index has several
    vectors per image): its nearest vector. In arrays: a search may return 2 million results."""
    ok = ids >= 0
    d, i = dist[ok].astype(np.float64), ids[ok].astype(np.int64)
    fs_id, local = i >> 32, i & 0xFFFFFFFF
    tiles = np.ones_like(local)
    for s in np.unique(fs_id).tolist():
        entry = index.manifest.sets.get(s)
        if entry is not None:
            tiles[fs_id == s] = entry.tiles
    image = (fs_id << 32) | (local // tiles)
    order = np.lexsort((i, d, image))  # by image, then distance, then id
    image, d, i = image[order], d[order], i[order]
    first = np.ones(len(image), bool)
    first[1:] = image[1:] != image[:-1]
    d, i = d[first], i[first]
    top = np.lexsort((i, d))[:n]
    return list(zip(d[top].tolist(), i[top].tolist(), strict=True))


def _nearest(
    index: Any, queries: np.ndarray, n: int, cap: int, exclude: tuple[int, ...]
) -> list[tuple[float, int]]:
    """The ``n`` images nearest to any of ``queries`` as (distance, vector id), nearest
    first, ties by id: each image at the distance of its vector nearest to any query.

    Each query asks for its ``k`` nearest vectors, ``k`` widened (up to ``cap``) until no
    query's ``k``-th is as near as the ``n``-th image: until then a vector beyond some query's
    ``k`` may be nearer than the ``n``-th, and the answer (its images and their distances)
    depended on ``n``: ``--images 5`` was not the first 5 of ``--images 100``. An exact
    (``Flat``) index scans every vector whatever ``k``, so each widening is a full scan again
    (from k = 4 up to 1024 by 4: 1 to 5 scans, 9 to 45 CPU-s over 708,072 vectors): it starts
    at 64 and widens by 16, at most 2 scans; ``k`` near ``cap`` at once costs more for a small
    ``n`` (the heap and the ranking of 2 million results). The answer is the same."""
    exact = index.manifest.factory == "Flat"
    first, widen = (EXACT_FIRST_K, EXACT_WIDEN) if exact else (FIRST_K, WIDEN)
    k = min(cap, max(first, math.ceil(2 * n / len(queries))))
    while True:
        dist, ids = index.search(queries, k, exclude_sets=exclude)
        ranked = _best_images(index, dist, ids, n)
        if k >= cap:
            return ranked
        # A query whose k results are all there and reach no farther than the n-th image
        # may have left out a nearer one.
        full = ids[:, -1] >= 0
        if len(ranked) >= n and not (full & (dist[:, -1] <= ranked[-1][0])).any():
            return ranked
        k = min(cap, k * widen)


def shortfall_note(asked: int, found: int, images: int, factory: str = "Flat") -> str:
    """Why ``--images asked`` listed only ``found`` images: the searched data sets hold only
    ``images`` images, or each query vector reached only its :data:`MAX_K` nearest, or an
    approximate index (``factory`` not ``Flat``) searched only part of itself."""
    if found >= images:
        return (
            f"--images {asked}: the data sets searched hold {images} image(s) in all; "
            f"all {found} are listed"
        )
    why = f"each query image reaches only its {MAX_K} nearest vectors"
    if factory != "Flat":
        why = f"the index is approximate ({factory}: it searches part of itself) and {why}"
    return (
        f"--images {asked}: {found} of the {images} image(s) of the data sets searched are "
        f"listed: {why}"
    )


def _query_rows(registry: Registry, full: str, split: str | None, n: int) -> tuple[int, int]:
    """The rows [lo, hi) of dataset version ``full`` (``n`` images) whose embeddings query
    the index: ``split``'s, all without one. An empty split is refused: it used to give an
    empty answer, exit 0, as if nothing were near."""
    if split is None:
        return 0, n
    store = open_store(find_version(registry, full).store_path)
    lo, hi = store.split_range(split)
    if hi <= lo:
        sizes = {k: store.split_range(k) for k in store.meta["splits"]}
        have = ", ".join(f"{k} ({b - a})" for k, (a, b) in sizes.items() if b > a)
        raise InputError(
            f"--split {split}: '{full}' has no {split} images to query with; expected a split "
            f"that holds images: {have or 'none has any'}"
        )
    return lo, hi


def nearest_images(
    registry: Registry,
    workspace: Workspace,
    encoder: EncoderRef,
    ref: str,
    n: int,
    *,
    split: str | None = None,
    max_queries: int = 2000,
    include_same_dataset: bool = False,
    patches: bool = False,
    all_versions: bool = False,
    left_out: list[LeftOut] | None = None,
    unrecorded_out: list[Unrecorded] | None = None,
    notes_out: list[str] | None = None,
) -> list[NearestImage]:
    """The ``n`` images of other datasets nearest to dataset ``ref`` (see module docstring).

    ``patches=True`` searches the patch index (``pomlia index build --patches``) with the
    query's patch vectors; an image's distance is that of its nearest patch, whose number is
    returned as ``tile``. Of every other dataset only the newest version the index holds is
    searched unless ``all_versions=True`` (its images would otherwise come once per version).

    Only vectors of usable sets (:mod:`.usable`) that the index holds as they are now are
    searched, and never those of a dataset with the query's content hash (copies of its own
    images, at distance 0); what is left out is appended to ``left_out``, the sets used as
    their unrecorded extraction left them (:mod:`.usable`) to ``unrecorded_out``; fewer
    than ``n`` found is said in a note appended to ``notes_out`` (:func:`shortfall_note`)."""
    if n < 1:
        raise InputError(f"--images {n}: expected a number of images >= 1")
    enc = get_encoder(registry, encoder)
    fs, full = fingerprint_set(registry, enc, ref)
    lo, hi = _query_rows(registry, full, split, fs.n_vectors)
    index = load_index(registry, workspace, enc, "patches" if patches else "images")
    name, content = full.split("@")
    entries = index.manifest.sets
    skip, left, usable = _index_left_out(registry, enc, entries, fs, content, all_versions)
    exclude = tuple(
        sid
        for sid, e in index.manifest.sets.items()
        if sid in skip or (not include_same_dataset and e.ref.split("@")[0] == name)
    )
    left = [x for x in left if include_same_dataset or x.ref.split("@")[0] != name]
    if left_out is not None:
        left_out.extend(left)
    if unrecorded_out is not None:
        searched = [usable[sid] for sid in entries if sid in usable and sid not in exclude]
        unrecorded_out.extend(unrecorded([(fs, full), *searched], enc))
    if patches:
        tiles = index.manifest.sets[fs.id].tiles if fs.id in index.manifest.sets else 1
        rows = sample_rows(fs.embeddings_path, lo, hi, max(1, max_queries // tiles), "patches")
        queries = rows.reshape(-1, rows.shape[-1])
    else:
        queries = sample_rows(fs.embeddings_path, lo, hi, max_queries)
    available = index.manifest.ntotal - sum(
        index.manifest.sets[s].n_images * index.manifest.sets[s].tiles
        for s in exclude
        if s in index.manifest.sets
    )
    if available <= 0:
        raise NotFoundError(
            f"nothing to compare '{full}' with: the index of encoder '{enc.name}' holds no "
            f"other dataset's images{_left_out_clause(left)}",
            hint=f"embed another dataset (`{extract_command('DATASET', enc.name)}`), then "
            f"`{index_build_command(enc.name)}`",
        )
    if len(queries) == 0:
        return []
    ranked = _nearest(index, queries, n, min(available, MAX_K), exclude)
    if notes_out is not None and len(ranked) < n:
        images = sum(e.n_images for s, e in entries.items() if s not in exclude)
        notes_out.append(shortfall_note(n, len(ranked), images, index.manifest.factory))
    out = []
    for d, vid in ranked:
        hit = index.decode(vid, d)
        out.append(NearestImage(hit.ref, hit.split, hit.row, d, hit.tile, hit.split_row))
    return out
