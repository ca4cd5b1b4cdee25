"""Label names come into the registry from checkpoints and bundles made elsewhere: one with a
control character (a terminal escape, a newline) is refused as `data add` refuses such a class
folder, with one line that names the label."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pomlia_hpc.cli import app, main
from pomlia_hpc.errors import InputError
from pomlia_hpc.models.checkpoint import write_torch
from pomlia_hpc.registry import Model, Registry
from pomlia_hpc.serve.demo import cached_demo_bundle, save_demo_checkpoint
from pomlia_hpc.serve.exported import CARD, ExportedBundle
from pomlia_hpc.workspace import Workspace

ESCAPE = "\x1b[2J\x1b]0;PWNED\x07a"


def _with_labels(path: Path, labels: list[str]) -> Path:
    """A demo checkpoint whose metadata names ``labels`` (written as a foreign tool would)."""
    save_demo_checkpoint(path, num_classes=len(labels))
    raw = torch.load(path, weights_only=True)
    raw["meta"]["label_names"] = labels
    write_torch(path, raw)
    return path


@pytest.mark.parametrize("bad", [ESCAPE, "two\nlines", "tab\there", "sep\u2028x"])
def test_model_register_refuses_a_control_character_in_a_label_name(
    tmp_path: Path,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bad: str,
) -> None:
    ckpt = _with_labels(tmp_path / "c.pt", ["fine", bad])
    argv = ["pomlia", "--home", str(workspace.home), "model", "register", "m", str(ckpt)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as ex:
        main()
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "\x1b" not in err, err
    assert f"'label_names' name 2 of 2 ({bad!r}) has a control character" in err
    assert not workspace.path("models", "m.pt").exists()
    with Registry.open(workspace.db_url).session() as s:
        assert s.query(Model).count() == 0


def test_a_bundle_card_with_a_control_character_in_a_label_is_refused(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    bundle = cached_demo_bundle(tmp_path_factory.getbasetemp() / "serve-demo", num_classes=4)
    card = json.loads((bundle / CARD).read_text())
    card["label_names"][0] = ESCAPE
    copy = tmp_path / "bundle"
    copy.mkdir()
    for name in card["files"]:
        (copy / name).symlink_to(bundle / name)
    (copy / CARD).write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"'label_names' name 1 of 4 .* has a control character"):
        ExportedBundle.open(copy)


def test_brackets_and_other_printable_names_are_kept(tmp_path: Path, workspace: Workspace) -> None:
    """Printable names stay allowed, as for `data add`."""
    ckpt = _with_labels(tmp_path / "c.pt", ["tumour [grade 2]", "[bold red]RED[/]"])
    res = CliRunner().invoke(app, ["model", "register", "m", str(ckpt)])
    assert res.exit_code == 0, res.output
