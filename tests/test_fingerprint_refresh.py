"""``pomlia fingerprint refresh``: nothing to do when the encoder covers every newest version;
otherwise a new encoder is trained, every version embedded, its index built, and only then is
it made current (a failure before the end leaves the previous encoder current)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from pomlia_hpc.cli import app
from pomlia_hpc.errors import NotFoundError
from pomlia_hpc.fingerprint import refresh as refresh_mod
from pomlia_hpc.fingerprint.current import current_encoder, default_encoder
from pomlia_hpc.fingerprint.refresh import plan_refresh, refresh
from pomlia_hpc.fingerprint.train import TrainConfig, get_encoder, train_encoder
from pomlia_hpc.registry import Encoder, FingerprintSet, Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import cli_ok, runner
from tests.fixtures.factories import make_dataset

# The cheapest training (mse, no hold-out, no loader process, one step of 8 images per data
# set): the refresh's logic is under test; the default objective's two augmented views and its
# validation took most of its time, and each step of 16 images about a second of CPU more.
CFG = TrainConfig.model_validate(
    {
        "encoder": {"latent_dim": 2},
        "epochs": 1,
        "batch_size": 8,
        "max_images_per_dataset": 8,
        "objective": "mse",
        "holdout": 0.0,
        "num_workers": 0,
    }
)


def test_refresh_retrains_on_new_versions_and_switches_only_when_complete(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs in this process (submitit's DebugExecutor): the refresh's logic is under test, not
    # the cluster layer (tested on its own), and a job process per training and extraction
    # took most of a minute on a loaded machine.
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)
    assert not plan_refresh(reg, workspace, "ae").needed
    assert not refresh(reg, workspace, "ae", say=lambda _l: None).needed
    assert current_encoder(workspace) is None

    b = make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    plan = plan_refresh(reg, workspace, "ae")
    assert plan.needed and plan.new == [b] and plan.name == "ae-r1"

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("index build failed")

    monkeypatch.setattr(refresh_mod, "build_index", broken)
    with pytest.raises(RuntimeError):
        refresh(reg, workspace, "ae", say=lambda _l: None)
    assert current_encoder(workspace) is None  # not switched: the refresh did not complete
    monkeypatch.undo()

    done = refresh(reg, workspace, "ae", say=lambda _l: None)  # resumes ae-r1, same name
    assert done.name == "ae-r1" and current_encoder(workspace) == "ae-r1"
    row = get_encoder(reg, "ae-r1")
    assert (row.origin, row.refresh_of_id) == ("refresh", get_encoder(reg, "ae").id)  # recorded
    assert get_encoder(reg, "ae").origin == "trained"
    new_id = row.id
    with reg.session() as s:
        sets = s.query(FingerprintSet).filter(FingerprintSet.encoder_id == new_id).all()
    assert sorted(fs.status for fs in sets) == ["complete", "complete"]  # both versions
    assert not plan_refresh(reg, workspace).needed  # the current encoder covers both now


def test_refresh_reports_progress_as_train_extract_and_index_build(
    workspace: Workspace, reg: Registry
) -> None:
    """`fingerprint refresh` ran for minutes printing three lines: each of its steps now
    reports as its own command does (time-stamped lines off a terminal)."""
    debug = replace(workspace, cluster_profile="debug")
    a = make_dataset(debug, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, debug, "ae", [a], CFG)
    make_dataset(debug, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    out = cli_ok("--cluster", "debug", "fingerprint", "refresh", "-e", "ae")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    stamp = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
    for text in (
        "training ae-r1 on 2 versions (1 new)",
        "training 'ae-r1': 1/1 epochs",
        "extracting: ",
        "array tasks",
        "adding vectors: ",
        "current encoder: ae-r1",
    ):
        assert any(stamp.match(line) and text in line for line in lines), (text, out)


def _as_older_release(workspace: Workspace, reg: Registry) -> None:
    """Leave the workspace as a release before the refresh marker and the lineage record left
    it: no marker, and no encoder says how it was made (migration 0010 adds NULLs)."""
    for marker in workspace.path("indexes", "refreshing").glob("*.json"):
        marker.unlink()
    with reg.session() as s:
        for row in s.query(Encoder):
            row.origin, row.refresh_of_id = None, None


def _interrupted_at_extraction(workspace: Workspace, reg: Registry) -> None:
    """Run a refresh of ``ae`` that trains and registers ``ae-r1``, then is interrupted."""

    def killed(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(refresh_mod, "extract", killed)
        refresh(reg, workspace, say=lambda _l: None)


def test_encoder_under_refresh_is_never_the_default(workspace: Workspace, reg: Registry) -> None:
    """Once a refresh registered `ae-r1` (training done, extraction started), every command
    without --encoder failed ("several encoders are registered (ae, ae-r1)"), for good after
    an interrupted refresh, and `fingerprint refresh --dry-run` refused itself."""
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)
    make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    _interrupted_at_extraction(workspace, reg)
    assert get_encoder(reg, "ae-r1").checkpoint_path  # registered, not switched to
    assert default_encoder(reg, workspace) == "ae"
    out = " ".join(cli_ok("fingerprint", "refresh", "--dry-run").split())
    assert "would train ae-r1" in out, out
    done = refresh(reg, workspace, say=lambda _l: None)
    assert done.name == "ae-r1" and default_encoder(reg, workspace) == "ae-r1"


def test_rerun_finishes_encoder_trained_on_copies_too(workspace: Workspace, reg: Registry) -> None:
    """An interrupted refresh's encoder trained on a copy as well (same content, other name)
    was not recognised (version ids compared): the re-run trained `ae-r2`. Contents decide."""
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    copy = make_dataset(workspace, reg, "blood2", "bloodmnist", (32, 4, 4), chunk_rows=16)
    assert a.split("@")[1] == copy.split("@")[1]  # the same content
    train_encoder(reg, workspace, "ae", [a], CFG)
    b = make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae-r1", [a, copy, b], CFG)  # the half-done refresh ...
    _as_older_release(workspace, reg)  # ... of that earlier release (no lineage recorded)
    assert plan_refresh(reg, workspace, "ae").name == "ae-r1"
    lines: list[str] = []
    done = refresh(reg, workspace, "ae", say=lines.append)
    assert done.name == "ae-r1" and current_encoder(workspace) == "ae-r1", lines
    with pytest.raises(NotFoundError):
        get_encoder(reg, "ae-r2")


@pytest.mark.parametrize("dry_run", [False, True])
def test_refresh_without_encoders_says_to_train_one(
    workspace: Workspace, reg: Registry, dry_run: bool
) -> None:
    """With no encoder, `fingerprint refresh` said "0 encoders are registered and none is
    current: pass --encoder"; it now says what `plot latent` says."""
    res = runner.invoke(app, ["fingerprint", "refresh", *(["--dry-run"] if dry_run else [])])
    assert res.exit_code != 0 and isinstance(res.exception, NotFoundError), res.output
    assert (
        str(res.exception) == "no encoder is registered: train one with `pomlia fingerprint train`"
    )


