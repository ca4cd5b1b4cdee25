"""The pipeline file: a strict, typed description of the whole loop (``PIPELINE.yaml``).

Every section is a frozen pydantic model that forbids unknown keys, so a typo is one error
line naming the file and the key (``configs/pipelines/x.yaml: unknown key 'encoder.epoch';
valid keys: ...``), exactly as for the configuration files. Relative paths in the file are
relative to the file's folder, so a pipeline can be run from anywhere.

Sections (all but ``name`` and ``datasets`` optional; a missing section is a skipped stage):

``lookalikes``  generate MedMNIST look-alike npz files first (offline runs and tests)
``datasets``    what to ingest: MedMNIST flags, npz/HDF5 files or image folders
``encoder``     the fingerprint encoder: objective, latent size d, epochs, resources
``extract``     sharded extraction of every dataset (array job)
``index``       the FAISS index over the embeddings
``figures``     Figures 5/6 and the agglomerative clustering of dataset fingerprints (ARI)
``tasks``       learning tasks: dataset + metric
``recommend``   the strategy recommender's warm start for each task's AutoML study
``automl``      the study per task: trials, budgets, parallel trials
``export``      ONNX + torch.export program + model card of each task's best model
``deploy``      the Apptainer deployment directory (and optionally its Slurm job)
``monitor``     the nightly monitor schedule of each deployment
``execution``   how the stages run: a chain of Slurm jobs or one driver job
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pomlia_hpc.config import read_yaml
from pomlia_hpc.errors import ConfigError, NotFoundError
from pomlia_hpc.names import DATASET_NAME_MAX
from pomlia_hpc.pipeline.options import check_options, source_kind
from pomlia_hpc.pipeline.wording import pipeline_problem

_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
_DATASET_NAME = rf"^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{DATASET_NAME_MAX - 1}}}$"  # as `data add`
_AT = r"^([01]\d|2[0-3]):[0-5]\d$"
_WINDOW = r"^0*[1-9]\d*[mhd]$"  # above zero, as monitor run takes

#: What each pattern of the file accepts, in the words the CLI uses (error messages).
PATTERN_WORDS = {
    _NAME: "a name of letters, digits, '_', '.', '-' (at most 64, starting with a letter, "
    "digit or '_')",
    _DATASET_NAME: "a name of letters, digits, '_', '.', '-' (at most "
    f"{DATASET_NAME_MAX}, starting with a letter, digit or '_')",
    _AT: "a time of day HH:MM, 00:00-23:59 (e.g. 02:00)",
    _WINDOW: "a length of time above zero: a number and m, h or d (e.g. 1d, 12h)",
}


def _not_bool(value: Any) -> Any:
    """Refuse true/false where a number is expected (pydantic reads true as 1.0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


#: A whole number: ``true`` is not 1, nor ``4.0`` or ``"4"`` 4 (``latent_dim: true`` made d=1).
Int = Annotated[int, Strict()]
#: A number: an int, a float or a float YAML 1.1 reads as text (``1e-3``), never true/false.
Num = Annotated[float, BeforeValidator(_not_bool)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """Per-job resources; ``None`` keeps the cluster profile's value."""

    cpus_per_task: Int | None = Field(None, ge=1)
    gpus_per_node: Int | None = Field(None, ge=0)
    mem_gb: Num | None = Field(None, gt=0)
    time_min: Int | None = Field(None, ge=1)

    def as_overrides(self) -> dict[str, Any] | None:
        """The set keys, as :func:`pomlia_hpc.cluster.resources.with_overrides` takes them."""
        out = {k: v for k, v in self.model_dump().items() if v is not None}
        return out or None


class Lookalikes(_Strict):
    """Generate MedMNIST look-alikes into ``out`` (relative: inside the workspace)."""

    out: str = "raw-lookalikes"
    scale: Num = Field(0.01, gt=0, le=1)
    size: Literal[28, 64] = 28
    seed: Int = 0
    flags: tuple[str, ...] | None = None


class DatasetSpec(_Strict):
    """One dataset: exactly one of ``medmnist``, ``file``, ``folder``."""

    name: str = Field(pattern=_DATASET_NAME)
    medmnist: str | None = None
    file: str | None = None
    folder: str | None = None
    size: Literal[28, 64, 128, 224] = 28
    root: str | None = None
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("medmnist", "file", "folder") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"dataset '{self.name}' needs exactly one of medmnist, file, folder "
                f"(got {', '.join(given) or 'none'})"
            )
        return self


class EncoderSpec(_Strict):
    """The fingerprint encoder, trained as one job on ``datasets`` (default: all)."""

    name: str = Field(pattern=_NAME)
    datasets: tuple[str, ...] | None = None
    objective: str | None = None
    latent_dim: Int = Field(16, ge=1, le=4096)
    image_size: Literal[28, 64] = 28
    stem: Literal["imagenet", "small"] = "imagenet"
    epochs: Int = Field(10, ge=1)
    batch_size: Int = Field(128, ge=1)
    lr: Num = Field(1e-3, gt=0)
    max_images: Int | None = Field(None, ge=1)
    processes: Int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: Int = 0
    resources: Resources = Resources()


class ExtractSpec(_Strict):
    shards: Int | None = Field(None, ge=1)
    shard_rows: Int | None = Field(None, ge=1)
    batch_size: Int = Field(256, ge=1)
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _one(self) -> ExtractSpec:
        if self.shards is not None and self.shard_rows is not None:
            raise ValueError("give shards or shard_rows, not both")
        return self


class IndexSpec(_Strict):
    factory: str | None = None
    metric: Literal["l2", "ip"] = "l2"


class FiguresSpec(_Strict):
    """Figures 5 and 6 (latent scatter and means) and, with ``groups``, how well an
    agglomerative clustering of the dataset fingerprints recovers these groups (ARI)."""

    latent: bool = True
    groups: tuple[tuple[str, ...], ...] | None = None
    linkage: Literal["average", "complete", "single", "ward"] = "average"


class TaskSpec(_Strict):
    name: str = Field(pattern=_NAME)
    dataset: str
    metric: Literal["acc", "auc", "f1_macro"] = "acc"

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_in_any_case(cls, value: object) -> object:
        # As the CLI's --metric takes it (`AUC`, `F1_macro`).
        return value.strip().lower() if isinstance(value, str) else value


class RecommendSpec(_Strict):
    """Warm-start each task's study with the recommender's top ``k`` strategies (those the
    AutoML space can express). ``shipped_tables``: import the published MedMNIST tables into
    the knowledge base when it lacks them; ``sources``: restrict to these KB sources."""

    k: Int = Field(3, ge=1)
    max_gpu_hours: Num | None = Field(None, gt=0)
    sources: tuple[str, ...] | None = None
    shipped_tables: bool = True


class AutoMLSpec(_Strict):
    """The AutoML study of each task. ``use_encoder``: also offer trials that start from the
    fingerprint encoder's weights (a ResNet-18, whatever ``archs`` lists); left out, it is on
    only when ``archs`` is left out too, so a file that names its architectures gets those."""

    # At most as `automl run` takes (STUDY_COUNT_MAX): the dry run passed 10**20 trials.
    trials: Int = Field(20, ge=1, le=1_000_000)
    max_epochs: Int = Field(9, ge=1, le=1_000_000)
    min_epochs: Int = Field(1, ge=1, le=1_000_000)
    parallel: Int = Field(2, ge=1, le=1_000_000)
    optimizer: Literal["smac", "random"] = "smac"
    archs: tuple[str, ...] | None = None
    use_encoder: bool = True
    extra_data: bool = False
    seed: Int = Field(0, ge=0, le=2**32 - 1)  # numpy's 32 bits, as `automl run --seed`
    resources: Resources = Resources()

    @model_validator(mode="before")
    @classmethod
    def _encoder_default(cls, data: Any) -> Any:
        # Resolved here rather than when the study is made, so the stage key of a file that
        # leaves both out stays what it was when the default was always true.
        if isinstance(data, dict) and "use_encoder" not in data:
            data = {**data, "use_encoder": data.get("archs") is None}
        return data


class ExportSpec(_Strict):
    enabled: bool = True


class DeploySpec(_Strict):
    enabled: bool = True
    submit: bool = False


class MonitorSpec(_Strict):
    """The nightly monitor of each deployed model: at ``at`` (HH:MM, cluster time), over the
    last ``window`` of predictions; ``on_alarm``: a shell command run on an alarm (e.g.
    ``pomlia loop run SLOT --executor slurm``)."""

    at: str = Field("02:00", pattern=_AT)
    window: str = Field("1d", pattern=_WINDOW)
    on_alarm: str | None = None
    enabled: bool = True

    @field_validator("at", mode="before")
    @classmethod
    def _at_unquoted(cls, value: object) -> object:
        # YAML reads an unquoted 2:00 as 120 (base 60): "expected text (got 120)" named a
        # number the user never wrote.
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f"read as the number {value} (YAML takes an unquoted H:MM as a number): "
                'expected a time of day in quotes, e.g. at: "02:00"'
            )
        return value


