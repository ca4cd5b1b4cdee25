"""The state every command shares: the workspace the global options name and its registry,
opened on first use (:data:`STATE`), and the cluster profile an ``--executor`` value means."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pomlia_hpc.cli.console import err_console
from pomlia_hpc.config import load_cluster_profile, load_settings
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import remove_made_dirs
from pomlia_hpc.registry import Registry, RegistryMissingError
from pomlia_hpc.registry.relocate import home_note
from pomlia_hpc.workspace import Workspace, default_db_url


@dataclass
class Context:
    """What every command needs: the workspace and (opened lazily) the registry."""

    home: Path | None = None
    db_url: str | None = None
    cluster: str | None = None
    _registry: Registry | None = None

    @property
    def workspace(self) -> Workspace:
        settings = load_settings(
            {
                "workspace": {"home": self.home},
                "registry": {"url": self.db_url},
                "cluster": {"profile": self.cluster},
            }
        )
        ws = Workspace.from_settings(settings)
        if ws.home.exists() and not ws.home.is_dir():
            # Otherwise every command said "no registry at <file>/registry.db" (exit 4) and
            # pointed at `pomlia init`, which cannot make a folder where a file is.
            raise InputError(
                f"workspace {ws.home} is a file, not a folder: point --home (or POMLIA_HOME) "
                "at a workspace folder, or at a path that does not exist yet for `pomlia init`"
            )
        return ws

    def registry(self, *, create: bool = False, check_home: bool = True) -> Registry:
        """The workspace's registry. Only ``create=True`` (``pomlia init``, ``pomlia registry
        recover``) makes a new one; otherwise a missing registry is an error that says where
        it looked and, if dataset stores exist, how to get them back. The workspace's own
        SQLite registry whose paths name another workspace folder is an error when that
        folder is gone (a moved workspace), a warning when it exists (a copy);
        ``check_home=False`` skips that, for ``pomlia registry relocate``, which repairs it."""
        if self._registry is None:
            ws = self.workspace
            try:
                self._registry = Registry.open(
                    ws.db_url,
                    busy_timeout_s=ws.sqlite_busy_timeout_s,
                    create=create,
                    settings_file=ws.home / "pomlia.yaml",
                )
            except RegistryMissingError as exc:
                if exc.hint is not None:  # the registry's own advice (a database to create)
                    raise RegistryMissingError(
                        f"{exc.message} (workspace {ws.home})", hint=exc.hint
                    ) from exc
                raise RegistryMissingError(
                    f"{exc.message} (workspace {ws.home}); {_missing_hint(ws)}"
                ) from exc
            note = self._registry.upgrade_note()
            if note is not None:  # a schema change is never silent (README, "Upgrading")
                err_console.print(note, highlight=False, markup=False, soft_wrap=True)
            # before any reader fails on a path of the old place; only for the workspace's
            # own SQLite file: a PostgreSQL registry (or another --db-url) is often shared by
            # several users' workspaces, whose newest store may name another user's home
            if check_home and ws.db_url == default_db_url(ws.home):
                self._check_home(self._registry, ws.home)
        return self._registry

    def _check_home(self, registry: Registry, home: Path) -> None:
        try:
            warning = home_note(registry, home)
        except BaseException:
            self._registry = None  # the next call checks again
            registry.dispose()
            raise
        if warning is not None:
            err_console.print(warning, highlight=False, markup=False, soft_wrap=True)

    def prepared(self, *, create: bool = False) -> Registry:
        """The workspace's folder layout, then its registry (``create`` as in
        :meth:`registry`), for commands that write into the workspace. If the registry cannot
        be opened (a bad URL, no registry, a server that refuses), the folders this call made
        are removed again, never ones that existed before: a refused command leaves no empty
        workspace skeleton behind."""
        made = self.workspace.create()
        try:
            return self.registry(create=create)
        except BaseException:
            remove_made_dirs(made)
            raise


STATE = Context()


def _missing_hint(ws: Workspace) -> str:
    """What to do when there is no registry at ``ws.db_url``. When the workspace's own
    ``registry.db`` exists, the URL is mistyped (``sqlite:///registy.db``, read against the
    workspace folder): name the right one; `registry recover` would make a second, partial
    registry. Recover is offered only when the workspace has dataset stores and no registry
    file at all."""
    from pomlia_hpc.data.recover import store_dirs

    default = ws.home / "registry.db"
    if ws.db_url != default_db_url(ws.home) and default.is_file() and default.stat().st_size:
        return (
            f"the workspace's registry is {default}; did you mean --db-url "
            f"{default_db_url(ws.home)}? (or unset POMLIA_DB_URL and the workspace file's "
            "registry.url, to use it)"
        )
    n = len(store_dirs(ws))
    if n:
        return (
            f"{n} dataset store(s) exist under {ws.stores}: run `pomlia registry recover` to "
            "create the registry and register them again from their own metadata"
        )
    return "run `pomlia init` to create one (or point --home / --db-url at the right workspace)"


def profile_for(executor: str | None) -> str:
    """An ``--executor`` value as a cluster profile: ``None`` (not given) is the configured
    profile (``--cluster``, ``POMLIA_CLUSTER``, the workspace's ``pomlia.yaml``; ``local`` if
    none), ``local`` and profile names are themselves, and ``slurm`` is the configured profile,
    which must then be a Slurm one."""
    if executor is None:
        # The global --cluster must reach the jobs: a fixed 'local' default silently ran a
        # `pomlia --cluster slurm-local automl run` on this machine.
        return STATE.workspace.cluster_profile
    if executor != "slurm":
        return executor
    configured = STATE.workspace.cluster_profile
    if load_cluster_profile(configured).backend == "slurm":
        return configured
    raise InputError(
        f"--executor slurm: the configured cluster profile '{configured}' is not a Slurm "
        "profile; pass --cluster PROFILE (e.g. haicore, slurm-local) or --executor PROFILE"
    )
