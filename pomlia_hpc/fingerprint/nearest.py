"""Nearest images: the images of other datasets nearest to a dataset's, from the encoder's
FAISS index (:mod:`.index`).

    nearest_images(registry, workspace, encoder, "pathmnist", n=1000)
        -> [NearestImage(ref, split, row, distance), ...] from other datasets, nearest first

Up to ``max_queries`` embeddings of the query dataset (evenly spaced) are searched in the
encoder's FAISS index with the query dataset excluded by an id selector; each candidate image
is ranked by its smallest distance to any query image, and the ``n`` best are returned (the
search widens until no query's nearest vectors left out can be nearer than the ``n``-th image,
or each query asked for 1024: so the first ``m`` of ``n`` are the answer for ``m``). Of every
other dataset only the newest version the index holds is searched (its images never come
twice, once per version) unless ``all_versions=True``; which sets are searched is
:mod:`.candidates`. Read the images with ``open_version(registry,
hit.ref).read_rows(hit.row, hit.row + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pomlia_hpc.data.store import find_version, open_store
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.fingerprint.candidates import (
    EncoderRef,
    candidates,
    fingerprint_set,
    left_out_clause,
    newest_sets,
    version_preference,
)
from pomlia_hpc.fingerprint.encoders import get_encoder
from pomlia_hpc.fingerprint.index import load_index
from pomlia_hpc.fingerprint.sample import sample_rows
from pomlia_hpc.fingerprint.usable import (
    LeftOut,
    Unrecorded,
    extract_command,
    index_build_command,
    unrecorded,
    usable_sets,
)
from pomlia_hpc.registry import Encoder, FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace


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


def _older_in_index(
    registry: Registry, version_ids: dict[int, int], entries: dict[int, Any]
) -> set[int]:
    """Ids of the sets in an index (``entries``: set id -> entry with ``ref``) whose dataset
    has a preferred version in the same index (as :func:`newest_sets` prefers: the current
    version, then the highest id); ``version_ids``: set id -> dataset version id of the usable
    sets (any other set counts as oldest)."""
    prefer = version_preference(registry)
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
            f"other dataset's images{left_out_clause(left)}",
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
