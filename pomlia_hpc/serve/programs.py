"""Checking a ``torch.export`` archive (``.pt2``) before torch reads it.

``torch.export.load`` runs code from the archive in several places: a weight or constant
marked ``use_pickle`` is read with ``torch.load(weights_only=False)``, a legacy ``<model>.pt``
state dict and the sample inputs fall back to it, ``custom_obj_*`` and ``opaque_obj_*``
constants are unpickled, ``data/aotinductor/`` holds compiled libraries, the symbolic shape
expressions in ``models/<model>.json`` go through ``sympy.sympify`` (``eval``), and its
``guards_code`` is Python source. A bundle made by someone else must not run its code in the
server, and its card's SHA-256 proves nothing (whoever rewrites the archive rewrites the card).

So an archive is read here first, without torch, and refused unless it holds only what
``torch.export.save`` writes for a program of plain tensors (what ``pomlia model export``
writes): the fixed metadata files, one program, its weights and tensor constants stored as
raw bytes, its sample inputs, and a graph of ``aten`` operators whose shape expressions are
plain arithmetic on size symbols. The loader then reads it with every ``torch.load`` forced
to ``weights_only`` (:func:`pomlia_hpc.serve.runtime.load_program`).

This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pomlia_hpc.errors import InputError

#: Members every archive has, relative to its one top folder.
_FIXED = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
}
_NAME = r"[A-Za-z0-9_]+"
_PER_MODEL = (
    re.compile(rf"models/(?P<m>{_NAME})\.json"),
    re.compile(rf"data/weights/(?P<m>{_NAME})_weights_config\.json"),
    re.compile(rf"data/constants/(?P<m>{_NAME})_constants_config\.json"),
    re.compile(rf"data/sample_inputs/(?P<m>{_NAME})\.pt"),
)
_PAYLOAD = {
    "data/weights/": re.compile(r"weight_\d+"),
    "data/constants/": re.compile(r"tensor_\d+"),
}
#: The underscore-named ATen operators ``pomlia model export`` itself emits: the encoder
#: adapter's antialiased resize (``interpolate(..., antialias=True)``, as fingerprint
#: extraction resizes) is ``aten._upsample_bilinear2d_aa``. Listed one by one rather than
#: allowing every ``aten._*``: they are built-in ATen kernels too (no code of the archive's),
#: but the private namespace holds internals no exported classifier needs.
_PRIVATE_ATEN = ("_upsample_bilinear2d_aa",)
#: Operators a classifier or encoder graph may call: ATen overloads and the size arithmetic
#: a dynamic batch dimension needs. Anything else (higher-order operators, extension
#: operators, other Python callables) is refused.
_ATEN_NAME = "|".join([r"[a-z][a-z0-9_]*", *map(re.escape, _PRIVATE_ATEN)])
_TARGET = re.compile(
    rf"torch\.ops\.aten\.(?:{_ATEN_NAME})\.[A-Za-z][A-Za-z0-9_]*"
    r"|_operator\.(?:getitem|add|sub|mul|floordiv|truediv|mod|neg|pow|eq|ne|lt|le|gt|ge)"
    r"|torch\.sym_(?:float|int|max|min|not|sqrt|ite)"
    r"|math\.(?:ceil|floor|trunc|sqrt)"
)
#: Names a symbolic shape expression may use (sympify evaluates the string as Python).
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "positive", "integer", "nonnegative", "real",
    "True", "False", "oo", "Max", "Min", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
    "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "IntTrueDiv",
    "FloatTrueDiv", "ToFloat", "TruncToInt", "TruncToFloat", "RoundToInt", "PowByNatural",
    "FloatPow", "Identity", "IsNonOverlappingAndDenseIndicator", "OpaqueUnaryFn_sqrt",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
}  # fmt: skip
_EXPR_CHARS = re.compile(r"[\w\s'(),=+\-*/%<>!]*")
#: A name, not the exponent of a number (``1e5``).
_IDENT = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_SYMBOL = re.compile(r"[a-z]\d+")


class _RefusedError(Exception):
    """What is wrong inside the archive (the caller adds the file)."""


def check_program(path: Path) -> None:
    """Refuse the ``torch.export`` archive at ``path`` unless it holds only what
    ``torch.export.save`` writes for a program of plain tensors (see the module docstring).

    Raises :class:`InputError` (one line: the file, the member or entry, what was expected).
    Reads the archive's directory and its JSON members only (a few tens of kB, milliseconds).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            _check_archive(zf)
    except _RefusedError as exc:
        raise InputError(
            f"{path}: refused to load this torch.export program: {exc}; a program exported by "
            "pomlia holds plain tensors and aten operators only (re-export the model with "
            "`pomlia model export NAME`, and serve bundles only from people you trust)"
        ) from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError(
            f"{path}: cannot be read as a torch.export program ({exc}); expected a .pt2 archive "
            "written by torch.export.save"
        ) from None


