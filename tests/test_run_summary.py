"""A run's configuration in one line (``pomlia runs list``, the study's live table, the HTML
report), and registry queries (and `pomlia similar`) without loading torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pomlia_hpc.automl.records import config_summary


def test_a_configuration_in_one_line() -> None:
    probe = {
        "arch": "resnet18",
        "init": "encoder",
        "mode": "linear_probe",
        "lr_head": 0.0018,
        "optimizer": "adamw",
        "batch_size": 32,
        "extra_data": "nearest",
        "extra_n": 200,
    }
    assert config_summary(probe) == "resnet18 encoder/linear_probe lr=1.8e-03 adamw bs=32 +200nn"
    scratch = {"arch": "small_cnn", "lr": 0.01, "optimizer": "sgd", "batch_size": 64}
    assert config_summary(scratch) == "small_cnn lr=1.0e-02 sgd bs=64"


#: Registry queries: listing runs, tasks, or a slot's history.
QUERIES = [
    ["runs", "list"],
    ["runs", "list", "--study", "s"],
    ["task", "list"],
    ["deploy", "history", "demo"],
    ["loop", "show", "demo"],
]


def test_registry_queries_load_no_torch(tmp_path: Path) -> None:
    # Listing runs, tasks or a slot's history is a registry query: importing the trainer or
    # the exporter (torch, sklearn: 3-4 s before the first line) is not needed. All queries
    # run in one fresh interpreter, one after the other (a start costs seconds): a module once
    # imported stays in sys.modules, so whether torch is there after each query names the first
    # one that imported it.
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pomlia_hpc.cli import app\n"
        f"home = {str(tmp_path)!r}\n"
        "CliRunner().invoke(app, ['--home', home, 'init'])\n"
        # an empty workspace has no slot and no study: the query runs and says so
        "missing = (\"slot 'demo' not found\", \"study 's' not found\")\n"
        f"for args in {QUERIES!r}:\n"
        "    res = CliRunner().invoke(app, ['--home', home, *args])\n"
        "    assert res.exit_code == 0 or str(res.exception).startswith(missing), res.output\n"
        "    print(' '.join(args), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip().splitlines()[-len(QUERIES) :]
    assert loaded == [" ".join(args) + " False" for args in QUERIES], out.stdout + out.stderr


def test_help_and_registry_queries_load_no_submitit(tmp_path: Path) -> None:
    """The CLI imported the cluster's terminate module (and submitit with it, ~70 ms) for
    every command, only for its Ctrl-C message. Both commands run in one fresh interpreter,
    submitit looked for after each (once imported, it stays)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pomlia_hpc.cli import app\n"
        "for args in (['--help'], ['runs', 'list']):\n"
        f"    res = CliRunner().invoke(app, ['--home', {str(tmp_path)!r}, *args])\n"
        "    print(' '.join(args), 'submitit' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip().splitlines()[-2:]
    assert loaded == ["--help False", "runs list False"], out.stdout + out.stderr


def _similar_in_fresh_process(home: Path, *args: str) -> tuple[int, str, bool]:
    """``pomlia init`` then ``pomlia similar ARGS`` in one new interpreter: the exit code,
    stderr, and whether torch was imported by then."""
    code = (
        "import sys\n"
        "from pomlia_hpc.cli import main\n"
        "def run(*args):\n"
        f"    sys.argv = ['pomlia', '--home', {str(home)!r}, *args]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        return exc.code\n"
        "run('init')\n"
        f"print(run('similar', *{list(args)!r}))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    status, loaded = out.stdout.strip().splitlines()[-2:]
    return int(status), out.stderr, loaded == "True"


def test_similar_loads_no_torch(tmp_path: Path) -> None:
    # `pomlia similar` ranks data sets from stored summaries and a FAISS index: torch and
    # DeepSpeed (the encoder's training and extraction) are not needed (4 s of a 5.6 s answer).
    status, err, torch_loaded = _similar_in_fresh_process(tmp_path, "blood", "--encoder", "e1")
    assert status == 4 and "encoder 'e1' not found" in err, err
    assert not torch_loaded


def test_similar_without_an_encoder_option_loads_no_torch(tmp_path: Path) -> None:
    """Without --encoder the command looks up the workspace's default encoder; that lookup
    lived beside the refresh (training, extraction) and imported torch, torchvision and
    DeepSpeed (8-15 s on a loaded machine) before saying that no encoder is registered."""
    status, err, torch_loaded = _similar_in_fresh_process(tmp_path, "blood")
    assert status == 4 and "no encoder is registered" in err, err
    assert not torch_loaded


def test_fingerprint_package_names_are_the_objects_after_every_submodule_import() -> None:
    # Lazy package names (PEP 562) lose to a submodule of the same name once it is imported
    # (the loop's stage once called the module `fingerprint.extract`): every exported name must
    # still be the function or class after all submodules are loaded, in a fresh interpreter.
    code = (
        "import importlib, pkgutil, types\n"
        "import pomlia_hpc.fingerprint as fp\n"
        "for m in pkgutil.iter_modules(fp.__path__):\n"
        "    importlib.import_module(f'pomlia_hpc.fingerprint.{m.name}')\n"
        "bad = [n for n in fp.__all__ if isinstance(getattr(fp, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
