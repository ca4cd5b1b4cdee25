"""The AutoML search space: development strategies and hyperparameters (ConfigSpace).

=================  ===========================================  ===============================
hyperparameter     values                                       active when
=================  ===========================================  ===============================
``arch``           ``small_cnn``, ``resnet18``,                 always
                   ``mobilenet_v3_small`` (``SpaceOptions``)
``init``           ``scratch``; ``encoder`` (the fingerprint    a pretrained source is given
                   autoencoder's ResNet-18); ``model`` (a
                   registered model's weights)
``mode``           ``full`` fine-tune, ``linear_probe`` (head   ``init`` is in the space;
                   only), ``freeze_unfreeze`` (head only, then  forbidden with ``scratch``
                   everything from ``unfreeze_epoch`` on)       unless ``full``
``lr``             1e-4 .. 1e-1, log (whole network)            ``mode`` is full/freeze_unfreeze
``lr_head``        1e-3 .. 3e-1, log (head while the body is    ``mode`` is linear_probe/
                   frozen: a probe on fixed features takes      freeze_unfreeze
                   larger steps than a whole network)
``unfreeze_epoch`` 1 .. 3 (epochs of head-only training)        ``mode`` = freeze_unfreeze
``optimizer``      ``adamw``, ``sgd``                           always
``momentum``       0.5 .. 0.99                                  ``optimizer`` = sgd
``weight_decay``   1e-6 .. 1e-2, log                            always
``batch_size``     32, 64, 128 (ordinal)                        always
``augmentation``   ``none``, ``flip``, ``flip_crop``            always
``extra_data``     ``none``, ``nearest``                        nearest images are available
``extra_n``        100 .. ``max_extra`` (log), images added     ``extra_data`` = nearest
=================  ===========================================  ===============================

``init=encoder`` only fits the architecture the encoder's weights were trained as, and
``init=model`` only the registered model's architecture: forbidden clauses exclude the other
pairs. Epochs are not in the space: they are the budget (fidelity) that Hyperband assigns.
Learning rates do not depend on the epoch count, so a configuration promoted to a larger budget
can continue from its checkpoint (see :mod:`pomlia_hpc.automl.engine`).
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ConfigSpace import (
    Categorical,
    Configuration,
    ConfigurationSpace,
    EqualsCondition,
    Float,
    ForbiddenAndConjunction,
    ForbiddenEqualsClause,
    ForbiddenInClause,
    InCondition,
    Integer,
    OrdinalHyperparameter,
)

from pomlia_hpc.config import Record, UniqueKeyLoader, yaml_problem
from pomlia_hpc.errors import InputError
from pomlia_hpc.models.archs import ARCHITECTURES

DEFAULT_ARCHS: tuple[str, ...] = ("small_cnn", "resnet18", "mobilenet_v3_small")
AUGMENTATIONS: tuple[str, ...] = ("none", "flip", "flip_crop")
MODES: tuple[str, ...] = ("full", "linear_probe", "freeze_unfreeze")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
BATCH_SIZES: tuple[int, ...] = (32, 64, 128)


class SpaceOptions(Record):
    """What the space offers. ``encoder_arch`` / ``model_arch``: the architecture that the
    fingerprint encoder's / the registered model's weights fit (``None``: that source is not
    offered); ``extra_data``: whether nearest images from similar datasets can be added."""

    archs: tuple[str, ...] = DEFAULT_ARCHS
    encoder_arch: str | None = None
    model_arch: str | None = None
    extra_data: bool = False
    max_extra: int = 2000


def check_space_options(opt: SpaceOptions) -> None:
    """One :class:`InputError` for a space that names an unknown architecture, no architecture
    or too few extra images (checked by :func:`build_space`, and before a study is made)."""
    unknown = _unknown_architecture((*opt.archs, opt.encoder_arch, opt.model_arch))
    if unknown is not None:
        raise InputError(f"search space: {unknown}")
    if not opt.archs:
        raise InputError("search space: expected at least one architecture in 'archs'")
    if opt.extra_data and opt.max_extra < 100:
        raise InputError(f"search space: max_extra={opt.max_extra}, expected >= 100")


def parse_archs(text: str, option: str = "--archs") -> tuple[str, ...]:
    """The architectures of a comma-separated ``text`` (``small_cnn,resnet18``); an empty
    list or an empty name in it (``""``, ``small_cnn,``) is an :class:`InputError`, not the
    default architectures, and so is a name not in :data:`ARCHITECTURES` (the message names
    ``option``)."""
    names = tuple(a.strip() for a in text.split(","))
    if not any(names):
        raise InputError(
            f"{option} {text!r}: expected a comma-separated list of architectures (some of "
            f"{', '.join(ARCHITECTURES)}); leave {option} out for the default "
            f"{','.join(DEFAULT_ARCHS)}"
        )
    if not all(names):
        raise InputError(f"{option} {text!r}: an empty architecture name in the list")
    unknown = _unknown_architecture(names)
    if unknown is not None:
        raise InputError(f"{option} {text!r}: {unknown}")
    return names


def _unknown_architecture(names: Iterable[str | None]) -> str | None:
    """The message for the first of ``names`` (None skipped) not in :data:`ARCHITECTURES`
    ("architecture 'X' is not known; expected one of ..."); None when all are known."""
    for arch in names:
        if arch is not None and arch not in ARCHITECTURES:
            return f"architecture '{arch}' is not known; expected one of {', '.join(ARCHITECTURES)}"
    return None


def build_space(options: SpaceOptions | None = None, seed: int = 0) -> ConfigurationSpace:
    """The search space for ``options`` (see the module docstring), seeded for sampling."""
    opt = options or SpaceOptions()
    check_space_options(opt)
    archs = list(dict.fromkeys([*opt.archs, *(a for a in (opt.encoder_arch, opt.model_arch) if a)]))
    cs = ConfigurationSpace(seed=seed)
    arch = Categorical("arch", archs, default=archs[0])
    optimizer = Categorical("optimizer", list(OPTIMIZERS), default="adamw")
    momentum = Float("momentum", (0.5, 0.99), default=0.9)
    cs.add(
        [
            arch,
            optimizer,
            momentum,
            Float("weight_decay", (1e-6, 1e-2), log=True, default=1e-4),
            OrdinalHyperparameter("batch_size", list(BATCH_SIZES), default_value=64),
            Categorical("augmentation", list(AUGMENTATIONS), default="flip"),
        ]
    )
    cs.add(EqualsCondition(momentum, optimizer, "sgd"))

    sources = [s for s, a in (("encoder", opt.encoder_arch), ("model", opt.model_arch)) if a]
    lr = Float("lr", (1e-4, 1e-1), log=True, default=1e-3)
    if sources:
        init = Categorical("init", ["scratch", *sources], default="scratch")
        mode = Categorical("mode", list(MODES), default="full")
        lr_head = Float("lr_head", (1e-3, 3e-1), log=True, default=1e-2)
        unfreeze = Integer("unfreeze_epoch", (1, 3), default=1)
        cs.add([init, mode, lr, lr_head, unfreeze])
        cs.add(
            [
                InCondition(lr, mode, ["full", "freeze_unfreeze"]),
                InCondition(lr_head, mode, ["linear_probe", "freeze_unfreeze"]),
                EqualsCondition(unfreeze, mode, "freeze_unfreeze"),
            ]
        )
        cs.add(
            ForbiddenAndConjunction(
                ForbiddenEqualsClause(init, "scratch"),
                ForbiddenInClause(mode, ["linear_probe", "freeze_unfreeze"]),
            )
        )
        for source, fits in (("encoder", opt.encoder_arch), ("model", opt.model_arch)):
            others = [a for a in archs if a != fits]
            if fits and others:
                cs.add(
                    ForbiddenAndConjunction(
                        ForbiddenEqualsClause(init, source), ForbiddenInClause(arch, others)
                    )
                )
    else:
        cs.add(lr)
    if opt.extra_data:
        extra = Categorical("extra_data", ["none", "nearest"], default="none")
        extra_n = Integer("extra_n", (100, opt.max_extra), log=True, default=500)
        cs.add([extra, extra_n])
        cs.add(EqualsCondition(extra_n, extra, "nearest"))
    return cs


@dataclass(frozen=True)
class TrainConfig:
    """One point of the space with inactive hyperparameters filled in (what the engine runs)."""

    arch: str = "small_cnn"
    init: str = "scratch"
    mode: str = "full"
    lr: float = 1e-3
    lr_head: float = 1e-2
    unfreeze_epoch: int = 1
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    augmentation: str = "flip"
    extra_n: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a configuration's values (a ``Configuration`` or its dict)."""
        v = dict(values)
        extra_n = int(v.get("extra_n", 0)) if v.get("extra_data") == "nearest" else 0
        return cls(
            arch=str(v.get("arch", "small_cnn")),
            init=str(v.get("init", "scratch")),
            mode=str(v.get("mode", "full")),
            lr=float(v.get("lr", 1e-3)),
            lr_head=float(v.get("lr_head", 1e-2)),
            unfreeze_epoch=int(v.get("unfreeze_epoch", 1)),
            optimizer=str(v.get("optimizer", "adamw")),
            momentum=float(v.get("momentum", 0.9)),
            weight_decay=float(v.get("weight_decay", 1e-4)),
            batch_size=int(v.get("batch_size", 64)),
            augmentation=str(v.get("augmentation", "flip")),
            extra_n=extra_n,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration's values as plain JSON types (ConfigSpace hands out numpy scalars)."""
    out: dict[str, Any] = {}
    for k in sorted(values):
        v = values[k]
        out[k] = v.item() if hasattr(v, "item") else v
    return out


def config_key(values: Mapping[str, Any]) -> str:
    """A short stable id of a configuration (hash of its sorted values)."""
    text = json.dumps(plain_values(values), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _shown_value(value: Any) -> str:
    """``value`` as a message shows a wrong one: its type and a short repr."""
    text = repr(value)
    return f"a {type(value).__name__} ({text[:40]}{'...' if len(text) > 40 else ''})"


def make_configuration(
    space: ConfigurationSpace, values: Mapping[str, Any], where: str
) -> Configuration:
    """Validate ``values`` against ``space``; :class:`InputError` naming ``where`` and every
    bad hyperparameter (one line each when there are several) on failure. Inactive
    hyperparameters may be left out."""
    known = set(space.keys())
    arch = values.get("arch")
    if "arch" in values and not isinstance(arch, str):  # a dict or list is unhashable there
        raise InputError(
            f"{where}: 'arch' is {_shown_value(arch)}: expected an architecture name"
            + (f", {_describe(space['arch'])}" if "arch" in known else "")
        )
    if "arch" in known and "arch" in values and not space["arch"].legal_value(arch):
        # alone: another architecture is the reason, not the weights' keys it brings along
        raise InputError(
            f"{where}: architecture {values['arch']!r} is not in this study's space; "
            f"expected {_describe(space['arch'])}"
        )
    problems: list[str] = []
    unknown = sorted(set(values) - known)
    if unknown:
        problems.append(
            f"unknown hyperparameter(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(known))}"
        )
    # Every hyperparameter at its default, the file's values over them, then drop what the
    # conditions make inactive (parents before children: topological order).
    full = {name: hp.default_value for name, hp in space.items()}
    full.update({k: v for k, v in values.items() if k in known})
    try:
        for name in space.keys():  # noqa: SIM118 (ConfigSpace keeps topological order)
            hp = space[name]
            if not _active(space, name, full):
                full.pop(name)
                if name in values:
                    parents = ", ".join(p.name for p in space.parents_of.get(name, []))
                    problems.append(
                        f"hyperparameter '{name}' is inactive with the other values "
                        f"(it depends on {parents})"
                    )
            elif name in values and not hp.legal_value(full[name]):
                problems.append(_illegal(name, full[name], hp))
    except Exception as exc:  # ConfigSpace raises several types on values it cannot compare
        raise InputError(f"{where}: not a valid configuration ({exc})") from exc
    if problems:
        if len(problems) == 1:
            raise InputError(f"{where}: {problems[0]}")
        lines = "".join(f"\n  - {p}" for p in problems)
        raise InputError(f"{where}: {len(problems)} problems:{lines}")
    try:
        config = Configuration(space, values=full)
        config.check_valid_configuration()
    except Exception as exc:  # ConfigSpace raises several types (forbidden, illegal value)
        raise InputError(f"{where}: not a valid configuration ({exc})") from exc
    return config


def _illegal(name: str, value: Any, hp: Any) -> str:
    """Why ``value`` of hyperparameter ``name`` is refused; a string where ``hp`` takes
    numbers is named as one (``"64"`` quoted in a file is text, not 64)."""
    numeric = not hasattr(hp, "choices") and (
        not hasattr(hp, "sequence") or all(_is_number(v) for v in hp.sequence)
    )
    kind = (
        " (a string; write the number without quotes)" if isinstance(value, str) and numeric else ""
    )
    return f"value {value!r} of '{name}' is not legal{kind}; expected {_describe(hp)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _active(space: ConfigurationSpace, name: str, values: Mapping[str, Any]) -> bool:
    for cond in space.parent_conditions_of.get(name, []):
        parent_values = {p.name: values.get(p.name) for p in space.parents_of[name]}
        if any(v is None for v in parent_values.values()):
            return False
        if not cond.satisfied_by_value(parent_values):
            return False
    return True


def _describe(hp: Any) -> str:
    if hasattr(hp, "choices"):
        return "one of " + ", ".join(map(str, hp.choices))
    if hasattr(hp, "sequence"):
        return "one of " + ", ".join(map(str, hp.sequence))
    return f"a number in [{hp.lower}, {hp.upper}]"


@dataclass(frozen=True)
class InitialFile:
    """A warm-start file as read: its entries (not yet validated) and, when the recommender
    wrote it (``pomlia recommend TASK --write-initial``), the task and answer it was for."""

    path: Path
    configs: list[Any]
    task: str | None = None
    recommendation_id: int | None = None

    @property
    def source(self) -> str:
        """How messages name the file: ``initial configurations file 'warm.json'``."""
        return f"initial configurations file '{self.path}'"


def read_initial_file(path: str | Path) -> InitialFile:
    """Read a warm-start file: a YAML or JSON list of mappings from hyperparameter name to
    value, or a mapping with a ``configs`` list (and ``task``, ``recommendation_id``), as the
    recommender writes. An unreadable file, anything but a non-empty list, or a ``task`` that
    is not a name is an :class:`InputError` naming the file."""
    p = Path(path)
    try:
        # UTF-8 whatever the locale (a batch job's may be ASCII), as every YAML file pomlia reads
        text = p.read_text(encoding="utf-8-sig")
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: builds no objects
    except OSError as exc:
        raise InputError(f"initial configurations file '{p}' cannot be read ({exc})") from exc
    except UnicodeDecodeError as exc:  # a checkpoint or npz given by mistake: not a traceback
        raise InputError(
            f"initial configurations file '{p}' is not text (byte {exc.start}: {exc.reason}); "
            "expected a YAML/JSON list of configurations, as `pomlia recommend TASK "
            "--write-initial FILE` writes"
        ) from exc
    except yaml.YAMLError as exc:
        raise InputError(
            f"initial configurations file '{p}' is not YAML/JSON ({yaml_problem(exc)})"
        ) from exc
    task: Any = None
    rec_id: Any = None
    if isinstance(data, dict) and "configs" in data:
        task, rec_id = data.get("task"), data.get("recommendation_id")
        data = data["configs"]
    if not isinstance(data, list) or not data:
        raise InputError(
            f"initial configurations file '{p}': expected a non-empty list of configurations "
            "(mappings hyperparameter: value)"
        )
    if task is not None and not isinstance(task, str):
        raise InputError(
            f"initial configurations file '{p}': 'task' is {task!r}, expected a task name"
        )
    return InitialFile(p, data, task, rec_id if isinstance(rec_id, int) else None)


def read_initial_values(path: str | Path) -> list[Any]:
    """The entries of a warm-start file, not yet validated (:func:`read_initial_file`)."""
    return read_initial_file(path).configs


def load_initial_configs(path: str | Path, space: ConfigurationSpace) -> list[Configuration]:
    """Read warm-start configurations (:func:`read_initial_values`), each validated against
    ``space``."""
    return configs_from_values(read_initial_values(path), space, str(Path(path)))


def split_fitting(
    entries: Sequence[Any], space: ConfigurationSpace, source: str
) -> tuple[list[int], list[str]]:
    """Which ``entries`` are valid configurations of ``space``: the indices of those that are,
    and for each other one (a mapping that does not fit, or no mapping at all) the reason (the
    :class:`InputError` message naming it), as :func:`configs_from_values` would raise it."""
    kept: list[int] = []
    reasons: list[str] = []
    for i, entry in enumerate(entries):
        try:
            _entry_configuration(space, entry, f"{source}: entry {i}")
        except InputError as exc:
            reasons.append(str(exc))
        else:
            kept.append(i)
    return kept, reasons


def configs_from_values(
    entries: Sequence[Any], space: ConfigurationSpace, source: str
) -> list[Configuration]:
    """Validate a list of value mappings (see :func:`load_initial_configs`)."""
    out: list[Configuration] = []
    for i, entry in enumerate(entries):
        config = _entry_configuration(space, entry, f"{source}: entry {i}")
        config.origin = "Initial design: warm start"
        out.append(config)
    return out


def _entry_configuration(space: ConfigurationSpace, entry: Any, where: str) -> Configuration:
    """One warm-start entry validated against ``space`` (an :class:`InputError` naming
    ``where`` when it is no mapping or does not fit)."""
    if not isinstance(entry, Mapping):
        raise InputError(f"{where}: expected a mapping, got {type(entry).__name__}")
    return make_configuration(space, entry, where)
