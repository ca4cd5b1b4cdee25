"""The ``options`` of a pipeline file's data set entry, checked when the file is read.

``options`` go to :func:`pomlia_hpc.data.api.ingest` as keyword arguments. The data room
converts and checks them as command-line values (``float(val_fraction)``), and names its
flags (``--val-fraction``) when they are wrong; a pipeline file is YAML, where ``abc`` or
``[0.1]`` can stand anywhere. So each option's kind of value is checked here first, with
the file's words: the data set entry, ``options.KEY``, the value and what is expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pomlia_hpc.data.sources import HDF5_SUFFIXES
from pomlia_hpc.errors import InputError
from pomlia_hpc.vocab import medmnist_task, task_type_choices

#: The default of ``val_fraction`` and ``test_fraction`` in the data room's hash split.
_DEFAULT_FRACTION = 0.1


def _whole(v: Any) -> bool:
    # Text like "3" is what the data room's own converter takes too.
    if isinstance(v, bool):
        return False
    if isinstance(v, str):
        return v.strip().isdecimal() and v.strip().isascii() and int(v) >= 1
    return isinstance(v, int) and v >= 1


def _fraction(v: Any) -> bool:
    x = _number(v)
    return x is not None and 0 <= x < 1


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return None
    try:
        return float(v)
    except ValueError:
        return None


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
    "download": ("true or false", lambda v: isinstance(v, bool)),
    "mirror": ("a base URL", _text),
    "class_names": ("a list of class names (or one text of comma-separated names)", _names),
    "n_classes": ("a whole number >= 1", _whole),
    "task_type": (f"one of {task_type_choices()}", _task_type),
    "val_fraction": ("a number from 0 up to (not including) 1", _fraction),
    "test_fraction": ("a number from 0 up to (not including) 1", _fraction),
    "images": ("the path of the image data set inside the HDF5 file", _text),
    "labels": ("the path of the label data set inside the HDF5 file", _text),
    "split": ("the path of the split data set inside the HDF5 file", _text),
    "max_classes": ("a whole number >= 1", _whole),
    "max_side_px": ("a whole number >= 1 (px)", _whole),
    "workers": ("a whole number >= 1 (ingest's writer threads)", _whole),
    "parent": ("a data set version (name@version)", _text),
}

_LABELS = ("class_names", "n_classes", "task_type")
_FRACTIONS = ("val_fraction", "test_fraction")
#: Options every kind of source takes (ingest's own, and the size caps).
_ANY = ("max_classes", "max_side_px", "workers", "parent")
#: The options of each kind of source, as :func:`pomlia_hpc.data.sources.open_source` takes.
BY_KIND: dict[str, tuple[str, ...]] = {
    "MedMNIST": ("size", "root", "download", "mirror", *_ANY),
    "npz": (*_LABELS, *_ANY),
    "folder": ("task_type", *_FRACTIONS, *_ANY),
    "HDF5": ("images", "labels", "split", *_LABELS, *_FRACTIONS, *_ANY),
}


def source_kind(medmnist: str | None, file: str | None, folder: str | None) -> str | None:
    """The kind of source a data set entry names; None for a file whose suffix says none
    (opening it says what is wrong)."""
    if medmnist:
        return "MedMNIST"
    if folder:
        return "folder"
    suffix = "." + (file or "").rsplit(".", 1)[-1].lower() if "." in (file or "") else ""
    if suffix == ".npz":
        return "npz"
    return "HDF5" if suffix in HDF5_SUFFIXES else None


def check_options(where: str, dataset: str, kind: str | None, options: dict[str, Any]) -> None:
    """Raise ValueError (one line: the key path ``where.KEY``, the data set, the value, what
    is expected) for an option ``kind`` of source does not take or a value of a wrong kind."""
    allowed = BY_KIND.get(kind or "", tuple(OPTIONS))
    for key, value in options.items():
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
    fractions = [_number(options.get(k, _DEFAULT_FRACTION)) or 0.0 for k in _FRACTIONS]
    if sum(fractions) >= 1:
        raise ValueError(
            f"bad values for '{where}.val_fraction' + '{where}.test_fraction' (data set "
            f"'{dataset}'): expected a sum below 1, the rest being training images (got "
            f"{sum(fractions):g})"
        )
