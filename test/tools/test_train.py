"""`peftdml train` and `peftdml export` end to end on a generated one-scene dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from peftdml_ros.core.detector import (
    Detector,
    DetectorConfig,
    data_settings_mismatches,
    manifest_path,
)
from peftdml_ros.core.model import load_checkpoint, tiny_config
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.synth import VAL_SPLIT, VERSION, generate_dataset
from peftdml_ros.data.training import consecutive_pairs, instance_id
from peftdml_ros.tools.cli import main as peftdml
from peftdml_ros.tools.train import lr_at

STEPS = 16
# Every term of L = det (heatmap, box IoU, L1, attribute) + metric + consistency must fall.
LOSS_TERMS = ("heatmap", "box_iou", "l1", "attribute", "det", "metric", "cross_modal",
              "temporal", "consistency", "total")  # fmt: skip


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One scene of the small preset; with one scene the generator puts it in the val split.
    return generate_dataset(
        tmp_path_factory.mktemp("synth"), scenes=1, seed=7, preset="small", progress=False
    )


@pytest.fixture(scope="module")
def run_dir(dataroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = peftdml(
        ["train", "--data", str(dataroot), "--version", VERSION, "--split", VAL_SPLIT,
         "--out", str(out), "--steps", str(STEPS), "--batch-size", "2", "--lr", "5e-3",
         "--tiny", "--cache", "--modality-dropout", "0", "--lidar-sweeps", "1",
         "--ckpt-every", "4", "--gmm-frames", "4", "--seed", "1"]
    )  # fmt: skip
    assert code == 0
    return out


def test_training_lowers_every_loss_term_and_logs_every_step(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        for key in ("loss/total", "loss/heatmap", "loss/metric", "loss/temporal", "lr"):
            assert math.isfinite(row[key]), key
    for term in LOSS_TERMS:
        first = np.mean([r[f"loss/{term}"] for r in rows[:3]])
        last = np.mean([r[f"loss/{term}"] for r in rows[-3:]])
        assert last < first, f"loss/{term} did not fall: {first:.4f} -> {last:.4f}"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_config"] == tiny_config().to_dict()
    assert config["parameters"]["trainable_percent"] < 100.0  # PEFT froze the backbones


def test_checkpoint_has_config_step_and_fitted_gmm(run_dir: Path) -> None:
    loaded = load_checkpoint(run_dir / "checkpoint.pt")
    assert loaded.config == tiny_config()
    assert loaded.extra["step"] == STEPS and loaded.extra["peft"] is True
    assert loaded.model.gmm.is_fitted
    # How the frames were built travels with the model (the node's settings must match).
    assert loaded.extra["data"] == {
        "lidar_sweeps": 1, "radar_sweeps": 1, "camera_downscale": 4, "radar_filter": True,
        "imu_window_s": 1.0, "compensate_ego_motion": False,
    }  # fmt: skip


def test_detector_loads_the_trained_checkpoint_and_its_export(
    run_dir: Path, dataroot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = NuScenesReader(dataroot, VERSION, VAL_SPLIT, lidar_sweeps=1)[0]
    detector = Detector(DetectorConfig(str(run_dir / "checkpoint.pt"), "auto", "cpu"))
    assert detector.backend.name == "torch" and not detector.untrained
    result = detector.detect(record.frame)
    assert result.normality_score != 0.0  # the GMM is fitted: a real score
    onnx_path = run_dir / "model.onnx"
    assert (
        peftdml(
            ["export", "--checkpoint", str(run_dir / "checkpoint.pt"), "--out", str(onnx_path)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "max |onnxruntime - torch|" in printed and "heatmap" in printed
    manifest = json.loads(manifest_path(onnx_path).read_text())
    assert manifest["grid_hw"] == list(tiny_config().grid_hw)
    assert max(manifest["parity_max_abs_diff"].values()) < 1e-3
    exported = Detector(DetectorConfig(str(onnx_path), "auto", "cpu"))
    assert exported.backend.name == "onnxruntime"
    other = exported.detect(record.frame)
    assert len(other.detections) == len(result.detections)
    assert other.normality_score == pytest.approx(result.normality_score, rel=1e-4)
    # How the training frames were built reaches a deployment, from the checkpoint or export.
    trained = detector.training_data
    assert trained is not None and trained["camera_downscale"] == 4
    assert exported.training_data == trained


def test_data_settings_mismatches_name_what_differs() -> None:
    trained = {"camera_downscale": 4, "imu_window_s": 1.0, "lidar_sweeps": 1}
    same = {"camera_downscale": 4, "imu_window_s": 1.0, "radar_filter": True}
    assert data_settings_mismatches(trained, same) == []
    assert data_settings_mismatches(None, same) == []  # nothing recorded: nothing to compare
    differ = {"camera_downscale": 2, "imu_window_s": 1.0}
    assert data_settings_mismatches(trained, differ) == ["camera_downscale: trained 4, here 2"]


def test_train_refuses_bad_arguments(dataroot: Path, tmp_path: Path) -> None:
    args = ["train", "--data", str(dataroot), "--version", VERSION, "--out", str(tmp_path)]
    assert peftdml([*args, "--split", VAL_SPLIT, "--modality-dropout", "2"]) == 1
    assert peftdml([*args, "--split", "no_such_split", "--tiny"]) == 1


def test_lr_schedule_and_helpers() -> None:
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # noqa: RUF007
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert consecutive_pairs(["a", "a", "a", "b", "c", "c"]) == [(0, 1), (1, 2), (4, 5)]
    assert instance_id("x") == instance_id("x") != instance_id("y")
    assert 0 <= instance_id("token") < 2**63