#: A stage or driver job's resources where ``execution.resources`` does not say (GB, minutes).
DRIVER_RESOURCES = Resources(cpus_per_task=1, mem_gb=4, time_min=24 * 60)


class DriverSpec(_Strict):
    """How the stages run on a Slurm profile: ``chain`` = one job per stage chained with
    ``afterok`` dependencies; ``driver`` = one requeue-safe job that runs the stages in order.
    Local profiles always run the stages in the calling process."""

    mode: Literal["chain", "driver"] = "chain"
    resources: Resources = DRIVER_RESOURCES

    @field_validator("resources")
    @classmethod
    def _keep_defaults(cls, res: Resources) -> Resources:
        """Keys not given keep the defaults above (``{mem_gb: 64}`` keeps 1 CPU and
        24 h), not the cluster profile's values (a 30 min limit would end every stage)."""
        given = {k: v for k, v in res.model_dump().items() if v is not None}
        return DRIVER_RESOURCES.model_copy(update=given)


class Assumptions(_Strict):
    """Throughputs (images/s per GPU) behind the dry run's GPU-hour estimate.

    The encoder's (an epoch of the default contrastive objective) and the extraction's (28 px)
    are measured on one NVIDIA H200 by ``scripts/gpu_check.sh`` (docs/BENCHMARKS.md, "GPU
    check"); other cards, sizes and objectives differ. The classifier's is an assumption: no
    AutoML trial has run on a GPU yet."""

    train_images_per_s: Num = Field(2797.0, gt=0)
    extract_images_per_s: Num = Field(62244.0, gt=0)
    classifier_images_per_s: Num = Field(5000.0, gt=0)


