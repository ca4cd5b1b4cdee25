"""A pipeline file's mistakes are one line in the file's words, found before anything runs:
dataset options of a wrong kind, encoder trials without an encoder, repeated task names, a
training set smaller than one encoder batch; and the plan counts the jobs that will run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from pomlia_hpc.errors import ConfigError, InputError
from pomlia_hpc.pipeline.runner import make_plan
from pomlia_hpc.pipeline.spec import load_pipeline, parse_pipeline
from pomlia_hpc.pipeline.stage import StageContext
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace
from tests.fixtures.cli import dry_run
from tests.fixtures.factories import tiny_npz

REPO = Path(__file__).resolve().parents[1]
MINIMAL: dict[str, Any] = {"name": "p", "datasets": [{"name": "a", "medmnist": "bloodmnist"}]}


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        parse_pipeline(data, "p.yaml", Path("/data"))
    text = str(err.value)
    assert text.startswith("p.yaml: ") and "\n" not in text
    return text


# -- dataset options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "options", "words"),
    [
        (
            {"folder": "f"},
            {"val_fraction": "abc"},
            "options.val_fraction' (data set 'c'): "
            "expected a number (the fraction of images for validation) (got 'abc')",
        ),
        ({"folder": "f"}, {"val_fraction": [0.1]}, "(got [0.1])"),
        (
            {"file": "x.npz"},
            {"class_names": 5},
            "options.class_names' (data set 'c'): expected a list of class names",
        ),
        (
            {"file": "x.h5"},
            {"images": 5, "labels": "y"},
            "options.images' (data set 'c'): "
            "expected the path of the image data set inside the HDF5 file (got 5)",
        ),
        ({"file": "x.npz"}, {"n_classes": 2.5}, "expected a whole number >= 1 (got 2.5)"),
        ({"folder": "f"}, {"task_type": "regression"}, "options.task_type' (data set 'c')"),
    ],
)
def test_options_of_a_wrong_kind_name_the_entry_key_and_value(
    source: dict[str, Any], options: dict[str, Any], words: str
) -> None:
    """`val_fraction: abc` was `ValueError: could not convert string to float` (a traceback),
    `class_names: 5` and `images: 5` TypeErrors from inside the data room."""
    text = _refused({"name": "p", "datasets": [{"name": "c", **source, "options": options}]})
    assert "datasets.0.options." in text and words in text, text


def test_an_option_a_source_does_not_take_is_named_as_a_key_not_a_flag() -> None:
    data = {"name": "p", "datasets": [{"name": "c", "folder": "f", "options": {"bogus": 1}}]}
    text = _refused(data)
    assert "unknown key 'datasets.0.options.bogus' (data set 'c', a folder source)" in text
    assert "--" not in text and "valid keys: " in text and "val_fraction" in text
    # A file of no known kind read "(... a None source)".
    data = {"name": "p", "datasets": [{"name": "c", "file": "x.txt", "options": {"n_classes": 2}}]}
    text = _refused(data)
    assert "'datasets.0.options' given for a file of no known kind (data set 'c'): " in text
    assert "expected a file ending in .npz, .h5, .hdf5, .he5, .hdf or a folder" in text
    assert "None" not in text


def _split_folders(root: Path, splits: tuple[str, ...], per_class: int) -> Path:
    """Image folders ``root/<split>/<class>/<n>.png``, two classes of ``per_class`` images."""
    from PIL import Image

    for split in splits:
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for n in range(per_class):
                Image.new("L", (8, 8), 40 * n % 256).save(root / split / cls / f"{n}.png")
    return root


def test_fractions_are_the_data_rooms_to_check(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """The pipeline kept a copy of the data room's fraction rules: `val_fraction: 0.9` with a
    test/ folder was refused (it took test_fraction's default as 0.1, which is 0 there) though
    `data add` takes it, and `val_fraction: null` was refused though the data room drops it."""
    from pomlia_hpc.data.sources import open_source

    split = _split_folders(tmp_path / "split", ("train", "test"), 10)
    for options in ({"val_fraction": 0.9}, {"val_fraction": None}, {"test_fraction": None}):
        open_source(split, **options)  # what `data add` opens
        data = {"name": "p", "datasets": [{"name": "c", "folder": "split", "options": options}]}
        make_plan(StageContext(parse_pipeline(data, "p.yaml", tmp_path), workspace, reg), "local")
    flat = _split_folders(tmp_path / "flat", ("",), 10)
    options = {"val_fraction": 0.5, "test_fraction": 0.5}
    data = {"name": "p", "datasets": [{"name": "c", "folder": str(flat), "options": options}]}
    spec = parse_pipeline(data, "p.yaml", tmp_path)  # the types hold; the data room refuses
    with pytest.raises(InputError) as err:
        make_plan(StageContext(spec, workspace, reg), "local")
    text = " ".join(str(err.value).split())
    assert text.startswith("p.yaml: datasets.0 (data set 'c'): image folder"), text
    assert "'options.val_fraction' 0.5 + 'options.test_fraction' 0.5" in text, text


def test_each_kind_of_source_takes_the_options_the_data_room_lists() -> None:
    """The pipeline's list of options per kind had drifted from the data room's own."""
    from pomlia_hpc.data.sources import LIMIT_OPTIONS, SOURCE_OPTIONS
    from pomlia_hpc.pipeline.options import BY_KIND, OPTIONS

    assert set(BY_KIND) == set(SOURCE_OPTIONS)
    for kind, options in SOURCE_OPTIONS.items():
        assert set(options) | set(LIMIT_OPTIONS) <= set(BY_KIND[kind]) <= set(OPTIONS)


def test_dry_run_refuses_bad_options_with_exit_2_and_the_file(tmp_path: Path) -> None:
    """Exit 1 and a traceback before; the data room's own refusals (an HDF5 file without
    `labels`) now say the file, the entry and the key too."""
    h5 = tmp_path / "x.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = np.zeros((4, 28, 28), np.uint8)
    path = tmp_path / "p.yaml"
    env = {"POMLIA_HOME": str(tmp_path / "ws"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "pomlia_hpc", "init"], env=env, check=True)
    for options, words in (
        ({"val_fraction": "abc"}, "bad value for 'datasets.0.options.val_fraction'"),
        ({"images": "images"}, "datasets.0 (data set 'c'): HDF5 file"),
    ):
        kind = {"folder": str(tmp_path)} if "val_fraction" in options else {"file": str(h5)}
        entry = {"name": "c", **kind, "options": options}
        path.write_text(yaml.safe_dump({"name": "p", "datasets": [entry]}))
        proc = dry_run(path, tmp_path / "ws")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{path}: " in proc.stderr and words in proc.stderr, proc.stderr
    assert "'options.labels' not given" in proc.stderr


# -- automl without an encoder, repeated task names ------------------------------------------


@pytest.mark.parametrize(
    ("automl", "keys"),
    [
        ({"use_encoder": True, "extra_data": True}, "automl.use_encoder and automl.extra_data"),
        ({"archs": ["small_cnn"], "extra_data": True}, "automl.extra_data"),
        ({"archs": ["small_cnn"], "use_encoder": "yes"}, "automl.use_encoder"),
    ],
)
def test_encoder_trials_without_an_encoder_section_are_refused(
    automl: dict[str, Any], keys: str
) -> None:
    """They were ignored: the dry run and the run gave plain trials (the CLI refuses
    `--extra-data` without `--encoder`)."""
    tasks = [{"name": "t", "dataset": "a"}]
    text = _refused({**MINIMAL, "tasks": tasks, "automl": automl})
    assert f"{keys}: true needs an 'encoder' section" in text
    spec = parse_pipeline(
        {**MINIMAL, "tasks": tasks, "automl": automl, "encoder": {"name": "e"}}, "p", Path("/")
    )
    assert spec.automl is not None and spec.automl.extra_data == ("extra_data" in automl)


def test_default_encoder_trials_need_no_encoder_section() -> None:
    spec = parse_pipeline(
        {**MINIMAL, "tasks": [{"name": "t", "dataset": "a"}], "automl": {}}, "p", Path("/")
    )
    assert spec.encoder is None


def test_repeated_task_names_are_refused_as_dataset_names_are() -> None:
    """Two tasks `t16` registered `t16` and `t16-68d99289`."""
    tasks = [{"name": "t16", "dataset": "a"}, {"name": "t16", "dataset": "a", "metric": "auc"}]
    text = _refused({**MINIMAL, "tasks": tasks})
    assert "task names must be unique; repeated: t16" in text


# -- schema errors in words -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"name": "bad name/.."},
            "bad value for 'name': expected a name of letters, digits, '_', '.', '-' (at most "
            "64, starting with a letter, digit or '_') (got 'bad name/..')",
        ),
        (
            {"monitor": {"at": "25:99"}},
            "bad value for 'monitor.at': expected a time of day HH:MM, 00:00-23:59",
        ),
        (
            {"datasets": {"name": "a", "medmnist": "bloodmnist"}},
            "bad value for 'datasets': expected a list of data set entries (got a section",
        ),
        ({"datasets": []}, "bad value for 'datasets': expected at least one data set entry"),
        (
            {"datasets": [{"name": "x/y", "medmnist": "bloodmnist"}]},
            "bad value for 'datasets.0.name' (entry 'x/y'): expected a name of letters",
        ),
        ({"encoder": {"name": "e", "epochs": "two"}}, "expected a whole number (got 'two')"),
        ({"encoder": {"name": "e", "lr": 0}}, "'encoder.lr': expected a number > 0"),
        ({"execution": {"mode": "dag"}}, "expected 'chain' or 'driver' (got 'dag')"),
        ({"monitor": {"window": "0h"}}, "expected a length of time above zero"),
        ({"tasks": [{"name": "t", "dataset": "a", "metric": 3}]}, "'tasks.0.metric' (entry 't')"),
    ],
)
def test_schema_errors_are_in_words_not_pydantic_or_regexes(
    change: dict[str, Any], words: str
) -> None:
    deps = {"deploy": {}, "export": {}, "automl": {}, "tasks": [{"name": "t", "dataset": "a"}]}
    text = _refused({**MINIMAL, **(deps if "monitor" in change else {}), **change})
    assert words in text, text
    for pydantic in ("should", "pattern", "Input", "tuple", "Tuple", "^"):
        assert pydantic not in text, text


def test_a_missing_key_beside_a_bad_name_is_said_in_words() -> None:
    """A file with a bad `name` and no `datasets` got pydantic's regex for the name."""
    assert _refused({"name": "bad name!"}).endswith("key 'datasets' is missing")


