"""Torch and ONNX Runtime backends on a real exported model; their CUDA paths where a GPU is
(TensorRT: test_tensorrt.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import torch

from peftdml_ros.core import model_io
from peftdml_ros.core.backends import InferenceBackend, create_backend
from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from peftdml_ros.core.backends.torch_backend import TorchBackend
from peftdml_ros.core.errors import BackendUnavailableError, InputDataError
from peftdml_ros.core.model import build_model, export_onnx, tiny_config
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor, collate
from peftdml_ros.tools.export import random_frame

CONFIG = tiny_config()
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model_and_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(11)
    model = build_model(CONFIG)
    with torch.no_grad():  # non-zero LoRA updates, so an unmerged/merged mix-up shows
        for name, parameter in model.named_parameters():
            if "lora_up" in name:
                parameter.normal_(0.0, 0.05)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", dynamic_batch=True)
    return model, path


def _inputs(batch: int = 1) -> dict[str, npt.NDArray[np.float32]]:
    pre = Preprocessor(PreprocessConfig.from_model_config(CONFIG))
    return collate([pre(random_frame(CONFIG, seed=s)) for s in range(batch)])


def test_backends_satisfy_the_protocol(model_and_onnx: tuple[torch.nn.Module, Path]) -> None:
    model, path = model_and_onnx
    for backend in (TorchBackend(model, CONFIG, "cpu"), OnnxRuntimeBackend(path, "cpu")):
        assert isinstance(backend, InferenceBackend)
        assert backend.device == "cpu"
        outputs = backend.run(_inputs())
        assert tuple(outputs) == model_io.OUTPUT_NAMES
        h, w = CONFIG.grid_hw
        assert outputs["heatmap"].shape == (1, 10, h, w)
        assert outputs["normality_score"].shape == (1,)
        assert all(v.dtype == np.float32 for v in outputs.values())


def test_torch_merged_lora_matches_the_training_model(
    model_and_onnx: tuple[torch.nn.Module, Path],
) -> None:
    model, _ = model_and_onnx
    inputs = _inputs()
    with torch.no_grad():
        reference = model.eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    merged = TorchBackend(model, CONFIG, "cpu")
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    outputs = merged.run(inputs)
    for name in model_io.OUTPUT_NAMES:
        np.testing.assert_allclose(outputs[name], reference[name].numpy(), atol=1e-5, err_msg=name)


def test_torch_and_onnxruntime_agree_on_a_batch(
    model_and_onnx: tuple[torch.nn.Module, Path],
) -> None:
    model, path = model_and_onnx
    inputs = _inputs(batch=2)
    by_torch = TorchBackend(model, CONFIG, "cpu").run(inputs)
    by_ort = OnnxRuntimeBackend(path, "cpu").run(inputs)
    for name in model_io.OUTPUT_NAMES:
        assert by_torch[name].shape[0] == 2
        np.testing.assert_allclose(by_torch[name], by_ort[name], atol=1e-4, err_msg=name)


def test_backends_refuse_wrong_inputs(model_and_onnx: tuple[torch.nn.Module, Path]) -> None:
    model, path = model_and_onnx
    inputs = _inputs()
    del inputs["imu_features"]
    for backend in (TorchBackend(model, CONFIG, "cpu"), OnnxRuntimeBackend(path, "cpu")):
        with pytest.raises(InputDataError, match="missing \\['imu_features'\\]"):
            backend.run(inputs)


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is visible")
def test_cuda_device_refused_without_gpu(model_and_onnx: tuple[torch.nn.Module, Path]) -> None:
    model, _ = model_and_onnx
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        TorchBackend(model, CONFIG, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_torch_cuda_matches_cpu(model_and_onnx: tuple[torch.nn.Module, Path]) -> None:
    model, _ = model_and_onnx
    inputs = _inputs(batch=2)
    on_cpu = TorchBackend(model, CONFIG, "cpu").run(inputs)
    backend = TorchBackend(model, CONFIG, "cuda")
    assert backend.device == "cuda"
    assert next(backend.model.parameters()).is_cuda
    # IEEE fp32 convolutions: cuDNN's default TF32 (Ampere and newer) rounds their inputs to
    # 10 mantissa bits, a 1e-3-level difference that would hide nothing but fail a tight check.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        on_gpu = backend.run(inputs)
    for name in model_io.OUTPUT_NAMES:
        assert on_gpu[name].dtype == np.float32 and on_gpu[name].shape == on_cpu[name].shape
        np.testing.assert_allclose(on_gpu[name], on_cpu[name], atol=1e-3, err_msg=name)


HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(
    not (HAS_CUDA and HAS_ORT_CUDA), reason="needs a CUDA GPU and onnxruntime-gpu (the gpu extra)"
)
def test_onnxruntime_cuda_matches_cpu(model_and_onnx: tuple[torch.nn.Module, Path]) -> None:
    _, path = model_and_onnx
    inputs = _inputs(batch=2)
    on_cpu = OnnxRuntimeBackend(path, "cpu").run(inputs)
    for device in ("auto", "cuda"):
        backend = create_backend("onnxruntime", path, device)
        assert backend.device == "cuda", "ONNX Runtime fell back to CPU (CUDA/cuDNN libraries?)"
        on_gpu = backend.run(inputs)
        for name in model_io.OUTPUT_NAMES:
            np.testing.assert_allclose(on_gpu[name], on_cpu[name], atol=1e-3, err_msg=name)
