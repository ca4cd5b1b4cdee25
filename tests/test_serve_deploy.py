"""The Apptainer definition, its runscript and test (run natively with /bin/sh, as Apptainer
would: Apptainer cannot run here), and ``pomlia deploy``'s directory with the sbatch script
(run natively with bash)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

import pomlia_hpc.serve.server as servermod
from pomlia_hpc.cli import app
from pomlia_hpc.errors import InputError, NotFoundError
from pomlia_hpc.models.catalog import register_model
from pomlia_hpc.registry import Deployment, Registry
from pomlia_hpc.serve.apptainer import parse_def, render_def
from pomlia_hpc.serve.config import ServeConfig
from pomlia_hpc.serve.demo import cached_demo_bundle
from pomlia_hpc.serve.deploy import SOURCE_ITEMS
from pomlia_hpc.serve.logfiles import read_records
from pomlia_hpc.serve.records import PredictionLine
from pomlia_hpc.serve.reference import REFERENCE_FILE
from pomlia_hpc.serve.smoke import smoke
from pomlia_hpc.workspace import Workspace
from tests.fixtures.fake_slurm import FakeSlurm

REPO = Path(__file__).resolve().parents[1]
DEF = REPO / "containers" / "apptainer.def"
SBATCH = REPO / "jobs" / "serve.sbatch"
REQUIRED_SECTIONS = {
    "arguments",
    "files",
    "post",
    "environment",
    "runscript",
    "test",
    "labels",
    "help",
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)


def native_env(**extra: str) -> dict[str, str]:
    """The environment a container would give, but with this venv's ``pomlia`` on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("POMLIA_SERVE_TOKEN", None)
    env.update(extra)
    return env


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        time.sleep(0.1)
    raise TimeoutError(path)


def test_definition_has_every_section_and_pins_the_stack() -> None:
    header, sections = parse_def(DEF.read_text())
    assert header["Bootstrap"] == "docker" and header["From"].startswith("python:3.11")
    assert set(sections) >= REQUIRED_SECTIONS
    # "<source> <destination>"; the source may be a template such as "{{ SRC }}/x".
    files = dict(
        line.strip().rsplit(maxsplit=1) for line in sections["files"].splitlines() if line.strip()
    )
    for item in SOURCE_ITEMS:
        assert files[f"{{{{ SRC }}}}/{item}"] == f"/opt/pomlia/src/{item}"
    assert files["{{ BUNDLE }}"] == "/opt/pomlia/bundle"
    post = sections["post"]
    assert "--no-build-isolation -r requirements.lock" in post  # the pinned versions
    assert "--no-deps" in post and "pip check" in post
    assert "exec pomlia serve" in sections["runscript"]
    assert "pomlia_hpc.serve.smoke" in sections["test"]


def test_rendered_definition_has_no_template_left() -> None:
    text = render_def(DEF.read_text(), {"SRC": "src", "BUNDLE": "bundle"})
    header, sections = parse_def(text)
    assert "{{" not in text and "arguments" not in sections
    assert "src/requirements.lock /opt/pomlia/src/requirements.lock" in sections["files"]
    assert "bundle /opt/pomlia/bundle" in sections["files"]
    assert header["From"].startswith("python:3.11")


def test_runscript_serves_the_bundle(bundle: Path, tmp_path: Path) -> None:
    _, sections = parse_def(DEF.read_text())
    address = tmp_path / "address"
    env = native_env(
        POMLIA_BUNDLE=str(bundle),
        POMLIA_SERVE_HOST="127.0.0.1",
        POMLIA_SERVE_PORT="0",
        POMLIA_LOG_DIR=str(tmp_path / "logs"),
    )
    proc = subprocess.Popen(
        ["sh", "-c", sections["runscript"], "runscript", "--address-file", str(address)], env=env
    )
    try:
        url = wait_for(address, proc)
        out = smoke(url)
        assert out["model"] == "demo"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert [r.id for r in read_records(tmp_path / "logs")] == [out["id"]]


