"""An empty path (an unset shell variable: `--log-dir "$LOGDIR"`) is refused, exit 2, naming
the option: `Path("")` is the current folder, and `serve --log-dir ''` served with its
prediction log there, where `monitor run` and `data harvest` never look."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pomlia_hpc.cli import app
from pomlia_hpc.workspace import Workspace


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["serve", "m", "--log-dir", ""], "'--log-dir'"),
        (["serve", "m", "--address-file", " "], "'--address-file'"),
        (["data", "harvest", "m", "--log-dir", ""], "'--log-dir'"),
        (["data", "synth", ""], "'OUT'"),
        (["data", "add", "bloodmnist", ""], "SOURCE"),  # it downloaded MedMNIST instead
        (["report", "--out", ""], "'--out'"),
        (["--home", "", "status"], "'--home'"),
    ],
)
def test_an_empty_path_is_refused_naming_its_option(
    args: list[str], named: str, workspace: Workspace
) -> None:
    before = sorted(p.name for p in Path.cwd().iterdir())
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.replace("│", " ").split())
    assert f"Invalid value for {named}: an empty path: expected a file or folder" in said
    assert sorted(p.name for p in Path.cwd().iterdir()) == before  # nothing written here


def _commands(group: typing.Any) -> typing.Iterator[typing.Any]:
    yield from group.registered_commands
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance)


def test_every_path_parameter_takes_the_rule() -> None:
    # A new path option declared with plain typer.Option would take "" as the current folder.
    plain = []
    for command in _commands(app):
        hints = typing.get_type_hints(command.callback, include_extras=True)
        for name, hint in hints.items():
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            base, *extras = typing.get_args(hint)
            if Path in (typing.get_args(base) or (base,)):
                parser = getattr(extras[0], "parser", None)
                if getattr(parser, "__name__", "") != "nonempty_path":
                    plain.append(f"{command.callback.__name__}.{name}")
    assert not plain, plain
