"""``jobs/automl.sbatch`` run natively with bash and a stand-in ``pomlia`` that prints the
arguments it was given: what the job passes to ``pomlia automl run``."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "automl.sbatch"


def _args(tmp_path: Path, **env: str) -> list[str]:
    """The argument list the script passes to `pomlia`, with ``env`` set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "pomlia"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("TRIALS", "PARALLEL", "EXTRA_ARGS")}
    base = {k: v for k, v in base.items() if not k.endswith("_EPOCHS")}
    full = {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "POMLIA_HOME": str(tmp_path)}
    out = subprocess.run(
        ["bash", str(SCRIPT)], env={**full, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_budgets_are_passed_only_when_set(tmp_path: Path) -> None:
    """The script always passed `--min-epochs 1 --max-epochs 9 --trials 40 --parallel 4`,
    overriding the CLI's defaults, whose epoch budgets scale with the data set."""
    plain = _args(tmp_path, TASK="blood")
    assert plain == ["automl", "run", "blood", "--study", "blood-automl", "--executor", "slurm"]
    chosen = _args(tmp_path, TASK="blood", STUDY="hb", MAX_EPOCHS="27", PARALLEL="8")
    assert " ".join(chosen[5:]) == "--executor slurm --max-epochs 27 --parallel 8"
    (tmp_path / "runs" / "hb").mkdir(parents=True)
    (tmp_path / "runs" / "hb" / "study.json").write_text("{}")
    resumed = _args(
        tmp_path, TASK="blood", STUDY="hb", TRIALS="60", MIN_EPOCHS="3", EXTRA_ARGS="--seed 1"
    )
    # no --executor on a resume: the study keeps its own, and each requeued job noted it ignored
    wanted = "--resume --trials 60 --min-epochs 3 --seed 1"
    assert shlex.join(resumed[5:]) == wanted
