"""`automl run --from-recommendation` takes the recommendation's encoder (the newest with the
task's embeddings) for its `init=encoder` configurations. One that trained on the task's
val/test images refused the whole study as "--encoder E has trained on ...", an option the
user never gave, so a user could not run the recommendation at all. Its configurations are
now left out with a warning naming the recommendation, the rest of the warm start runs, and
a recommendation with nothing else is refused naming why (and not recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

import pomlia_hpc.automl.study as study_mod
from pomlia_hpc.registry import Encoder, FingerprintSet, Recommendation, Registry, Task
from pomlia_hpc.strategy import kb
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import pomlia_main
from tests.fixtures.factories import make_encoder, tiny_task
from tests.seen_support import interrupted

DATA = Path(__file__).resolve().parents[1] / "pomlia_hpc" / "strategy" / "data"

pytestmark = pytest.mark.usefixtures("wide_console")


def _knowledge_base(reg: Registry, tmp_path: Path, inits: tuple[str, ...]) -> None:
    """The shipped tables' ResNet-18 results at 28 px, fully trained, of initialisations
    ``inits`` (``pretrained``: mapped to the encoder here, ``scratch``)."""
    rows: list[str] = []
    for table in ("medmnist_plus_doerrich2025.csv", "medmnist_v2_yang2023.csv"):
        rows += (DATA / table).read_text().splitlines()[1:]
    kept = [
        r
        for r in rows
        if (f := r.split(","))[1] == "ResNet-18" and f[2] in inits and f[3:5] == ["full", "28"]
    ]
    header = (DATA / "medmnist_v2_yang2023.csv").read_text().splitlines()[0]
    (tmp_path / "kb.csv").write_text("\n".join([header, *kept]) + "\n")
    meta = DATA / "medmnist_meta_features.csv"
    kb.import_table(reg, tmp_path / "kb.csv", "-".join(inits), meta_path=meta)


def _leaky_encoder(workspace: Workspace, reg: Registry, task: str) -> None:
    """Encoder ``leaky``, recorded as trained on every row of ``task``'s data
    (`fingerprint train --split all`) and holding its complete embeddings, so the recommender
    offers it as the task's pretrained weights."""
    with reg.session() as s:
        vid = s.scalars(select(Task.dataset_version_id).where(Task.name == task)).one()
    enc = make_encoder(workspace, reg, "leaky")
    with reg.session() as s:
        row = s.get(Encoder, enc.id)
        assert row is not None
        row.config = {**row.config, "split": "all"}
        row.dataset_version_ids = [vid]
        s.add(
            FingerprintSet(
                encoder_id=enc.id, dataset_version_id=vid, embeddings_path="-", status="complete"
            )
        )


def test_a_recommended_encoder_that_saw_the_tasks_val_or_test_images_is_left_out(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    _leaky_encoder(workspace, reg, "blood")
    monkeypatch.setattr(study_mod, "run_study", interrupted)

    _knowledge_base(reg, tmp_path, ("pretrained",))
    args = ("automl", "run", "blood", "--from-recommendation", "--trials", "8")
    code, out, err = pomlia_main(monkeypatch, capsys, *args, "--study", "only")
    said = " ".join((out + err).split())
    assert code == 2, said
    assert (
        "every configuration of the recommendation for task 'blood' starts from weights that "
        "trained on its val/test images (the recommended encoder leaky has trained on 24 val "
        "and 24 test image(s)" in said
    ), said
    assert "--encoder leaky" not in said and "run without --from-recommendation" in said
    assert not study_mod.study_dir(workspace, "only").exists()
    with reg.session() as s:
        assert s.scalar(select(func.count()).select_from(Recommendation)) == 0

    _knowledge_base(reg, tmp_path, ("scratch",))  # scratch results of the same data sets too
    code, out, err = pomlia_main(monkeypatch, capsys, *args, "--study", "mixed")
    said = " ".join((out + err).split())
    assert code == 130, said
    assert "configuration(s) with init=encoder: the recommended encoder leaky has trained" in said
    spec = study_mod.load_spec(workspace, "mixed")
    assert spec.initial_configs and all("init" not in c for c in spec.initial_configs)
    assert spec.encoder is None and spec.space.encoder_arch is None


def test_the_users_encoder_is_checked_not_the_recommended_one_it_replaces(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With `--encoder clean --from-recommendation` the trials start from `clean`, yet the
    recommended encoder `leaky` (not used) was checked: the study was refused as "every
    configuration ... starts from weights that trained on its val/test images (the
    recommended encoder leaky ...)". The user's encoder is the one to check (the study's own
    check of --encoder)."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    _leaky_encoder(workspace, reg, "blood")
    clean = make_encoder(workspace, reg, "clean", seed=1)
    with reg.session() as s:
        vid = s.scalars(select(Task.dataset_version_id).where(Task.name == "blood")).one()
        row = s.get(Encoder, clean.id)
        assert row is not None
        row.config = {**row.config, "split": "train"}
        row.dataset_version_ids = [vid]  # its train split only: every trial trains on it
    monkeypatch.setattr(study_mod, "run_study", interrupted)
    _knowledge_base(reg, tmp_path, ("pretrained",))
    args = ("automl", "run", "blood", "--from-recommendation", "--trials", "8")
    code, out, err = pomlia_main(monkeypatch, capsys, *args, "--encoder", "clean", "--study", "s")
    said = " ".join((out + err).split())
    assert code == 130, said
    assert "leaky" not in said, said
    spec = study_mod.load_spec(workspace, "s")
    assert spec.initial_configs and all(c.get("init") == "encoder" for c in spec.initial_configs)
    assert spec.encoder is not None and spec.encoder.name == "clean", spec.encoder


def test_recommend_warns_of_recommended_weights_that_saw_the_tasks_val_or_test_images(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pomlia recommend` listed the leaky encoder under its pretrained weights with no word,
    while `automl run --from-recommendation` leaves out its configurations."""
    tiny_task(workspace, reg, "blood", sizes=(64, 24, 24))
    _leaky_encoder(workspace, reg, "blood")
    _knowledge_base(reg, tmp_path, ("pretrained",))
    code, out, err = pomlia_main(monkeypatch, capsys, "recommend", "blood", "--json")
    assert code in (0, None), out + err
    assert json.loads(out)["sources_of_weights"]["encoder"] == "leaky"
    said = " ".join(err.split())
    assert (
        "warning: the recommended encoder leaky has trained on 24 val and 24 test image(s)" in said
        and "`automl run --from-recommendation` leaves out the configurations with init=encoder"
        in said
    ), said
