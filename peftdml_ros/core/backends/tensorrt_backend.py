"""TensorRT 10 backend: builds (and caches) an engine from the exported ONNX, runs it on CUDA.

Written against the TensorRT 10 Python API (name-based I/O: `set_input_shape`,
`set_tensor_address`, `execute_async_v3`). Device memory is owned by torch CUDA tensors, so no
pycuda/cuda-python dependency is needed. Where `tensorrt` cannot be imported (CPU machines, CI)
constructing the backend raises BackendUnavailableError; nothing here pretends to run.

Engine cache: `<model>.<fp16|fp32>.engine` next to the ONNX file, with a `.json` sidecar holding
the ONNX sha256, the TensorRT version, the GPU name and the precision; any mismatch rebuilds it.
The builder's timing cache (`tensorrt_timing.cache` in the same folder) makes rebuilds fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.base import Arrays, check_graph_names, check_input_names
from peftdml_ros.core.errors import BackendUnavailableError, ModelArtifactError

_LOG = logging.getLogger(__name__)

_WORKSPACE_BYTES = 2 << 30
TIMING_CACHE_NAME = "tensorrt_timing.cache"


def import_tensorrt() -> Any:
    """The `tensorrt` module, or BackendUnavailableError saying how to get it."""
    try:
        import tensorrt
    except ImportError as error:
        raise BackendUnavailableError(
            f"TensorRT is not installed here ({error}). Install TensorRT 10 for your CUDA "
            "(pip install tensorrt from NVIDIA's index, or the JetPack/TensorRT packages), "
            "or use backend 'onnxruntime' or 'torch'"
        ) from error
    return tensorrt


def _import_torch_cuda(device: str) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"TensorRT needs a CUDA device but torch sees none (device {device!r}); "
            "use backend 'onnxruntime' or 'torch' on this machine"
        )
    return torch


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TensorRTBackend:
    """Runs the detector as a TensorRT engine built from an ONNX file (or a serialized engine)."""

    # Why create_backend picked this backend (set by create_backend).
    selection_reason: str = ""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cuda",
        fp16: bool = True,
        max_batch: int = 4,
    ) -> None:
        trt = import_tensorrt()
        if device not in ("auto", "cuda") and not device.startswith("cuda:"):
            raise BackendUnavailableError(
                f"TensorRT runs only on CUDA devices, not {device!r}; use 'cuda' or 'cuda:N'"
            )
        torch = _import_torch_cuda(device)
        self._torch = torch
        self._device = "cuda" if device == "auto" else device
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        path = Path(model_path)
        if not path.is_file():
            raise ModelArtifactError(
                f"{path} does not exist; export an ONNX with `peftdml export`"
            )
        with torch.cuda.device(self._device):
            if path.suffix in (".engine", ".plan"):
                engine_bytes = path.read_bytes()
            else:
                engine_bytes = self._cached_or_built(path, fp16, max_batch)
            runtime = trt.Runtime(self._logger)
            self._engine = runtime.deserialize_cuda_engine(engine_bytes)
            if self._engine is None:
                raise ModelArtifactError(
                    f"TensorRT cannot deserialize the engine for {path} (built by another "
                    "TensorRT version or GPU?): delete the .engine file to rebuild it"
                )
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=self._device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        check_graph_names(f"TensorRT engine for {path}", inputs, outputs)
        self.path = path
        _LOG.info("tensorrt backend: %s on %s (fp16=%s)", path, self._device, fp16)

    @property
    def name(self) -> str:
        return "tensorrt"

    @property
    def device(self) -> str:
        return self._device

    def _cached_or_built(self, onnx_path: Path, fp16: bool, max_batch: int) -> bytes:
        precision = "fp16" if fp16 else "fp32"
        engine_path = onnx_path.with_suffix(f".{precision}.engine")
        stamp_path = engine_path.with_suffix(".engine.json")
        stamp = {
            "onnx_sha256": _sha256(onnx_path),
            "tensorrt": str(self._trt.__version__),
            "gpu": str(self._torch.cuda.get_device_name(self._device)),
            "precision": precision,
            "max_batch": max_batch,
        }
        if engine_path.is_file() and stamp_path.is_file():
            if json.loads(stamp_path.read_text()) == stamp:
                _LOG.info("tensorrt: using cached engine %s", engine_path)
                return engine_path.read_bytes()
            _LOG.warning(
                "tensorrt: %s is stale (model, GPU or version changed): rebuilding", engine_path
            )
        engine = self._build(onnx_path, fp16, max_batch)
        engine_path.write_bytes(engine)
        stamp_path.write_text(json.dumps(stamp, indent=2))
        return engine

    def _build(self, onnx_path: Path, fp16: bool, max_batch: int) -> bytes:
        trt = self._trt
        _LOG.warning("tensorrt: building an engine from %s (takes minutes once)", onnx_path)
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelArtifactError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        cache_path = onnx_path.parent / TIMING_CACHE_NAME
        cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
        timing_cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(timing_cache, ignore_mismatch=True)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            low = tuple(1 if d < 0 else d for d in shape)
            high = tuple(max_batch if d < 0 else d for d in shape)
            profile.set_shape(tensor.name, low, low, high)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelArtifactError(
                f"TensorRT failed to build an engine from {onnx_path}; see its log above"
            )
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        return bytes(memoryview(serialized))

    def run(self, inputs: Mapping[str, npt.NDArray[np.float32]]) -> Arrays:
        check_input_names(inputs)
        torch = self._torch
        with torch.cuda.device(self._device):
            keep_alive = []  # device tensors must outlive execute_async_v3
            for name in model_io.INPUT_NAMES:
                array = np.ascontiguousarray(inputs[name], np.float32)
                tensor = torch.from_numpy(array).to(self._device, non_blocking=False)
                keep_alive.append(tensor)
                self._context.set_input_shape(name, tuple(array.shape))
                self._context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for name in model_io.OUTPUT_NAMES:
                shape = tuple(self._context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=torch.float32, device=self._device)
                outputs[name] = out
                self._context.set_tensor_address(name, out.data_ptr())
            # Inputs were copied on the default stream; our stream must see them.
            self._stream.wait_stream(torch.cuda.current_stream())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise ModelArtifactError("TensorRT execute_async_v3 failed; see its log above")
            self._stream.synchronize()
            return {name: t.cpu().numpy() for name, t in outputs.items()}