def _check_archive(zf: zipfile.ZipFile) -> None:
    names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        raise _RefusedError(f"expected one top folder, found {len(tops)}")
    top = tops.pop()
    members = {n[len(top) + 1 :] for n in names if n != f"{top}/" and not n.endswith("/")}
    models: set[str] = set()
    payloads: dict[str, set[str]] = {d: set() for d in _PAYLOAD}
    for rel in sorted(members):
        if rel in _FIXED:
            continue
        if m := next((p.fullmatch(rel) for p in _PER_MODEL if p.fullmatch(rel)), None):
            models.add(m["m"])
            continue
        folder, _, base = rel.rpartition("/")
        pattern = _PAYLOAD.get(folder + "/")
        if pattern is None or not pattern.fullmatch(base):
            raise _RefusedError(f"unexpected member '{top}/{rel}'")
        payloads[folder + "/"].add(base)
    if len(models) != 1:
        raise _RefusedError(
            f"expected one program, found {len(models)}: {', '.join(sorted(models))}"
        )
    model = models.pop()
    for kind in ("weights", "constants"):
        config = f"data/{kind}/{model}_{kind}_config.json"
        if config not in members:
            raise _RefusedError(f"'{top}/{config}' is missing")
        _check_payload_config(f"{top}/{config}", _json(zf, f"{top}/{config}"), payloads)
    program = f"{top}/models/{model}.json"
    if f"models/{model}.json" not in members:
        raise _RefusedError(f"'{program}' is missing")
    _check_graph(program, _json(zf, program))


def _json(zf: zipfile.ZipFile, member: str) -> Any:
    try:
        return json.loads(zf.read(member))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _RefusedError(f"'{member}' is not JSON ({exc})") from None


def _check_payload_config(member: str, config: Any, payloads: dict[str, set[str]]) -> None:
    """Every entry is a raw tensor (``use_pickle`` false) stored in a file the archive has."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _RefusedError(f"'{member}' has no 'config' object")
    folder = "data/weights/" if member.endswith("_weights_config.json") else "data/constants/"
    for fqn, entry in entries.items():
        if not isinstance(entry, dict):
            raise _RefusedError(f"entry '{fqn}' in '{member}' is not an object")
        if entry.get("use_pickle") is not False:
            raise _RefusedError(
                f"entry '{fqn}' in '{member}' is marked use_pickle (a pickled object, which runs "
                "code when loaded), expected a raw tensor"
            )
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or path_name not in payloads[folder]:
            raise _RefusedError(f"entry '{fqn}' in '{member}' names a missing file '{path_name}'")


def _check_graph(member: str, program: Any) -> None:
    """No guard code, only allowed operators, shape expressions of size arithmetic only."""
    if not isinstance(program, dict):
        raise _RefusedError(f"'{member}' is not an object")
    if program.get("guards_code"):
        raise _RefusedError(f"'{member}' carries guards_code (Python source), expected none")
    ranges = program.get("range_constraints")
    for key in ranges if isinstance(ranges, dict) else ():
        _check_expr(member, str(key))
    for key, value in _items(program):
        if key == "target" and isinstance(value, str) and not _TARGET.fullmatch(value):
            raise _RefusedError(f"'{member}' calls '{value}', expected aten operators only")
        if key == "expr_str" and isinstance(value, str):
            _check_expr(member, value)


def _check_expr(member: str, expr: str) -> None:
    """A shape expression is evaluated by sympy: allow numbers, size symbols, arithmetic and
    sympy's own names, no attribute access, brackets, strings or other names."""
    bare = re.sub(r"'[a-z]\d+'", "s0", expr)  # the quoted name in Symbol('s77', ...)
    bare = re.sub(r"\d+\.\d+(?:e[+-]?\d+)?", "0", bare)
    names = set(_IDENT.findall(bare))
    odd = {n for n in names if n not in _SYMPY_NAMES and not _SYMBOL.fullmatch(n)}
    if not _EXPR_CHARS.fullmatch(bare) or odd or "__" in expr:
        raise _RefusedError(
            f"'{member}' holds the shape expression {expr[:80]!r}, expected arithmetic"
        )


def _items(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, depth first (iterative: no recursion limit)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield str(key), value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
