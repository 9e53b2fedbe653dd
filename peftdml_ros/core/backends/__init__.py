"""Inference backends behind one Protocol, and `create_backend` which picks one.

How "auto" picks (the reason is logged and kept on the returned backend as `selection_reason`):
  1. a serialized TensorRT engine (.engine/.plan)                -> tensorrt
  2. an .onnx file, a CUDA GPU visible and `tensorrt` importable -> tensorrt
  3. an .onnx file otherwise                                     -> onnxruntime
  4. a PyTorch checkpoint (.pt) or no model ("": untrained default model) -> torch
An explicit name is honoured or refused with an error that says why; never silently replaced.

`precision` (fp32, fp16, int8) is the TensorRT engine's (see tensorrt_backend); PyTorch and ONNX
Runtime run the graph in fp32 whatever it says (logged when int8 was asked for).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from peftdml_ros.core.backends.base import InferenceBackend
from peftdml_ros.core.backends.engine_cache import DEFAULT_PRECISION, PRECISIONS, check_precision
from peftdml_ros.core.errors import ConfigError

if TYPE_CHECKING:
    from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from peftdml_ros.core.backends.tensorrt_backend import TensorRTBackend
    from peftdml_ros.core.backends.torch_backend import TorchBackend

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_PRECISION",
    "PRECISIONS",
    "InferenceBackend",
    "choose_backend",
    "create_backend",
]

_LOG = logging.getLogger(__name__)

BACKEND_NAMES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "tensorrt")
_ENGINE_SUFFIXES = (".engine", ".plan")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def choose_backend(name: str, model_path: str | Path, device: str) -> tuple[str, str]:
    """(backend name, reason) for a requested name, model file and device; no side effects."""
    if name not in BACKEND_NAMES:
        raise ConfigError(f"backend {name!r} is not one of {list(BACKEND_NAMES)}")
    path = str(model_path)
    suffix = Path(path).suffix.lower() if path else ""
    if name != "auto":
        _check_explicit(name, path, suffix)
        return name, f"backend {name!r} was asked for"
    if suffix in _ENGINE_SUFFIXES:
        return "tensorrt", f"{path} is a serialized TensorRT engine"
    if suffix == ".onnx":
        if device == "cpu":
            return "onnxruntime", "ONNX model and device 'cpu'"
        if not _cuda_available():
            return "onnxruntime", "ONNX model and no CUDA GPU visible (TensorRT needs one)"
        if not _tensorrt_importable():
            return "onnxruntime", "ONNX model on a CUDA GPU, but the tensorrt module is missing"
        return "tensorrt", "ONNX model, CUDA GPU and TensorRT available"
    if not path:
        return "torch", "no model file given: the untrained default model runs in PyTorch"
    return "torch", f"{path} is a PyTorch checkpoint (export it to ONNX for the faster backends)"


def _check_explicit(name: str, path: str, suffix: str) -> None:
    wants = {
        "torch": (
            "a PyTorch checkpoint (.pt) or '' for the default model",
            suffix not in (".onnx", *_ENGINE_SUFFIXES),
        ),
        "onnxruntime": ("an .onnx file (make one with `peftdml export`)", suffix == ".onnx"),
        "tensorrt": ("an .onnx file or a .engine", suffix in (".onnx", *_ENGINE_SUFFIXES)),
    }
    what, ok = wants[name]
    if not ok:
        raise ConfigError(f"backend {name!r} needs {what}, not model_path {path!r}")


def create_backend(
    name: str = "auto",
    model_path: str | Path = "",
    device: str = "auto",
    seed: int = 0,
    precision: str = DEFAULT_PRECISION,
) -> InferenceBackend:
    """Build the backend `choose_backend` picks; logs which one and why.

    `seed` seeds the untrained default model when model_path is "" (torch only); `precision`
    is the TensorRT engine's (ConfigError unless one of PRECISIONS).
    """
    check_precision(precision)
    chosen, reason = choose_backend(name, model_path, device)
    _LOG.info("inference backend: %s (%s)", chosen, reason)
    if chosen != "tensorrt" and precision == "int8":
        _LOG.warning(
            "precision int8 applies to TensorRT engines only: backend %s runs the model in fp32",
            chosen,
        )
    backend: TensorRTBackend | OnnxRuntimeBackend | TorchBackend
    # Implementations are imported only when chosen (tensorrt, onnxruntime, torch are heavy).
    if chosen == "tensorrt":
        from peftdml_ros.core.backends.tensorrt_backend import TensorRTBackend

        backend = TensorRTBackend(
            model_path, device="cuda" if device == "auto" else device, precision=precision
        )
    elif chosen == "onnxruntime":
        from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(model_path, device=device)
    else:
        from peftdml_ros.core.backends.torch_backend import TorchBackend

        if str(model_path):
            backend = TorchBackend.from_checkpoint(model_path, device=device)
        else:
            backend = TorchBackend.from_default(seed=seed, device=device)
    backend.selection_reason = reason
    return backend