def test_an_older_release_s_unmarked_interrupted_refresh_leaves_an_unambiguous_default(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh an older release interrupted left `ae` and `ae-r1` registered with neither a
    current encoder nor a refresh marker: every command without --encoder refused ("several
    encoders are registered (ae, ae-r1)") until `fingerprint refresh -e ae` was run by hand.
    The default is now decided from what is on disk; nothing is written to decide it."""
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)
    make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    _interrupted_at_extraction(workspace, reg)
    markers = workspace.path("indexes", "refreshing")
    _as_older_release(workspace, reg)  # which wrote no marker and recorded no lineage
    # Killed before its extraction: the encoder it started from stays the default, and a
    # plain refresh finishes ae-r1.
    said: list[str] = []
    assert default_encoder(reg, workspace, said.append) == "ae"
    assert said == [
        "default encoder ae: the refresh an older release left unfinished (ae-r1) stopped "
        "before its extraction; `pomlia fingerprint refresh -e ae` finishes it"
    ]
    out = " ".join(cli_ok("fingerprint", "refresh", "--dry-run").split())
    assert "would train ae-r1" in out, out

    # Killed after its extraction (in the index build): ae-r1 embedded everything, and is
    # taken as finished.
    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("killed while building the index")

    monkeypatch.setattr(refresh_mod, "build_index", broken)
    with pytest.raises(RuntimeError):
        refresh(reg, workspace, "ae", say=lambda _l: None)
    monkeypatch.undo()
    _as_older_release(workspace, reg)
    said.clear()
    assert default_encoder(reg, workspace, said.append) == "ae-r1"
    assert current_encoder(workspace) is None and not list(markers.glob("*.json"))
    assert len(said) == 1 and said[0].startswith("default encoder ae-r1: an unfinished refresh")


def test_data_added_after_an_unmarked_finished_refresh_keeps_its_default(
    workspace: Workspace, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ae` embedded blood; an older release's refresh killed in its index build left `ae-r1`,
    the default. A new version of blood (which no refresh embedded) made the default `ae`
    again, silently: "finished" was judged against the versions current now."""
    from pomlia_hpc.fingerprint.extract import extract

    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)
    extract(reg, workspace, "ae", [a], say=lambda _l: None)
    make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("killed while building the index")

    monkeypatch.setattr(refresh_mod, "build_index", broken)
    with pytest.raises(RuntimeError):
        refresh(reg, workspace, "ae", say=lambda _l: None)
    monkeypatch.undo()
    _as_older_release(workspace, reg)  # no marker, no lineage recorded
    assert default_encoder(reg, workspace) == "ae-r1"
    make_dataset(workspace, reg, "blood", "bloodmnist", (40, 4, 4), chunk_rows=16)
    said: list[str] = []
    assert default_encoder(reg, workspace, said.append) == "ae-r1"
    assert len(said) == 1 and "ae-r1" in said[0]


def test_several_unrelated_encoders_name_them_and_the_option(
    workspace: Workspace, reg: Registry
) -> None:
    from pomlia_hpc.errors import InputError

    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)
    train_encoder(reg, workspace, "be", [a], CFG)
    with pytest.raises(InputError) as err:
        default_encoder(reg, workspace)
    assert str(err.value) == (
        "several encoders are registered and none is current (ae, be): pass one with "
        "--encoder, e.g. --encoder ae"
    )


