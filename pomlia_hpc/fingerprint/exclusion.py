"""Searches that leave a data set's own vectors out (every ``similar --images`` query does):
faiss search parameters with an id selector, and which index types can take them.

faiss's PQ, LSH and NSG indexes take no search parameters at all, and an HNSW graph applies
the selector while it walks, so a query among its own data set's vectors, all left out, may
find no neighbour: :func:`check_leaves_out` refuses them before an index is published.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from pomlia_hpc.errors import InputError
from pomlia_hpc.fingerprint.generation import faiss_reason

#: Inverted lists an IVF search visits unless the index or the caller says otherwise.
DEFAULT_NPROBE = 16

#: Index types a search with ids left out suits, in words (for refusals).
SEARCHABLE = (
    "an exact, IVF or scalar-quantised index such as 'Flat', 'IVF1024,Flat', 'IVF256,PQ16', 'SQ8'"
)


def _innermost(index: faiss.Index) -> Any:
    """The index an IDMap or a pre-transform (PCA, OPQ) wraps, unwrapped to the last one."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner


def check_index_type(index: faiss.Index, factory: str) -> None:
    """Refuse, by its type alone (before training, so a pipeline's dry run finds it too), an
    index that cannot leave ids out of a search, which every query does (a data set's own
    images are never its neighbours): faiss's plain PQ, LSH and refined indexes take no
    search parameters (``similar --images`` failed on them with a traceback), and a graph
    (HNSW, NSG) filters while it walks, so a query among its own data set's images, all left
    out, can find no neighbour at all."""
    inner = _innermost(index)
    if isinstance(inner, faiss.IndexHNSW | faiss.IndexNSG):
        raise InputError(
            f"index factory '{factory}' builds a graph index, whose search with a data set's "
            f"own images left out can miss every neighbour: expected {SEARCHABLE} (an HNSW "
            "coarse quantiser of an IVF index, 'IVF65536_HNSW32,Flat', is fine)"
        )
    if isinstance(
        inner, faiss.IndexPQ | faiss.IndexPQFastScan | faiss.IndexLSH | faiss.IndexRefine
    ):
        raise InputError(
            f"index factory '{factory}' builds a faiss {type(inner).__name__}, which cannot "
            f"leave a data set's own images out of a search: expected {SEARCHABLE}"
        )


def check_leaves_out(index: faiss.Index, dim: int, factory: str) -> None:
    """:func:`check_index_type`, then a search of the trained (still empty) ``index`` with
    ids left out, for any other type faiss refuses such a search on."""
    check_index_type(index, factory)
    params, _keep = search_params(index, None, [(0, 1)])
    try:
        index.search(np.zeros((1, dim), np.float32), 1, params=params)
    except RuntimeError as exc:
        raise InputError(
            f"index factory '{factory}' builds a faiss index that cannot leave a data set's own "
            f"images out of a search ({faiss_reason(exc)}): expected {SEARCHABLE}"
        ) from exc


def search_params(
    index: faiss.Index, nprobe: int | None, exclude: list[tuple[int, int]]
) -> tuple[Any, list[Any]]:
    """faiss SearchParameters with ``nprobe`` (IVF) and an id-range exclusion selector, plus
    the SWIG objects the parameters point to (keep them alive during the search)."""
    keep: list[Any] = []
    sel = None
    if exclude:
        ranges = [faiss.IDSelectorRange(a, b) for a, b in exclude]
        keep.extend(ranges)
        combined: Any = ranges[0]
        for r in ranges[1:]:
            combined = faiss.IDSelectorOr(combined, r)
            keep.append(combined)
        sel = faiss.IDSelectorNot(combined)
        keep.append(sel)
    if faiss.try_extract_index_ivf(index) is not None:
        ivf_params: Any = faiss.SearchParametersIVF()
        ivf_params.nprobe = nprobe or DEFAULT_NPROBE
        if sel is not None:
            ivf_params.sel = sel
        return ivf_params, keep
    if sel is None:
        return None, keep
    params: Any = faiss.SearchParameters()
    params.sel = sel
    return params, keep