#: How YAML and pydantic spell true (``use_encoder: yes`` is asked for too).
_TRUE = frozenset({"true", "1", "yes", "on", "y", "t"})


class PipelineSpec(_Strict):
    """The whole pipeline file."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    lookalikes: Lookalikes | None = None
    datasets: tuple[DatasetSpec, ...] = Field(min_length=1)
    encoder: EncoderSpec | None = None
    extract: ExtractSpec | None = None
    index: IndexSpec | None = None
    figures: FiguresSpec | None = None
    tasks: tuple[TaskSpec, ...] = ()
    recommend: RecommendSpec | None = None
    automl: AutoMLSpec | None = None
    export: ExportSpec | None = None
    deploy: DeploySpec | None = None
    monitor: MonitorSpec | None = None
    execution: DriverSpec = DriverSpec()
    estimate: Assumptions = Assumptions()
    #: Folder of the pipeline file; relative paths in it are resolved against this.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    #: The file (or what stands for it) that errors found after parsing name.
    _source: str = PrivateAttr(default="the pipeline file")

    @field_validator("datasets", "tasks")
    @classmethod
    def _unique(cls, v: tuple[DatasetSpec | TaskSpec, ...], info: Any) -> Any:
        # Two tasks of one name would be registered as NAME and NAME-<version>, silently.
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            what = "dataset" if info.field_name == "datasets" else "task"
            raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")
        return v

    @field_validator("datasets")
    @classmethod
    def _options(cls, v: tuple[DatasetSpec, ...]) -> tuple[DatasetSpec, ...]:
        # Here, not in the data stage: ingest would convert them as command-line values.
        for i, d in enumerate(v):
            kind = source_kind(d.medmnist, d.file, d.folder)
            check_options(f"datasets.{i}.options", d.name, kind, d.options)
        return v

    @model_validator(mode="before")
    @classmethod
    def _encoder_asked(cls, data: Any) -> Any:
        # Before validation: automl fills in use_encoder, so only the file says it was asked.
        if not isinstance(data, dict) or data.get("encoder") is not None:
            return data
        automl = data.get("automl")
        asked = [
            k
            for k in ("use_encoder", "extra_data")
            if isinstance(automl, dict) and str(automl.get(k)).lower() in _TRUE
        ]
        if asked:
            raise ValueError(
                f"automl.{' and automl.'.join(asked)}: true needs an 'encoder' section "
                "(the encoder's weights and fingerprint index are what they use)"
            )
        return data

    @model_validator(mode="after")
    def _references(self) -> PipelineSpec:
        known = {d.name for d in self.datasets}
        refs: list[tuple[str, str]] = [(f"tasks.{t.name}.dataset", t.dataset) for t in self.tasks]
        if self.encoder and self.encoder.datasets:
            refs += [("encoder.datasets", d) for d in self.encoder.datasets]
        for group in self.figures.groups if self.figures and self.figures.groups else ():
            refs += [("figures.groups", d) for d in group]
        for where, ref in refs:
            if dataset_name(ref) not in known:
                raise ValueError(
                    f"{where}: dataset '{ref}' is not declared under datasets "
                    f"(declared: {', '.join(sorted(known))})"
                )
        for section in ("extract", "index", "figures"):
            if getattr(self, section) is not None and self.encoder is None:
                raise ValueError(f"section '{section}' needs an 'encoder' section")
        if self.automl is not None and not self.tasks:
            raise ValueError("section 'automl' needs at least one entry under 'tasks'")
        for section in ("recommend", "export"):
            if getattr(self, section) is not None and self.automl is None:
                raise ValueError(f"section '{section}' needs an 'automl' section")
        # A stage whose section says enabled: false does not run: one that reads its outputs
        # failed at its own turn ("stage 'export' has not finished"), after AutoML had run.
        for section, needed in (("deploy", "export"), ("monitor", "deploy")):
            if not _on(getattr(self, section)):
                continue
            if getattr(self, needed) is None:
                raise ValueError(f"section '{section}' needs an '{needed}' section")
            if not _on(getattr(self, needed)):
                raise ValueError(
                    f"section '{section}' needs the '{needed}' stage, which '{needed}.enabled: "
                    f"false' turns off (set {section}.enabled: false too, or enable {needed})"
                )
        return self

    @property
    def source(self) -> str:
        """The pipeline file, as errors found after parsing name it."""
        return self._source

    def path(self, value: str) -> Path:
        """``value`` as a path: absolute, or relative to the pipeline file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self._base_dir / p).resolve()


def _on(section: Any) -> bool:
    """Whether a section is given and not turned off (``enabled: false``)."""
    return section is not None and bool(getattr(section, "enabled", True))


def dataset_name(ref: str) -> str:
    """The data set entry a reference names: ``name`` of ``name@version`` (or ``name``)."""
    return ref.split("@")[0]


def parse_pipeline(data: dict[str, Any], source: str, base_dir: Path) -> PipelineSpec:
    """Validate ``data`` (the YAML mapping) into a :class:`PipelineSpec`; one error line
    naming ``source``, the key and, in words, what it takes."""
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        why = pipeline_problem(exc, PipelineSpec, data, PATTERN_WORDS)
        raise ConfigError(f"{source}: {why}") from exc
    spec._base_dir = base_dir
    spec._source = source
    return spec


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read and validate a pipeline file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise NotFoundError(f"pipeline file {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"pipeline file {p} is a folder: expected a YAML file")
    return parse_pipeline(read_yaml(p), str(p), p.resolve().parent)
