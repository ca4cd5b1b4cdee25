"""The Apptainer definition a deployment directory gets (``containers/apptainer.def`` with its
``{{ NAME }}`` arguments filled in, ``%arguments`` dropped), and reading one back into its
header and sections (what the tests check the shipped definition by)."""

from __future__ import annotations

import re
from pathlib import Path

from pomlia_hpc.errors import InputError

#: The definition template, relative to the source tree.
DEF_TEMPLATE = Path("containers") / "apptainer.def"
SECTION = re.compile(r"^%(\w+)\s*$", re.M)


def parse_def(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Split an Apptainer definition into its header (``Bootstrap``, ``From`` ...) and sections
    (``files``, ``post``, ``runscript`` ... → body text)."""
    matches = list(SECTION.finditer(text))
    head = text[: matches[0].start()] if matches else text
    header: dict[str, str] = {}
    for line in head.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    sections: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sections[m.group(1)] = text[m.end() : end].strip("\n")
    return header, sections


def render_def(template: str, values: dict[str, str]) -> str:
    """Fill ``{{ NAME }}`` from ``values`` (defaults from ``%arguments``) and drop
    ``%arguments``, so any Apptainer/Singularity version builds the result."""
    _, sections = parse_def(template)
    defaults: dict[str, str] = {}
    for line in sections.get("arguments", "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            defaults[key.strip()] = value.strip()
    merged = {**defaults, **values}

    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in merged:
            raise InputError(
                f"{DEF_TEMPLATE}: '{{{{ {m.group(1)} }}}}' has no value and no "
                "default in %arguments"
            )
        return merged[m.group(1)]

    text = re.sub(r"^%arguments\s*\n(?:[ \t]+.*\n|\s*\n)*", "", template, flags=re.M)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", fill, text)
