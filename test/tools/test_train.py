"""`peftdml train` and `peftdml export` end to end on a generated one-scene dataset: stages,
validation with the official metrics, resume, the time budget, and two-process DDP on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
from peftdml_ros.tools.train import lr_at, lr_at_progress

STEPS = 16
LOSS_TERMS = ("heatmap", "box_iou", "l1", "attribute", "det", "metric", "cross_modal",
              "temporal", "consistency", "total")  # fmt: skip


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One scene of the small preset; with one scene the generator puts it in the val split.
    return generate_dataset(
        tmp_path_factory.mktemp("synth"), scenes=1, seed=7, preset="small", progress=False
    )


def _train_args(dataroot: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--data", str(dataroot), "--version", VERSION, "--split", VAL_SPLIT,
            "--out", str(out), "--batch-size", "2", "--lr", "5e-3", "--tiny", "--quiet",
            "--modality-dropout", "0", "--sensor-dropout", "0", "--no-augment",
            "--cache-dir", str(out.parent / "cache"), "--seed", "1", *more]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(dataroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    code = peftdml(_train_args(
        dataroot, out, "--steps", str(STEPS), "--ckpt-every", "4", "--gmm-frames", "4",
        "--val-data", str(dataroot), "--val-every", "8",
    ))  # fmt: skip
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
    assert config["stage"] == "pretrain"
    assert config["parameters"]["trainable_percent"] == pytest.approx(100.0)


def test_validation_scores_with_the_official_metrics_and_keeps_the_best(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [8, 16]
    for row in rows:
        assert 0.0 <= row["NDS"] <= 1.0 and 0.0 <= row["mAP"] <= 1.0
        assert {"trans_err", "orient_err", "vel_err"} <= set(row)
    best = load_checkpoint(run_dir / "best.pt")
    best_row = max(rows, key=lambda r: r["NDS"])
    assert best.extra["val_nds"] == pytest.approx(best_row["NDS"])
    assert best.extra["step"] == best_row["step"]
    assert best.model.gmm.is_fitted  # the checkpoint that ships gets its own GMM


def test_checkpoint_has_config_step_and_fitted_gmm(run_dir: Path) -> None:
    loaded = load_checkpoint(run_dir / "checkpoint.pt")
    assert loaded.config == tiny_config()
    assert loaded.extra["step"] == STEPS and loaded.extra["stage"] == "pretrain"
    assert loaded.extra["peft"] is False
    assert loaded.model.gmm.is_fitted
    # How the frames were built travels with the model (the node's settings must match).
    data = loaded.extra["data"]
    assert {k: data[k] for k in ("lidar_sweeps", "radar_sweeps", "camera_downscale",
                                 "radar_filter", "imu_window_s", "compensate_ego_motion")} == {
        "lidar_sweeps": 1, "radar_sweeps": 1, "camera_downscale": 4, "radar_filter": True,
        "imu_window_s": 1.0, "compensate_ego_motion": False,
    }  # fmt: skip
    assert set(data["slop_s"]) == {"lidar", "radar", "camera", "gnss"}


def test_peft_stage_needs_a_pretrained_init(
    dataroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peftdml(_train_args(dataroot, tmp_path / "p", "--stage", "peft", "--steps", "1")) == 1
    assert "--init" in capsys.readouterr().err


def test_peft_stage_trains_only_the_peft_parameters(run_dir: Path, dataroot: Path) -> None:
    out = run_dir.parent / "peft"
    init = run_dir / "best.pt"
    code = peftdml(_train_args(
        dataroot, out, "--stage", "peft", "--init", str(init), "--steps", "4",
        "--gmm-frames", "0", "--modality-dropout", "0.5",
    ))  # fmt: skip
    assert code == 0
    before = load_checkpoint(init).model.state_dict()
    after = load_checkpoint(out / "checkpoint.pt")
    assert after.extra["stage"] == "peft" and after.extra["peft"] is True
    changed = {k for k, v in after.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "PEFT training changed nothing"
    for name in changed:
        # Frozen backbones keep weights and normalization statistics: only LoRA factors,
        # adapters and the trainable modules move.
        if name.startswith(("lidar.", "radar.", "camera.", "imu.", "gnss.")):
            assert "lora_" in name or "adapter" in name, name
    config = json.loads((out / "config.json").read_text())
    assert config["parameters"]["trainable_percent"] < 100.0


def test_resume_continues_the_step_count_with_the_optimizer_state(
    dataroot: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    assert peftdml(_train_args(dataroot, out, "--steps", "4", "--ckpt-every", "2",
                               "--gmm-frames", "0")) == 0  # fmt: skip
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 4 and state["optimizer"]["state"]
    assert peftdml(_train_args(dataroot, out, "--steps", "6", "--resume",
                               "--gmm-frames", "0")) == 0  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(out / "checkpoint.pt").extra["step"] == 6


def test_time_budget_stops_the_run(dataroot: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget"
    assert peftdml(_train_args(dataroot, out, "--steps", "1000", "--time-budget-min", "1e-4",
                               "--gmm-frames", "0")) == 0  # fmt: skip
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_two_process_ddp_on_cpu(dataroot: Path, tmp_path: Path) -> None:
    """torchrun with the gloo backend: both ranks step together, rank 0 writes the files."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29613", "-m", "peftdml_ros.tools.cli",
           *_train_args(dataroot, out, "--steps", "3", "--gmm-frames", "0", "--device", "cpu",
                        "--batch-size", "1")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3]
    assert load_checkpoint(out / "checkpoint.pt").extra["step"] == 3


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
    assert peftdml([*args, "--split", VAL_SPLIT, "--sensor-dropout", "-1"]) == 1
    assert peftdml([*args, "--split", "no_such_split", "--tiny"]) == 1
    assert peftdml([*args, "--split", VAL_SPLIT, "--stage", "pretrain", "--init", "x.pt"]) == 1


def test_lr_schedule_and_helpers() -> None:
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # noqa: RUF007
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    # A time budget moves the schedule on by elapsed time: half the budget is half the cosine.
    assert lr_at_progress(50, 10, 1.0, 0.5) == pytest.approx(0.55)
    assert lr_at_progress(50, 10, 1.0, 2.0) == pytest.approx(0.1)
    assert consecutive_pairs(["a", "a", "a", "b", "c", "c"]) == [(0, 1), (1, 2), (4, 5)]
    assert instance_id("x") == instance_id("x") != instance_id("y")
    assert 0 <= instance_id("token") < 2**63
