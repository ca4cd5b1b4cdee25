"""Ask/tell optimisers behind one small interface: SMAC-Hyperband and random search.

:class:`SmacHyperband` wraps SMAC3's multi-fidelity facade (Hyperband intensifier, budget =
epochs) with pyrfr's random forest, whose results repeat for a fixed seed (its local search's
start points ordered by :func:`stable_start_points`, not by Python's string hashing). Its state
(runhistory, intensifier, stats, with the scenario they belong to) is saved after every ask and
every tell as one file, ``pomlia-state.json``, renamed into place: SMAC's own files beside it are
a working copy it reads and rewrites (not atomically, and three at a time), so a driver killed
among them would leave a mix of two states. A resumed study writes them again from that one file
(the last complete state) before SMAC reads them, and :meth:`running` returns the trials that
were out when the driver stopped.

:class:`RandomSearch` samples the same space uniformly, every trial at the largest budget: the
baseline of ``scripts/bench/automl.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ConfigSpace import Configuration, ConfigurationSpace

from pomlia_hpc.automl.space import config_key, plain_values
from pomlia_hpc.errors import PomliaError
from pomlia_hpc.files import atomic_target, write_atomic, write_json_atomic


@dataclass(frozen=True)
class Proposal:
    """A trial to run: a configuration at a budget (epochs, possibly fractional for SMAC)."""

    config: Configuration
    budget: float
    info: Any = None  # SMAC's TrialInfo

    @property
    def values(self) -> dict[str, Any]:
        return plain_values(self.config)

    @property
    def key(self) -> str:
        return config_key(self.values)

    @property
    def epochs(self) -> int:
        """Whole epochs to train to: the budget rounded, at least 1."""
        return max(1, round(self.budget))

    @property
    def origin(self) -> str:
        return str(self.config.origin or "")


class SearchOptimizer(Protocol):
    """What the study driver needs from an optimiser."""

    def ask(self) -> Proposal: ...

    def tell(self, proposal: Proposal, cost: float, *, crashed: bool, time_s: float) -> None: ...

    def running(self) -> list[Proposal]: ...


def _saved(path: Path, write: Callable[[Path], object]) -> Any:
    """What ``write`` (a SMAC ``save``) writes, renamed over ``path`` unflushed, parsed."""
    # SMAC's save() takes a file name that must end in .json.
    with atomic_target(path, fsync=False, suffix=".json") as tmp:
        write(tmp)
        return json.loads(tmp.read_text())


def _without_meta(scenario: Any) -> dict[str, Any]:
    from smac import Scenario

    data = dict(Scenario.make_serializable(scenario))
    data.pop("_meta", None)
    return data


#: The files of SMAC's saved state (:meth:`SmacHyperband.save`).
_SMAC_FILES = ("runhistory.json", "intensifier.json", "optimization.json")
#: SMAC's files that describe the search (written once per start of the facade).
_SCENARIO_FILES = ("scenario.json", "configspace.json")
#: The one file that holds a complete state: every file above, by name, parsed (so that
#: ``registry relocate`` rewrites the folder the scenario names, as in SMAC's own file).
STATE_FILE = "pomlia-state.json"


def _smac_files(out: Path) -> dict[str, str]:
    """The text of SMAC's state files in ``out`` (empty when one is missing), for a study
    saved before :data:`STATE_FILE`; a file cut short is one error naming it."""
    try:
        files = {name: (out / name).read_text() for name in _SMAC_FILES}
    except FileNotFoundError:
        return {}
    for name, text in files.items():
        _check_json(out / name, text)
    return files


def _check_json(path: Path, text: str) -> None:
    """One error naming ``path`` when ``text``, its content, is not JSON (a file cut short)."""
    try:
        json.loads(text)
    except ValueError as exc:
        raise PomliaError(
            f"the optimiser state file '{path}' is cut short or damaged ({exc}): "
            "its driver was killed while writing it; start a new study (another --study "
            "name) instead of --resume"
        ) from exc


def _read_state(out: Path) -> dict[str, str] | None:
    """The files of the last complete state saved in ``out`` (by name, as text), or ``None``
    for a folder without one (a study saved before the state became one file, or never)."""
    path = out / STATE_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PomliaError(f"cannot read the optimiser state '{path}': {exc}") from exc
    files = data.get("files") if isinstance(data, dict) else None
    names = (*_SMAC_FILES, *_SCENARIO_FILES)
    if not isinstance(files, dict) or not all(isinstance(files.get(n), dict) for n in names):
        raise PomliaError(
            f"the optimiser state '{path}' is damaged: it should hold the files {', '.join(names)}"
        )
    return {name: json.dumps(files[name], indent=2) for name in names}


def _restore(out: Path, files: dict[str, str]) -> None:
    """Write SMAC's working files in ``out`` again from one complete state: whatever a killed
    driver left there (a mix of two states, a cut file) is replaced before SMAC reads it."""
    for name, text in files.items():
        write_atomic(out / name, text, fsync=False)


def _submitted(files: dict[str, str]) -> int:
    """How many trials the saved runhistory among ``files`` had handed out."""
    try:
        return int(json.loads(files["runhistory.json"])["stats"]["submitted"])
    except (KeyError, TypeError, ValueError):
        return 0


def _dummy_target(config: Configuration, seed: int = 0, budget: float = 1.0) -> float:
    raise RuntimeError("trials run as cluster jobs; SMAC is driven by ask/tell only")


def stable_start_points(maximizer: Any) -> Any:
    """``maximizer`` (SMAC's local and random search), its local search started from its
    start points in one order: SMAC collects them in a ``set`` of configurations, which hash
    their text, so their order (and the configuration the search proposes) followed Python's
    per-process string hashing: two drivers with the same seed and the same results asked
    for other configurations from the first model-based proposal on. Sorted by their text,
    the sequence repeats for a seed (as it does with a fixed ``PYTHONHASHSEED``)."""
    local: Any = getattr(maximizer, "_local_search", None)
    pick = getattr(local, "_get_initial_points", None)
    if pick is None:  # another SMAC release: nothing to order here
        return maximizer

    def ordered(*args: Any, **kwargs: Any) -> list[Any]:
        return sorted(pick(*args, **kwargs), key=repr)

    local._get_initial_points = ordered
    return maximizer


class SmacHyperband:
    """SMAC3 multi-fidelity (Hyperband, ``eta``) over ``space``; state under ``folder``."""

    def __init__(
        self,
        space: ConfigurationSpace,
        folder: Path,
        *,
        n_trials: int,
        min_epochs: float,
        max_epochs: float,
        eta: int = 3,
        seed: int = 0,
        initial: list[Configuration] | None = None,
        n_initial: int | None = None,
        resume: bool = False,
        fresh_if_missing: bool = False,
    ) -> None:
        """``resume``: continue from the state saved under ``folder`` (an error when there is
        none, unless ``fresh_if_missing``: then start afresh, as for a driver that was stopped
        before SMAC's first save and had not recorded any trial)."""
        from smac import Scenario
        from smac.facade.old.multi_fidelity_facade_pyrfr import MultiFidelityRFRFacade as Facade

        scenario = Scenario(
            space,
            name="smac",
            output_directory=folder,
            deterministic=True,
            n_trials=max(n_trials, 1),
            min_budget=min_epochs,
            max_budget=max_epochs,
            seed=seed,
        )
        out = scenario.output_directory
        state = _read_state(out) if resume else None
        if state is not None:
            _restore(out, state)
        fresh = resume and fresh_if_missing and not (out / "scenario.json").is_file()
        if fresh:
            resume = False  # nothing of SMAC's to continue from: its first save never happened
        elif resume:
            if not (out / "scenario.json").is_file():
                raise PomliaError(
                    f"no SMAC state to resume in '{out}', but the study has recorded trials; "
                    "start a new study (another --study name) instead of --resume"
                )
            if state is None:  # saved before the one state file: SMAC's own, maybe cut
                for path in (out / name for name in _SCENARIO_FILES):
                    if not path.is_file():
                        raise PomliaError(
                            f"the optimiser state file '{path}' is missing; start a new study "
                            "(another --study name) instead of --resume"
                        )
                    _check_json(path, path.read_text())
            # SMAC asks on stdin when the saved scenario differs; never let it. (Its own check
            # runs after the facade has added its meta data, and ignores the space.)
            old = Scenario.load(out)
            same = old.configspace == space and _without_meta(old) == _without_meta(scenario)
            if not same:
                raise PomliaError(
                    f"the SMAC state in '{out}' belongs to another search space or "
                    "budget; start a new study instead of --resume"
                )
        elif not fresh and out.exists() and any(out.iterdir()):
            raise PomliaError(f"SMAC state already exists in '{out}'; use --resume")
        # SMAC starts afresh from a saved state with one trial asked and none told (its "the
        # last run was not successful"), and overwrites that state: a study of one trial, or
        # killed while its first trial ran, would forget the trial still out. Keep the files.
        saved: dict[str, str] = {}
        if resume:
            saved = {n: state[n] for n in _SMAC_FILES} if state else _smac_files(out)
        warm = list(initial or [])
        n_random = n_initial if n_initial is not None else max(1, round(0.25 * n_trials))
        design = Facade.get_initial_design(
            scenario, n_configs=max(0, n_random - len(warm)), additional_configs=warm
        )
        self._smac = Facade(
            scenario,
            _dummy_target,
            intensifier=Facade.get_intensifier(scenario, eta=eta),
            acquisition_maximizer=stable_start_points(Facade.get_acquisition_maximizer(scenario)),
            initial_design=design,
            overwrite=not resume,
            logging_level=logging.ERROR,
        )
        self._out = out
        # Read once SMAC wrote them: the same for every save of this driver.
        self._scenario = {name: json.loads((out / name).read_text()) for name in _SCENARIO_FILES}
        if saved and self._smac.runhistory.submitted < _submitted(saved):
            _restore(out, saved)
            smbo = self._smac.optimizer
            smbo.reset()
            smbo.load()
        self.save()

    def ask(self) -> Proposal:
        info = self._smac.ask()
        self.save()
        return Proposal(info.config, float(info.budget or 1.0), info)

    def tell(self, proposal: Proposal, cost: float, *, crashed: bool, time_s: float) -> None:
        from smac.runhistory import StatusType, TrialValue

        status = StatusType.CRASHED if crashed else StatusType.SUCCESS
        self._smac.tell(
            proposal.info, TrialValue(cost=cost, time=time_s, status=status), save=False
        )
        self.save()

    def running(self) -> list[Proposal]:
        return [
            Proposal(t.config, float(t.budget or 1.0), t)
            for t in self._smac.runhistory.get_running_trials()
        ]

    def save(self) -> None:
        """Write stats, runhistory and intensifier state as one file (:data:`STATE_FILE`,
        renamed into place), and SMAC's own files beside it."""
        smbo = self._smac.optimizer
        stats = {
            "used_walltime": smbo.used_walltime,
            "used_target_function_walltime": smbo.used_target_function_walltime,
            "used_target_function_cputime": smbo.used_target_function_cputime,
            "last_update": time.time(),
            "finished": False,
        }
        self._out.mkdir(parents=True, exist_ok=True)
        files = {
            "runhistory.json": _saved(self._out / "runhistory.json", smbo.runhistory.save),
            "intensifier.json": _saved(self._out / "intensifier.json", smbo.intensifier.save),
            "optimization.json": stats,
            **self._scenario,
        }
        # SMAC's files are a working copy (made again from this one on a resume): unflushed.
        write_atomic(self._out / "optimization.json", json.dumps(stats, indent=2), fsync=False)
        write_json_atomic(self._out / STATE_FILE, {"format": 1, "files": files})


class RandomSearch:
    """Uniform random configurations, each at ``max_epochs``; ``initial`` ones first."""

    def __init__(
        self,
        space: ConfigurationSpace,
        folder: Path,
        *,
        max_epochs: float,
        seed: int = 0,
        initial: list[Configuration] | None = None,
        resume: bool = False,
    ) -> None:
        self._space = space
        self._budget = float(max_epochs)
        self._seed = seed
        self._initial = list(initial or [])
        self._path = folder / "random_search.json"
        folder.mkdir(parents=True, exist_ok=True)
        self._n_asked = 0
        self._running: list[dict[str, Any]] = []
        if resume and self._path.is_file():
            state = json.loads(self._path.read_text())
            self._n_asked = int(state["n_asked"])
            self._running = list(state["running"])
        elif not resume and self._path.exists():
            raise PomliaError(f"random-search state already exists in '{self._path}'; use --resume")
        self.save()

    def _config(self, index: int) -> Configuration:
        if index < len(self._initial):
            return self._initial[index]
        # One seed per index: the sequence is the same however often the study was resumed.
        # Folded into numpy's 32 bits (a study seed from 4295 on overflowed them).
        self._space.seed((self._seed * 1_000_003 + index) % 2**32)
        config = self._space.sample_configuration()
        config.origin = "Random search"
        return config

    def ask(self) -> Proposal:
        config = self._config(self._n_asked)
        self._n_asked += 1
        self._running.append({"values": plain_values(config), "origin": config.origin})
        self.save()
        return Proposal(config, self._budget)

    def tell(self, proposal: Proposal, cost: float, *, crashed: bool, time_s: float) -> None:
        key = proposal.key
        self._running = [r for r in self._running if config_key(r["values"]) != key]
        self.save()

    def running(self) -> list[Proposal]:
        out = []
        for r in self._running:
            config = Configuration(self._space, values=r["values"])
            config.origin = r.get("origin")
            out.append(Proposal(config, self._budget))
        return out

    def save(self) -> None:
        state = {"n_asked": self._n_asked, "running": self._running}
        write_json_atomic(self._path, state)
