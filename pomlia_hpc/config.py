"""Typed configuration: YAML files in ``configs/`` loaded into frozen pydantic models.

Precedence, lowest first: ``configs/defaults.yaml`` → ``<home>/pomlia.yaml`` (if present) →
environment (``POMLIA_HOME``, ``POMLIA_DB_URL``, ``POMLIA_CLUSTER``) → explicit overrides
(CLI flags). A key that a model does not know is an error that names the file, the key and the
valid keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pomlia_hpc.errors import ConfigError, InputError, NotFoundError, PomliaError

CONFIG_DIR_ENV = "POMLIA_CONFIG_DIR"


def config_dir() -> Path:
    """The directory holding ``defaults.yaml`` and ``cluster/*.yaml``: ``POMLIA_CONFIG_DIR``
    when set (a container's copy of ``configs/``), else the ``configs/`` beside the package."""
    env = os.environ.get(CONFIG_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


def config_dir_source() -> str:
    """Where :func:`config_dir` came from, for an error about a file missing there: `` (set
    by POMLIA_CONFIG_DIR)`` when the variable chose it, else nothing."""
    return f" (set by {CONFIG_DIR_ENV})" if os.environ.get(CONFIG_DIR_ENV) else ""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterProfile(_Strict):
    """Resources and scheduler settings for one cluster (a file in ``configs/cluster/``)."""

    backend: Literal["local", "debug", "slurm"] = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float = Field(2.0, gt=0)
    time_min: int = Field(60, ge=1)
    max_array_size: int = Field(1000, ge=1)
    max_parallel: int = Field(2, ge=1)
    signal_delay_s: int = Field(90, ge=0)
    setup: tuple[str, ...] = ()


class WorkspaceConfig(_Strict):
    home: Path = Path("./pomlia-home")


class RegistryConfig(_Strict):
    url: str | None = None
    sqlite_busy_timeout_s: float = Field(60.0, gt=0)


class ClusterConfig(_Strict):
    profile: str = "local"
    #: Seconds a listing (``jobs list``, ``jobs show``, ``status``) waits for ``sacct`` before
    #: it shows the states as last recorded; drivers that must know wait longer.
    list_sacct_timeout_s: float = Field(15.0, gt=0)


class Settings(_Strict):
    """Everything read from configuration, after all overrides."""

    workspace: WorkspaceConfig = WorkspaceConfig()
    registry: RegistryConfig = RegistryConfig()
    cluster: ClusterConfig = ClusterConfig()


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error in one line, where and what (PyYAML's own text spans several lines
    and quotes the source)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def _at(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last
    one silently, so ``latent_dim: 4`` followed by ``latent_dim: 9`` trained a d=9 encoder.
    Keys a merge (``<<: *base``) brings in may still be overridden."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Checked on the composed tree, once, before anything is built: building a mapping
        # that merges an anchored one rewrites that node in place (PyYAML's flatten_mapping),
        # so a check while building saw the merged keys as given twice.
        self.check_unique_keys(node)
        return super().construct_document(node)

    def check_unique_keys(self, root: yaml.Node) -> None:
        """Raise a ConstructorError naming both places (line and column, 1-based) of the
        first key given twice in one mapping of the tree under ``root``; merge keys (``<<``)
        are not keys of the mapping. Walks each node once (an alias reuses its anchor's)."""
        stack, visited = [root], set()
        while stack:
            node = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
            if not isinstance(node, yaml.MappingNode):
                continue
            seen: dict[Any, yaml.Mark] = {}
            for key_node, value_node in node.value:
                stack.extend((key_node, value_node))
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                    key_node, yaml.ScalarNode
                ):
                    continue  # a merge, or a collection as key (the base class refuses it)
                key = self.construct_object(key_node)  # by value: `1` and `0x1` are one key
                first = seen.setdefault(key, key_node.start_mark)
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        problem=f"key '{key}' is given twice in one mapping ({_at(first)} and "
                        f"{_at(key_node.start_mark)}); expected each key once",
                        problem_mark=key_node.start_mark,
                    )


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; any problem (a key given twice in one
    mapping too) is one :class:`ConfigError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    text = decode_utf8(raw, path)
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: builds no objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def decode_utf8(raw: bytes, path: Path) -> str:
    """The bytes of the YAML file ``path`` as text: UTF-8 (a byte-order mark is dropped), as
    YAML files are, whatever the locale says; anything else (a file saved as Latin-1: ``µm``
    in a comment) is one :class:`ConfigError` naming the file, the line and column (1-based)
    and the byte, not a traceback."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, column "
            f"{column}); expected a UTF-8 file (save it as UTF-8)"
        ) from exc


_M = TypeVar("_M", bound=BaseModel)


class Record(BaseModel):
    """Base of everything written to disk for another process to read (trial results, shard
    markers, index manifests, model cards, ...): unknown keys are refused and types are strict
    (no ``"3"`` for 3), so a damaged or foreign file fails loudly instead of being half read.
    Read one with :func:`read_record` (strict: JSON gives exact types); objects made in
    process are converted as usual (a numpy float is a float).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able data (what is written to disk)."""
        return self.model_dump(mode="json")


def validate_model(
    model: type[_M],
    data: Mapping[str, Any] | str | bytes,
    source: str,
    *,
    error: type[PomliaError] = ConfigError,
    strict: bool | None = None,
) -> _M:
    """Validate ``data`` (a mapping, or JSON text) into ``model``; turn pydantic's error into
    one ``error`` line that names ``source``, the key, what is wrong and the value given.
    ``strict``: no conversions (``"3"`` is not 3), whatever the model says."""
    try:
        if isinstance(data, str | bytes):
            return model.model_validate_json(data, strict=strict)
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise error(f"{source}: {problem(model, exc)}") from exc


def problem(model: type[BaseModel], exc: ValidationError) -> str:
    """What is wrong, in one phrase that names the key (``unknown key 'x'; valid keys: ...``,
    ``key 'x' is missing``, ``bad value for 'x': ...``), from ``model``'s validation error."""
    errors = exc.errors()
    # A misspelt key shows as "unknown key" and "missing key": the first says more. A missing
    # key before another key's bad value: the caller may word bad values better than pydantic
    # (the pipeline file's `name` pattern) and hands only missing or unknown keys here.
    err = next(
        (e for kind in ("extra_forbidden", "missing") for e in errors if e["type"] == kind),
        errors[0],
    )
    loc = ".".join(str(p) for p in err["loc"] if not _union_tag(p))
    if err["type"] == "missing":
        return f"key '{loc}' is missing"
    if err["type"] == "json_invalid":
        return f"not valid JSON ({err['msg']})"
    if err["type"] in ("model_type", "dict_type") and not loc:
        return "expected a JSON object at the top level"
    if err["type"] == "extra_forbidden":
        sub = _model_at(model, err["loc"][:-1])
        valid = ", ".join(sorted(sub.model_fields))
        return f"unknown key '{loc}'; valid keys: {valid}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "value_error":  # a cross-field check: its message names the keys
        where = f" in '{loc}'" if loc else ""
        return f"{msg}{where}"
    return f"bad value for '{loc}': {msg} (got {err.get('input')!r})"


def read_record(model: type[_M], path: str | Path, *, error: type[PomliaError] = InputError) -> _M:
    """The JSON file ``path`` as ``model``: a missing file is a :class:`NotFoundError`, an
    unreadable, malformed or mistyped one a single ``error`` line naming the file and key."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} does not exist") from exc
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from exc
    return validate_model(model, text, str(path), error=error, strict=True)


_TYPE_TAGS = frozenset({"int", "str", "float", "bool", "bytes", "none"})


def _union_tag(part: int | str) -> bool:
    """Whether a part of an error's location is pydantic's name of the union member that was
    tried (``int`` in ``label_index.int`` for ``int | list[int]``), not a key."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel]:
    """The model class that holds the key at ``loc`` (list indices and optional sections
    are looked through), for the list of valid keys in an error."""
    sub = model
    for part in loc:
        if isinstance(part, int) or str(part) not in sub.model_fields:
            continue
        found = _inner_model(sub.model_fields[str(part)].annotation)
        if found is not None:
            sub = found
    return sub


def _inner_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in get_args(ann):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    overrides: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """Load :class:`Settings` from defaults, the workspace file, environment and ``overrides``.

    ``overrides`` uses the nested layout of the YAML (``{"cluster": {"profile": "slurm"}}``);
    ``None`` values in it are ignored so CLI flags that were not given change nothing.
    """
    env = os.environ if env is None else env
    defaults_path = config_dir() / "defaults.yaml"
    if not defaults_path.is_file() and config_dir_source():
        # A wrong POMLIA_CONFIG_DIR read as a missing file of pomlia's own.
        raise ConfigError(
            f"{CONFIG_DIR_ENV} {config_dir()}: holds no defaults.yaml; expected the folder of "
            "pomlia's configs (defaults.yaml, cluster/*.yaml), or the variable unset"
        )
    data = read_yaml(defaults_path)
    validate_model(Settings, data, str(defaults_path))

    env_layer: dict[str, Any] = {}
    if env.get("POMLIA_HOME"):
        env_layer.setdefault("workspace", {})["home"] = env["POMLIA_HOME"]
    if env.get("POMLIA_DB_URL"):
        env_layer.setdefault("registry", {})["url"] = env["POMLIA_DB_URL"]
    if env.get("POMLIA_CLUSTER"):
        env_layer.setdefault("cluster", {})["profile"] = env["POMLIA_CLUSTER"]
    flag_layer = _drop_none(overrides or {})
    for layer, source in ((env_layer, "POMLIA_HOME"), (flag_layer, "--home")):
        if "home" in layer.get("workspace", {}):
            layer["workspace"]["home"] = expand_home(layer["workspace"]["home"], source)

    # The workspace file is found with the home that env/flags select.
    home = Path(
        _merge(_merge(data, env_layer), flag_layer).get("workspace", {}).get("home", "pomlia-home")
    ).expanduser()
    ws_file = home / "pomlia.yaml"
    if ws_file.is_file():
        ws_data = read_yaml(ws_file)
        validate_model(Settings, _merge(data, ws_data), str(ws_file))
        data = _merge(data, ws_data)
    data = _merge(_merge(data, env_layer), flag_layer)
    return validate_model(Settings, data, "settings (after environment and flags)")


def expand_home(value: str | Path, source: str) -> Path:
    """A workspace path as given in ``source`` (``POMLIA_HOME``, ``--home``), with ``~`` and
    environment variables (``$HOME``, ``${USER}``) expanded: systemd units and ``sbatch
    --export`` pass ``'$HOME/ws'`` unexpanded, which made a folder literally named ``$HOME``
    in the current directory. A variable that is not set is refused (:class:`ConfigError`)."""
    text = str(value)
    expanded = os.path.expandvars(Path(text).expanduser())
    if "$" in expanded:
        # `${NAME` without its brace is no variable (NAME may be set): a '$' left
        unset = re.search(r"\$(?:(\w+)|\{(\w+)\})", expanded)
        what = f"${unset.group(1) or unset.group(2)} is not set" if unset else "a '$' is left in it"
        raise ConfigError(
            f"{source} '{text}': {what}, so the path cannot be expanded; expected a path "
            "(set the variable, or write the path out)"
        )
    return Path(expanded)


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            inner = _drop_none(value)
            if inner:
                out[key] = inner
        elif value is not None:
            out[key] = value
    return out


def cluster_profiles() -> list[str]:
    """Names of the cluster profiles shipped in ``configs/cluster/``."""
    return sorted(p.stem for p in (config_dir() / "cluster").glob("*.yaml"))


def cluster_profile_ref(name_or_path: str) -> str:
    """``name_or_path`` as a process in another working folder must be given it: a path to a
    YAML file (``./prof.yaml``) made absolute against this process's working folder, a
    profile name (``slurm``) unchanged. A stage job starts elsewhere: a relative path there
    names another file, or none."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        return name_or_path
    return str(path.expanduser().absolute())


def load_cluster_profile(name_or_path: str, **overrides: Any) -> ClusterProfile:
    """Load a cluster profile by name (``configs/cluster/NAME.yaml``) or by path to a YAML file.

    ``overrides`` replace single keys (an unknown key is an error listing the valid ones).
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / "cluster" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(cluster_profiles()) or f"none in {config_dir()}{config_dir_source()}"
        raise ConfigError(
            f"cluster profile '{name_or_path}' not found at {path}; known profiles: {known}"
        )
    data = read_yaml(path)
    profile = validate_model(ClusterProfile, data, str(path))
    if overrides:
        profile = validate_model(
            ClusterProfile, {**data, **_drop_none(overrides)}, f"{path} (with overrides)"
        )
    return profile
