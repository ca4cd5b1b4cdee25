"""``pomlia registry recover``: rebuild the image DB from the dataset stores on disk."""

from __future__ import annotations

import typer

from pomlia_hpc.cli.app import STATE, app, console

registry_app = typer.Typer(help="The registry database: recover it from the stores.")
app.add_typer(registry_app, name="registry")


@registry_app.command("recover")
def recover() -> None:
    """Register every dataset store under <home>/stores/ that the registry does not list,
    from the store's own metadata (creates the registry if it is missing). Encoders, models
    and AutoML runs are not in the stores and are not recovered."""
    from pomlia_hpc.data.recover import recover_stores

    ws = STATE.workspace
    reg = STATE.prepared(create=True)
    res = recover_stores(ws, reg)
    for ref in res.registered:
        console.print(f"registered {ref}")
    for path, why in res.skipped:
        console.print(f"[yellow]skipped {path}: {why}[/]")
    console.print(
        f"{len(res.registered)} dataset version(s) registered, {len(res.known)} already "
        f"known, {len(res.skipped)} skipped; registry {reg.display_url()}"
    )
