"""``pomlia --help`` as a newcomer reads it: the top-level commands grouped by stage, and
examples at the foot of the main commands' help that parse with the commands' real options."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.cli.examples import EXAMPLES, PANELS
from tests.fixtures.cli import command_at, command_paths, help_page

runner = CliRunner()
ROOT = command_at(())


def test_every_top_level_command_is_in_one_panel_in_stage_order() -> None:
    names = [n for panel in PANELS.values() for n in panel]
    assert sorted(names) == sorted(ROOT.commands), "a command in no panel, or in two"
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    where = [out.index(f"─ {panel} ") for panel in PANELS]
    assert where == sorted(where), out
    assert "─ Commands " not in out  # nothing left in typer's catch-all panel


@pytest.mark.parametrize(
    ("path", "example"), [(p, e) for p, lines in EXAMPLES.items() for e in lines]
)
def test_every_example_parses_and_is_shown(path: tuple[str, ...], example: str) -> None:
    words = shlex.split(example, comments=True)
    assert words[: len(path) + 1] == ["pomlia", *path], example
    cmd = command_at(path)
    cmd.make_context(" ".join(words[: len(path) + 1]), words[len(path) + 1 :])  # no usage error
    out = help_page(path)
    assert "Examples:" in out and " ".join(words) in " ".join(out.split()), out


def test_option_help_gives_units() -> None:
    """Numbers a newcomer must guess the unit of (seconds? GB? GPU-hours?)."""
    wanted = {
        ("recommend",): {"max_cost": "seconds", "max_gpu_hours": "GPU-hours"},
        ("automl", "run"): {"mem_gb": "GB", "time_min": "minutes"},
        ("data", "add"): {"size": "px"},
    }
    for path, params in wanted.items():
        helps = {p.name: getattr(p, "help", "") or "" for p in command_at(path).params}
        for name, unit in params.items():
            assert unit in helps[name], (path, name, helps[name])


def test_schedule_at_says_whose_clock() -> None:
    """`monitor schedule --at` said "cluster's local time", but the next start is computed on
    the clock and in the time zone of the machine that runs the command (as the guide says)."""
    (at,) = [p for p in command_at(("monitor", "schedule")).params if p.name == "at"]
    assert "this machine's clock" in at.help and "cluster" not in at.help, at.help


def test_help_to_a_pipe_is_as_wide_as_other_output() -> None:
    """Typer's help console folded option help at 80 columns in a pipe ("POMLIA_MEDMNIST_ROO…")."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    out = subprocess.run(
        [sys.executable, "-m", "pomlia_hpc", "data", "add", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "(env POMLIA_MEDMNIST_ROOT)" in out
    assert max(len(line) for line in out.splitlines()) > 80


def test_flags_show_no_value_placeholder() -> None:
    """Typer's help showed every on/off flag as taking a value (`--resume <bool>`,
    `--dry-run <bool>`, `--help <bool>`), and `automl run blood --resume true` then failed.
    Flags show no placeholder; options that take a value keep theirs."""
    for path in command_paths():
        assert "<bool>" not in help_page(path), (path, help_page(path))
    out = help_page(("automl", "run"))
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ --")}
    assert "<int>" in lines["--trials"] and lines["--resume"].split()[2] == "Continue", out


def test_options_without_a_shown_default_say_theirs() -> None:
    """Options whose default is decided later (None in the signature) showed none in --help
    (`automl run --gpus` still none until the defaults were made one form)."""
    from pomlia_hpc.fingerprint.exclusion import DEFAULT_NPROBE
    from pomlia_hpc.fingerprint.extract import DEFAULT_SHARD_ROWS

    wanted = {
        ("fingerprint", "extract"): {
            "--shards": "[default: as many as --shard-rows gives]",
            "--shard-rows": f"[default: {DEFAULT_SHARD_ROWS:,}]",
            "--cpus": "[default: the cluster profile's cpus_per_task]",
            "--gpus": "[default: the cluster profile's gpus_per_node]",
        },
        ("fingerprint", "train"): {
            "--cpus": "[default: the cluster profile's cpus_per_task]",
            "--gpus": "[default: the cluster profile's gpus_per_node]",
        },
        ("automl", "run"): {"--gpus": "[default: the cluster profile's gpus_per_node]"},
        ("index", "build"): {"--nprobe": f"{DEFAULT_NPROBE} when it was built without]"},
        ("plot", "latent"): {"--out": "[default: <home>/reports/latent/<encoder>]"},
        ("data", "add"): {"--download": "[default: download]"},
    }
    for path, params in wanted.items():
        rows = _rows(help_page(path))
        for name, text in params.items():
            assert text in rows[name], (path, name, rows[name])


def test_deploy_help_shows_the_main_use() -> None:
    """`deploy --help` showed only `deploy [OPTIONS] COMMAND`, though `deploy MODEL --profile
    P --submit` (the `write` command, run without its name) is the main use."""
    out = " ".join(help_page(("deploy",)).split())
    assert "deploy MODEL [--profile PROFILE] [--out DIR] [--submit] | COMMAND" in out, out


def _rows(out: str) -> dict[str, str]:
    """The rows of a rendered help's Arguments and Options panels, by their first word (an
    argument's name, an option's first long name); a row's continuation lines (a help text
    with a line break) joined to it."""
    rows: dict[str, str] = {}
    key = ""
    for line in out.splitlines():
        words = line.strip("│ ").lstrip("* ").split()
        if not line.startswith("│") or not words:
            continue
        if line.index(words[0]) > 8 and key:  # blank name column: the row goes on
            rows[key] += " " + line
            continue
        key = words[0].removesuffix("...")
        rows.setdefault(key, line)
    return rows


def test_positional_arguments_read_as_upper_case_names() -> None:
    """Usage lines showed `automl run [OPTIONS] {task}` and `data list [OPTIONS] [name]` while
    the help text and the hints say TASK and NAME. Every positional argument reads as one
    upper-case name, in the usage line and in the Arguments panel."""
    name = re.compile(r"\[?[A-Z][A-Z0-9_]*\]?(\.\.\.)?\]?")
    for path in command_paths():
        out = help_page(path)
        usage = next(line for line in out.splitlines() if "Usage:" in line).split()
        words = usage[usage.index("pomlia") + 1 + len(path) :]
        for word in words:
            if not word.lstrip("[").startswith("-") and word != "|":
                assert name.fullmatch(word), (path, word, " ".join(usage))
        rows = _rows(out)
        for param in command_at(path).params:
            if param.param_type_name == "argument":
                upper = param.metavar or param.name.upper()
                assert upper in rows, (path, param.name, out)
                assert upper in {w.strip("[].") for w in words}, (path, " ".join(usage))


def test_every_encoder_option_has_the_short_e() -> None:
    """`--encoder` was `-e` in the fingerprint commands but not in `automl run` and `model
    export`."""
    seen = []
    for path in command_paths():
        for param in getattr(command_at(path), "params", []):
            if "--encoder" in getattr(param, "opts", []):
                seen.append(path)
                assert "-e" in param.opts, (path, param.opts)
    assert ("automl", "run") in seen and ("model", "export") in seen, seen


def _plain_flag(param: Any) -> bool:
    """An on/off flag without a --no- twin: absent means off, so it shows no default."""
    return bool(getattr(param, "is_flag", False)) and not param.secondary_opts and not param.default


def test_defaults_are_shown_in_one_form() -> None:
    """Defaults read "(default 5)" in some options' help, "[default: 5]" in others (typer's),
    and not at all in some (`automl run --gpus`). Every default is typer's `[default: X]`
    after the help: no help text words its own default, and every option (or argument) with
    a default shows it."""
    for path in command_paths():
        cmd = command_at(path)
        out = help_page(path)
        assert "[default: (" not in out, (path, out)
        rows = _rows(out)
        for param in cmd.params:
            if param.name == "help" or getattr(param, "hidden", False):
                continue
            text = getattr(param, "help", "") or ""
            assert not re.search(r"\bdefault\b", text, re.I), (path, param.name, text)
            shown = isinstance(param.show_default, str) or param.default is not None
            if param.param_type_name == "argument":
                row = rows[param.metavar or param.name.upper()]
            else:
                row = rows[next(o for o in param.opts if o.startswith("--"))]
            if shown and not _plain_flag(param):
                assert "[default: " in row, (path, param.name, row.strip())


#: A typer whose internals moved: the renderers cli/app.py replaces are not where it looks
#: (removed while pomlia_hpc.cli is imported), then typer's own are back under its own names
#: (put back, as a newer typer would call its own), and no patch of ours may be in the way.
#: Then ``pomlia`` with each command line given as a JSON argument, one after the other, each
#: output after a line ``@@ N`` on stdout and on stderr, and ``@@ N exit CODE`` on stdout.
WITHOUT_TYPER_INTERNALS = """
import json
import sys
import typer.core
import typer.rich_utils

moved = [
    (typer.core.TyperOption, "_get_default_string"),
    (typer.core.TyperArgument, "_get_default_string"),
]
own = [(cls, name, cls.__dict__[name]) for cls, name in moved]
for cls, name in moved:
    delattr(cls, name)
name_raw = typer.core.TyperArgument.__mro__[1].__dict__["display_name_raw"]
typer.core.TyperArgument.display_name_raw = None
from pomlia_hpc.cli import main

for cls, name, was in own:
    assert getattr(cls, name, None) is None, name  # nothing of ours put there
    setattr(cls, name, was)
assert typer.core.TyperArgument.display_name_raw is None
del typer.core.TyperArgument.display_name_raw
assert typer.core.TyperArgument.display_name_raw is name_raw
for n, args in enumerate(sys.argv[1:]):
    print(f"@@ {n}", flush=True)
    print(f"@@ {n}", file=sys.stderr, flush=True)
    sys.argv = ["pomlia", *json.loads(args)]
    try:
        main()
    except SystemExit as exc:
        sys.stdout.flush()
        sys.stderr.flush()
        print(f"@@ {n} exit {exc.code}", flush=True)
"""


def test_the_cli_starts_with_a_typer_whose_internals_moved() -> None:
    """Patching a renderer this typer lacks broke every command at import (AttributeError):
    typer's own rendering is kept instead. The three commands run in one process (a start
    costs seconds of CPU): the import is what the patching breaks."""
    commands = [["--help"], ["automl", "run", "--help"], ["data", "list", "x"]]
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TYPER_INTERNALS, *map(json.dumps, commands)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120", "POMLIA_HOME": "/nonexistent-pomlia-home"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.stderr, proc.stderr
    outs = re.split(r"^@@ \d+\n", proc.stdout, flags=re.M)[1:]
    errs = re.split(r"^@@ \d+\n", proc.stderr, flags=re.M)[1:]
    assert len(outs) == len(errs) == len(commands), (proc.stdout, proc.stderr)
    for n, (args, out, err) in enumerate(zip(commands, outs, errs, strict=True)):
        (code,) = re.findall(rf"^@@ {n} exit (\S+)$", out, flags=re.M)
        succeeded = code in ("0", "None")  # sys.exit(None) is a status of 0
        if args[-1] == "--help":
            assert succeeded and "Usage:" in out, out
        else:  # a command runs as far as its own refusal
            assert not succeeded and err.startswith("error: "), err


def _leaves(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under ``cmd`` with its path (groups walked, hidden ones too)."""
    subs = getattr(cmd, "commands", None)
    if not subs:
        return [(path, cmd)]
    return [leaf for name, sub in subs.items() for leaf in _leaves(sub, (*path, name))]


def test_every_time_option_says_how_a_time_without_zone_is_read() -> None:
    """`data harvest --since 2026-12-05T09:00` was read as UTC, silently, by a user in
    Asia/Kolkata: every option that takes an ISO time says so (`monitor schedule --at`, a
    time of day, says it is this machine's clock)."""
    missing = [
        (" ".join(path), p.name)
        for path, cmd in _leaves(ROOT)
        for p in cmd.params
        if "ISO" in (getattr(p, "help", "") or "")
        and not getattr(p, "hidden", False)
        and "UTC if no zone" not in (p.help or "")
    ]
    assert missing == []
