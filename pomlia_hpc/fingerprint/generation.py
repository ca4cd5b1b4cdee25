"""One generation of a FAISS index on disk: its manifest record (``manifest.json``: what
the index holds, set by set) and reading the generation back, its two files checked against
each other.

A generation whose files cannot be read (``index.faiss`` deleted or truncated, a manifest
that is missing or not a manifest, a file of another index) is one
:class:`DamagedIndexError` naming the file and the command that rebuilds it, never faiss's
C++ exception: ``pomlia index build`` rebuilds such a generation from the embeddings
(:func:`pomlia_hpc.fingerprint.index.build_index`).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Literal

import faiss
from pydantic import ConfigDict, Field, field_serializer, field_validator

from pomlia_hpc.config import Record, read_record
from pomlia_hpc.errors import InputError, PomliaError

Kind = Literal["images", "patches"]


class SetEntry(Record):
    """One fingerprint set inside an index."""

    model_config = ConfigDict(frozen=False)

    fs_id: int
    ref: str
    n_images: int
    tiles: int
    splits: dict[str, list[int]]
    #: When the embeddings array was created (ns): a forced re-extraction changes it.
    stamp: int = 0

    @property
    def id_base(self) -> int:
        return self.fs_id << 32


class Manifest(Record):
    """What an index generation holds (its ``manifest.json``; ``sets`` is a list there)."""

    model_config = ConfigDict(frozen=False)

    encoder: str
    kind: str
    factory: str
    metric: str
    dim: int
    nprobe: int | None
    sets: dict[int, SetEntry] = Field(default_factory=dict)
    ntotal: int = 0
    generation: int = 0
    trained_on: str = "none"

    @field_validator("sets", mode="before")
    @classmethod
    def _sets_by_id(cls, value: Any) -> Any:
        if isinstance(value, list):  # as stored: a list of entries
            return {e.get("fs_id") if isinstance(e, dict) else None: e for e in value}
        return value

    @field_serializer("sets")
    def _sets_as_list(self, sets: dict[int, SetEntry]) -> list[dict[str, Any]]:
        return [e.model_dump() for e in sets.values()]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def faiss_reason(exc: Exception) -> str:
    """The readable part of a faiss error: without the C++ function and source location
    (``Error in ... at /project/faiss/...cpp:64:``) or the failed assertion's code."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    text = re.sub(r"^Error in .*? at \S+:\d+:\s*", "", text)
    text = re.sub(r"^Error: '.*?' failed:\s*", "", text)
    text = re.sub(r"\s*\(Success\)$", "", text)  # strerror(0): a short read sets no errno
    return text[:200]


class DamagedIndexError(InputError):
    """The current generation of an index is there but cannot be read (a file missing,
    truncated or not what its manifest says); ``pomlia index build`` rebuilds it."""


def build_command(encoder: str, kind: Kind, manifest: Manifest | None = None) -> str:
    """The command that builds (or rebuilds) ``encoder``'s index of ``kind``; as ``manifest``
    says it was built (its factory unless ``Flat``, ``--metric ip``) where it can be read: the
    plain command rebuilds an exact L2 index, which would change the distances' meaning."""
    opts = " --patches" if kind == "patches" else ""
    if manifest is not None and manifest.factory != "Flat":
        opts += f" --factory {shlex.quote(manifest.factory)}"
    if manifest is not None and manifest.metric == "ip":
        opts += " --metric ip"
    return f"pomlia index build --encoder {shlex.quote(encoder)}{opts}"


def repair_hint(encoder: str, kind: Kind, manifest: Manifest | None = None) -> str:
    """The hint of a :class:`DamagedIndexError`: the command that rebuilds the index."""
    command = build_command(encoder, kind, manifest)
    return f"run `{command}` (it rebuilds the index from the embeddings)"


def read_generation(gen: Path, encoder: str, kind: Kind) -> tuple[faiss.Index, Manifest]:
    """The index and manifest of generation folder ``gen``; a file that is missing,
    damaged or disagrees with the other (vector count, dimension) is one
    :class:`DamagedIndexError` naming it, with the command that rebuilds the index."""
    hint = repair_hint(encoder, kind)
    what = f"the {kind} index of encoder '{encoder}'"
    try:
        manifest = read_record(Manifest, gen / "manifest.json")
    except PomliaError as exc:  # missing (NotFoundError) or not a manifest (InputError)
        raise DamagedIndexError(f"{what} cannot be read: {exc.message}", hint=hint) from exc
    if (manifest.encoder, manifest.kind) != (encoder, kind):  # a folder copied or moved
        raise DamagedIndexError(
            f"{what} cannot be read: {gen / 'manifest.json'} is the {manifest.kind} index of "
            f"encoder '{manifest.encoder}'",
            hint=hint,
        )
    hint = repair_hint(encoder, kind, manifest)  # its factory and metric, now they are known
    path = gen / "index.faiss"
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:  # faiss says a missing or truncated file only in its text
        why = faiss_reason(exc).replace(f" in {path}", "")  # the path is named once
        reason = "does not exist" if not path.exists() else f"is damaged ({why})"
        raise DamagedIndexError(f"{what} cannot be read: {path} {reason}", hint=hint) from exc
    if (index.ntotal, index.d) != (manifest.ntotal, manifest.dim):
        raise DamagedIndexError(
            f"{what} cannot be read: {path} holds {index.ntotal} vectors of {index.d} "
            f"dimensions, its manifest says {manifest.ntotal} of {manifest.dim}",
            hint=hint,
        )
    return index, manifest
