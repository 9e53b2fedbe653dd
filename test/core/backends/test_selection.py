"""Backend selection (choose_backend, create_backend) and the TensorRT backend's refusal here."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from peftdml_ros.core import model_io
from peftdml_ros.core.backends import choose_backend, create_backend
from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend, choose_providers
from peftdml_ros.core.errors import BackendUnavailableError, ConfigError, ModelArtifactError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()


def test_auto_picks_by_model_file_and_machine() -> None:
    name, reason = choose_backend("auto", "model.onnx", "auto")
    if HAS_CUDA and HAS_TENSORRT:
        assert name == "tensorrt"
    else:
        assert name == "onnxruntime"
        assert ("no CUDA GPU" in reason) if not HAS_CUDA else ("tensorrt module" in reason)
    assert choose_backend("auto", "model.onnx", "cpu") == (
        "onnxruntime",
        "ONNX model and device 'cpu'",
    )
    assert choose_backend("auto", "run/ckpt.pt", "auto")[0] == "torch"
    name, reason = choose_backend("auto", "", "auto")
    assert name == "torch" and "untrained" in reason
    assert choose_backend("auto", "m.engine", "auto")[0] == "tensorrt"


def test_explicit_backend_is_honoured_or_refused() -> None:
    assert choose_backend("onnxruntime", "m.onnx", "cpu")[0] == "onnxruntime"
    assert choose_backend("torch", "", "cpu")[0] == "torch"
    with pytest.raises(ConfigError, match="peftdml export"):
        choose_backend("onnxruntime", "ckpt.pt", "cpu")
    with pytest.raises(ConfigError, match="PyTorch checkpoint"):
        choose_backend("torch", "m.onnx", "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        choose_backend("openvino", "m.onnx", "cpu")


def test_onnxruntime_providers() -> None:
    assert choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", both) == both
    assert choose_providers("cuda:1", both) == both
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="device"):
        choose_providers("tpu", both)


def test_onnxruntime_auto_falls_back_to_cpu_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        providers = choose_providers("auto", ["CPUExecutionProvider"])
    assert providers == ["CPUExecutionProvider"]
    assert any("running on CPU" in r.getMessage() for r in caplog.records)


def _identity_graph(path: Path, input_names: tuple[str, ...]) -> None:
    """A graph whose outputs are named like model_io but which takes other inputs."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in input_names]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in model_io.OUTPUT_NAMES
    ]
    nodes = [helper.make_node("Identity", [input_names[0]], [n]) for n in model_io.OUTPUT_NAMES]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def test_onnxruntime_rejects_a_graph_with_other_tensor_names(tmp_path: Path) -> None:
    path = tmp_path / "foreign.onnx"
    _identity_graph(path, ("points",))
    with pytest.raises(ModelArtifactError, match="re-export"):
        OnnxRuntimeBackend(path, device="cpu")
    with pytest.raises(ModelArtifactError, match="does not exist"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx", device="cpu")


def test_onnxruntime_runs_a_graph_with_model_io_names(tmp_path: Path) -> None:
    path = tmp_path / "identity.onnx"
    _identity_graph(path, model_io.INPUT_NAMES)
    backend = create_backend("auto", path, "cpu")
    assert backend.name == "onnxruntime" and backend.device == "cpu"
    assert "device 'cpu'" in backend.selection_reason
    feed = {n: np.full((1,), 3.0, np.float32) for n in model_io.INPUT_NAMES}
    outputs = backend.run(feed)
    assert tuple(outputs) == model_io.OUTPUT_NAMES
    assert all(float(v[0]) == 3.0 for v in outputs.values())


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is importable here")
def test_tensorrt_backend_is_unavailable_without_tensorrt(tmp_path: Path) -> None:
    from peftdml_ros.core.backends.tensorrt_backend import TensorRTBackend

    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        TensorRTBackend(tmp_path / "model.onnx")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        create_backend("tensorrt", tmp_path / "model.onnx", "cuda")
