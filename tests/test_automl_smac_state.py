"""SMAC's saved state is one unit: a driver killed while it saved leaves the last complete
state for a resume, never the runhistory of one ask beside the intensifier of the one before;
SMAC's own files, cut short, are written again from it, and a damaged state is one error."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pomlia_hpc.automl.optimizers import STATE_FILE, SmacHyperband
from pomlia_hpc.automl.space import SpaceOptions, build_space
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.registry.relocate import moved_json


def _smac(folder: Path, *, resume: bool) -> SmacHyperband:
    space = build_space(SpaceOptions(archs=("small_cnn",)), seed=0)
    return SmacHyperband(
        space, folder, n_trials=6, min_epochs=1, max_epochs=3, seed=0, resume=resume
    )


def _killed_in_intensifier_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next save of SMAC's intensifier is where the driver dies (after the runhistory's)."""

    def killed(self: Any, filename: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("smac.intensifier.abstract_intensifier.AbstractIntensifier.save", killed)


def test_a_resume_after_a_kill_among_the_files_uses_the_last_complete_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _smac(tmp_path, resume=False)
    asked = first.ask()
    with monkeypatch.context() as m:
        _killed_in_intensifier_save(m)
        with pytest.raises(KeyboardInterrupt):
            first.ask()  # its runhistory was written, its intensifier and stats not
    resumed = _smac(tmp_path, resume=True)
    assert [p.key for p in resumed.running()] == [asked.key]
    assert resumed.ask().key != asked.key  # and SMAC goes on from there


def test_smac_files_cut_short_are_written_again_from_the_state(tmp_path: Path) -> None:
    first = _smac(tmp_path, resume=False)
    asked = first.ask()
    (out,) = {p.parent for p in tmp_path.rglob(STATE_FILE)}
    for name in ("intensifier.json", "scenario.json", "optimization.json"):
        (out / name).write_text((out / name).read_text()[:20])  # SMAC's own write, killed
    resumed = _smac(tmp_path, resume=True)
    assert [p.key for p in resumed.running()] == [asked.key]
    json.loads((out / "intensifier.json").read_text())


def test_a_damaged_state_is_one_error_naming_it(tmp_path: Path) -> None:
    _smac(tmp_path, resume=False).ask()
    (state,) = tmp_path.rglob(STATE_FILE)
    state.write_text(json.dumps({"format": 1, "files": {}}))
    with pytest.raises(PomliaError, match=re.escape(f"{STATE_FILE}' is damaged")):
        _smac(tmp_path, resume=True)
    state.unlink()  # a study saved before the one file: SMAC's files, one of them cut short
    (out := state.parent / "runhistory.json").write_text(out.read_text()[:30])
    with pytest.raises(PomliaError, match=r"runhistory\.json' is cut short"):
        _smac(tmp_path, resume=True)


def test_the_state_follows_a_relocated_workspace(tmp_path: Path) -> None:
    """``registry relocate`` rewrites the folder in every JSON record: the one state too, so
    a resume in the moved workspace is not refused as another search."""
    old, new = tmp_path / "old", tmp_path / "new"
    asked = _smac(old, resume=False).ask()
    shutil.move(old, new)
    for path in new.rglob("*.json"):  # what relocate does to each record
        data, changed = moved_json(json.loads(path.read_text()), str(old), str(new))
        if changed:
            path.write_text(json.dumps(data))
    assert [p.key for p in _smac(new, resume=True).running()] == [asked.key]


@pytest.mark.parametrize("name", ["scenario.json", "configspace.json"])
def test_an_old_study_whose_scenario_is_cut_short_is_one_error_naming_it(
    tmp_path: Path, name: str
) -> None:
    """A study saved before the one state file, its driver killed while SMAC wrote the
    scenario: the resume raised JSONDecodeError (a traceback) instead of saying which file."""
    _smac(tmp_path, resume=False).ask()
    (state,) = tmp_path.rglob(STATE_FILE)
    state.unlink()
    (out := state.parent / name).write_text(out.read_text()[:25])
    with pytest.raises(PomliaError, match=re.escape(f"{name}' is cut short or damaged")):
        _smac(tmp_path, resume=True)
    if name == "configspace.json":  # scenario.json is what says there is a state at all
        out.unlink()
        with pytest.raises(PomliaError, match=re.escape(f"{name}' is missing")):
            _smac(tmp_path, resume=True)
