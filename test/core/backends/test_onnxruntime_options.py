"""ONNX Runtime session options, and the optimized session against PyTorch on the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.onnxruntime_backend import (
    OnnxRuntimeBackend,
    available_cores,
    session_options,
)
from peftdml_ros.core.backends.torch_backend import TorchBackend
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model.decode import decode_detections
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor, collate
from peftdml_ros.tools.export import random_frame

SHIPPED = "models/peftdml_synth_cpu30"
# max |ORT - torch| on the shipped model is ~1e-5 (its manifest records the export's check);
# normality_score is a log-likelihood of magnitude ~1e2, hence the relative term.
ATOL = 1e-4
RTOL = 1e-5


def test_session_options_are_the_documented_ones() -> None:
    options = session_options(ort, 3)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ConfigError, match="at least 1"):
        session_options(ort, 0)


def test_threads_default_to_the_cores_this_process_may_use(repo_root: Path) -> None:
    onnx_path = repo_root / f"{SHIPPED}.onnx"
    assert OnnxRuntimeBackend(onnx_path, "cpu").threads == available_cores() >= 1
    assert OnnxRuntimeBackend(onnx_path, "cpu", threads=1).threads == 1
    with pytest.raises(ConfigError, match="at least 1"):
        OnnxRuntimeBackend(onnx_path, "cpu", threads=-1)


@pytest.fixture(scope="module")
def shipped_torch(repo_root: Path) -> TorchBackend:
    return TorchBackend.from_checkpoint(repo_root / f"{SHIPPED}.pt", device="cpu")


def test_optimized_session_matches_torch_on_the_shipped_model(
    repo_root: Path, shipped_torch: TorchBackend
) -> None:
    config = shipped_torch.config
    pre = Preprocessor(PreprocessConfig.from_model_config(config))
    # Two frames, one with LiDAR beyond the point budget (subsampled) and one with fewer.
    frames = [random_frame(config, seed=1), random_frame(config, seed=2, lidar_points=5000)]
    backend = OnnxRuntimeBackend(repo_root / f"{SHIPPED}.onnx", "cpu", threads=2)
    torch.manual_seed(0)
    for frame in frames:
        inputs = collate([pre(frame)])
        reference = shipped_torch.run(inputs)
        got = backend.run(inputs)
        for name in model_io.OUTPUT_NAMES:
            np.testing.assert_allclose(
                got[name], reference[name], rtol=RTOL, atol=ATOL, err_msg=name
            )
        # And what the node publishes: the same boxes after decoding and NMS.
        ours = decode_detections(got, config, score_threshold=0.05)[0]
        theirs = decode_detections(reference, config, score_threshold=0.05)[0]
        assert len(ours.score) == len(theirs.score) > 0
        a, b = _by_position(ours.center_m), _by_position(theirs.center_m)
        np.testing.assert_array_equal(ours.label[a], theirs.label[b])
        np.testing.assert_allclose(ours.center_m[a], theirs.center_m[b], atol=1e-3)
        np.testing.assert_allclose(ours.score[a], theirs.score[b], atol=ATOL)


def _by_position(center_m: np.ndarray) -> np.ndarray:
    """Order of boxes by x then y (near-equal scores may swap places between backends)."""
    return np.lexsort((np.round(center_m[:, 1], 2), np.round(center_m[:, 0], 2)))
