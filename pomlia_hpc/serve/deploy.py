"""``pomlia deploy``: a self-contained directory to build the Apptainer image and serve on Slurm.

Layout written (atomically: a temp directory renamed into place)::

    <home>/models/<name>/deploy/<version>/
      bundle/          the exported model (card.json, card.sha256, model.onnx, model.pt2)
      src/             the project source snapshot the image installs (with requirements.lock)
      apptainer.def    containers/apptainer.def with SRC=src, BUNDLE=bundle filled in
      serve.sbatch     jobs/serve.sbatch with the cluster profile's #SBATCH lines, the
                       deployment id and the prediction log directory filled in

The server logs to ``<home>/logs/predictions/<name>/`` (bound at ``/logs`` in the container),
where the monitoring job reads, and each record carries the deployment id.

Then, on the cluster: ``apptainer build pomlia-serve.sif apptainer.def && sbatch serve.sbatch``
(or ``pomlia deploy MODEL --submit`` once the image exists: the directory written for the same
bundle and profile is reused, with its deployment id; ``--submit`` checks the image before
writing anything).
"""

from __future__ import annotations

import filecmp
import math
import re
import shlex
import shutil
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from pomlia_hpc.cluster.batch import jobs_named
from pomlia_hpc.cluster.records import cancel_unconfirmed, record_submission, sbatch_script
from pomlia_hpc.cluster.sacct import ENDING_STATES
from pomlia_hpc.config import ClusterProfile, cluster_profiles, load_cluster_profile
from pomlia_hpc.errors import ConfigError, InputError, NotFoundError
from pomlia_hpc.files import probe_writable, staged_dir
from pomlia_hpc.models.catalog import resolve_model
from pomlia_hpc.registry import Deployment, Job, Model, Registry
from pomlia_hpc.serve.apptainer import DEF_TEMPLATE, render_def
from pomlia_hpc.serve.exported import CARD_SUM, ExportedBundle, bundle_for_model
from pomlia_hpc.serve.predlog import log_dir
from pomlia_hpc.serve.reference import REFERENCE_FILE
from pomlia_hpc.serve.unfinished import settle_unfinished
from pomlia_hpc.vocab import FINAL_STATES, REQUEUABLE_STATES
from pomlia_hpc.workspace import Workspace

SOURCE_ROOT = Path(__file__).resolve().parents[2]
SBATCH_TEMPLATE = Path("jobs") / "serve.sbatch"
SOURCE_ITEMS = ("pyproject.toml", "requirements.lock", "README.md", "pomlia_hpc", "configs")
SETTINGS_BLOCK = re.compile(r"# >>> pomlia deploy settings.*?# <<< pomlia deploy settings", re.S)
DEPLOYMENT_ID_LINE = re.compile(r"^DEPLOYMENT_ID=\$\{POMLIA_DEPLOYMENT_ID:-(\d+)\}$", re.M)
#: The settings block's record of the cluster profile a script was written with (a comment:
#: profiles that give the same lines, `local` and `debug`, cannot be told apart otherwise).
PROFILE_LINE = re.compile(r"^# cluster profile: (.*)\n", re.M)
#: The job name every server `deploy --submit` queued had before :func:`server_job_name`: a
#: server an older version queued runs on after the upgrade, and is not submitted twice.
LEGACY_JOB_NAME = "pomlia-serve"
#: The job name ``serve.sbatch`` gives itself (a server submitted by hand has it).
SCRIPT_JOB_NAME = re.compile(r"^#SBATCH --job-name=([^\s,]+)$", re.M)
IMAGE = "pomlia-serve.sif"


@dataclass(frozen=True)
class DeployResult:
    """Where the deployment directory is, and its registry row."""

    directory: Path
    deployment_id: int
    def_file: Path
    sbatch_file: Path
    job_id: int | None = None
    reused: bool = False  # the directory was written before (same bundle and profile)
    #: The server job found queued or running when submitting (taken, not submitted again).
    already: str | None = None

    @property
    def submission(self) -> str:
        """What :func:`submit_deployment` did, in words."""
        if self.already is None:
            return f"submitted: registry job {self.job_id}"
        return f"already queued: registry job {self.job_id} ({self.already}); not submitted again"