def test_definition_test_section_passes(bundle: Path) -> None:
    _, sections = parse_def(DEF.read_text())
    proc = subprocess.run(
        ["sh", "-c", sections["test"]],
        env=native_env(POMLIA_BUNDLE=str(bundle)),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke test ok" in proc.stdout


def refusal(result: Result) -> str:
    """The message of the :class:`InputError` a command ended with (exit code 2 for a user)."""
    assert isinstance(result.exception, InputError), result.output
    return str(result.exception)


def register_exported(workspace: Workspace, bundle: Path) -> Registry:
    """Register the cached demo checkpoint as 'demo' with its existing export (no re-export)."""
    reg = Registry.open(workspace.db_url)
    card = {**json.loads((bundle / "card.json").read_text()), "export": {"bundle": str(bundle)}}
    register_model(reg, "demo", next(bundle.parents[1].glob("*.pt")), card=card)
    return reg


@pytest.fixture
def deployed(workspace: Workspace, bundle: Path) -> tuple[Registry, Path]:
    """A workspace with model 'demo' registered (the cached checkpoint) and `pomlia deploy`
    run with the haicore profile."""
    reg = register_exported(workspace, bundle)
    result = CliRunner().invoke(app, ["deploy", "demo", "--profile", "haicore"])
    assert result.exit_code == 0, result.output
    (directory,) = workspace.path("models", "demo", "deploy").iterdir()
    return reg, directory


def test_deploy_writes_a_buildable_directory(deployed: tuple[Registry, Path]) -> None:
    reg, directory = deployed
    _, sections = parse_def((directory / "apptainer.def").read_text())
    assert "{{" not in (directory / "apptainer.def").read_text()
    for line in sections["files"].splitlines():
        source = line.strip().rsplit(maxsplit=1)[0]
        assert (directory / source).exists(), f"%files source {source} missing"
    assert (directory / "bundle" / "card.json").is_file()
    assert (directory / "src" / "pomlia_hpc" / "serve" / "app.py").is_file()
    assert not list((directory / "src").rglob("__pycache__"))
    script = (directory / "serve.sbatch").read_text()
    with reg.session() as s:
        (dep,) = s.query(Deployment).all()
        assert dep.status == "created" and dep.bundle_path == str(directory / "bundle")
    home = directory.parents[3]  # <home>/models/demo/deploy/<version>
    for line in (
        # The monitor's directory, and the deployment id on every record.
        f"LOG_DIR=${{POMLIA_LOG_DIR:-{home / 'logs' / 'predictions' / 'demo'}}}",
        f"DEPLOYMENT_ID=${{POMLIA_DEPLOYMENT_ID:-{dep.id}}}",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=normal",
        "#SBATCH --mem=64G",
        "#SBATCH --time=04:00:00",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --signal=B:TERM@60",
        "module load devel/cuda/12.4",
        f"DEPLOY_DIR=${{POMLIA_DEPLOY_DIR:-{directory}}}",
    ):
        assert line in script
    assert (
        subprocess.run(["bash", "-n", str(directory / "serve.sbatch")], check=False).returncode == 0
    )
    # The workspace's profile, not haicore: the refusal named neither the profile the directory
    # was written for nor the command that reuses it (README's `deploy demo --submit` failed).
    again = CliRunner().invoke(app, ["deploy", "demo", "--submit"])
    assert "already exists" in refusal(again)
    assert "serve.sbatch written for cluster profile 'haicore'" in refusal(again)
    assert "run `pomlia deploy demo --profile haicore --submit` to reuse it" in refusal(again)
    (directory / "serve.sbatch").write_text(script + "# edited\n")
    edited = CliRunner().invoke(app, ["deploy", "demo", "--profile", "haicore"])
    assert "serve.sbatch other than this cluster profile gives" in refusal(edited)


def test_refusal_names_the_profile_the_script_was_written_with(
    workspace: Workspace, bundle: Path
) -> None:
    """`local` and `debug` give the same serve.sbatch: a directory written with the workspace's
    `local` was said to be "written for cluster profile 'debug'" (the first that matched). The
    script records its profile now; one without the record names every profile that fits."""
    register_exported(workspace, bundle)
    wrote = CliRunner().invoke(app, ["deploy", "demo"])  # the workspace's profile: local
    assert wrote.exit_code == 0, wrote.output
    (directory,) = workspace.path("models", "demo", "deploy").iterdir()
    script = (directory / "serve.sbatch").read_text()
    assert "# cluster profile: local\n" in script
    other = CliRunner().invoke(app, ["--cluster", "slurm-local", "deploy", "demo"])
    said = " ".join(refusal(other).split())
    assert "serve.sbatch written for cluster profile 'local', not for" in said
    assert "run `pomlia deploy demo --profile local` to reuse it" in said
    assert "debug" not in said
    # Reused with the profile it names, and with `debug`, which gives the same job.
    for profile in ("local", "debug"):
        again = CliRunner().invoke(app, ["deploy", "demo", "--profile", profile])
        assert again.exit_code == 0 and "reused" in again.output, again.output
    # A directory from before the record: both profiles that give its script are named.
    old = "".join(line for line in script.splitlines(True) if "# cluster profile" not in line)
    (directory / "serve.sbatch").write_text(old)
    unrecorded = CliRunner().invoke(app, ["--cluster", "slurm-local", "deploy", "demo"])
    said = " ".join(refusal(unrecorded).split())
    assert "written for cluster profile 'debug' or 'local' (the script does not record" in said
    assert "`pomlia deploy demo --profile debug` or `pomlia deploy demo --profile local`" in said
    reused = CliRunner().invoke(app, ["deploy", "demo"])  # still reused as it is
    assert reused.exit_code == 0 and "reused" in reused.output, reused.output


def test_submit_checks_the_image_first_and_reuses_the_written_directory(
    workspace: Workspace,
    bundle: Path,
    fake_slurm: FakeSlurm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pomlia deploy MODEL --submit` wrote the directory, then failed for want of the image;
    run again once the image was built, it refused the directory it had written itself. The
    image is checked before anything is written now, and the directory written for the same
    bundle and profile is reused with its deployment."""
    reg = register_exported(workspace, bundle)
    deploys = workspace.path("models", "demo", "deploy")
    cli = CliRunner()
    first = cli.invoke(app, ["deploy", "demo", "--profile", "haicore", "--submit"])
    assert "holds no deployment yet" in refusal(first)
    assert "nothing was written" in refusal(first)
    assert "pomlia deploy demo --profile haicore" in refusal(first)  # the command to write it
    assert not deploys.exists() or not any(deploys.iterdir())
    with reg.session() as s:
        assert s.query(Deployment).count() == 0
    wrote = cli.invoke(app, ["deploy", "demo", "--profile", "haicore"])
    assert wrote.exit_code == 0, wrote.output
    (directory,) = deploys.iterdir()
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{path}{os.pathsep}{tmp_path / 'nothing'}")
    no_tool = shutil.which("apptainer") is None
    no_image = cli.invoke(app, ["deploy", "demo", "--profile", "haicore", "--submit"])
    # the build command either way; where apptainer is missing, that it is
    assert "apptainer build pomlia-serve.sif apptainer.def" in refusal(no_image)
    assert ("Apptainer is not installed here" in refusal(no_image)) is no_tool
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "apptainer").write_text("#!/bin/sh\nexit 0\n")
    (tool / "apptainer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{path}{os.pathsep}{tool}")
    no_image = cli.invoke(app, ["deploy", "demo", "--profile", "haicore", "--submit"])
    assert "build it first" in refusal(no_image)
    monkeypatch.setenv("PATH", path)
    (directory / "pomlia-serve.sif").write_bytes(b"built image")  # apptainer build
    # `pomlia monitor reference` (or a pipeline's monitor stage) rewrites the model's reference
    # after the directory was written: still the same deployment
    (bundle / REFERENCE_FILE).write_bytes(b"a newer reference")
    fake_slurm.hold()
    submitted = cli.invoke(app, ["deploy", "demo", "--profile", "haicore", "--submit"])
    assert submitted.exit_code == 0, submitted.output
    assert "reused" in submitted.output and "submitted: registry job" in submitted.output
    after = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    assert after == {**before, directory / "pomlia-serve.sif": b"built image"}
    with reg.session() as s:
        (dep,) = s.query(Deployment).all()
        assert dep.status == "submitted" and dep.job_id is not None
    (sbatch,) = fake_slurm.calls("sbatch")
    assert sbatch[-1] == str(directory / "serve.sbatch")


def test_an_out_that_is_a_file_or_another_deployment_is_refused_fittingly(
    deployed: tuple[Registry, Path], tmp_path: Path
) -> None:
    """`deploy write M --out FILE` said "remove it or pass --out" although --out was given."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    res = CliRunner().invoke(app, ["deploy", "write", "demo", "--out", str(afile)])
    message = refusal(res)
    assert "notes.txt is a file: expected a folder" in message
    assert "choose another --out" in message and "pass --out" not in message
    assert afile.read_text() == "mine"
    other = tmp_path / "site"
    other.mkdir()
    (other / "index.html").write_text("<html/>")
    res = CliRunner().invoke(app, ["deploy", "demo", "--profile", "haicore", "--out", str(other)])
    assert "already exists and holds no deployment" in refusal(res)
    assert "choose another --out" in refusal(res)
    assert [p.name for p in other.iterdir()] == ["index.html"]
    default = CliRunner().invoke(app, ["deploy", "demo", "--profile", "local"])
    assert "remove it or pass --out DIR" in refusal(default)


def test_an_out_that_cannot_be_made_is_refused_in_one_line(
    workspace: Workspace, bundle: Path, tmp_path: Path
) -> None:
    """`deploy M --out /proc/x` (and `deploy write`) ended in a FileNotFoundError traceback
    from the staging folder, `--out FILE/sub` in a FileExistsError: both are one line naming
    the path now, exit 2, checked before anything is exported or written."""
    reg = register_exported(workspace, bundle)
    afile = tmp_path / "f"
    afile.write_text("mine")
    cases = (
        (["deploy", "demo", "--out", "/proc/pomlia-x"], "--out /proc/pomlia-x cannot be created"),
        (["deploy", "write", "demo", "--out", "/proc/x/y"], "--out /proc/x/y cannot be created"),
        (["deploy", "demo", "--out", str(afile / "sub")], f"{afile} is a file, not a folder"),
    )
    for args, expected in cases:
        res = CliRunner().invoke(app, args)
        assert expected in refusal(res), args  # an InputError: one line, exit 2
        assert "choose another --out" in refusal(res)
    assert afile.read_text() == "mine"
    with reg.session() as s:
        assert s.query(Deployment).count() == 0


def test_sbatch_script_runs_the_server_and_prints_its_address(
    workspace: Workspace, bundle: Path, tmp_path: Path
) -> None:
    reg = register_exported(workspace, bundle)
    out = tmp_path / "deploy dir"  # a space: the script must quote its paths
    result = CliRunner().invoke(app, ["deploy", "demo", "--profile", "local", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with reg.session() as s:
        (deployment_id,) = s.query(Deployment.id).filter_by(bundle_path=str(out / "bundle")).one()
    env = native_env(POMLIA_SERVE_RUNTIME="native", POMLIA_SERVE_HOST="127.0.0.1")
    missing_image = subprocess.run(
        ["bash", str(out / "serve.sbatch")],
        capture_output=True,
        text=True,
        env={**env, "POMLIA_SERVE_RUNTIME": "apptainer"},
        check=False,
        timeout=60,
    )
    assert missing_image.returncode == 2 and "apptainer build" in missing_image.stderr
    log = tmp_path / "job.out"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            ["bash", str(out / "serve.sbatch")], env=env, stdout=f, stderr=subprocess.STDOUT
        )
    try:
        url = wait_for(out / "address", proc)
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/ready").status_code == 200
        smoke(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert f"at {url}" in text  # the address is printed in the job output
    # Logged where the monitor reads, under the deployment's id.
    (record,) = read_records(workspace.path("logs", "predictions", "demo"), PredictionLine)
    assert record.deployment == deployment_id
    assert not (out / "logs").exists()


def test_serve_refuses_a_deployment_id_the_registry_does_not_have(
    deployed: tuple[Registry, Path], bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pomlia serve MODEL --deployment-id 999` served, writing a deployment that does not
    exist into every record."""
    reg, directory = deployed
    started: list[int | None] = []

    def run_server(_bundle: object, cfg: ServeConfig, _logs: Path, follow: object = None) -> None:
        started.append(cfg.deployment_id)

    monkeypatch.setattr(servermod, "run_server", run_server)
    with reg.session() as s:
        (dep_id,) = s.query(Deployment.id).filter_by(bundle_path=str(directory / "bundle")).one()
    res = CliRunner().invoke(app, ["serve", "demo", "--deployment-id", "999"])
    assert isinstance(res.exception, NotFoundError), res.output
    assert "--deployment-id 999: no such deployment in the registry" in str(res.exception)
    assert f"deployments of model demo: {dep_id}" in str(res.exception)
    register_model(reg, "other", next(bundle.parents[1].glob("*.pt")))
    res = CliRunner().invoke(app, ["serve", "other", "--deployment-id", str(dep_id)])
    assert "is a deployment of model demo, not of other" in refusal(res)
    assert started == []
    ok = CliRunner().invoke(app, ["serve", "demo", "--deployment-id", str(dep_id)])
    assert ok.exit_code == 0, ok.output
    assert started == [dep_id]


def test_serve_tells_the_server_when_its_deployment_was_created(
    deployed: tuple[Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new deployment's server read every older file of the log at start-up: it now
    knows the registry's creation time and skips the files written before it."""
    reg, directory = deployed
    started: list[ServeConfig] = []

    def run_server(_bundle: object, cfg: ServeConfig, _logs: Path, follow: object = None) -> None:
        started.append(cfg)

    monkeypatch.setattr(servermod, "run_server", run_server)
    with reg.session() as s:
        dep = s.query(Deployment).filter_by(bundle_path=str(directory / "bundle")).one()
        dep_id, created = dep.id, dep.created_at
    ok = CliRunner().invoke(app, ["serve", "demo", "--deployment-id", str(dep_id)])
    assert ok.exit_code == 0, ok.output
    ok = CliRunner().invoke(app, ["serve", "demo"])
    assert ok.exit_code == 0, ok.output
    assert [c.deployment_created for c in started] == [created, None]


@pytest.mark.usefixtures("wide_console")  # each hint on one line
def test_hints_quote_a_directory_with_a_space_and_a_dollar(
    workspace: Workspace, bundle: Path, tmp_path: Path
) -> None:
    """`build : cd /x/sp ace/...` split at the space when pasted (and a `$` expanded): the
    directory in every suggested command is shell-quoted."""
    import shlex

    register_exported(workspace, bundle)
    out = tmp_path / "sp ace $x" / "dep"
    cli = CliRunner()
    res = cli.invoke(app, ["deploy", "demo", "--profile", "haicore", "--out", str(out)])
    assert res.exit_code == 0, res.output
    hints = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1]
        for line in res.output.splitlines()
        if line.strip().startswith(("build :", "serve :"))
    }
    assert shlex.split(hints["build"])[:3] == ["cd", str(out), "&&"], hints
    assert shlex.split(hints["serve"])[:3] == ["cd", str(out), "&&"], hints
    submit = cli.invoke(
        app, ["deploy", "demo", "--profile", "haicore", "--out", str(out), "--submit"]
    )
    build = refusal(submit).rsplit(": ", 1)[1]
    assert shlex.split(build)[:3] == ["cd", str(out), "&&"], build