# -- the encoder's batch, the plan's counts --------------------------------------------------


def test_dry_run_refuses_an_encoder_batch_larger_than_its_capped_training_set(
    workspace: Workspace, reg: Registry
) -> None:
    """`max_images: 100` (90 after the held-out rows) with the default batch of 128 passed
    the dry run; the run said `lower --batch-size`, a flag the file does not have."""
    data = {**MINIMAL, "encoder": {"name": "e", "max_images": 100}}
    spec = parse_pipeline(data, "p.yaml", Path("/data"))
    with pytest.raises(ConfigError) as err:
        make_plan(StageContext(spec, workspace, reg), "local")
    text = str(err.value)
    assert text.startswith("p.yaml: encoder 'e' would train on at most 90 images")
    assert "encoder.batch_size 128" in text and "lower encoder.batch_size" in text
    assert "raise encoder.max_images" in text and "--" not in text
    ok = {**MINIMAL, "encoder": {"name": "e", "max_images": 100, "batch_size": 64}}
    make_plan(StageContext(parse_pipeline(ok, "p.yaml", Path("/")), workspace, reg), "local")


def test_the_encoder_stage_counts_the_ingested_images_before_its_job(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """The dry run counts a file as it opens it; the stage counts the ingested stores again
    before the training job (the file may have changed since), naming the pipeline's keys
    (the trainer said `lower --batch-size`)."""
    from pomlia_hpc.pipeline.runner import run_in_process
    from pomlia_hpc.pipeline.stage import run_stage
    from pomlia_hpc.pipeline.stages_fingerprint import ENCODER

    tiny_npz(tmp_path / "a.npz")  # 40 training images, 36 after the held-out rows
    data = {
        "name": "p",
        "datasets": [{"name": "a", "file": "a.npz"}],
        "encoder": {"name": "e", "batch_size": 64},
    }
    spec = parse_pipeline(data, "p.yaml", tmp_path)
    ctx = StageContext(spec, workspace, reg)
    with pytest.raises(ConfigError, match=r"^p\.yaml: encoder 'e' would train on at most 36 "):
        make_plan(ctx, "local")
    ingest_only = parse_pipeline({**data, "encoder": None}, "p.yaml", tmp_path)
    no_encoder = StageContext(ingest_only, workspace, reg)
    assert run_in_process(no_encoder, make_plan(no_encoder, "local"))["data"] == "done"
    with pytest.raises(ConfigError) as err:
        run_stage(ctx, ENCODER)
    text = str(err.value)
    assert text.startswith("p.yaml: encoder 'e' would train on 36 images"), text
    assert "encoder.batch_size 64 x encoder.processes 1 = 64" in text and "--" not in text
    assert not (workspace.home / "models" / "encoders" / "e").exists()


def test_plan_of_unknown_sizes_says_at_least_one_extraction_task(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """Two small files were planned as `2 x extract embeddings (array)`; one task ran (small
    datasets share a task)."""
    for name in ("a", "b"):
        tiny_npz(tmp_path / f"{name}.npz")
    data = {
        "name": "p",
        "datasets": [{"name": n, "file": str(tmp_path / f"{n}.npz")} for n in ("a", "b")],
        "encoder": {"name": "e", "batch_size": 8},
        "extract": {},
    }
    plan = make_plan(StageContext(parse_pipeline(data, "p", tmp_path), workspace, reg), "local")
    (ex,) = plan.stages[2].jobs
    assert ex.count_words == "at least 1"
    data["extract"] = {"shards": 3}
    plan = make_plan(StageContext(parse_pipeline(data, "p", tmp_path), workspace, reg), "local")
    assert plan.stages[2].jobs[0].count_words == "up to 6"


def test_plan_of_small_known_datasets_is_one_extraction_task(
    workspace: Workspace, reg: Registry
) -> None:
    spec = load_pipeline(REPO / "configs" / "pipelines" / "lookalikes.yaml")
    plan = make_plan(StageContext(spec, workspace, reg), "local")
    (ex,) = next(sp for sp in plan.stages if sp.stage.name == "extract").jobs
    assert ex.count_words == "1"


def test_dry_run_refuses_a_training_option_the_trainer_refuses_in_words(
    workspace: Workspace, reg: Registry
) -> None:
    """`encoder.objective: bogus` passed the dry run; the stage then said `pipeline key
    'encoder.objective': Input should be ...` (pydantic's words, no file)."""
    data = {**MINIMAL, "encoder": {"name": "e", "objective": "bogus"}}
    spec = parse_pipeline(data, "p.yaml", Path("/data"))
    with pytest.raises(ConfigError) as err:
        make_plan(StageContext(spec, workspace, reg), "local")
    assert str(err.value) == (
        "p.yaml: bad value for 'encoder.objective': expected 'mse', 'style' or 'contrastive' "
        "(got 'bogus')"
    )


def test_encoder_datasets_may_name_a_version(workspace: Workspace, reg: Registry) -> None:
    """`encoder.datasets: [bloodmnist@1]` was refused by the dry run ("would train on at most
    0 images": the check compared the entry names with `bloodmnist@1`), and the plan's time
    estimate left that data set out."""
    data = {
        "name": "p",
        "lookalikes": {"scale": 0.1},
        "datasets": [
            {"name": "bloodmnist", "medmnist": "bloodmnist"},
            {"name": "dermamnist", "medmnist": "dermamnist"},
        ],
        "encoder": {"name": "e", "datasets": ["bloodmnist@1"], "epochs": 2},
    }
    spec = parse_pipeline(data, "p.yaml", Path("/data"))
    plan = make_plan(StageContext(spec, workspace, reg), "local")
    (job,) = next(sp for sp in plan.stages if sp.stage.name == "encoder").jobs
    train = round(11959 * 0.1)  # MedMNIST's bloodmnist training split, as the look-alike
    assert job.hours == pytest.approx(train * 2 / spec.estimate.train_images_per_s / 3600)


def test_an_encoder_version_other_than_the_ingested_one_is_refused(
    workspace: Workspace, reg: Registry, tmp_path: Path
) -> None:
    """`encoder.datasets: [a@VERSION]` trained on the version the file ingests whatever
    VERSION said: the dry run (once the ingest is recorded) and the stage refuse another one."""
    from pomlia_hpc.pipeline.runner import run_in_process
    from pomlia_hpc.pipeline.stage import run_stage
    from pomlia_hpc.pipeline.stages_fingerprint import ENCODER

    tiny_npz(tmp_path / "a.npz")
    data: dict[str, Any] = {"name": "p", "datasets": [{"name": "a", "file": "a.npz"}]}
    ingest = StageContext(parse_pipeline(data, "p.yaml", tmp_path), workspace, reg)
    assert run_in_process(ingest, make_plan(ingest, "local"))["data"] == "done"
    have = ingest.outputs("data")["versions"]["a"].partition("@")[2]
    enc = {"name": "e", "batch_size": 8, "datasets": ["a@0ld"]}
    ctx = StageContext(parse_pipeline({**data, "encoder": enc}, "p.yaml", tmp_path), workspace, reg)
    with pytest.raises(ConfigError) as err:
        make_plan(ctx, "local")
    assert str(err.value) == (
        f"p.yaml: encoder.datasets.0: 'a@0ld' asks for version 0ld of data set 'a', but the "
        f"file ingests version {have}: expected 'a' or 'a@{have}' (the encoder trains on the "
        "version the file ingests)"
    )
    with pytest.raises(ConfigError, match="asks for version 0ld"):
        run_stage(ctx, ENCODER)
    assert not (workspace.home / "models" / "encoders" / "e").exists()
    enc["datasets"] = [f"a@{have[:8]}"]  # the ingested version (a prefix of it) is fine
    make_plan(
        StageContext(parse_pipeline({**data, "encoder": enc}, "p.yaml", tmp_path), workspace, reg),
        "local",
    )


def test_the_size_of_all_splits_of_look_alikes_rounds_each_split() -> None:
    """All splits of a look-alike (the extraction plan's count; the encoder's bound over all
    splits) rounded the scaled total once (59 images of pneumoniamnist at 0.01), where the
    generator rounds each split (47 + 5 + 6 = 58)."""
    from pomlia_hpc.data.synth import split_sizes
    from pomlia_hpc.pipeline.stages_data import estimated_images

    for scale in (0.01, 0.1):
        data = {
            "name": "p",
            "lookalikes": {"scale": scale},
            "datasets": [{"name": "pneu", "medmnist": "pneumoniamnist"}],
        }
        spec = parse_pipeline(data, "p.yaml", Path("/data"))
        sizes = split_sizes("pneumoniamnist", scale)
        assert estimated_images(spec, spec.datasets[0]) == sum(sizes.values())
        assert estimated_images(spec, spec.datasets[0], "val") == sizes["val"]


def test_the_sources_opened_by_checks_are_kept_in_a_bounded_cache(tmp_path: Path) -> None:
    """The split sizes of every source a process opened were kept for good (a dict never
    cleared); now the least recently used go beyond OPENED_MAX, and a check is still cached."""
    from pomlia_hpc.pipeline.stages_data import (
        OPENED_MAX,
        opened_split_sizes,
        source_split_sizes,
    )

    tiny_npz(tmp_path / "a.npz")
    spec = parse_pipeline(
        {"name": "p", "datasets": [{"name": "a", "file": "a.npz"}]}, "p.yaml", tmp_path
    )
    first = source_split_sizes(spec, 0)
    hits = opened_split_sizes.cache_info().hits
    assert source_split_sizes(spec, 0) == first and first is not None and first["train"] == 40
    info = opened_split_sizes.cache_info()
    assert info.hits == hits + 1 and info.maxsize == OPENED_MAX <= 256


# -- the index factory and the architectures, before the stages before them run ---------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"index": {"factory": "Bogus99"}},
            "p.yaml: bad value for 'index.factory': index factory string 'Bogus99' is not "
            "valid for 4-dimensional vectors",
        ),
        (
            {"index": {"factory": "IVF16,PQ16"}},  # PQ16 needs d divisible by 16
            "p.yaml: bad value for 'index.factory': index factory string 'IVF16,PQ16'",
        ),
        (  # a graph: refused by the build after training, not by the dry run
            {"index": {"factory": "HNSW32"}},
            "p.yaml: bad value for 'index.factory': index factory 'HNSW32' builds a graph index",
        ),
        (
            {"tasks": [{"name": "t", "dataset": "a"}], "automl": {"archs": ["nosuch_arch"]}},
            "p.yaml: bad value for 'automl.archs.0': unknown architecture 'nosuch_arch'; "
            "expected one of: ",
        ),
    ],
)
def test_the_plan_refuses_a_bad_index_factory_or_architecture(
    workspace: Workspace, reg: Registry, change: dict[str, Any], words: str
) -> None:
    """The dry run accepted them; the run failed at the index or automl stage, after the
    encoder's training and the extraction had run."""
    encoder = {"name": "e", "latent_dim": 4, "max_images": 100, "batch_size": 16}
    spec = parse_pipeline({**MINIMAL, "encoder": encoder, **change}, "p.yaml", Path("/"))
    with pytest.raises(ConfigError) as err:
        make_plan(StageContext(spec, workspace, reg), "local")
    assert str(err.value).startswith(words) and "\n" not in str(err.value), str(err.value)
    good = {k: v for k, v in change.items() if k != "index"}
    if "automl" in good:
        good["automl"] = {"archs": ["small_cnn"]}
    fine = parse_pipeline(
        {**MINIMAL, "encoder": encoder, "index": {"factory": "IVF4,Flat"}, **good},
        "p.yaml",
        Path("/"),
    )
    make_plan(StageContext(fine, workspace, reg), "local")


