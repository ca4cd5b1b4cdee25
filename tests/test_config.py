import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pomlia_hpc.automl.space import read_initial_values
from pomlia_hpc.cluster.resources import submitit_parameters, with_overrides
from pomlia_hpc.config import cluster_profiles, load_cluster_profile, load_settings, read_yaml
from pomlia_hpc.errors import ConfigError, PomliaError
from pomlia_hpc.serve.config import load_serve_config
from pomlia_hpc.workspace import Workspace


def test_defaults_load() -> None:
    s = load_settings(env={})
    assert s.cluster.profile == "local"
    assert s.registry.url is None
    ws = Workspace.from_settings(s)
    assert ws.db_url.startswith("sqlite:///") and ws.db_url.endswith("registry.db")


def test_env_and_flags_override(tmp_path: Path) -> None:
    env = {
        "POMLIA_HOME": str(tmp_path),
        "POMLIA_CLUSTER": "haicore",
        "POMLIA_DB_URL": "postgresql+psycopg://u:p@h/db",
    }
    s = load_settings(env=env)
    assert (s.workspace.home, s.cluster.profile) == (tmp_path, "haicore")
    assert s.registry.url == "postgresql+psycopg://u:p@h/db"
    s2 = load_settings({"cluster": {"profile": "debug"}, "registry": {"url": None}}, env=env)
    assert s2.cluster.profile == "debug"  # flag beats env
    assert s2.registry.url == "postgresql+psycopg://u:p@h/db"  # None flag changes nothing


def test_a_relative_sqlite_url_is_the_workspace_s_file_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:///registry.db` (POMLIA_DB_URL, --db-url or the workspace file's registry.url)
    was read against each process's current folder: a pipeline stage or Slurm job started
    in another folder opened, and created, another, empty registry. It is read against the
    workspace folder now, so the submitter and its jobs open one file."""
    from pomlia_hpc.registry import Registry

    home, one, two = tmp_path / "ws", tmp_path / "one", tmp_path / "two"
    for folder in (home, one, two):
        folder.mkdir()
    env = {"POMLIA_HOME": str(home), "POMLIA_DB_URL": "sqlite:///registry.db"}
    urls = []
    for cwd in (one, two):
        monkeypatch.chdir(cwd)
        urls.append(Workspace.from_settings(load_settings(env=env)).db_url)
    assert urls == [f"sqlite:///{home / 'registry.db'}"] * 2
    Registry.open(urls[0]).dispose()
    assert (home / "registry.db").is_file() and not list(one.iterdir())
    (home / "pomlia.yaml").write_text("registry:\n  url: sqlite:///data/reg.db\n")
    flag = {"registry": {"url": "sqlite+pysqlite:///flag.db"}}
    assert Workspace.from_settings(load_settings(env={"POMLIA_HOME": str(home)})).db_url == (
        f"sqlite:///{home / 'data' / 'reg.db'}"
    )
    assert Workspace.from_settings(load_settings(flag, env=env)).db_url == (
        f"sqlite+pysqlite:///{home / 'flag.db'}"
    )
    for kept in ("sqlite:////abs/r.db", "sqlite://", "sqlite:///~/r.db", "postgresql://h/db"):
        over = {"registry": {"url": kept}}
        assert Workspace.from_settings(load_settings(over, env=env)).db_url == kept


def test_variables_in_a_sqlite_path_are_expanded_and_an_unset_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`POMLIA_DB_URL='sqlite:///$HOME/ws/registry.db'`, as a systemd unit or `sbatch
    --export` passes it, made a folder literally named `$HOME` (as POMLIA_HOME did before)."""
    monkeypatch.setenv("POMLIA_TEST_R29", str(tmp_path / "shared"))
    monkeypatch.delenv("POMLIA_UNSET_R29", raising=False)
    env = {"POMLIA_HOME": str(tmp_path / "ws")}
    for url in ("sqlite:///$POMLIA_TEST_R29/r.db", "sqlite:///${POMLIA_TEST_R29}/r.db"):
        over = {"registry": {"url": url}}
        got = Workspace.from_settings(load_settings(over, env=env)).db_url
        assert got == f"sqlite:///{tmp_path / 'shared' / 'r.db'}"
    over = {"registry": {"url": "sqlite:///$POMLIA_UNSET_R29/r.db"}}
    with pytest.raises(ConfigError, match=r"\$POMLIA_UNSET_R29 is not set, so the SQLite path"):
        Workspace.from_settings(load_settings(over, env=env))


