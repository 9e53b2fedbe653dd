"""`peftdml calibrate` and `peftdml health-eval` end to end on a generated one-scene dataset: the
calibration stored in a checkpoint and in an exported model's manifest (and refused for a
checkpoint with another GMM), and the ROC report of clean vs degraded and dead-sensor frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from peftdml_ros.core.detector import manifest_path
from peftdml_ros.core.health import CALIBRATION_KEY, calibration_from_scores, load_calibration
from peftdml_ros.core.model import build_model, fit_feature_gmm, save_checkpoint, tiny_config
from peftdml_ros.core.model.detector_net import example_inputs
from peftdml_ros.core.types import NUSCENES_RADARS
from peftdml_ros.data.synth import VERSION, generate_dataset
from peftdml_ros.data.synth.generate import ALL_SPLIT
from peftdml_ros.tools.cli import main as peftdml
from peftdml_ros.tools.health_eval import (
    CLEAN,
    DEAD,
    DEGRADATION,
    Case,
    build_report,
    dead_sensor_variants,
    markdown_report,
)

DATA_SETTINGS = {"lidar_sweeps": 1, "radar_sweeps": 1, "camera_downscale": 8,
                 "compensate_ego_motion": False}  # fmt: skip
FRAMES = 5  # keyframes of one 2 s scene of the small preset


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("synth"), scenes=1, seed=7, preset="small", progress=False
    )


def _checkpoint(path: Path, seed: int) -> Path:
    """A tiny untrained model whose GMM is fitted (on generated inputs): real plumbing."""
    torch.manual_seed(seed)
    config = tiny_config()
    model = build_model(config)
    batches = [example_inputs(config, 4, torch.Generator().manual_seed(seed + s)) for s in (0, 1)]
    fit_feature_gmm(model, batches, generator=torch.Generator().manual_seed(seed))
    return save_checkpoint(path, model, {"data": DATA_SETTINGS})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", seed=0)


def _calibrate(model_flag: str, model: Path, dataroot: Path, *more: str) -> int:
    return peftdml(["calibrate", model_flag, str(model), "--dataroot", str(dataroot),
                    "--version", VERSION, "--split", ALL_SPLIT, "--device", "cpu",
                    "--cache-dir", str(dataroot / "cache"), "--quiet", *more])  # fmt: skip


def test_calibrate_stores_the_distribution_in_the_checkpoint(
    dataroot: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dry = tmp_path / "dry.pt"
    dry.write_bytes(checkpoint.read_bytes())
    assert _calibrate("--checkpoint", dry, dataroot, "--dry-run") == 0
    assert load_calibration(dry) is None  # --dry-run stores nothing
    assert "q50" in capsys.readouterr().out

    calibrated = tmp_path / "calibrated.pt"
    calibrated.write_bytes(checkpoint.read_bytes())
    json_path = tmp_path / "cal.json"
    assert _calibrate("--checkpoint", calibrated, dataroot, "--json", str(json_path)) == 0
    calibration = load_calibration(calibrated)
    assert calibration is not None and calibration.frames == FRAMES
    assert len(calibration.quantiles) == 101
    assert json.loads(json_path.read_text()) == calibration.to_dict()
    dataset = calibration.dataset
    assert dataset["name"] == dataroot.name and dataset["split"] == ALL_SPLIT
    assert dataset["synth_seed"] == 7 and dataset["frames"] == FRAMES
    # The weights are untouched: the checkpoint still loads and scores as before.
    before = torch.load(checkpoint, weights_only=True)["state_dict"]
    after = torch.load(calibrated, weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_calibrate_an_export_and_its_checkpoint(
    dataroot: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.pt"
    source.write_bytes(checkpoint.read_bytes())
    onnx_path = tmp_path / "tiny.onnx"
    assert peftdml(["export", "--checkpoint", str(source), "--out", str(onnx_path)]) == 0
    other = _checkpoint(tmp_path / "other.pt", seed=5)  # another GMM: not this model's
    capsys.readouterr()
    assert _calibrate("--model", onnx_path, dataroot, "--also-checkpoint", str(other)) == 1
    assert "not the checkpoint this model was exported from" in capsys.readouterr().err
    assert load_calibration(onnx_path) is None  # refused before anything was written

    assert _calibrate("--model", onnx_path, dataroot, "--also-checkpoint", str(source)) == 0
    manifest = json.loads(manifest_path(onnx_path).read_text())
    assert manifest["grid_hw"] == list(tiny_config().grid_hw)  # the rest of it is kept
    calibration = load_calibration(onnx_path)
    assert calibration is not None and calibration == load_calibration(source)
    assert manifest[CALIBRATION_KEY] == calibration.to_dict()


def test_health_eval_reports_auc_per_degradation_and_dead_sensor(
    dataroot: Path, checkpoint: Path, tmp_path: Path
) -> None:
    calibrated = tmp_path / "calibrated.pt"
    calibrated.write_bytes(checkpoint.read_bytes())
    assert _calibrate("--checkpoint", calibrated, dataroot) == 0
    out = tmp_path / "health"
    code = peftdml(["health-eval", "--checkpoint", str(calibrated), "--dataroot", str(dataroot),
                    "--version", VERSION, "--split", ALL_SPLIT, "--degradation", "blur",
                    "--out", str(out), "--cache-dir", str(dataroot / "cache"), "--device",
                    "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "health.json").read_text())
    cases = report["cases"]
    names = [v.name for v in dead_sensor_variants(tiny_config())]
    assert list(cases) == [CLEAN, "blur", *names]
    assert cases[CLEAN]["auc"] is None and cases["blur"]["kind"] == DEGRADATION
    for name, case in cases.items():
        assert case["frames"] == FRAMES
        if name != CLEAN:
            assert 0.0 <= case["auc"] <= 1.0
        assert set(case["flagged_below"]) == {"0.1", "1", "5"}
    # Calibrated on these very frames: said, since the clean flag rates are then in-sample.
    assert report["meta"]["calibrated_on_these_frames"] is True
    assert "ROC AUC" in (out / "health.md").read_text()
    assert (out / "health_scores.png").stat().st_size > 10_000


def test_dead_sensor_cases_and_the_report_of_known_scores() -> None:
    names = [v.name for v in dead_sensor_variants(tiny_config())]
    assert names[:5] == ["no lidar", "no radar", "no camera", "no imu", "no gnss"]
    assert names[5:] == [f"no {s}" for s in (*tiny_config().camera_names, *NUSCENES_RADARS)]
    clean = np.arange(100.0)
    calibration = calibration_from_scores(clean)
    cases = [
        Case(CLEAN, CLEAN, clean),
        Case("far", DEGRADATION, clean + 1000.0),
        Case("same", DEAD, clean.copy()),
    ]
    report = build_report(cases, calibration, [1.0, 5.0], {"thresholds": [1.0, 5.0]})
    assert report["cases"]["far"]["auc"] == 1.0 and report["cases"]["same"]["auc"] == 0.5
    assert report["cases"]["far"]["flagged_below"] == {"1": 1.0, "5": 1.0}
    # In-sample, a threshold of t flags about t % of the clean frames.
    assert report["cases"][CLEAN]["flagged_below"]["5"] == pytest.approx(0.05, abs=0.011)
    meta = {"model": "m.onnx", "dataset": "d", "version": "v", "split": "s", "frames": 100,
            "backend": "onnxruntime", "calibration_text": "100 frames",
            "thresholds": [1.0, 5.0]}  # fmt: skip
    text = markdown_report({**report, "meta": meta})
    assert "| far | degradation | 100 |" in text and "| 1.000 |" in text
