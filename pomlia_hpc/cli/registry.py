"""``pomlia registry``: recover the image DB from the dataset stores on disk; upgrade or
downgrade the registry's schema; relocate a workspace that moved."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pomlia_hpc.cli.app import STATE, app, console
from pomlia_hpc.cli.pathopts import path_option
from pomlia_hpc.registry import Registry
from pomlia_hpc.registry.relocate import relocate as relocate_paths

registry_app = typer.Typer(
    help=(
        "The registry database: recover it from the stores, upgrade or downgrade its schema, "
        "relocate a workspace that moved."
    )
)
app.add_typer(registry_app, name="registry")


@registry_app.command("recover")
def recover() -> None:
    """Register every dataset store under <home>/stores/ that the registry does not list,
    from the store's own metadata (creates the registry if it is missing): each version with
    the parent its metadata names. What a dataset's plain name means is left as it was; for a
    dataset recovered whole it is the version ingested last. Encoders, models and AutoML runs
    are not in the stores and are not recovered."""
    from pomlia_hpc.data.recover import recover_stores

    ws = STATE.workspace
    reg = STATE.prepared(create=True)
    res = recover_stores(ws, reg)
    for ref in res.registered:
        console.print(f"registered {ref}")
    for path, why in res.skipped:
        console.print(f"[yellow]skipped {escape(str(path))}: {escape(why)}[/]")
    console.print(
        f"{len(res.registered)} dataset version(s) registered, {len(res.known)} already "
        f"known, {len(res.skipped)} skipped; registry {reg.display_url()}"
    )


@registry_app.command("upgrade")
def upgrade() -> None:
    """Bring the registry's schema to this pomlia's newest revision.

    Any command does that on opening the registry (and says so on stderr); this one does only
    that, for a user with write access when the everyday users may only read. Back the
    registry up and stop older pomlia processes (`loop watch`, pipeline drivers) first: see
    README, "Upgrading"."""
    reg = STATE.registry()  # opening upgrades (and prints the line saying so)
    console.print(
        f"registry {reg.display_url()}: schema at revision {reg.schema_revision()} "
        "(this pomlia's newest)",
        highlight=False,
    )


@registry_app.command("downgrade")
def downgrade(
    revision: Annotated[
        str,
        typer.Argument(help="The schema revision to go back to, e.g. 0007.", show_default=False),
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Downgrade without asking.")] = False,
) -> None:
    """Take the registry's schema back to REVISION, for going back to an older pomlia.

    REVISION is the newest migration of the older release (the last file in its
    pomlia_hpc/registry/migrations/versions/, e.g. 0007 for 511a219). Each migration's
    downgrade runs in turn; asks first (or --yes). What the newer revisions' columns and
    tables held is lost, and the recommender's run summaries are emptied (the older pomlia
    builds them again). A migration without a downgrade is refused, with nothing changed;
    all of them run in one transaction, so one that fails changes nothing either.
    Run it with the newer pomlia, then use only the older one: any command of the newer one
    upgrades the schema again."""
    ws = STATE.workspace
    reg = Registry.open(
        ws.db_url, busy_timeout_s=ws.sqlite_busy_timeout_s, migrate=False, create=False
    )
    try:
        current = reg.check_downgrade(revision)  # a refusal before the question
        if not yes and not typer.confirm(
            f"Downgrade registry {reg.display_url()} from schema revision {current} to "
            f"{revision}? Data of the newer revisions is lost.",
            default=False,
        ):
            console.print("nothing changed")
            raise typer.Exit(1)
        was = reg.downgrade(revision)
        console.print(
            f"registry {reg.display_url()}: schema downgraded {was} -> {revision}; use the "
            "pomlia that needs it from now on (any command of this one upgrades it again)",
            highlight=False,
        )
    finally:
        reg.dispose()


@registry_app.command("relocate")
def relocate(
    old: Annotated[
        Path | None,
        path_option(
            "--from",
            help=(
                "The folder the workspace was in (absolute). Without it: read off the "
                "registry's newest dataset store path, for the workspace's own SQLite registry "
                "only (a shared one may name other workspaces)."
            ),
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be rewritten; change nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=(
                "Relocate a registry that is not a file inside the workspace (PostgreSQL, "
                "--db-url) while the old folder still exists and uses it too."
            ),
        ),
    ] = False,
) -> None:
    """After `mv` or `cp -a` of a whole workspace: make the registry and the workspace's
    records name the new folder (--home / POMLIA_HOME) instead of the old one.

    Rewrites every path under the old folder in the registry (stores, encoders, embeddings,
    models, bundles, reports, studies, jobs) and in the workspace's JSON records (studies,
    trials, SMAC state, index manifests, cards), and points the slots' `current` links anew.
    Moves and copies no data. Stop servers, drivers and schedules of the workspace first;
    deployment folders and nightly schedules name the old folder until written again
    (`pomlia deploy MODEL`, `pomlia monitor schedule MODEL --replace`)."""
    ws = STATE.workspace
    reg = STATE.registry(check_home=False)
    rel = relocate_paths(reg, ws.home, old=old, dry_run=dry_run, force=force)
    if rel.old == rel.new:
        console.print(f"the registry already names this workspace ({ws.home}); nothing to do")
        return
    verb = "would rewrite" if dry_run else "rewrote"
    rows = ", ".join(f"{table} {n}" for table, n in rel.rows.items()) or "none"
    console.print(f"{rel.old} -> {rel.new}", highlight=False)
    console.print(f"{verb} registry rows: {rows}", highlight=False)
    console.print(
        f"{verb} {len(rel.files)} workspace record(s), {len(rel.links)} link(s)", highlight=False
    )
    for path in rel.unreadable:
        console.print(f"[yellow]not JSON, left as it is: {path}[/]", highlight=False)
