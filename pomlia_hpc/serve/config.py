"""Server settings: a YAML file (``pomlia serve --config serve.yaml``) and/or CLI flags.

Example ``serve.yaml``::

    host: 0.0.0.0
    port: 8000
    max_batch: 32          # images per model call; 1 turns dynamic batching off
    max_wait_ms: 5         # how long the first request of a batch waits for company
    max_upload_mb: 16
    max_buffered_mb: 256   # upload bytes all requests in progress may hold together (503 beyond)
    body_deadline_s: 60    # time for a whole request body (408 beyond)
    graceful_timeout_s: 3  # drain on SIGTERM; keep below Slurm's KillWait
    token_file: ~/.pomlia/serve.token   # or env POMLIA_SERVE_TOKEN
    keep_inputs: false     # store every decoded input next to the log (opt-in)
    inputs_quota_mb: 1024  # oldest kept inputs removed beyond this
    inputs_retention_days: 30
    log_retention_days: 90 # prediction log files: delete those older (default: keep all)
    log_retry_s: 30        # after a failed log write (full disk): try the disk again this often
    peer_read_interval_s: 1  # read the other servers' log files of the deployment this often
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pomlia_hpc.config import problem, read_yaml
from pomlia_hpc.errors import ConfigError

#: Ceilings of the settings (none is near a real use): a day for a duration, s; 1,000 years
#: for a retention, days; 1 PiB for a size, MiB.
DAY_S = 86400.0
MAX_DAYS = 365_000.0
MAX_MB = float(1 << 30)
#: Default cap on the request body bytes all uploads in progress hold, MiB (16 uploads of 16).
DEFAULT_MAX_BUFFERED_MB = 256.0


class ServeConfig(BaseModel):
    """Everything ``pomlia serve`` can be told. Times in ms or s as named; sizes in MiB/px."""

    # No inf or NaN anywhere (`graceful_timeout_s: .inf` was a traceback at start, an
    # infinite `peer_read_interval_s` killed the peer reader); every duration and size has a
    # ceiling far above any real use, so no value overflows where it becomes an int or a time.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    backend: Literal["auto", "onnx", "torch"] = "auto"
    threads: int | None = Field(
        None, ge=1, le=4096, description="inference threads (default: cores)"
    )
    max_batch: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_upload_mb: float = Field(16.0, gt=0, le=1024)
    max_side_px: int = Field(4096, ge=8, le=1 << 20)
    max_images: int = Field(256, ge=1, le=1 << 20)
    token_file: Path | None = None
    log_dir: Path | None = Field(None, description="default <home>/logs/predictions/<model>")
    log_fsync: bool = True
    deployment_id: int | None = None
    graceful_timeout_s: float = Field(
        3.0,
        gt=0,
        le=DAY_S,
        description=(
            "longest wait for in-flight requests on SIGTERM, s (rounded up to whole s); "
            "body reads still waiting 1 s before it ends get 503. Keep it below Slurm's "
            "KillWait"
        ),
    )
    address_file: Path | None = None
    keep_inputs: bool = Field(False, description="store every decoded input (see serve.inbox)")
    inputs_quota_mb: float = Field(
        1024.0, gt=0, le=MAX_MB, description="kept inputs: byte quota, MiB"
    )
    inputs_retention_days: float = Field(
        30.0, gt=0, le=MAX_DAYS, description="kept inputs: retention, days"
    )
    log_retention_days: float | None = Field(
        None,
        ge=1,
        le=MAX_DAYS,
        description=(
            "prediction log files last written longer ago than this are deleted at rotation, "
            "days (default: none, every file is kept); never those the feedback window needs"
        ),
    )
    log_retry_s: float = Field(
        30.0,
        gt=0,
        le=DAY_S,
        description=(
            "after a failed prediction-log write (a full disk or quota), how often the server "
            "tries the disk again, s; until a try succeeds it is not ready and refuses "
            "predictions (503)"
        ),
    )
    deployment_created: datetime | None = Field(
        None,
        description=(
            "when the deployment was created (set by `pomlia serve` from the registry): "
            "older log files are not read at start-up"
        ),
    )
    feedback_window: int = Field(
        200_000, ge=1, le=10**8, description="prediction ids remembered for feedback (404 beyond)"
    )
    peer_read_interval_s: float = Field(
        1.0,
        ge=0,
        le=DAY_S,
        description=(
            "how often the server reads what other servers of its deployment logged in its "
            "log folder, s, so a feedback reads only what they logged since (0: only when a "
            "feedback comes)"
        ),
    )
    max_head_kb: float = Field(
        32.0, gt=0, le=1 << 20, description="request line + headers, KiB (431)"
    )
    max_headers: int = Field(100, ge=1, le=1 << 20, description="header fields per request (431)")
    head_timeout_s: float = Field(
        10.0, gt=0, le=DAY_S, description="time for a request's head, s (408)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=DAY_S, description="longest wait for more body bytes, s (408)"
    )
    body_deadline_s: float = Field(
        60.0, gt=0, le=DAY_S, description="time for a request's whole body after its head, s (408)"
    )
    max_buffered_mb: float | None = Field(
        None,
        gt=0,
        le=MAX_MB,
        description=(
            "request body bytes all requests in progress may hold together, MiB (503); "
            "default 256, or max_upload_mb if larger. Each upload is held once (a multipart "
            "body's files are split out of it and it is freed); decoded pixels and model "
            "activations are not counted"
        ),
    )
    watch_interval_s: float = Field(
        1.0,
        ge=0,
        le=DAY_S,
        description="how often a server started on a link checks it, s (0: never)",
    )

    @model_validator(mode="after")
    def _one_upload_fits(self) -> ServeConfig:
        # A cap below one upload would refuse every large upload with 503, however idle.
        if self.max_buffered_mb is not None and self.max_buffered_mb < self.max_upload_mb:
            raise ValueError(
                f"max_buffered_mb ({self.max_buffered_mb:g}) must be at least max_upload_mb "
                f"({self.max_upload_mb:g}): it caps the bytes of all uploads in progress"
            )
        return self

    @model_validator(mode="after")
    def _log_outlives_inputs(self) -> ServeConfig:
        # The harvest joins each label with its kept input: a log pruned before the inputs
        # would drop labels whose images are still there.
        days = self.log_retention_days
        if days is not None and self.keep_inputs and days < self.inputs_retention_days:
            raise ValueError(
                f"log_retention_days ({days:g}) must be at least inputs_retention_days "
                f"({self.inputs_retention_days:g}) when inputs are kept: the harvest needs the "
                "labels of every kept input"
            )
        return self

    @property
    def log_retention_s(self) -> float | None:
        d = self.log_retention_days
        return None if d is None else d * 86400.0

    @property
    def inputs_quota_bytes(self) -> int:
        return int(self.inputs_quota_mb * 1024 * 1024)

    @property
    def max_head_bytes(self) -> int:
        return int(self.max_head_kb * 1024)

    @property
    def max_buffered_bytes(self) -> int:
        mb = self.max_buffered_mb
        if mb is None:  # the default follows a larger upload limit given alone
            mb = max(DEFAULT_MAX_BUFFERED_MB, self.max_upload_mb)
        return int(mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def graceful_timeout_whole_s(self) -> int:
        """``graceful_timeout_s`` rounded up: uvicorn takes whole seconds, where 0 or None
        would mean waiting forever."""
        return math.ceil(self.graceful_timeout_s)


def load_serve_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ServeConfig:
    """Read ``path`` (if given) and apply ``overrides`` (``None`` values are ignored), the
    options of ``pomlia serve`` by their setting's name: a bad value of one is said naming its
    option (``--log-retention-days``), not a setting the user never wrote."""
    data: dict[str, Any] = {}
    source = "serve settings"
    if path is not None:
        source = str(path)
        data.update(read_yaml(Path(path)))  # a key given twice is refused, naming the file
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        option = next((k for k in given if k in bad), None)
        where = source if option is None else f"serve option --{option.replace('_', '-')}"
        raise ConfigError(f"{where}: {problem(ServeConfig, exc)}") from exc