def test_sbatch_script_passes_the_token_in_the_environment_not_the_command_line(
    workspace: Workspace, bundle: Path, tmp_path: Path
) -> None:
    """A command line is world-readable (/proc/PID/cmdline): the token must not be on
    apptainer's; APPTAINERENV_* reaches the container even with --cleanenv. Apptainer is not
    installed here: a stand-in records its arguments and environment."""
    register_exported(workspace, bundle)
    out = tmp_path / "deploy"
    result = CliRunner().invoke(app, ["deploy", "demo", "--profile", "local", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (out / "pomlia-serve.sif").touch()
    tools = tmp_path / "tools"
    tools.mkdir()
    seen = tmp_path / "seen"
    stand_in = tools / "apptainer"
    stand_in.write_text(f'#!/bin/sh\necho "$@" > "{seen}.args"\nenv > "{seen}.env"\n')
    stand_in.chmod(0o755)
    secret = "s3cret-token-0123456789abcdef"
    env = native_env(POMLIA_SERVE_TOKEN=secret, POMLIA_LOG_DIR=str(tmp_path / "logs"))
    env["PATH"] = f"{tools}:{env['PATH']}"
    run = subprocess.run(
        ["bash", str(out / "serve.sbatch")], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode == 0, run.stderr
    args = Path(f"{seen}.args").read_text()
    assert args.startswith("run --nv --cleanenv") and secret not in args
    assert f"APPTAINERENV_POMLIA_SERVE_TOKEN={secret}" in Path(f"{seen}.env").read_text()
