"""Where things live: one workspace directory (``POMLIA_HOME``) per project.

Layout::

    <home>/
      registry.db          SQLite registry (unless a PostgreSQL URL is configured)
      pomlia.yaml          optional workspace config (overrides configs/defaults.yaml)
      stores/              Zarr dataset stores, one per dataset version
      embeddings/          per-encoder embedding arrays
      indexes/             FAISS indexes
      models/              encoders, classifiers, exported bundles
      runs/                AutoML studies and trial checkpoints
      jobs/                submitit job folders (scripts, logs, pickles)
      logs/                prediction / feedback logs from servers
      reports/             monitoring reports
      tmp/                 staging area; renamed into place when complete
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from pomlia_hpc.config import Settings, load_settings
from pomlia_hpc.errors import ConfigError
from pomlia_hpc.files import make_dirs, remove_made_dirs

SUBDIRS = (
    "stores",
    "embeddings",
    "indexes",
    "models",
    "runs",
    "jobs",
    "logs",
    "reports",
    "tmp",
)


def default_db_url(home: Path) -> str:
    """The registry a workspace uses when no URL is given: SQLite ``registry.db`` in it."""
    return f"sqlite:///{home / 'registry.db'}"


def resolve_db_url(url: str, home: Path) -> str:
    """``url`` with a relative SQLite path (``sqlite:///registry.db``) made absolute against
    the workspace folder ``home``, whichever setting gave it (``pomlia.yaml``,
    ``POMLIA_DB_URL``, ``--db-url``): read against the current folder, a pipeline stage or
    Slurm job started in another folder opened (and created) another, empty registry.
    Environment variables in a SQLite path are expanded (``sqlite:///$HOME/ws/registry.db``
    as a systemd unit or ``sbatch --export`` passes it; one not set is a
    :class:`ConfigError`), as in ``POMLIA_HOME``. Any other URL is returned as it is (those
    the registry refuses, such as ``sqlite://`` or a ``~`` path, are refused with their own
    message when it opens them)."""
    try:
        parsed = make_url(url)
    except Exception:  # refused with the form expected when the registry opens it
        return url
    database = parsed.database
    if (
        parsed.get_backend_name() != "sqlite"
        or parsed.host
        or parsed.query
        or not database
        or database == ":memory:"
        or database.startswith(("file:", "~"))
    ):
        return url
    path = os.path.expandvars(database)
    if "$" in path:  # no password in a SQLite URL: it may be shown as it is
        # `${NAME` without its brace is no variable (NAME may be set): a '$' left
        unset = re.search(r"\$(?:(\w+)|\{(\w+)\})", path)
        what = f"${unset.group(1) or unset.group(2)} is not set" if unset else "a '$' is left in it"
        raise ConfigError(
            f"registry URL '{url}': {what}, so the SQLite path cannot be expanded; expected "
            "a path (set the variable, or write the path out)"
        )
    # not normalised: a `..` after a linked folder means that folder's parent
    path = str(home / path)  # an absolute path stays as it is
    if path == database:
        return url
    return parsed.set(database=path).render_as_string(hide_password=False)


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace and the registry URL it uses."""

    home: Path
    db_url: str
    cluster_profile: str
    sqlite_busy_timeout_s: float = 60.0
    #: Seconds a listing waits for ``sacct`` (settings' ``cluster.list_sacct_timeout_s``).
    list_sacct_timeout_s: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Workspace:
        """Build the workspace from loaded settings (defaults + env + flags)."""
        s = settings or load_settings()
        home = s.workspace.home.expanduser().resolve()
        url = resolve_db_url(s.registry.url, home) if s.registry.url else default_db_url(home)
        return cls(
            home=home,
            db_url=url,
            cluster_profile=s.cluster.profile,
            sqlite_busy_timeout_s=s.registry.sqlite_busy_timeout_s,
            list_sacct_timeout_s=s.cluster.list_sacct_timeout_s,
        )

    def path(self, *parts: str) -> Path:
        """A path inside the workspace."""
        return self.home.joinpath(*parts)

    @property
    def stores(self) -> Path:
        return self.home / "stores"

    @property
    def jobs(self) -> Path:
        return self.home / "jobs"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    def create(self) -> list[Path]:
        """Create the directory layout (idempotent); return the folders this call made,
        outermost first (:func:`~pomlia_hpc.files.remove_made_dirs` undoes them for a
        command that fails later). A home that cannot hold the layout (a file, a folder that
        cannot be written) is one :class:`ConfigError`, and nothing made is left behind."""
        made: list[Path] = []
        for sub in SUBDIRS:
            try:
                made += make_dirs(self.home / sub)
            except OSError as exc:
                remove_made_dirs(made)
                raise ConfigError(
                    f"workspace {self.home}: cannot create {sub}/ ({exc.strerror or exc}); "
                    "expected a folder that can be written (--home / POMLIA_HOME)"
                ) from exc
        return made

    @property
    def exists(self) -> bool:
        return all((self.home / sub).is_dir() for sub in SUBDIRS)
