"""How long the monitor chains of a served model need its prediction log kept.

A server's ``log_retention_days`` (docs/guide/serving.md, "Log retention") cannot see the
window of the nightly monitor that reads its log: a retention shorter than that window deletes
files each run then tests as if nothing had been served. Nor the run's label look-up: a label
that arrives in the window is joined to its prediction up to the look-back
(:data:`~.labels.DEFAULT_LOOKBACK`, 7 days; a chain's runs use it) before the window's start,
so a retention shorter than window plus look-back deletes the predictions of late labels, which
the run then counts as unknown, untested. `pomlia serve` asks this module before it starts:
the chains scheduled for the model it serves or for its slot
(``jobs/monitor/<key>/schedule.env``, :mod:`.schedule`) record their ``WINDOW`` and period
(``EVERY``). A retention shorter than a window is refused; one shorter than a window plus the
look-back, or than that plus a period (a run held in the queue that long, as a chain allows,
reads files older still), is a warning.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import timedelta

from pomlia_hpc.errors import InputError, PomliaError
from pomlia_hpc.monitor.labels import DEFAULT_LOOKBACK
from pomlia_hpc.monitor.reference import SLOT_PREFIX
from pomlia_hpc.workspace import Workspace

DAY_S = 86400.0


@dataclass(frozen=True)
class ChainNeed:
    """A monitor chain's window and period, as its settings record them."""

    key: str
    window: timedelta
    every: timedelta


def chain_needs(workspace: Workspace, keys: list[str]) -> list[ChainNeed]:
    """The window and period of each chain scheduled under one of ``keys`` (a model's name,
    ``slot:SLOT``); chains whose settings cannot be read are left out."""
    texts = {}
    for key in dict.fromkeys(keys):
        try:
            texts[key] = workspace.path("jobs", "monitor", key, "schedule.env").read_text()
        except (OSError, UnicodeDecodeError):
            continue
    if not texts:  # the usual case: a server starts without loading the monitor's modules
        return []
    from pomlia_hpc.monitor.run import parse_duration

    out = []
    for key, text in texts.items():
        values: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, rest = line.removeprefix("export ").partition("=")
            words = shlex.split(rest) if sep else []
            values[name] = words[0] if words else ""
        try:
            window = parse_duration(values.get("WINDOW", ""))
            every = parse_duration(values.get("EVERY", ""), "--every")
        except PomliaError:
            continue
        out.append(ChainNeed(key, window, every))
    return out


def check_retention(
    workspace: Workspace, model: str, slot: str | None, retention_days: float
) -> list[str]:
    """Refuse (:class:`InputError`) a log retention of ``retention_days`` for a server of
    ``model`` (on deployment slot ``slot``, if any) shorter than the window of a monitor chain
    scheduled for either; the warnings for one shorter than the window plus the label
    look-back (late labels' predictions deleted, counted as unknown), and for one shorter than
    that plus the chain's period. The look-back is a warning, not a refusal: a chain's runs
    take no other look-back, so a retention kept short on purpose (a site's rule) could never
    start beside a chain, and a server restarted with the retention it ran with before was
    refused."""
    warnings = []
    kept = timedelta(seconds=retention_days * DAY_S)
    keys = [model] + ([f"{SLOT_PREFIX}{slot}"] if slot is not None else [])
    for need in chain_needs(workspace, keys):
        what = (
            f"log retention of {retention_days:g} day(s) and the monitor chain of "
            f"'{need.key}' (window {_days(need.window)}, every {_days(need.every)}, labels' "
            f"predictions looked up {_days(DEFAULT_LOOKBACK)} before the window)"
        )
        reads = need.window + DEFAULT_LOOKBACK
        if kept < need.window:
            raise InputError(
                f"{what}: each run would test a window whose older files retention deleted; "
                f"expected --log-retention-days of at least {_days(reads + need.every)} "
                "(window plus look-back plus period; the window alone at the least), or a "
                "shorter `monitor schedule --window`"
            )
        if kept < reads:
            warnings.append(
                f"{what}: the predictions of labels that come more than "
                f"{_days(kept - need.window)} late are deleted before a run looks them up "
                f"(counted as unknown, untested); {_days(reads + need.every)} of retention "
                "avoids that"
            )
        elif kept < reads + need.every:
            warnings.append(
                f"{what}: a run held in the queue up to a period would read files retention "
                f"may have deleted; {_days(reads + need.every)} of retention avoids that"
            )
    return warnings


def _days(span: timedelta) -> str:
    return f"{span.total_seconds() / DAY_S:g} day(s)"