def test_an_encoder_named_like_a_refresh_by_hand_is_no_refresh(
    workspace: Workspace, reg: Registry
) -> None:
    """`ae-r1` trained by hand with ae's settings counted as a refresh of ae: the name was read
    back as the lineage. Being unfinished it was left out of the default (ae chosen, with a note
    about an older release's refresh), and the next refresh of ae took it over as its own
    (trained on the same data: switched to it). The record decides now: it is an encoder of
    its own, and a refresh of ae trains ae-r2."""
    from pomlia_hpc.errors import InputError

    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)
    b = make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae-r1", [a, b], CFG)  # by hand, ae's settings and the data
    said: list[str] = []
    with pytest.raises(InputError, match=r"several encoders are registered .* \(ae, ae-r1\)"):
        default_encoder(reg, workspace, said.append)
    assert said == []
    plan = plan_refresh(reg, workspace, "ae")
    assert plan.name == "ae-r2" and plan.new == [b]
    done = refresh(reg, workspace, "ae", say=lambda _l: None)
    assert done.name == "ae-r2" and current_encoder(workspace) == "ae-r2"
    row, hand = get_encoder(reg, "ae-r2"), get_encoder(reg, "ae-r1")
    assert (row.origin, row.refresh_of_id) == ("refresh", get_encoder(reg, "ae").id)
    assert (hand.origin, hand.refresh_of_id) == ("trained", None)


def test_dry_run_names_versions_the_encoder_was_not_trained_on(
    workspace: Workspace, reg: Registry
) -> None:
    """`refresh --dry-run` called every version the encoder was not trained on "new", also a
    data set registered before the encoder was trained but left out of its training. The rule
    stays (a refresh trains on every current version); the words say what it is."""
    workspace = replace(workspace, cluster_profile="debug")
    a = make_dataset(workspace, reg, "blood", "bloodmnist", (32, 4, 4), chunk_rows=16)
    b = make_dataset(workspace, reg, "organ", "organamnist", (32, 4, 4), chunk_rows=16)
    train_encoder(reg, workspace, "ae", [a], CFG)  # organ existed, left out
    out = " ".join(cli_ok("fingerprint", "refresh", "--dry-run").split())
    assert f"ae: versions it was not trained on ['{b}']; would train ae-r1" in out, out
    assert "new versions" not in out
    helped = re.sub(r"[│\s]+", " ", cli_ok("fingerprint", "refresh", "--help"))  # box lines
    assert "when it was not trained on one of them" in helped, helped
