"""``pomlia deploy``: a self-contained directory to build the Apptainer image and serve on Slurm.

Layout written (atomically: a temp directory renamed into place)::

    <home>/models/<name>/deploy/<version>/
      bundle/          the exported model (card.json, model.onnx, model.pt2)
      src/             the project source snapshot the image installs (with requirements.lock)
      apptainer.def    containers/apptainer.def with SRC=src, BUNDLE=bundle filled in
      serve.sbatch     jobs/serve.sbatch with the cluster profile's #SBATCH lines, the
                       deployment id and the prediction log directory filled in

The server logs to ``<home>/logs/predictions/<name>/`` (bound at ``/logs`` in the container),
where the monitoring job reads, and each record carries the deployment id.

Then, on the cluster: ``apptainer build pomlia-serve.sif apptainer.def && sbatch serve.sbatch``
(or ``pomlia deploy MODEL --submit`` once the image exists).
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from pomlia_hpc.cluster.records import sbatch_script
from pomlia_hpc.config import ClusterProfile
from pomlia_hpc.errors import InputError
from pomlia_hpc.files import staged_dir
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import Deployment, Registry
from pomlia_hpc.serve.export import bundle_for_model, export_model
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.workspace import Workspace

SOURCE_ROOT = Path(__file__).resolve().parents[2]
DEF_TEMPLATE = Path("containers") / "apptainer.def"
SBATCH_TEMPLATE = Path("jobs") / "serve.sbatch"
SOURCE_ITEMS = ("pyproject.toml", "requirements.lock", "README.md", "pomlia_hpc", "configs")
SETTINGS_BLOCK = re.compile(r"# >>> pomlia deploy settings.*?# <<< pomlia deploy settings", re.S)
SECTION = re.compile(r"^%(\w+)\s*$", re.M)


@dataclass(frozen=True)
class DeployResult:
    """Where the deployment directory is, and its registry row."""

    directory: Path
    deployment_id: int
    def_file: Path
    sbatch_file: Path
    job_id: int | None = None


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


def sbatch_directives(profile: ClusterProfile, *, name: str) -> list[str]:
    """``#SBATCH`` lines for one serving job on ``profile`` (at least one GPU)."""
    gpus = max(1, profile.gpus_per_node)
    hours, minutes = divmod(profile.time_min, 60)
    lines = [
        f"--job-name={name}",
        "--nodes=1",
        "--ntasks=1",
        f"--gres=gpu:{gpus}",
        f"--cpus-per-task={profile.cpus_per_task}",
        f"--mem={int(profile.mem_gb)}G",
        f"--time={hours:02d}:{minutes:02d}:00",
        "--signal=B:TERM@60",
        "--output=pomlia-serve-%j.out",
    ]
    for flag, value in (
        ("partition", profile.partition),
        ("account", profile.account),
        ("qos", profile.qos),
    ):
        if value:
            lines.append(f"--{flag}={value}")
    return [f"#SBATCH {line}" for line in lines]


def render_sbatch(
    template: str,
    profile: ClusterProfile,
    *,
    name: str,
    deploy_dir: Path,
    deployment_id: int,
    log_dir: Path,
) -> str:
    """The template with the profile's ``#SBATCH`` lines, and ``DEPLOY_DIR``,
    ``DEPLOYMENT_ID`` and ``LOG_DIR`` (the prediction log directory) set; the environment
    (``POMLIA_DEPLOY_DIR`` ...) still overrides them when the job is submitted."""
    lines = template.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    kept = [line for line in lines if not line.startswith("#SBATCH")]
    kept[first:first] = sbatch_directives(profile, name=name)
    setup = "\n".join(profile.setup)
    settings = (
        "# >>> pomlia deploy settings (rewritten by `pomlia deploy`)\n"
        f"DEPLOY_DIR=${{POMLIA_DEPLOY_DIR:-{shlex.quote(str(deploy_dir))}}}\n"
        f"DEPLOYMENT_ID=${{POMLIA_DEPLOYMENT_ID:-{int(deployment_id)}}}\n"
        f"LOG_DIR=${{POMLIA_LOG_DIR:-{shlex.quote(str(log_dir))}}}\n"
        + (f"{setup}\n" if setup else "")
        + "# <<< pomlia deploy settings"
    )
    text = "\n".join(kept) + "\n"
    if not SETTINGS_BLOCK.search(text):
        raise InputError(f"{SBATCH_TEMPLATE}: the '# >>> pomlia deploy settings' block is missing")
    return SETTINGS_BLOCK.sub(lambda _m: settings, text)


