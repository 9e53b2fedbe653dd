"""Detector: Frame -> Detections with the torch and ONNX Runtime backends, which must agree."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from torch import nn

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.torch_backend import TorchBackend
from peftdml_ros.core.detector import (
    DetectionResult,
    Detector,
    DetectorConfig,
    manifest_path,
    read_manifest,
)
from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.model import (
    ModelConfig,
    build_model,
    export_onnx,
    save_checkpoint,
    tiny_config,
)
from peftdml_ros.core.model.head import HEAD_CHANNELS
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections, Frame, Modality
from peftdml_ros.tools.export import random_frame

CONFIG = tiny_config()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A seeded tiny model saved as a checkpoint and exported to ONNX."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(3)
    model = build_model(CONFIG)
    # Random non-zero LoRA factors and head biases: a fresh LoRA is the identity, which would
    # hide a missing merge, and a trained-looking heatmap gives the decoder work.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_up" in name:
                parameter.normal_(0.0, 0.05)
        out_conv = cast(nn.Conv2d, model.head.out)
        out_bias = dict(out_conv.named_parameters())["bias"]
        start = 0
        for name, channels in HEAD_CHANNELS.items():
            if name == "heatmap":
                out_bias[start : start + channels].fill_(-0.5)
            start += channels
    checkpoint = save_checkpoint(folder / "ckpt.pt", model)
    onnx_path = export_onnx(model, folder / "model.onnx")
    return checkpoint, onnx_path


def _check_detections(d: Detections, max_detections: int, config: ModelConfig = CONFIG) -> None:
    n = len(d)
    assert n <= max_detections
    assert d.center_m.shape == (n, 3) and d.center_m.dtype == np.float32
    assert d.size_wlh_m.shape == (n, 3) and (d.size_wlh_m > 0).all()
    assert d.yaw_rad.shape == (n,) and d.velocity_mps.shape == (n, 2)
    assert d.label.dtype == np.int64 and ((d.label >= 0) & (d.label < len(NUSCENES_CLASSES))).all()
    assert ((d.score >= 0) & (d.score <= 1)).all()
    assert np.isfinite(d.center_m).all() and np.isfinite(d.yaw_rad).all()
    x0, y0, _, x1, y1, _ = config.point_cloud_range_m
    assert ((d.center_m[:, 0] >= x0) & (d.center_m[:, 0] <= x1)).all()
    assert ((d.center_m[:, 1] >= y0) & (d.center_m[:, 1] <= y1)).all()


def test_torch_and_onnxruntime_detectors_agree(artifacts: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = artifacts
    frame = random_frame(CONFIG, seed=5)
    by_torch = Detector(DetectorConfig(str(checkpoint), "torch", "cpu", score_threshold=0.2))
    by_ort = Detector(DetectorConfig(str(onnx_path), "auto", "cpu", score_threshold=0.2))
    assert by_torch.backend.name == "torch" and by_ort.backend.name == "onnxruntime"
    a, b = by_torch.detect(frame), by_ort.detect(frame)
    for result in (a, b):
        assert isinstance(result, DetectionResult)
        _check_detections(result.detections, 100)
        assert set(result.timings_ms) == {"preprocess_ms", "inference_ms", "decode_ms", "total_ms"}
    assert len(a.detections) > 0
    assert len(a.detections) == len(b.detections)
    np.testing.assert_array_equal(a.detections.label, b.detections.label)
    np.testing.assert_allclose(a.detections.center_m, b.detections.center_m, atol=1e-4)
    np.testing.assert_allclose(a.detections.score, b.detections.score, atol=1e-4)
    # Raw outputs of the two backends on the same inputs.
    inputs = by_torch.preprocessor(frame)
    raw_torch, raw_ort = by_torch.backend.run(inputs), by_ort.backend.run(inputs)
    for name in model_io.OUTPUT_NAMES:
        np.testing.assert_allclose(raw_torch[name], raw_ort[name], atol=1e-4, err_msg=name)


def test_partial_frame_and_empty_frame(artifacts: tuple[Path, Path]) -> None:
    detector = Detector(DetectorConfig(str(artifacts[1]), "onnxruntime", "cpu"))
    full = random_frame(CONFIG, seed=1)
    lidar_only = Frame(
        stamp_ns=full.stamp_ns,
        trigger_sensor="LIDAR_TOP",
        lidar=full.lidar,
        modality_present={Modality.LIDAR: True},
    )
    _check_detections(detector.detect(lidar_only).detections, 100)
    nothing = Frame(stamp_ns=0, trigger_sensor="LIDAR_TOP")
    result = detector.detect(nothing)
    _check_detections(result.detections, 100)
    assert np.isfinite(result.normality_score)


def test_update_thresholds_changes_the_output(artifacts: tuple[Path, Path]) -> None:
    detector = Detector(DetectorConfig(str(artifacts[0]), "torch", "cpu", score_threshold=0.05))
    frame = random_frame(CONFIG, seed=2)
    many = len(detector.detect(frame).detections)
    detector.update_thresholds(max_detections=3)
    assert len(detector.detect(frame).detections) == min(3, many)
    detector.update_thresholds(score_threshold=0.999)
    assert len(detector.detect(frame).detections) == 0
    assert detector.thresholds == (0.999, 0.2, 3)
    with pytest.raises(ConfigError, match="score_threshold"):
        detector.update_thresholds(score_threshold=1.5)
    assert detector.thresholds == (0.999, 0.2, 3)  # a refused change changes nothing


def test_threshold_updates_from_another_thread(artifacts: tuple[Path, Path]) -> None:
    detector = Detector(DetectorConfig(str(artifacts[0]), "torch", "cpu"))
    frame = random_frame(CONFIG, seed=2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                detector.detect(frame)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    for value in (0.1, 0.5, 0.3):
        detector.update_thresholds(score_threshold=value)
    thread.join()
    assert not errors


def test_default_detector_is_an_untrained_real_model(caplog: pytest.LogCaptureFixture) -> None:
    detector = Detector(DetectorConfig(device="cpu"))
    assert detector.untrained and detector.backend.name == "torch"
    assert any("UNTRAINED" in r.getMessage() for r in caplog.records)
    result = detector.detect(random_frame(detector.model_config, seed=0))
    assert detector.model_config == ModelConfig()
    _check_detections(result.detections, 100, detector.model_config)
    assert result.timings_ms["total_ms"] > 0
    # Same seed, same weights: two default detectors compute the same thing.
    other = TorchBackend.from_default(seed=0, device="cpu")
    inputs = Preprocessor(PreprocessConfig.from_model_config(other.config))(
        random_frame(other.config, seed=0)
    )
    np.testing.assert_array_equal(
        detector.backend.run(inputs)["heatmap"], other.run(inputs)["heatmap"]
    )


def test_manifest_is_checked(artifacts: tuple[Path, Path], tmp_path: Path) -> None:
    assert manifest_path("a/model.onnx") == Path("a/model.manifest.json")
    assert manifest_path("a/model.fp16.engine") == Path("a/model.manifest.json")
    with pytest.raises(ModelArtifactError, match="peftdml export"):
        read_manifest(tmp_path / "model.engine")
    (tmp_path / "model.manifest.json").write_text('{"format": 99}')
    with pytest.raises(ModelArtifactError, match="re-export"):
        read_manifest(tmp_path / "model.engine")
    with pytest.raises(ModelArtifactError, match="does not exist"):
        Detector(DetectorConfig(str(tmp_path / "missing.pt"), "torch", "cpu"))
