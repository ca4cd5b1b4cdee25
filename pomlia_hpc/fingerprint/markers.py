"""What an extraction leaves on disk besides the vectors, read without torch: each shard's
``.done`` marker, and the digest of the encoder weights an embeddings group was made with.

The shard job (:mod:`.shards`, which needs torch) writes them; the planner, the recorder and
every reader (``similar``, ``index build``, ``plot latent``, which load no torch) read them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pomlia_hpc.config import Record, read_record


class ShardMarker(Record):
    """A finished shard's ``NNNN.done`` file: its rows, the sum of its vectors (for the mean
    embedding without reading them again), how long it took and where it ran."""

    shard: int
    start: int
    stop: int
    sum: list[float]
    seconds: float
    host: str


def marker_dir(out_path: str | Path) -> Path:
    """The folder of ``.done`` files of an embeddings group."""
    p = Path(out_path)
    return p.with_name(p.name.removesuffix(".zarr") + ".shards")


def marker(out_path: str | Path, shard: int) -> Path:
    return marker_dir(out_path) / f"{shard:04d}.done"


def done_record(out_path: str | Path, shard: int, rows: tuple[int, int]) -> dict[str, Any] | None:
    """The ``.done`` record of ``shard`` if it exists and covers ``rows`` (start, stop), else
    None (a marker of another plan does not count); a damaged marker is one
    :class:`~pomlia_hpc.errors.InputError` naming it and the key."""
    path = marker(out_path, shard)
    if not path.is_file():
        return None
    record = read_record(ShardMarker, path)
    return record.to_dict() if (record.start, record.stop) == tuple(rows) else None


#: Digests by (path, inode, size, mtime in ns): a reader asks once per command, a planner once
#: per dataset; a retrained file (written by rename) has another inode and is hashed again.
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 (hex) of an encoder checkpoint file: which weights an embeddings group holds."""
    st = Path(path).stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def made_with(meta: dict[str, Any], digest: str) -> bool:
    """Whether the embeddings group whose ``attrs["pomlia"]`` is ``meta`` was made with the
    encoder weights of SHA-256 ``digest``: the rule by which an extraction reuses a group and
    every reader uses one (others hold vectors of earlier weights of the same encoder name)."""
    return meta.get("encoder_sha256") == digest


def stored_meta(out: str | Path) -> dict[str, Any] | None:
    """The ``attrs["pomlia"]`` of the embeddings group at ``out`` (empty if it has none), or
    None when the group is not there (no readable ``zarr.json``). Read as the JSON file it is:
    a reader checks every set of an encoder, and opening each group through zarr cost about a
    millisecond a set."""
    try:
        attrs = json.loads((Path(out) / "zarr.json").read_bytes()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return None
    meta = attrs.get("pomlia", {}) if isinstance(attrs, dict) else {}
    return dict(meta) if isinstance(meta, dict) else {}