def _copy_source(dest: Path, root: Path) -> None:
    for item in SOURCE_ITEMS:
        src = root / item
        if not src.exists():
            raise InputError(
                f"deploy needs the pomlia-hpc source tree; {src} is missing "
                "(run from a checkout installed with `pip install -e .`)"
            )
        if src.is_dir():
            shutil.copytree(
                src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
            )
        else:
            shutil.copy2(src, dest / item)


def write_deployment(
    registry: Registry,
    workspace: Workspace,
    ref: str,
    profile: ClusterProfile,
    *,
    out_dir: Path | None = None,
    source_root: Path = SOURCE_ROOT,
) -> DeployResult:
    """Export ``ref`` if needed and write its deployment directory (see module docstring);
    records a ``Deployment`` row (status ``created``)."""
    row = resolve_model(registry, ref)
    bundle = bundle_for_model(registry, ref) or export_model(registry, workspace, ref).bundle
    target = (out_dir or workspace.path("models", row.name, "deploy", bundle.version)).resolve()
    if target.exists():
        raise InputError(f"deploy directory {target} already exists; remove it or pass --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The row first: its id goes into the script, so every record the server logs names it.
    with registry.session() as s:
        dep = Deployment(model_id=row.id, bundle_path=str(target / "bundle"), status="created")
        s.add(dep)
        s.flush()
        dep_id = dep.id
    written = False
    try:
        with staged_dir(target) as staged:
            tmp = staged.path
            shutil.copytree(bundle.root, tmp / "bundle")
            (tmp / "src").mkdir()
            _copy_source(tmp / "src", source_root)
            def_text = render_def(
                (source_root / DEF_TEMPLATE).read_text(), {"SRC": "src", "BUNDLE": "bundle"}
            )
            (tmp / "apptainer.def").write_text(def_text)
            sbatch = render_sbatch(
                (source_root / SBATCH_TEMPLATE).read_text(),
                profile,
                name=f"pomlia-serve-{row.name}"[:64],
                deploy_dir=target,
                deployment_id=dep_id,
                log_dir=log_dir(workspace.path("logs"), row.name),
            )
            (tmp / "serve.sbatch").write_text(sbatch)
            (tmp / "serve.sbatch").chmod(0o755)
        if not staged.published:
            raise InputError(
                f"deploy directory {target} appeared meanwhile; remove it or pass --out"
            )
        written = True
    finally:
        if not written:  # no directory, no deployment
            with registry.session() as s:
                if (orphan := s.get(Deployment, dep_id)) is not None:
                    s.delete(orphan)
    return DeployResult(target, dep_id, target / "apptainer.def", target / "serve.sbatch")


def submit_deployment(registry: Registry, result: DeployResult) -> DeployResult:
    """``sbatch`` the deployment's script (the image must exist); records the job."""
    sif = result.directory / "pomlia-serve.sif"
    if not sif.is_file():
        raise InputError(
            f"{sif} does not exist; build it first: cd {result.directory} && "
            "apptainer build pomlia-serve.sif apptainer.def"
        )
    job_id = sbatch_script(
        registry,
        result.sbatch_file,
        name="pomlia-serve",
        meta={"deployment_id": result.deployment_id},
    )
    with registry.session() as s:
        dep = s.get(Deployment, result.deployment_id)
        if dep is not None:
            dep.job_id, dep.status = job_id, "submitted"
    return DeployResult(
        result.directory, result.deployment_id, result.def_file, result.sbatch_file, job_id
    )
