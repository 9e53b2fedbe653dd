"""ONNX Runtime backend: CUDA execution provider where it works, else CPU (said loudly).

Session options (measured with `python -m peftdml_ros.tools.bench_backends` on the shipped
model, 2 cores shared with other load):
- full graph optimization (constant folding, fusions, NCHWc convolution layouts);
- sequential execution with `threads` intra-op threads, one per core by default: the graph is
  one chain of operators, and the parallel executor was slower;
- no spinning: ORT's pool threads otherwise busy-wait after each operator and each run, taking
  the cores from whatever else the process does between frames (the node's executor thread
  decodes images, DDS delivers messages, detection decoding runs on the same cores); under
  load, spinning made the median run slower and the fastest run no faster.
Against ONNX Runtime's defaults (optimization aside) these halved the shipped model's run time
on 2 loaded cores (the benchmark's `onnxruntime defaults / onnxruntime backend`, 2 threads).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cpusets), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def session_options(ort: Any, threads: int) -> Any:
    """The SessionOptions of every session this backend opens (see the module docstring)."""
    if threads < 1:
        raise ConfigError(f"ONNX Runtime threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # used by the parallel executor only
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's warnings repeat on every start
    return options


class OnnxRuntimeBackend:
    """Runs an exported .onnx graph with ONNX Runtime."""

    # Why create_backend picked this backend (set by create_backend).
    selection_reason: str = ""

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int = 0) -> None:
        """threads: intra-op threads on the CPU; 0 = one per core this process may run on."""
        ort = _import_onnxruntime()
        path = Path(model_path)
        if not path.is_file():
            raise ModelArtifactError(
                f"ONNX model {path} does not exist; export one with "
                "`peftdml export --checkpoint CKPT --out model.onnx`"
            )
        providers = choose_providers(device, list(ort.get_available_providers()))
        self.threads = threads or available_cores()
        options = session_options(ort, self.threads)
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
        _LOG.info(
            "onnxruntime backend: %s on %s (providers %s, %d intra-op threads)",
            path,
            self._device,
            used,
            self.threads,
        )

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
