"""ONNX Runtime backend: CUDA execution provider where it works, else CPU (said loudly)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.base import Arrays, check_graph_names, check_input_names
from peftdml_ros.core.errors import BackendUnavailableError, ConfigError, ModelArtifactError

_LOG = logging.getLogger(__name__)

_CUDA_EP = "CUDAExecutionProvider"
_CPU_EP = "CPUExecutionProvider"


def _import_onnxruntime():  # type: ignore[no-untyped-def]
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailableError(
            f"onnxruntime cannot be imported ({error}); install `onnxruntime` (CPU) or "
            "`onnxruntime-gpu`, or use backend 'torch'"
        ) from error
    return onnxruntime


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for `device` ("auto", "cpu", "cuda", "cuda:N"), best first."""
    if device == "cpu":
        return [_CPU_EP]
    if device == "auto":
        if _CUDA_EP in available:
            return [_CUDA_EP, _CPU_EP]
        _LOG.warning(
            "ONNX Runtime has no CUDA execution provider here (available: %s): running on CPU. "
            "Install onnxruntime-gpu for GPU inference.",
            available,
        )
        return [_CPU_EP]
    if device == "cuda" or device.startswith("cuda:"):
        if _CUDA_EP not in available:
            raise BackendUnavailableError(
                f"device {device!r} asked for, but ONNX Runtime offers only {available}; install "
                "onnxruntime-gpu with a matching CUDA, or set device to 'cpu' or 'auto'"
            )
        return [_CUDA_EP, _CPU_EP]
    raise ConfigError(f"device {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


class OnnxRuntimeBackend:
    """Runs an exported .onnx graph with ONNX Runtime."""

    # Why create_backend picked this backend (set by create_backend).
    selection_reason: str = ""

    def __init__(self, model_path: str | Path, device: str = "auto") -> None:
        ort = _import_onnxruntime()
        path = Path(model_path)
        if not path.is_file():
            raise ModelArtifactError(
                f"ONNX model {path} does not exist; export one with "
                "`peftdml export --checkpoint CKPT --out model.onnx`"
            )
        providers = choose_providers(device, list(ort.get_available_providers()))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings repeat on every start
        provider_options: list[dict[str, str]] = []
        for provider in providers:
            index = device.split(":", 1)[1] if device.startswith("cuda:") else "0"
            provider_options.append({"device_id": index} if provider == _CUDA_EP else {})
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=providers, provider_options=provider_options
            )
        except Exception as error:  # ORT raises its own untyped exceptions for bad graphs
            raise ModelArtifactError(
                f"ONNX Runtime cannot load {path}: {error}; re-export it with `peftdml export`"
            ) from error
        used = list(self._session.get_providers())
        if providers[0] == _CUDA_EP and _CUDA_EP not in used:
            # ORT drops a provider whose libraries (CUDA, cuDNN) fail to load, with no error.
            _LOG.warning(
                "ONNX Runtime could not start CUDA (check the CUDA/cuDNN libraries): "
                "FALLING BACK TO CPU for %s",
                path,
            )
        self._device = "cuda" if _CUDA_EP in used else "cpu"
        check_graph_names(
            f"ONNX model {path}",
            [i.name for i in self._session.get_inputs()],
            [o.name for o in self._session.get_outputs()],
        )
        self.path = path
        _LOG.info("onnxruntime backend: %s on %s (providers %s)", path, self._device, used)

    @property
    def name(self) -> str:
        return "onnxruntime"

    @property
    def device(self) -> str:
        return self._device

    def run(self, inputs: Mapping[str, npt.NDArray[np.float32]]) -> Arrays:
        check_input_names(inputs)
        feed = {name: np.ascontiguousarray(inputs[name], np.float32) for name in inputs}
        values = self._session.run(list(model_io.OUTPUT_NAMES), feed)
        return {name: np.asarray(v) for name, v in zip(model_io.OUTPUT_NAMES, values, strict=True)}