def serving_resources(profile: ClusterProfile) -> ClusterProfile:
    """What one serving job (``serve.sbatch``) asks of ``profile``'s cluster: its CPUs,
    memory (GB) and time limit (minutes), and at least one GPU. The job holds them until its
    time limit, as a server runs until it is stopped."""
    return profile.model_copy(update={"gpus_per_node": max(1, profile.gpus_per_node)})


def slurm_mem(mem_gb: float) -> str:
    """``mem_gb`` GB as ``--mem`` (whole units): ``64G``, a fraction in MB rounded up (not
    ``int()``: 0.5 was ``0G``, all the node's memory to Slurm, and 1.5 was ``1G``)."""
    if mem_gb == int(mem_gb):
        return f"{int(mem_gb)}G"
    return f"{math.ceil(mem_gb * 1024)}M"


def sbatch_directives(profile: ClusterProfile, *, name: str) -> list[str]:
    """``#SBATCH`` lines for one serving job on ``profile`` (:func:`serving_resources`)."""
    gpus = serving_resources(profile).gpus_per_node
    hours, minutes = divmod(profile.time_min, 60)
    lines = [
        f"--job-name={name}",
        "--nodes=1",
        "--ntasks=1",
        f"--gres=gpu:{gpus}",
        f"--cpus-per-task={profile.cpus_per_task}",
        f"--mem={slurm_mem(profile.mem_gb)}",
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
    profile_name: str | None = None,
) -> str:
    """The template with the profile's ``#SBATCH`` lines, and ``DEPLOY_DIR``,
    ``DEPLOYMENT_ID`` and ``LOG_DIR`` (the prediction log directory) set; the environment
    (``POMLIA_DEPLOY_DIR`` ...) still overrides them when the job is submitted.
    ``profile_name`` (the profile's name or path as given) is recorded in a comment line."""
    lines = template.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    kept = [line for line in lines if not line.startswith("#SBATCH")]
    kept[first:first] = sbatch_directives(profile, name=name)
    setup = "\n".join(profile.setup)
    settings = (
        "# >>> pomlia deploy settings (rewritten by `pomlia deploy`)\n"
        # A name with a line break would end the comment: not recorded (named by matching).
        + (f"# cluster profile: {profile_name}\n" if (profile_name or "\n").isprintable() else "")
        + f"DEPLOY_DIR=${{POMLIA_DEPLOY_DIR:-{shlex.quote(str(deploy_dir))}}}\n"
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


def _sbatch_text(
    workspace: Workspace,
    profile: ClusterProfile,
    *,
    name: str,
    target: Path,
    deployment_id: int,
    source_root: Path,
    profile_name: str | None = None,
) -> str:
    """The ``serve.sbatch`` that deployment ``deployment_id`` of model ``name`` in ``target``
    gets (also what an existing one is compared with before it is reused)."""
    return render_sbatch(
        (source_root / SBATCH_TEMPLATE).read_text(),
        profile,
        name=f"pomlia-serve-{name}"[:64],
        deploy_dir=target,
        deployment_id=deployment_id,
        log_dir=log_dir(workspace.path("logs"), name),
        profile_name=profile_name,
    )


def _unrecorded(text: str) -> str:
    """``text`` without its profile record: scripts that differ only there are the same job
    (and directories written before the record existed are reused as before)."""
    return PROFILE_LINE.sub("", text)


def _same_files(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold the same files with the same bytes, but for the
    monitoring reference: `pomlia monitor reference` (and a pipeline's monitor stage) rewrites
    it in the bundle after the directory was written, and the server reads it at start; and
    for hidden files and folders (a writer's temporary files, which the copy leaves out with
    all that a hidden folder holds). ``b`` (a directory written before the card had its own
    checksum) may lack the :data:`CARD_SUM` that ``a`` has: it is card.json's SHA-256, and
    the cards are compared (the export that added it rebuilt the bundle byte for byte)."""

    def files(root: Path) -> list[Path]:
        found = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
        return sorted(
            f
            for f in found
            if f.name != REFERENCE_FILE and not any(part.startswith(".") for part in f.parts)
        )

    files_a, files_b = files(a), files(b)
    if Path(CARD_SUM) in files_a and Path(CARD_SUM) not in files_b:
        files_a.remove(Path(CARD_SUM))
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


@dataclass(frozen=True)
class _Target:
    """What one deployment directory is written from: ``bundle`` of model ``row`` into
    ``target`` with ``profile``, named ``profile_name`` (the source snapshot from
    ``source_root``)."""

    registry: Registry
    workspace: Workspace
    profile: ClusterProfile
    row: Model
    bundle: ExportedBundle
    target: Path
    source_root: Path
    profile_name: str | None = None

    def sbatch_text(self, deployment_id: int) -> str:
        """The ``serve.sbatch`` this deployment gets (its id written into it)."""
        return _sbatch_text(
            self.workspace,
            self.profile,
            name=self.row.name,
            target=self.target,
            deployment_id=deployment_id,
            source_root=self.source_root,
            profile_name=self.profile_name,
        )


def _reuse_refusal(t: _Target, retry: tuple[str, str]) -> tuple[int | None, str]:
    """(deployment id, '') when ``target`` is the directory ``pomlia deploy`` would write for
    ``bundle`` of ``row`` with ``profile`` (the same bundle and ``serve.sbatch``); else
    (None, what ``target`` holds instead). ``retry``: the command that reuses it, before and
    after the ``--profile`` it was written for. Its source snapshot and definition are not
    compared: the image in it was built from them, and stays consistent with them."""
    registry, row, bundle, target = t.registry, t.row, t.bundle, t.target
    script = target / "serve.sbatch"
    found = DEPLOYMENT_ID_LINE.search(script.read_text()) if script.is_file() else None
    if found is None:
        return None, "no deployment written by `pomlia deploy` (no serve.sbatch with an id)"
    dep_id = int(found.group(1))
    with registry.session() as s:
        dep = s.get(Deployment, dep_id)
        here = (row.id, str(target / "bundle"))
        mine = dep is not None and (dep.model_id, dep.bundle_path) == here
    if not mine:
        return None, f"deployment {dep_id}, which the registry does not record for {row.name} there"
    if not (target / "bundle").is_dir() or not _same_files(bundle.root, target / "bundle"):
        return None, f"a bundle other than {row.name} version {bundle.version}"
    text = script.read_text()
    if _unrecorded(text) != _unrecorded(t.sbatch_text(dep_id)):
        written_for = _written_for(t, dep_id, text)
        if written_for:
            names = " or ".join(f"'{n}'" for n in written_for)
            unsure = " (the script does not record which; they give the same script)"
            runs = " or ".join(
                f"`{retry[0]} --profile {shlex.quote(n)}{retry[1]}`" for n in written_for
            )
            return None, (
                f"a serve.sbatch written for cluster profile {names}"
                f"{unsure if len(written_for) > 1 else ''}, not for the profile this command "
                f"uses: run {runs} to reuse it"
            )
        return None, (
            "a serve.sbatch other than this cluster profile gives (written for another "
            "profile, or edited: submit it by hand with `sbatch serve.sbatch`)"
        )
    return dep_id, ""


def _written_for(t: _Target, dep_id: int, text: str) -> list[str]:
    """The cluster profiles whose ``serve.sbatch`` for deployment ``dep_id`` is ``text``: the
    one the script records, if it gives that script still; for a script without the record
    (written before it existed), every shipped profile (``configs/cluster/``) that gives it,
    since two (``local`` and ``debug``) give the same. Empty: another profile file, a changed
    profile, or an edited script."""
    recorded = PROFILE_LINE.search(text)
    names = [recorded.group(1)] if recorded is not None else cluster_profiles()
    found = []
    for name in names:
        try:
            other = replace(t, profile=load_cluster_profile(name))
        except ConfigError:
            continue  # a broken (or since removed) profile names nothing
        same = _unrecorded(other.sbatch_text(dep_id)) == _unrecorded(text)
        if other.profile != t.profile and same:
            found.append(name)
    return found


def _check_image(target: Path, write_cmd: str) -> None:
    """Refuse ``--submit`` when the image it runs is not built in ``target`` (nothing has been
    written at that point); ``write_cmd`` is the command that writes the directory."""
    sif = target / IMAGE
    if sif.is_file():
        return
    if not target.is_dir() or not any(target.iterdir()):
        raise InputError(
            f"--submit needs the image {sif}, but {target} holds no deployment yet: write it "
            f"first with `{write_cmd}`, build the image there (apptainer build {IMAGE} "
            "apptainer.def), then submit; nothing was written"
        )
    build = f"cd {shlex.quote(str(target))} && apptainer build {IMAGE} apptainer.def"
    if shutil.which("apptainer") is None:
        raise InputError(
            f"{sif} does not exist, and Apptainer is not installed here (no `apptainer` on "
            f"PATH): build the image on a machine that has it (often a login or build node; "
            f"`module load apptainer`): {build}"
        )
    raise InputError(f"{sif} does not exist; build it first: {build}")


def write_deployment(
    registry: Registry,
    workspace: Workspace,
    ref: str,
    profile: ClusterProfile,
    *,
    out_dir: Path | None = None,
    source_root: Path = SOURCE_ROOT,
    need_image: bool = False,
    profile_name: str | None = None,
    profile_label: str | None = None,
) -> DeployResult:
    """Export ``ref`` if needed and write its deployment directory (see module docstring);
    records a ``Deployment`` row (status ``created``).

    A directory this function wrote before for the same bundle and profile is reused as it is,
    with its deployment (``reused``); any other file or folder there is refused. The model's
    bundle is refused when its files do not match the SHA-256 its card records
    (:meth:`ExportedBundle.check_integrity`), before anything is written.
    ``need_image`` (``--submit``): the directory must exist already, with its image built;
    checked before anything is written or exported. ``profile_name``: the ``--profile``
    given, for the command the messages suggest. ``profile_label``: the name (or path) of
    ``profile``, recorded in the script so that a later refusal names it."""
    row = resolve_model(registry, ref)
    settle_unfinished(registry, model_id=row.id)  # rows a killed deploy left
    if out_dir is not None:
        _check_out(out_dir.resolve())  # before the export, which takes seconds to minutes
    out = f" --out {shlex.quote(str(out_dir))}" if out_dir is not None else ""
    retry = (f"pomlia deploy {shlex.quote(ref)}{out}", " --submit" if need_image else "")
    if profile_name is not None:
        out += f" --profile {shlex.quote(profile_name)}"
    write_cmd = f"pomlia deploy {shlex.quote(ref)}{out}"
    bundle = bundle_for_model(registry, ref)
    if bundle is None:
        if need_image:
            raise InputError(
                f"--submit needs a deployment directory with its image built, and model "
                f"{row.name} has no export yet: write the directory first with `{write_cmd}`, "
                "build the image there, then submit; nothing was written"
            )
        # Imported here: exporting loads torch, which `pomlia serve` (check_deployment) and
        # a directory written before need not (a CPU server held it for its whole life).
        from pomlia_hpc.serve.export import export_model

        bundle = export_model(registry, workspace, ref).bundle
    else:
        # A bundle edited or damaged since its export is refused here, before anything is
        # written, not by the server once the image is built and the job has started.
        bundle.check_integrity()
    target = (out_dir or workspace.path("models", row.name, "deploy", bundle.version)).resolve()
    other = "choose another --out" if out_dir is not None else "pass --out DIR"
    if target.exists() and not target.is_dir():
        raise InputError(
            f"{target} is a file: expected a folder for the deployment (new, or one "
            f"`pomlia deploy` wrote for this model version); {other}"
        )
    label = profile_label or profile_name
    plan = _Target(registry, workspace, profile, row, bundle, target, source_root, label)
    if target.is_dir() and any(target.iterdir()):
        dep_id, refusal = _reuse_refusal(plan, retry)
        if dep_id is None:
            raise InputError(
                f"deploy directory {target} already exists and holds {refusal}; "
                f"remove it or {other}"
            )
        if need_image:
            _check_image(target, write_cmd)
        return DeployResult(
            target, dep_id, target / "apptainer.def", target / "serve.sbatch", reused=True
        )
    if need_image:
        _check_image(target, write_cmd)
    return _write_new(plan)


def _check_out(target: Path) -> None:
    """Refuse ``--out`` when the folder could not be made: a file in its path or a parent where
    nothing can be written (``/proc``, a read-only mount). A folder that exists is left to the
    reuse checks (it may be one written before, and nothing is written then)."""
    if target.exists():
        return  # reused or refused as a file by write_deployment, with its own message
    # The directory is staged beside the target: its nearest existing parent must take a file.
    parent = next(p for p in target.parents if p.exists() or p.is_symlink())
    if not parent.is_dir():
        raise InputError(
            f"--out {target}: {parent} is a file, not a folder; expected a new folder path "
            "whose parents are folders (choose another --out)"
        )
    try:
        probe_writable(parent)
    except OSError as exc:
        raise InputError(
            f"--out {target} cannot be created ({exc.strerror or exc} in {parent}): expected "
            "a path in a writable folder (choose another --out)"
        ) from exc


def _write_new(t: _Target) -> DeployResult:
    """Write the deployment directory ``t.target`` (new or empty) and its registry row."""
    registry, row, bundle, target, source_root = (
        t.registry,
        t.row,
        t.bundle,
        t.target,
        t.source_root,
    )
    dep_id = 0  # none recorded yet
    written = False
    try:
        with staged_dir(target) as staged:
            tmp = staged.path
            # The row once the staging folder exists: a kill before the folder is published
            # leaves both, and the next deploy settles the row (serve.unfinished). Its id goes
            # into the script, so every record the server logs names it.
            with registry.session() as s:
                dep = Deployment(
                    model_id=row.id, bundle_path=str(target / "bundle"), status="created"
                )
                s.add(dep)
                s.flush()
                dep_id = dep.id
            # Not the temporary files of a writer (a reference being rewritten, or one a killed
            # writer left): they would go into the image, and once swept make the reused
            # directory's bundle differ from the model's.
            shutil.copytree(bundle.root, tmp / "bundle", ignore=shutil.ignore_patterns(".*"))
            (tmp / "src").mkdir()
            _copy_source(tmp / "src", source_root)
            def_text = render_def(
                (source_root / DEF_TEMPLATE).read_text(), {"SRC": "src", "BUNDLE": "bundle"}
            )
            (tmp / "apptainer.def").write_text(def_text)
            (tmp / "serve.sbatch").write_text(t.sbatch_text(dep_id))
            (tmp / "serve.sbatch").chmod(0o755)
        if not staged.published:
            raise InputError(
                f"deploy directory {target} appeared meanwhile; remove it or pass another --out"
            )
        written = True
    finally:
        if not written and dep_id:  # no directory, no deployment
            with registry.session() as s:
                if (orphan := s.get(Deployment, dep_id)) is not None:
                    s.delete(orphan)
    return DeployResult(target, dep_id, target / "apptainer.def", target / "serve.sbatch")


def check_deployment(
    registry: Registry, deployment_id: int, model_ref: str | None = None
) -> datetime:
    """Refuse a deployment id (``pomlia serve --deployment-id``) that the registry does not
    record (:class:`NotFoundError`), or that is not a deployment of ``model_ref`` when that is
    given (:class:`InputError`): the server writes it into every record, and the monitor
    would file those records under a deployment that is not theirs. Returns when the
    deployment was created (UTC; the server reads no log file older than that)."""
    row = resolve_model(registry, model_ref) if model_ref is not None else None
    settle_unfinished(registry, deployment_id=deployment_id)
    with registry.session() as s:
        dep = s.get(Deployment, deployment_id)
        q = select(Deployment.id).order_by(Deployment.id)
        if row is not None:
            q = q.where(Deployment.model_id == row.id)
        ids = [str(i) for i in s.scalars(q)]
        owner = s.get(Model, dep.model_id) if dep is not None else None
    of = f" of model {row.name}" if row is not None else ""
    known = f"deployments{of}: {', '.join(ids[-20:])}" if ids else f"no deployments{of} yet"
    if dep is None:
        raise NotFoundError(
            f"--deployment-id {deployment_id}: no such deployment in the registry; expected "
            f"an id `pomlia deploy` printed ({known})"
        )
    if row is not None and dep.model_id != row.id:
        name = owner.name if owner is not None else f"id {dep.model_id}"
        raise InputError(
            f"--deployment-id {deployment_id} is a deployment of model {name}, not of "
            f"{row.name} ({known})"
        )
    return dep.created_at


def server_job_name(deployment_id: int) -> str:
    """The Slurm job name of deployment ``deployment_id``'s server: a re-run finds a server a
    killed submission queued, before the job was recorded, by it (and the script's path)."""
    return f"pomlia-serve-d{int(deployment_id)}"


def submit_deployment(registry: Registry, result: DeployResult) -> DeployResult:
    """``sbatch`` the deployment's script (the image must exist); records the job. A server of
    this deployment already queued or running (``squeue``: its job name, or the script's own
    for one submitted by hand, and the script's path) is taken as the submission instead
    (``already``), recorded if it was not: a submission killed between its ``sbatch`` and its
    record, run again, submitted a second server (and so did one beside a server that
    `sbatch serve.sbatch` or an older version had started: :data:`LEGACY_JOB_NAME`). A
    server that is ending (COMPLETING) is not taken."""
    _check_image(result.directory, "pomlia deploy MODEL")
    name = server_job_name(result.deployment_id)
    # and the script's own name, which `sbatch serve.sbatch` by hand gives, and the one every
    # `deploy --submit` gave before the deployment's (squeue: a list; the script tells apart)
    own = SCRIPT_JOB_NAME.search(result.sbatch_file.read_text())
    names = ",".join([name, *([own.group(1)] if own is not None else []), LEGACY_JOB_NAME])
    # Not one that ends (COMPLETING: `scancel`led to be replaced, or past its time limit)
    found = jobs_named(names, result.sbatch_file)
    queued = [j for j in found if j.state not in ENDING_STATES]
    if queued:
        job_id, already = _adopt(registry, result, queued[0].job_id, name), queued[0]
    else:
        already = None
        job_id = sbatch_script(
            registry,
            result.sbatch_file,
            name=name,
            meta={"deployment_id": result.deployment_id},
        )
    with registry.session() as s:
        dep = s.get(Deployment, result.deployment_id)
        if dep is not None:
            dep.job_id, dep.status = job_id, "submitted"
    said = f"Slurm {already.job_id}, {already.state}" if already is not None else None
    return replace(result, job_id=job_id, already=said)


def _adopt(registry: Registry, result: DeployResult, scheduler_id: str, name: str) -> int:
    """The registry id of the queued server job ``scheduler_id`` of ``result``'s deployment,
    its row recorded now when the submission that queued it was killed before recording it.
    A row of that id that has ended for good is another job's (Slurm numbers jobs anew once
    its controller's state is lost); one preempted or on a failed node may be queued again."""
    ended = FINAL_STATES - REQUEUABLE_STATES
    with registry.session() as s:
        q = select(Job).where(Job.backend == "slurm", Job.scheduler_id == scheduler_id)
        rows = s.scalars(q.order_by(Job.id.desc())).all()
        # A cancel recorded on pomlia's word alone (not yet confirmed) has not ended it
        found = [r.id for r in rows if r.state not in ended or cancel_unconfirmed(r)]
    if found:
        return found[0]
    (job_id,) = record_submission(
        registry,
        backend="slurm",
        scheduler_ids=[scheduler_id],
        name=name,
        folder=str(result.sbatch_file.parent),
        meta={"deployment_id": result.deployment_id},
    )
    return job_id