def test_dry_run_refuses_a_bad_index_factory_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    encoder = {"name": "e", "latent_dim": 4, "max_images": 100, "batch_size": 16}
    path.write_text(
        yaml.safe_dump({**MINIMAL, "encoder": encoder, "index": {"factory": "Bogus99"}})
    )
    env = {"POMLIA_HOME": str(tmp_path / "ws"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "pomlia_hpc", "init"], env=env, check=True)
    proc = dry_run(path, tmp_path / "ws")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {path}: bad value for 'index.factory'"), proc.stderr
    assert "stage" not in proc.stdout  # refused before the plan


def test_a_study_without_a_model_ends_a_local_pipeline_in_one_line(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A local `pipeline run` whose study's every trial crashed ended in a traceback and
    exit 70 ("a bug in pomlia"). It is the stage's failure: one line, exit 1, as a failed
    stage of `run --wait` ends; the stage is recorded failed."""
    import types

    import pomlia_hpc.automl.study as study_module
    import pomlia_hpc.pipeline.stages_learn as learn
    from tests.fixtures.cli import pomlia_main

    tiny_npz(tmp_path / "a.npz")
    data = {
        "name": "p",
        "datasets": [{"name": "a", "file": "a.npz"}],
        "tasks": [{"name": "t", "dataset": "a"}],
        "automl": {"trials": 2, "archs": ["small_cnn"]},
    }
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(data))
    crashed = types.SimpleNamespace(
        model_name=None, model_refused="", n_ok=0, n_crashed=2, n_cancelled=0
    )
    monkeypatch.setattr(learn, "open_study", lambda *_a, **_k: (None, False))
    monkeypatch.setattr(study_module, "run_study", lambda *_a, **_k: crashed)
    code, _out, err = pomlia_main(monkeypatch, capsys, "pipeline", "run", str(file))
    said = " ".join(err.split())
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert "produced no model: no trial produced a model (0 ok, 2 crashed)" in said, said
    ctx = StageContext(load_pipeline(file), workspace, reg)
    assert (ctx.record("automl") or {}).get("status") == "failed"


def test_dry_run_refuses_a_knowledge_base_source_that_is_not_there(
    workspace: Workspace,
    reg: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A misspelt `recommend.sources` passed the dry run; the run ingested, registered the
    tasks and then failed at `recommend` with exit 4, naming neither the file nor the key."""
    from tests.fixtures.cli import pomlia_main

    tiny_npz(tmp_path / "a.npz")
    path = tmp_path / "p.yaml"
    base = {
        "name": "p",
        "datasets": [{"name": "a", "file": "a.npz"}],
        "tasks": [{"name": "t", "dataset": "a"}],
        "automl": {"trials": 2, "archs": ["small_cnn"]},
    }
    for recommend, refused, known in (
        (
            {"sources": ["registry", "medmnist_plsu"]},
            "recommend.sources.1",
            "expected one of medmnist_plus, medmnist_v2, registry (`pomlia strategy sources` "
            "lists them)",
        ),
        (
            {"sources": ["medmnist_plus"], "shipped_tables": False},  # not imported
            "recommend.sources.0",
            "expected one of registry (`pomlia strategy sources` lists them; "
            "`shipped_tables: true` adds medmnist_plus, medmnist_v2)",
        ),
        ({"sources": ["medmnist_plus", "registry"]}, None, ""),  # the stage imports it
    ):
        path.write_text(yaml.safe_dump({**base, "recommend": recommend}))
        code, out, err = pomlia_main(monkeypatch, capsys, "pipeline", "run", str(path), "--dry-run")
        if refused is None:
            assert code == 0, err
            continue
        said = " ".join(err.split())
        assert code == 2 and "Traceback" not in err, (code, err)
        assert said.startswith(f"error: {path}: bad value for '{refused}': knowledge-base"), said
        assert said.endswith(f"is not imported; {known}"), said
        assert "stage" not in out  # refused before the plan


def test_dry_run_refuses_an_unknown_medmnist_flag(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`medmnist: nosuchflag` passed the dry run and failed in the data stage; the flags are
    known without a download."""
    from tests.fixtures.cli import pomlia_main

    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump({"name": "p", "datasets": [{"name": "a", "medmnist": "nosuch"}]})
    )
    code, out, err = pomlia_main(monkeypatch, capsys, "pipeline", "run", str(path), "--dry-run")
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, (code, err)
    assert said.startswith(
        f"error: {path}: datasets.0 (data set 'a'): 'nosuch' is not a MedMNIST 2D dataset: "
        "expected one of pathmnist, chestmnist, "
    ), said
    assert "stage" not in out
    path.write_text(yaml.safe_dump(MINIMAL))  # a known flag: planned, nothing downloaded
    code, out, err = pomlia_main(monkeypatch, capsys, "pipeline", "run", str(path), "--dry-run")
    assert code == 0, err
