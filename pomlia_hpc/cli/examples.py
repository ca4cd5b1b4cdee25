"""What ``pomlia --help`` adds to the commands: examples at the foot of a command's help, and
the panels that group the top-level commands by stage. Kept in one table so that a test parses
every example against the command's real options (tests/test_cli_help.py): an example that
names an option the command lacks fails there, not in a user's terminal."""

from __future__ import annotations

import typer

#: Example command lines per command path; ``#`` starts a comment shown with the example.
EXAMPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("data", "add"): (
        "pomlia data add bloodmnist                 # a MedMNIST flag (--root, or downloaded)",
        "pomlia data add cells ./images --val-fraction 0.1 --test-fraction 0.1"
        "   # one folder per class",
        "pomlia data add scans scans.h5 --images x --labels y --split split",
    ),
    ("data", "synth"): ("pomlia data synth /tmp/lookalikes --flags bloodmnist,pathmnist",),
    ("data", "show"): ("pomlia data show bloodmnist --grid blood.png",),
    ("task", "add"): ("pomlia task add blood --dataset bloodmnist --metric acc",),
    ("recommend",): (
        "pomlia recommend blood --k 3",
        "pomlia recommend blood --max-gpu-hours 0.5 --write-initial warm.json",
    ),
    ("automl", "run"): (
        "pomlia automl run blood --trials 8 --max-epochs 3 --archs small_cnn",
        "pomlia automl run blood --from-recommendation --executor slurm --gpus 1",
        "pomlia automl run blood --study blood-hb --resume    # after a crash or a requeue",
    ),
    ("runs", "list"): ("pomlia runs list --study blood-hb --limit 20",),
    ("fingerprint", "train"): (
        "pomlia fingerprint train bloodmnist dermamnist --name ae16 --epochs 10 --gpus 1",
    ),
    ("fingerprint", "extract"): (
        "pomlia fingerprint extract bloodmnist dermamnist --encoder ae16 --shard-rows 100000",
    ),
    ("index", "build"): ("pomlia index build --encoder ae16",),
    ("similar",): (
        "pomlia similar dermamnist --k 5",
        "pomlia similar dermamnist --images 8 --split test     # the nearest images instead",
    ),
    ("model", "export"): ("pomlia model export blood-hb-best",),
    ("serve",): (
        "pomlia serve blood-hb-best --port 8000",
        "pomlia serve prod              # a deployment slot: swaps to each promoted model",
    ),
    ("deploy", "promote"): ("pomlia deploy promote prod blood-hb-best",),
    ("monitor", "run"): ("pomlia monitor run blood-hb-best --window 24h",),
    ("monitor", "schedule"): ("pomlia monitor schedule blood-hb-best --at 02:00 --every 1d",),
    ("loop", "run"): ("pomlia loop run prod --trials 6 --max-epochs 6",),
    ("pipeline", "run"): (
        "pomlia pipeline run configs/pipelines/lookalikes.yaml --dry-run   # the plan only",
        "pomlia pipeline run configs/pipelines/lookalikes.yaml",
    ),
    ("strategy", "import"): ("pomlia strategy import results.csv --source mine --meta meta.csv",),
    ("strategy", "eval"): (
        "pomlia strategy eval --source medmnist_plus --metric acc --k 3",
        "pomlia strategy eval --source registry --metric acc --png regrets.png  # per data set",
    ),
    ("jobs", "list"): ("pomlia jobs list --state FAILED",),
}

#: The panels of ``pomlia --help``, in the order of a project: each top-level command or group
#: in exactly one. Within a panel typer shows the plain commands before the groups (``similar``
#: before ``data``), each in this order.
PANELS: dict[str, tuple[str, ...]] = {
    "Workspace": ("init", "status", "jobs", "registry", "report"),
    "Data and fingerprints": ("data", "fingerprint", "index", "similar", "plot"),
    "Strategies and AutoML": ("strategy", "task", "recommend", "automl", "runs"),
    "Models and serving": ("model", "serve", "deploy", "lineage"),
    "Monitoring and automation": ("monitor", "loop", "pipeline"),
}


def _name(info: typer.models.CommandInfo) -> str:
    if info.name:
        return info.name
    return info.callback.__name__.replace("_", "-") if info.callback else ""


def add_help_extras(app: typer.Typer) -> None:
    """Put every top-level command of ``app`` in its panel and the examples at the foot of
    their commands' help."""
    panel_of = {name: panel for panel, names in PANELS.items() for name in names}
    order = list(panel_of)
    # The help lists commands, then groups, each in registration order; a panel shows up where
    # its first member does: in the order of PANELS, stage by stage.
    app.registered_commands.sort(key=lambda c: order.index(_name(c)) if _name(c) in order else 99)
    app.registered_groups.sort(key=lambda g: order.index(g.name) if g.name in order else 99)
    for cmd in app.registered_commands:
        cmd.rich_help_panel = panel_of.get(_name(cmd), cmd.rich_help_panel)
        _examples(cmd, (_name(cmd),))
    for group in app.registered_groups:
        group.rich_help_panel = panel_of.get(group.name or "", group.rich_help_panel)
        sub = group.typer_instance
        if sub is not None:
            for cmd in sub.registered_commands:
                _examples(cmd, (group.name or "", _name(cmd)))


def _examples(cmd: typer.models.CommandInfo, path: tuple[str, ...]) -> None:
    lines = EXAMPLES.get(path)
    if lines:
        cmd.epilog = "Examples:\n" + "\n".join(f"  {line}" for line in lines)
