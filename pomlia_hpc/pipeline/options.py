"""The ``options`` of a pipeline file's data set entry, checked when the file is read.

``options`` go to :func:`pomlia_hpc.data.api.ingest` as keyword arguments. The data room
converts and checks them as command-line values (``float(val_fraction)``), and names its
flags (``--val-fraction``) when they are wrong; a pipeline file is YAML, where ``abc`` or
``[0.1]`` can stand anywhere. So each option's kind of value is checked here first, with
the file's words: the data set entry, ``options.KEY``, the value and what is expected.
Which options a kind of source takes, and their types, is the data room's table
(:data:`pomlia_hpc.data.sources.SOURCE_OPTIONS`); the values themselves (fractions that sum
to 1, say) are left to the data room, whose refusals the dry run shows with the file's
words (:func:`pomlia_hpc.pipeline.stages_data.in_entry`). ``null`` is an option not given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pomlia_hpc.data.sources import HDF5_SUFFIXES, LIMIT_OPTIONS, SOURCE_OPTIONS, file_kind
from pomlia_hpc.errors import InputError
from pomlia_hpc.vocab import medmnist_task, task_type_choices


def _whole(v: Any) -> bool:
    # Text like "3" is what the data room's own converter takes too.
    if isinstance(v, bool):
        return False
    if isinstance(v, str):
        return v.strip().isdecimal() and v.strip().isascii() and int(v) >= 1
    return isinstance(v, int) and v >= 1


def _number_ok(v: Any) -> bool:
    # Its range (and the sum of both fractions) is the data room's: split folders and hash
    # splits take different defaults, and its refusal names the file and entry in a dry run.
    return _number(v) is not None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _names(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip() != ""
    scalar = (str, int, float)
    return isinstance(v, list) and bool(v) and all(isinstance(x, scalar) for x in v)


def _task_type(v: Any) -> bool:
    try:
        medmnist_task(str(v))
    except InputError:
        return False
    return isinstance(v, str)


_Check = tuple[str, Callable[[Any], bool]]

#: Each option: what it takes, in words, and the test of a value.
OPTIONS: dict[str, _Check] = {
    "size": ("28, 64, 128 or 224 (px)", lambda v: v in (28, 64, 128, 224) and v is not True),
    "root": ("a folder path", _text),
    "download": ("true or false", _bool),
    "mirror": ("a base URL", _text),
    "class_names": ("a list of class names (or one text of comma-separated names)", _names),
    "n_classes": ("a whole number >= 1", _whole),
    "task_type": (f"one of {task_type_choices()}", _task_type),
    "val_fraction": ("a number (the fraction of images for validation)", _number_ok),
    "test_fraction": ("a number (the fraction of images for testing)", _number_ok),
    "images": ("the path of the image data set inside the HDF5 file", _text),
    "labels": ("the path of the label data set inside the HDF5 file", _text),
    "split": ("the path of the split data set inside the HDF5 file", _text),
    "skip_unreadable": ("true or false (skip image files that do not decode)", _bool),
    "max_classes": ("a whole number >= 1", _whole),
    "max_side_px": ("a whole number >= 1 (px)", _whole),
    "workers": ("a whole number >= 1 (ingest's writer threads)", _whole),
    "parent": ("a data set version (name@version)", _text),
}

#: Options of :func:`pomlia_hpc.data.api.ingest` itself, whatever the source.
_INGEST = ("workers", "parent")
#: The options of each kind of source, as :func:`pomlia_hpc.data.sources.open_source` takes.
BY_KIND: dict[str, tuple[str, ...]] = {
    kind: (*opts, *LIMIT_OPTIONS, *_INGEST) for kind, opts in SOURCE_OPTIONS.items()
}


def source_kind(medmnist: str | None, file: str | None, folder: str | None) -> str | None:
    """The kind of source a data set entry names (a key of :data:`BY_KIND`); None for a file
    whose suffix says none."""
    if medmnist:
        return "MedMNIST"
    if folder:
        return "folder"
    return file_kind(file or "")


def check_options(where: str, dataset: str, kind: str | None, options: dict[str, Any]) -> None:
    """Raise ValueError (one line: the key path ``where.KEY``, the data set, the value, what
    is expected) for an option ``kind`` of source does not take or a value of a wrong kind.
    A None value (YAML ``~``) is an option not given, as the data room reads it."""
    given = {k: v for k, v in options.items() if v is not None}
    if given and kind is None:
        raise ValueError(
            f"'{where}' given for a file of no known kind (data set '{dataset}'): expected "
            f"a file ending in .npz, {', '.join(HDF5_SUFFIXES)} or a folder"
        )
    allowed = BY_KIND.get(kind or "", ())
    for key, value in given.items():
        if key not in allowed:
            article = "an" if kind in ("npz", "HDF5") else "a"
            raise ValueError(
                f"unknown key '{where}.{key}' (data set '{dataset}', {article} {kind} "
                f"source); valid keys: {', '.join(sorted(allowed))}"
            )
        words, ok = OPTIONS[key]
        if not ok(value):
            raise ValueError(
                f"bad value for '{where}.{key}' (data set '{dataset}'): expected {words} "
                f"(got {value!r})"
            )
