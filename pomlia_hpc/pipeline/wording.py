"""Pydantic's validation errors of a pipeline file, said in the words the CLI uses.

Pydantic says ``String should match pattern '^[A-Za-z0-9_]...'`` or ``Input should be a valid
tuple``; a pipeline file's author wrote YAML, not Python, so each error type becomes what was
expected in words (``a time HH:MM, 00:00-23:59``, ``a list of data set entries``), with the
file, the key path and, inside a list of named entries, the entry's name. Unknown and missing
keys keep :func:`pomlia_hpc.config.problem`'s wording (it lists the valid keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from pomlia_hpc.config import problem

#: What a list key holds, singular and plural (``datasets`` -> data set entries).
ITEMS: dict[str, tuple[str, str]] = {
    "datasets": ("data set entry", "data set entries"),
    "tasks": ("task entry", "task entries"),
    "flags": ("MedMNIST flag", "MedMNIST flags"),
    "archs": ("architecture name", "architecture names"),
    "sources": ("knowledge-base source", "knowledge-base sources"),
    "groups": ("group of data set names", "groups of data set names"),
}

#: Pydantic error types whose words do not depend on the key (the value's type).
_TYPE_WORDS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "model_type": "a section of key: value lines",
    "model_attributes_type": "a section of key: value lines",
    "dict_type": "a section of key: value lines",
}

#: Bounds, as pydantic names them in an error's context.
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def pipeline_problem(
    exc: ValidationError,
    model: type[BaseModel],
    data: Any,
    patterns: Mapping[str, str],
) -> str:
    """One phrase saying what is wrong in ``data`` (the file's mapping), naming the key path
    and, inside a list of named entries, the entry (``datasets.0 ('cells')``).
    ``patterns``: each regular expression of the schema -> what it accepts, in words."""
    errors = exc.errors()
    if any(e["type"] in ("extra_forbidden", "missing") for e in errors):
        return problem(model, exc)  # unknown or missing keys: it lists the valid ones
    err = errors[0]
    loc = [p for p in err["loc"] if not _union_tag(p)]
    dotted = ".".join(str(p) for p in loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "value_error":  # a cross-field check: its message names the keys
        return f"{msg} in '{dotted}'" if loc and f"'{dotted}" not in msg else msg
    where = f"'{dotted}'{_entry(data, loc)}"
    expected = expected_words(err["type"], err.get("ctx") or {}, loc, patterns)
    if expected is None:  # an error type without words here: pydantic's, which names it
        return f"bad value for {where}: {msg} (got {_shown(err.get('input'))})"
    return f"bad value for {where}: expected {expected} (got {_shown(err.get('input'))})"


def expected_words(
    kind: str, ctx: Mapping[str, Any], loc: list[Any], patterns: Mapping[str, str]
) -> str | None:
    """What a key accepts, in words, for a pydantic error of type ``kind`` (with its context
    ``ctx``) at ``loc``; None for a type without words here."""
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    one, many = ITEMS.get(key, ("entry", "entries"))
    if kind in ("tuple_type", "list_type", "iterable_type"):
        return f"a list of {many}"
    if kind == "too_short":
        n = int(ctx.get("min_length", 1))
        return f"at least one {one}" if n == 1 else f"at least {n} {many}"
    if kind == "too_long":
        return f"at most {ctx.get('max_length')} {many}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return patterns.get(pattern, f"text matching the regular expression {pattern}")
    if kind == "literal_error":  # pydantic's list of the values: "28, 64 or 128"
        return str(ctx.get("expected"))
    for bound, sign in _BOUNDS.items():
        if kind.startswith(("greater_than", "less_than")) and bound in ctx:
            return f"a number {sign} {ctx[bound]}"
    return _TYPE_WORDS.get(kind)


def _union_tag(part: int | str) -> bool:
    """Whether a part of an error's location names the union member pydantic tried (``int``
    in ``shards.int``), not a key."""
    return isinstance(part, str) and (
        part in {"int", "str", "float", "bool", "none"} or "[" in part
    )


def _entry(data: Any, loc: list[Any]) -> str:
    """`` (entry 'name')`` when ``loc`` goes through an entry of a list that has a name (the file's
    datasets and tasks are told apart by name, not by their position)."""
    node = data
    found = ""
    for part in loc:
        if isinstance(part, int) and isinstance(node, list | tuple) and part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, Mapping) else None
            found = f" (entry {name!r})" if isinstance(name, str) else found
        elif isinstance(part, str) and isinstance(node, Mapping):
            node = node.get(part)
        else:
            break
    return found


def _shown(value: Any) -> str:
    """The value given, as written in the file (a mapping or list is named, not dumped)."""
    if isinstance(value, Mapping):
        return "a section of key: value lines"
    if isinstance(value, list | tuple) and value:
        return "a list"
    if isinstance(value, bool):  # YAML's spelling, not Python's
        return str(value).lower()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
