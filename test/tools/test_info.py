"""`peftdml info`: parameter report of the default model and of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftdml_ros.core.model import build_model, save_checkpoint, tiny_config
from peftdml_ros.tools import cli


def test_info_json_of_the_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"total_params", "trainable_params", "trainable_percent", "per_module"} <= set(report)
    assert report["trainable_percent"] < 10.0
    assert report["per_module"]["head"]["trainable_percent"] == 100.0
    assert sum(m["total_params"] for m in report["per_module"].values()) == report["total_params"]


def test_info_of_a_checkpoint_in_text_and_full_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_checkpoint(tmp_path / "m.pt", build_model(tiny_config()))
    assert cli.main(["info", "--checkpoint", str(path)]) == 0
    text = capsys.readouterr().out
    assert "32 x 32 cells of 1.6 m" in text and "lidar" in text
    assert cli.main(["info", "--checkpoint", str(path), "--json", "--full"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params"] == report["total_params"]


def test_info_of_a_missing_checkpoint_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["info", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err
