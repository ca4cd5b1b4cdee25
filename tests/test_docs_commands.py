"""Every ``pomlia ...`` that README.md and docs/ show, in a ``bash`` or ``console`` block or in
backticks in the text, names commands and options the CLI has; a command line of a block
parses whole (its arguments, option values and types) as the CLI would take it. Parsed only,
never run (tests/test_readme.py and tests/test_guides.py run the ``bash`` blocks), so the
whole of docs/ costs well under a second: a renamed option or command cannot stay in the
docs' examples, their ``console`` sessions (which nothing ran) or their prose and synopses."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.exceptions import TyperException

from pomlia_hpc.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
#: Where the command line a doc shows ends: a shell operator, or the docs' own notation for
#: "and so on" (``...``) and optional parts (``[--reason TEXT]``).
STOPS = re.compile(r"^(\||\|\||&&|;|&|[0-9]?>.*|<|\.\.\.|…|\[.*)$")


@cache
def cli() -> Any:
    """The ``pomlia`` command as click sees it (built once: building it takes a while)."""
    return typer.main.get_command(app)


def block_lines(text: str) -> list[str]:
    """The ``pomlia`` command lines of the ``bash``/``console`` blocks (``$ `` and a trailing
    comment taken off, backslash continuations joined)."""
    out = []
    for block in re.findall(r"```(?:bash|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ").split(" #")[0].strip()
            if line.startswith("pomlia "):
                out.append(line)
    return out


def prose_spans(text: str) -> list[str]:
    """The backticked ``pomlia ...`` spans of the text outside code blocks, and the synopses
    of indented blocks (``    pomlia recommend TASK [--k 5]``: its optional parts as options)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    synopses = re.findall(r"^ {4}(pomlia .*)$", prose.replace("\\\n", " "), flags=re.M)
    spans = re.findall(r"`(pomlia [^`]+)`", prose.replace("\n", " "))
    return spans + [re.sub(r"[\[\]]", "", s) for s in synopses]


def resolve(line: str) -> tuple[Any, list[str], list[str]]:
    """(command, its path, the words left for it) of a ``pomlia`` line: groups' options and
    subcommand words consumed; AssertionError naming an unknown command or option."""
    words = shlex.split(line)[1:]
    end = next((i for i, w in enumerate(words) if STOPS.match(w)), len(words))
    words = [w for w in words[:end] if w != "--help"]
    cmd: Any = cli()
    path: list[str] = []
    while hasattr(cmd, "commands"):
        options = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        while words and words[0].startswith("-"):
            param = options.get(words[0].split("=")[0])
            assert param is not None, f"no option {words[0]} on pomlia {' '.join(path)}"
            words = words[1 if param.is_flag or "=" in words[0] else 2 :]
        if not words:
            break
        if words[0] in cmd.commands:
            path.append(words.pop(0))
        elif path == ["deploy"]:  # `pomlia deploy MODEL` is `pomlia deploy write MODEL`
            path.append("write")
        else:
            raise AssertionError(f"no command {words[0]!r} in pomlia {' '.join(path)}")
        cmd = cmd.commands[path[-1]]
    return cmd, path, words


def leaf_options(line: str) -> None:
    """The options after the command path exist on that command (prose may leave arguments
    out, or write placeholders such as ``--shards N``: only the names are checked)."""
    cmd, path, words = resolve(line)
    if hasattr(cmd, "commands"):
        return  # a group named in the text, no command
    options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for word in words:
        if word.startswith("-") and not re.fullmatch(r"-[0-9.]+", word):
            assert word.split("=")[0] in options, f"no option {word} on pomlia {' '.join(path)}"


def every(kind: str) -> list[tuple[str, str]]:
    pick = block_lines if kind == "block" else prose_spans
    return [
        (d.relative_to(REPO).as_posix(), s)
        for d in DOCS
        for s in dict.fromkeys(pick(d.read_text()))
    ]


def test_the_docs_have_commands_of_both_kinds() -> None:
    assert len(every("block")) > 100 and len(every("prose")) > 150


@pytest.mark.parametrize(("doc", "line"), every("block"))
def test_a_block_command_parses(doc: str, line: str) -> None:
    """Arguments, option values and their types too, as the CLI parses them (unknown options,
    missing or extra arguments, a value of the wrong type or choice)."""
    cmd, path, words = resolve(line)
    if not hasattr(cmd, "commands"):
        cmd.make_context(" ".join(path), words)


@pytest.mark.parametrize(("doc", "span"), every("prose"))
def test_a_command_in_the_text_names_real_options(doc: str, span: str) -> None:
    leaf_options(span)


@pytest.mark.parametrize(
    "wrong",
    [
        "pomlia fingerprint train a --nme x",  # an option renamed
        "pomlia similar d --encoder",  # its value left out (in a block)
        "pomlia runs show 3",  # a command that does not exist
        "pomlia --clster haicore status",  # a global option
        "pomlia deploy m --profle haicore",  # `deploy MODEL`, the write shortcut
    ],
)
def test_the_check_finds_drift(wrong: str) -> None:
    with pytest.raises((AssertionError, TyperException)):  # ours, or click's usage error
        cmd, path, words = resolve(wrong)
        leaf_options(wrong)
        cmd.make_context(" ".join(path), words)
