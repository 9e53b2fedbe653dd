"""ONNX export of the merged model and parity with PyTorch under ONNX Runtime."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perturbed_model,
    random_boxes,
    random_inputs,
    small_config,
)

from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.model import export_onnx, read_onnx_config
from peftdml_ros.core.model_io import INPUT_NAMES, OUTPUT_NAMES
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    MODALITIES,
    RADAR_POINT_FIELDS,
    CameraImage,
    Frame,
    GnssFix,
    ImuSample,
    PointCloud,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):  # type: ignore[no-untyped-def]
    config = small_config()
    model = perturbed_model(config, seed=2)
    model.gmm.fit(torch.randn(64, config.embed_dim), generator=torch.Generator().manual_seed(1))
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return config, model, path, session


def _assert_parity(model, session, inputs: dict[str, torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        ref = model(**inputs)
    got = session.run(list(OUTPUT_NAMES), {k: v.numpy() for k, v in inputs.items()})
    for name, value in zip(OUTPUT_NAMES, got, strict=True):
        assert value.shape == tuple(ref[name].shape), name
        tol = 1e-4 * max(1.0, float(ref[name].abs().max())) if name == "normality_score" else 1e-4
        np.testing.assert_allclose(value, ref[name].numpy(), atol=tol, rtol=0, err_msg=name)


def test_graph_has_the_contract_names_and_passes_the_checker(exported) -> None:  # type: ignore[no-untyped-def]
    config, _, path, session = exported
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    assert read_onnx_config(path) == config
    assert not any("lora" in init.name for init in graph.graph.initializer)


def test_onnxruntime_matches_pytorch_on_random_inputs(exported) -> None:  # type: ignore[no-untyped-def]
    config, model, _, session = exported
    for seed, batch in ((0, 1), (1, 3)):
        inputs = random_inputs(config, batch=batch, seed=seed)
        inputs["modality_mask"][0] = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
        _assert_parity(model, session, inputs)


def _frame(config, rng: np.random.Generator) -> Frame:  # type: ignore[no-untyped-def]
    """A generated frame: LiDAR points on boxes and ground, radar, two camera images, IMU, GNSS."""
    boxes = random_boxes(rng, 5, 20.0)
    pts = [rng.uniform([-25, -25, -0.1, 0, 0], [25, 25, 0.1, 255, 0.4], (400, 5))]  # road
    for c in boxes.center_m:
        pts.append(
            np.concatenate([c + rng.normal(0, 0.5, (60, 3)), rng.uniform(0, 255, (60, 2))], 1)
        )
    lidar = np.concatenate(pts).astype(np.float32)
    radar = np.concatenate(
        [boxes.center_m, rng.uniform(-5, 20, (5, 1)), boxes.velocity_mps, np.zeros((5, 1))], 1
    ).astype(np.float32)
    cams = []
    for k, name in enumerate(config.camera_names):
        yaw = math.pi * k
        to_ego = np.eye(4, dtype=np.float32)
        to_ego[:3, :3] = np.array(
            [[math.sin(yaw), 0, math.cos(yaw)], [-math.cos(yaw), 0, math.sin(yaw)], [0, -1, 0]]
        )
        to_ego[:3, 3] = (1.0, 0.0, 1.6)
        k_matrix = np.array([[400.0, 0, 320], [0, 400, 160], [0, 0, 1]], np.float32)
        image = rng.integers(0, 255, (320, 640, 3), dtype=np.uint8)
        cams.append(CameraImage(name, 1_000, image, k_matrix, to_ego))
    return Frame(
        stamp_ns=1_000,
        trigger_sensor="LIDAR_TOP",
        lidar=(PointCloud("LIDAR_TOP", 1_000, lidar, LIDAR_POINT_FIELDS),),
        radar=(PointCloud("RADAR_FRONT", 1_000, radar, RADAR_POINT_FIELDS),),
        cameras=tuple(cams),
        imu=(
            ImuSample(900, (0.0, 0.0, 0.1), (0.2, 0.0, 9.8)),
            ImuSample(950, (0.0, 0.0, 0.12), (0.3, 0.0, 9.8)),
        ),
        gnss=GnssFix(990, 42.3, -71.0, 10.0, (3.0, 4.0), 0.9),
        modality_present=dict.fromkeys(MODALITIES, True),
    )


def test_onnxruntime_matches_pytorch_on_a_preprocessed_frame(exported) -> None:  # type: ignore[no-untyped-def]
    config, model, _, session = exported
    preprocess = Preprocessor(PreprocessConfig.from_model_config(config))
    inputs = {
        k: torch.from_numpy(v)
        for k, v in preprocess(_frame(config, np.random.default_rng(9))).items()
    }
    assert inputs["modality_mask"].tolist() == [[1.0] * 5]
    _assert_parity(model, session, inputs)


def test_export_rejects_old_opsets(tmp_path: Path) -> None:
    config = small_config()
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(perturbed_model(config), tmp_path / "m.onnx", opset=13)


def test_read_onnx_config_needs_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="does not exist"):
        read_onnx_config(tmp_path / "missing.onnx")