def test_an_unclosed_brace_is_not_called_an_unset_variable(tmp_path: Path) -> None:
    """`${HOME/ws` (a brace never closed) was refused as "$HOME is not set", with HOME set: the
    user looked for a variable that was there. The message says a '$' is left now, and still
    names a variable that is really unset."""
    env = {"POMLIA_HOME": str(tmp_path / "ws")}
    over = {"registry": {"url": "sqlite:///${HOME/r.db"}}
    with pytest.raises(ConfigError, match=r"a '\$' is left in it") as exc:
        Workspace.from_settings(load_settings(over, env=env))
    assert "is not set" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"a '\$' is left in it") as exc:
        load_settings(env={"POMLIA_HOME": "${HOME/ws"})
    assert "is not set" not in str(exc.value)
    over = {"registry": {"url": "sqlite:///${HOME/${POMLIA_UNSET_R29B}/r.db"}}
    with pytest.raises(ConfigError, match=r"\$POMLIA_UNSET_R29B is not set"):
        Workspace.from_settings(load_settings(over, env=env))


def test_workspace_file_typo_names_file_key_and_valid_keys(tmp_path: Path) -> None:
    (tmp_path / "pomlia.yaml").write_text("registry:\n  urll: sqlite:///x.db\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"POMLIA_HOME": str(tmp_path)})
    msg = str(exc.value)
    assert str(tmp_path / "pomlia.yaml") in msg
    assert "registry.urll" in msg
    assert "sqlite_busy_timeout_s, url" in msg


def test_a_config_file_not_in_utf8_is_one_error_naming_file_and_place(tmp_path: Path) -> None:
    """A pomlia.yaml saved as Latin-1 (``µm`` in a comment) ended every command in a
    UnicodeDecodeError traceback (exit 70); a UTF-8 one was read in the locale's encoding."""
    ws_file = tmp_path / "pomlia.yaml"
    ws_file.write_bytes(b"registry:\n  # 5 \xb5m pixels\n  sqlite_busy_timeout_s: 30\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"POMLIA_HOME": str(tmp_path)})
    assert str(exc.value) == (
        f"{ws_file}: not UTF-8 text (byte 0xb5 at line 2, column 7); expected a UTF-8 file "
        "(save it as UTF-8)"
    )
    # The same text in UTF-8, with a byte-order mark as some editors write it, is read.
    ws_file.write_bytes("\ufeffregistry:\n  # 5 \u00b5m\n  sqlite_busy_timeout_s: 30\n".encode())
    assert load_settings(env={"POMLIA_HOME": str(tmp_path)}).registry.sqlite_busy_timeout_s == 30


def test_a_wrong_config_dir_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POMLIA_CONFIG_DIR (a container's copy of configs/) naming a folder without pomlia's
    configs said only `.../defaults.yaml: cannot read config file (No such file or
    directory)`, and an unknown profile `known profiles: ` with nothing after it: neither said
    that the variable chose the folder."""
    monkeypatch.setenv("POMLIA_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as exc:
        load_settings(env={})
    assert str(exc.value) == (
        f"POMLIA_CONFIG_DIR {tmp_path}: holds no defaults.yaml; expected the folder of pomlia's "
        "configs (defaults.yaml, cluster/*.yaml), or the variable unset"
    )
    with pytest.raises(ConfigError) as exc:
        load_cluster_profile("haicore")
    assert str(exc.value).endswith(f"known profiles: none in {tmp_path} (set by POMLIA_CONFIG_DIR)")


def test_cluster_profiles_shipped() -> None:
    assert {"local", "debug", "haicore", "slurm-local"} <= set(cluster_profiles())
    hc = load_cluster_profile("haicore")
    assert hc.backend == "slurm" and hc.gpus_per_node >= 1 and hc.max_array_size > 0


def test_cluster_profile_unknown_key(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("backend: slurm\npartiton: gpu\n")
    with pytest.raises(ConfigError, match=r"unknown key 'partiton'; valid keys: .*partition"):
        load_cluster_profile(str(p))


def test_cluster_profile_bad_value(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("backend: kubernetes\n")
    with pytest.raises(ConfigError, match="backend"):
        load_cluster_profile(str(p))


def test_unknown_profile_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"known profiles: .*haicore"):
        load_cluster_profile("nope")


def test_resource_override_rejects_unknown_key() -> None:
    prof = load_cluster_profile("haicore")
    with pytest.raises(ConfigError, match=r"unknown resource key\(s\) gpus; valid keys: "):
        with_overrides(prof, {"gpus": 2})
    assert with_overrides(prof, {"gpus_per_node": 2}).gpus_per_node == 2


def test_submitit_parameters_from_profile() -> None:
    prof = load_cluster_profile("haicore", account="hk-project-x")
    params = submitit_parameters(prof, name="t")
    assert params["slurm_partition"] == "normal"
    assert params["slurm_account"] == "hk-project-x"
    assert params["slurm_array_parallelism"] == prof.max_parallel
    assert params["timeout_min"] == prof.time_min
    assert params["slurm_setup"] == list(prof.setup)
    local = submitit_parameters(load_cluster_profile("local"), name="t")
    assert not any(k.startswith("slurm_") for k in local)


def test_workspace_file_found_under_a_home_with_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "pomlia.yaml").write_text("cluster:\n  profile: debug\n")
    assert load_settings(env={"POMLIA_HOME": "~/ws"}).cluster.profile == "debug"


def test_resource_override_bad_value_is_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        with_overrides(load_cluster_profile("local"), {"cpus_per_task": 0})
    msg = str(exc.value)
    assert msg == (
        "job resources: bad value for 'cpus_per_task': "
        "Input should be greater than or equal to 1 (got 0)"
    )


@pytest.mark.parametrize("read", [read_yaml, load_serve_config, read_initial_values])
def test_malformed_yaml_is_one_line_with_where(
    read: Callable[[Path], object], tmp_path: Path
) -> None:
    """Every YAML reader (workspace and pipeline files, serve settings, AutoML warm starts)
    names the file and the line and column in one line (PyYAML's text spans four)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(PomliaError) as exc:
        read(bad)
    msg = str(exc.value)
    assert "bad.yaml" in msg and "line 2, column 2: expected ',' or ']'" in msg
    assert "\n" not in msg


MERGED_DEEPER_FIRST = """\
base: &base {lr: 0.1}
a:
  b:
    exp1: &e
      <<: *base
      lr: 0.2
c:
  <<: *e
  x: 1
"""


def test_merge_keys_overridden_are_not_given_twice(tmp_path: Path) -> None:
    """A mapping merged by a shallower one before its own turn (`c: {<<: *e}`) was refused as
    "key 'lr' is given twice": building `c` rewrote the anchored node in place."""
    path = tmp_path / "merge.yaml"
    path.write_text(MERGED_DEEPER_FIRST)
    assert read_yaml(path) == yaml.safe_load(MERGED_DEEPER_FIRST)
    assert read_yaml(path)["c"] == {"lr": 0.2, "x": 1}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("x:\n  y: {a: 1, a: 2}\n", "(line 2, column 7 and line 2, column 13)"),
        ("a: 1\nb: 2\n0x1: 3\n1: 4\n", "(line 3, column 1 and line 4, column 1)"),
        (
            "- base: &b {k: 1}\n- {<<: *b, k: 2, j: 3, j: 4}\n",
            "(line 2, column 18 and line 2, column 24)",
        ),
    ],
)
def test_a_key_given_twice_is_refused_with_line_and_column(
    text: str, where: str, tmp_path: Path
) -> None:
    """`{a: 1, a: 2}` on one line passed (the check compared lines); keys are compared by value
    (`0x1` is `1`) and both places are named by line and column."""
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        read_yaml(path)
    assert str(path) in str(exc.value) and "is given twice in one mapping" in str(exc.value)
    assert where in str(exc.value), str(exc.value)


@pytest.mark.parametrize("read", [load_serve_config, read_initial_values])
def test_serve_and_warm_start_files_refuse_a_key_given_twice(
    read: Callable[[Path], object], tmp_path: Path
) -> None:
    """Serve settings and AutoML warm-start files kept the last of two equal keys silently."""
    path = tmp_path / "dup.yaml"
    path.write_text("configs:\n  - {lr: 0.1}\nport: 1\nport: 2\n")
    with pytest.raises(PomliaError) as exc:
        read(path)
    msg = str(exc.value)
    assert str(path) in msg and "key 'port' is given twice" in msg and "\n" not in msg


def test_variables_in_the_home_are_expanded_and_an_unset_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`POMLIA_HOME='$HOME/ws'` (unexpanded, from a systemd unit or `sbatch --export`) made a
    folder literally named `$HOME` in the current directory. Variables are expanded now, in
    POMLIA_HOME and --home; one that is not set is refused in one line, nothing created."""
    monkeypatch.setenv("POMLIA_TEST_ROOT", str(tmp_path))
    env = {"POMLIA_HOME": "$POMLIA_TEST_ROOT/ws"}
    assert load_settings(env=env).workspace.home == tmp_path / "ws"
    flag = {"workspace": {"home": Path("${POMLIA_TEST_ROOT}/w2")}}
    assert load_settings(flag, env=env).workspace.home == tmp_path / "w2"
    here = tmp_path / "cwd"
    here.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in ("POMLIA_DB_URL", "POMLIA_UNSET_X")}
    base["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    for env_home, flags, source in (
        ("$POMLIA_UNSET_X/ws", [], "POMLIA_HOME"),
        (None, ["--home", "${POMLIA_UNSET_X}/ws"], "--home"),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "pomlia_hpc", *flags, "init"],
            cwd=here,
            env={**base, "POMLIA_HOME": env_home} if env_home else base,
            capture_output=True,
            text=True,
            check=False,
        )
        err = res.stderr.strip()
        assert res.returncode == 2 and "\n" not in err and "Traceback" not in err, err
        assert err.startswith(f"error: {source} '") and "$POMLIA_UNSET_X is not set" in err, err
        assert list(here.iterdir()) == []


def test_a_bad_serve_option_is_said_by_its_option_and_a_bad_file_value_by_its_file(
    tmp_path: Path,
) -> None:
    """`pomlia serve --log-retention-days 0.5` was refused naming the setting
    `log_retention_days` in "serve settings", which the user never wrote."""
    with pytest.raises(ConfigError) as exc:
        load_serve_config(None, {"log_retention_days": 0.5, "port": None})
    assert str(exc.value).startswith("serve option --log-retention-days: bad value"), exc.value
    path = tmp_path / "serve.yaml"
    path.write_text("log_retention_days: 0.5\n")
    with pytest.raises(ConfigError) as exc:
        load_serve_config(path, {"port": 8080})  # an option given, but not the bad value
    assert str(exc.value).startswith(f"{path}: bad value for 'log_retention_days'"), exc.value


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("graceful_timeout_s: .inf", "'graceful_timeout_s': Input should be a finite number"),
        ("peer_read_interval_s: .inf", "'peer_read_interval_s': Input should be a finite"),
        ("inputs_quota_mb: .nan", "'inputs_quota_mb': Input should be a finite number"),
        ("log_retention_days: .inf", "'log_retention_days': Input should be a finite number"),
        ("threads: 100000000000000000000", "'threads': Input should be less than or equal"),
        ("log_retry_s: 1e300", "'log_retry_s': Input should be less than or equal to 86400"),
    ],
)
def test_serve_settings_refuse_inf_nan_and_values_past_their_ceiling(
    tmp_path: Path, line: str, said: str
) -> None:
    """Each was taken, then a traceback at start (`math.ceil(inf)`, uvicorn's start-up) or a
    background thread that died (an infinite peer-read interval: feedback for the other
    servers' predictions stopped being read, without a word)."""
    path = tmp_path / "serve.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=f"{path}: bad value for {said}"):
        load_serve_config(path)
