"""TensorRT backend: builds (once, with progress) and caches an engine from the exported ONNX,
then runs it on CUDA.

Written against the TensorRT 10 Python API (name-based I/O: `set_input_shape`,
`set_tensor_address`, `execute_async_v3`; `IProgressMonitor`; `IInt8EntropyCalibrator2`).
Device memory is owned by torch CUDA tensors, so no pycuda/cuda-python dependency is needed.
Where `tensorrt` cannot be imported (CPU machines, CI) every entry point raises
BackendUnavailableError; nothing here pretends to run.

Precision (`precision`: fp32, fp16, int8):
  - fp32: every layer fp32; TF32 is switched off, so the engine matches ONNX Runtime's fp32.
  - fp16: FP16 kernels where TensorRT finds them faster, except the layers `fp32_layers` pins
    (the GMM/normality subgraph and the pillar scatter sums), which get fp32 precision and
    output types, enforced with OBEY_PRECISION_CONSTRAINTS.
  - int8: as fp16 plus INT8 kernels, with an entropy calibration (IInt8EntropyCalibrator2) over
    preprocessed frames (`peftdml export --build-engine --precision int8 --calib-data ...`
    feeds it dataset frames); the calibration table is cached beside the model.
TensorRT 11 dropped the FP16/INT8 builder flags and INT8 calibration (networks are strongly
typed: the ONNX types decide); there fp16 and int8 are refused with an error that says so.

Engine cache (engine_cache): `<model>.<precision>.engine` next to the ONNX file with a sidecar
holding its key (ONNX sha256, TensorRT version, GPU name and compute capability, precision,
input shapes, calibration); a mismatch rebuilds it and says why. All writes are atomic. The
builder's timing cache (`tensorrt_timing.cache` in the same folder) makes rebuilds faster.
`ensure_engine` is the one place that builds: `peftdml export --build-engine` calls it ahead of
time, the node calls it (and says clearly that it is building) before it loads the engine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.base import Arrays, check_graph_names, check_input_names
from peftdml_ros.core.backends.engine_cache import (
    DEFAULT_MAX_BATCH,
    DEFAULT_PRECISION,
    ENGINE_SUFFIXES,
    PRECISIONS,
    CacheLookup,
    EngineEnvironment,
    EngineKey,
    ShapeRange,
    announcement,
    atomic_write,
    calibration_cache_path,
    calibration_shapes,
    check_precision,
    engine_path,
    lookup,
    profile_shapes,
    sha256_file,
    stamp_path,
    write_stamp,
)
from peftdml_ros.core.backends.fp32_layers import PinnedLayers, select_fp32_layers
from peftdml_ros.core.errors import BackendUnavailableError, ConfigError, ModelArtifactError

_LOG = logging.getLogger(__name__)

_WORKSPACE_BYTES = 2 << 30
TIMING_CACHE_NAME = "tensorrt_timing.cache"
DEFAULT_PROGRESS_INTERVAL_S = 10.0

CalibrationFrames = Iterable[Mapping[str, npt.NDArray[np.float32]]]


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


def _cuda_device(device: str) -> str:
    if device == "auto":
        return "cuda"
    if device != "cuda" and not device.startswith("cuda:"):
        raise BackendUnavailableError(
            f"TensorRT runs only on CUDA devices, not {device!r}; use 'cuda' or 'cuda:N'"
        )
    return device


def probe_environment(trt: Any, torch: Any, device: str) -> EngineEnvironment:
    """TensorRT version, GPU name and compute capability of `device` (cuda or cuda:N)."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return EngineEnvironment(
        tensorrt_version=str(trt.__version__),
        gpu_name=str(torch.cuda.get_device_name(index)),
        compute_capability=(int(major), int(minor)),
    )


def check_builder_supports(trt: Any, precision: str) -> None:
    """BackendUnavailableError when this TensorRT cannot build `precision` as documented."""
    flags = trt.BuilderFlag
    if precision == "fp32":
        return
    if not hasattr(flags, "FP16") or not hasattr(flags, "OBEY_PRECISION_CONSTRAINTS"):
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} builds only strongly typed networks (no FP16 flag, no "
            f"per-layer precision): precision {precision} needs TensorRT 10; use precision fp32 "
            "with this version"
        )
    if precision == "int8" and not (
        hasattr(flags, "INT8") and hasattr(trt, "IInt8EntropyCalibrator2")
    ):
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} has no INT8 calibration (IInt8EntropyCalibrator2): "
            "build int8 with TensorRT 10, or use precision fp16"
        )


# ---------------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class BuildStatus:
    """How far an engine build is: elapsed wall time, and TensorRT's current phase and step
    ("" and 0 of 0 where this TensorRT reports no phases). `done` on the last report."""

    elapsed_s: float
    phase: str = ""
    step: int = 0
    steps: int = 0
    done: bool = False

    def text(self) -> str:
        where = f" - {self.phase}" if self.phase else ""
        if self.phase and self.steps:
            where += f" {self.step}/{self.steps}"
        state = "built" if self.done else "building"
        return f"{state} TensorRT engine: {self.elapsed_s:.0f} s elapsed{where}"


BuildProgress = Callable[[BuildStatus], None]


class BuildTicker:
    """Reports a BuildStatus every `interval_s` from its own thread while the build runs, so a
    long phase still shows the build is alive; `phase` is fed by the IProgressMonitor."""

    def __init__(self, progress: BuildProgress | None, interval_s: float) -> None:
        self._progress = progress
        self._interval_s = interval_s
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._phase: tuple[str, int, int] = ("", 0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-build-progress")
        self._thread.daemon = True
        self._failed = False

    def __enter__(self) -> BuildTicker:
        self._start = time.monotonic()
        if self._progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if exc[0] is None:
            self._emit(done=True)

    def phase(self, name: str, step: int, steps: int) -> None:
        with self._lock:
            self._phase = (name, step, steps)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._emit(done=False)

    def _emit(self, done: bool) -> None:
        if self._progress is None or self._failed:
            return
        with self._lock:
            name, step, steps = self._phase
        status = BuildStatus(time.monotonic() - self._start, name, step, steps, done)
        try:
            self._progress(status)
        except Exception:  # a broken display must not stop a build that took minutes
            self._failed = True
            _LOG.exception("engine build progress callback failed; no more progress reports")


def progress_monitor(trt: Any, ticker: BuildTicker) -> Any | None:
    """A trt.IProgressMonitor feeding `ticker` (None where this TensorRT has none: the
    ticker then still reports the elapsed time)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()  # pybind11 bases must be initialized explicitly
            # phase -> (parent phase, steps); nested phases report their parent when done.
            self._phases: dict[str, tuple[str | None, int]] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._phases[phase_name] = (parent_phase, int(num_steps))
            ticker.phase(phase_name, 0, int(num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            steps = self._phases.get(phase_name, (None, 0))[1]
            ticker.phase(phase_name, int(step) + 1, steps)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            parent, _ = self._phases.pop(phase_name, (None, 0))
            if parent is not None and parent in self._phases:
                ticker.phase(parent, 0, self._phases[parent][1])

    return _Monitor()


# ------------------------------------------------------------------------------- calibration


def make_entropy_calibrator(
    trt: Any, torch: Any, frames: CalibrationFrames | None, cache_path: Path, device: str
) -> Any:
    """A trt.IInt8EntropyCalibrator2 over model_io input dicts (batch 1 each, as the
    Preprocessor gives them), caching its table in `cache_path`.

    frames None: calibrate from the existing cache only (TensorRT then never asks for a batch).
    Frames given: calibrate afresh (the cache is not read) and write the new table.
    """
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} has no IInt8EntropyCalibrator2: build int8 with "
            "TensorRT 10, or use precision fp16"
        )

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()  # pybind11 bases must be initialized explicitly
            self._frames = iter(frames) if frames is not None else iter(())
            self._held: list[Any] = []  # device copies must live until the next get_batch
            self.frames_read = 0

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                inputs = next(self._frames)
            except StopIteration:
                return None  # the end of the calibration set
            check_input_names(inputs)
            with torch.cuda.device(device):
                self._held = [
                    torch.from_numpy(np.ascontiguousarray(inputs[name], np.float32)).to(device)
                    for name in names
                ]
                torch.cuda.synchronize()
            self.frames_read += 1
            return [int(tensor.data_ptr()) for tensor in self._held]

        def read_calibration_cache(self) -> bytes | None:
            if frames is None and cache_path.is_file():
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write(cache_path, bytes(memoryview(cache)))
            _LOG.info("tensorrt: wrote INT8 calibration table %s", cache_path)

    return EntropyCalibrator()


# ------------------------------------------------------------------------ fp32-pinned layers


def pin_fp32_layers(trt: Any, network: Any, pins: PinnedLayers) -> dict[str, int]:
    """Give fp32 precision and output types to the network's layers that `pins` names (by ONNX
    node name or output tensor); returns pinned layers per rule. Layers writing non-float
    tensors (indices, shapes, masks) are left alone: precision does not apply to them."""
    float_types = {trt.float32, trt.float16}
    counts: dict[str, int] = {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        rule = pins.rule_of(layer.name, [t.name for t in outputs])
        if rule is None or not outputs or any(t.dtype not in float_types for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        counts[rule] = counts.get(rule, 0) + 1
    if pins.nodes and not counts:
        _LOG.warning(
            "tensorrt: none of the %d ONNX nodes to keep in fp32 matched a layer name (the "
            "ONNX parser names layers differently?): the normality score and pillar sums may "
            "lose accuracy in this engine; compare it with precision fp32",
            len(pins.nodes),
        )
    return counts


# ------------------------------------------------------------------------------- the build


@dataclass(frozen=True)
class EnginePlan:
    """What `ensure_engine` would do for a model: the key, and whether the cache has it."""

    onnx_path: Path
    key: EngineKey
    found: CacheLookup

    def announcement(self) -> str:
        return announcement(self.found, self.onnx_path, self.key)


@dataclass(frozen=True)
class EngineResult:
    """An engine file ready to load; `built` when this call built it (`pinned`: layers kept
    fp32 per rule, `build_s`: wall time of the build)."""

    path: Path
    key: EngineKey
    built: bool
    build_s: float = 0.0
    pinned: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _check_onnx(path: Path) -> Path:
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"{path} is not an .onnx file: engines are built from ONNX exports")
    if not path.is_file():
        raise ModelArtifactError(
            f"{path} does not exist; export one with `peftdml export --checkpoint CKPT --out "
            f"{path.name}`"
        )
    return path


def _key(
    trt: Any, torch: Any, onnx_path: Path, precision: str, device: str, max_batch: int
) -> EngineKey:
    calibration = calibration_cache_path(onnx_path)
    return EngineKey(
        onnx_sha256=sha256_file(onnx_path),
        environment=probe_environment(trt, torch, device),
        precision=precision,
        input_shapes=profile_shapes(onnx_path, max_batch),
        calibration_sha256=(
            sha256_file(calibration) if precision == "int8" and calibration.is_file() else ""
        ),
    )


def plan_engine(
    onnx_path: str | Path,
    precision: str = DEFAULT_PRECISION,
    device: str = "cuda",
    max_batch: int = DEFAULT_MAX_BATCH,
) -> EnginePlan:
    """The engine key of `onnx_path` on this machine and whether a matching engine is cached."""
    path = _check_onnx(Path(onnx_path))
    check_precision(precision)
    device = _cuda_device(device)
    trt = import_tensorrt()
    torch = _import_torch_cuda(device)
    key = _key(trt, torch, path, precision, device, max_batch)
    return EnginePlan(path, key, lookup(engine_path(path, precision), key))


def ensure_engine(
    onnx_path: str | Path,
    precision: str = DEFAULT_PRECISION,
    device: str = "cuda",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    calibration: CalibrationFrames | None = None,
    progress: BuildProgress | None = None,
    progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
    rebuild: bool = False,
    announce: bool = True,
) -> EngineResult:
    """The cached engine of `onnx_path` for this GPU, TensorRT and precision, built first when
    missing or stale (said with a WARNING naming the reason; `progress` gets a BuildStatus every
    `progress_interval_s` while it builds).

    calibration (int8): frames to calibrate on; this recalibrates and rebuilds. Without it an
    int8 build uses the cached calibration table, and fails with ConfigError when there is none.
    announce False: the caller has said what happens (prepare_engine), only log at debug level.
    """
    path = _check_onnx(Path(onnx_path))
    check_precision(precision)
    device = _cuda_device(device)
    trt = import_tensorrt()
    check_builder_supports(trt, precision)
    torch = _import_torch_cuda(device)
    key = _key(trt, torch, path, precision, device, max_batch)
    engine = engine_path(path, precision)
    plan = EnginePlan(path, key, lookup(engine, key))
    say = _LOG.debug if not announce else None
    if plan.found.hit and not rebuild and calibration is None:
        (say or _LOG.info)("tensorrt: %s", plan.announcement())
        return EngineResult(engine, key, built=False)
    table = calibration_cache_path(path)
    if precision == "int8" and calibration is None and not table.is_file():
        raise ConfigError(
            f"precision int8: no usable engine for {path} and no calibration table {table.name}; "
            "calibrate once with `peftdml export --checkpoint ... --out "
            f"{path.name} --build-engine --precision int8 --calib-data DATAROOT "
            "--calib-version V --calib-split S`, or use precision fp16"
        )
    (say or _LOG.warning)("tensorrt: %s", plan.announcement())
    start = time.monotonic()
    with torch.cuda.device(device):
        serialized, pinned = _build(
            trt, torch, path, key, device, calibration, progress, progress_interval_s
        )
    build_s = time.monotonic() - start
    if precision == "int8":  # the table this engine was calibrated with (new or cached)
        key = dataclasses.replace(key, calibration_sha256=sha256_file(table))
    atomic_write(engine, serialized)
    write_stamp(engine, key, build_s)
    _LOG.info("tensorrt: wrote %s in %.0f s (fp32-pinned layers: %s)", engine, build_s, pinned)
    return EngineResult(engine, key, built=True, build_s=build_s, pinned=pinned)


def prepare_engine(
    onnx_path: str | Path,
    precision: str,
    device: str,
    *,
    info: Callable[[str], object],
    warn: Callable[[str], object],
    progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
) -> EngineResult:
    """`ensure_engine` for a long-running process: `info` says which cached engine is loaded,
    or `warn` says that (and why) an engine is being built, then `info` reports the build's
    progress every `progress_interval_s` and its end."""
    device = _cuda_device(device)
    plan = plan_engine(onnx_path, precision, device)
    (info if plan.found.hit else warn)(plan.announcement())

    def report(status: BuildStatus) -> None:
        info(status.text())

    return ensure_engine(
        onnx_path,
        precision,
        device,
        progress=report,
        progress_interval_s=progress_interval_s,
        announce=False,
    )


def _profile(builder: Any, shapes: Mapping[str, ShapeRange]) -> Any:
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    return profile


def _build(
    trt: Any,
    torch: Any,
    onnx_path: Path,
    key: EngineKey,
    device: str,
    calibration: CalibrationFrames | None,
    progress: BuildProgress | None,
    progress_interval_s: float,
) -> tuple[bytes, dict[str, int]]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelArtifactError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    config.add_optimization_profile(_profile(builder, key.input_shapes))
    pinned: dict[str, int] = {}
    calibrator = None  # referenced until the build ends: TensorRT does not own it
    if key.precision == "fp32":
        if hasattr(trt.BuilderFlag, "TF32"):
            # TF32 rounds conv/matmul inputs to 10 mantissa bits: not what fp32 promises.
            config.clear_flag(trt.BuilderFlag.TF32)
    else:
        config.set_flag(trt.BuilderFlag.FP16)
        if key.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            table = calibration_cache_path(onnx_path)
            calibrator = make_entropy_calibrator(trt, torch, calibration, table, device)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(_profile(builder, calibration_shapes(key.input_shapes)))
        import onnx

        pins = select_fp32_layers(onnx.load(str(onnx_path)))
        pinned = pin_fp32_layers(trt, network, pins)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache_path = onnx_path.parent / TIMING_CACHE_NAME
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=True)
    with BuildTicker(progress, progress_interval_s) as ticker:
        monitor = progress_monitor(trt, ticker) if progress is not None else None
        if monitor is not None:
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    del calibrator
    if serialized is None:
        raise ModelArtifactError(
            f"TensorRT failed to build an engine from {onnx_path}; see its log above"
        )
    timing = config.get_timing_cache()
    if timing is not None:
        atomic_write(cache_path, bytes(memoryview(timing.serialize())))
    return bytes(memoryview(serialized)), pinned


# ------------------------------------------------------------------------------ the backend


def _recorded_precision(engine: Path) -> str | None:
    """The precision in a bare engine's sidecar, if it has a readable one."""
    try:
        key = json.loads(stamp_path(engine).read_text(encoding="utf-8")).get("key", {})
    except (OSError, ValueError, AttributeError):
        return None
    value = key.get("precision") if isinstance(key, dict) else None
    return str(value) if value in PRECISIONS else None


class TensorRTBackend:
    """Runs the detector as a TensorRT engine built from an ONNX file (or a serialized engine)."""

    # Why create_backend picked this backend (set by create_backend).
    selection_reason: str = ""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cuda",
        precision: str = DEFAULT_PRECISION,
        max_batch: int = DEFAULT_MAX_BATCH,
        progress: BuildProgress | None = None,
    ) -> None:
        check_precision(precision)
        trt = import_tensorrt()
        self._device = _cuda_device(device)
        torch = _import_torch_cuda(self._device)
        self._torch = torch
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        path = Path(model_path)
        if not path.is_file():
            raise ModelArtifactError(
                f"{path} does not exist; export an ONNX with `peftdml export`"
            )
        if path.suffix.lower() in ENGINE_SUFFIXES:
            engine_file = path  # a bare engine: its builder vouched for it
            precision = _recorded_precision(path) or "as built"
        else:
            engine_file = ensure_engine(
                path, precision, self._device, max_batch=max_batch, progress=progress
            ).path
        self.precision = precision
        with torch.cuda.device(self._device):
            runtime = trt.Runtime(self._logger)
            self._engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
            if self._engine is None:
                raise ModelArtifactError(
                    f"TensorRT cannot deserialize {engine_file} (built by another TensorRT "
                    "version or GPU?): delete it to rebuild it"
                )
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=self._device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        check_graph_names(f"TensorRT engine {engine_file}", inputs, outputs)
        self.path = path
        self.engine_path = engine_file
        _LOG.info("tensorrt backend: %s on %s (%s)", engine_file, self._device, precision)

    @property
    def name(self) -> str:
        return "tensorrt"

    @property
    def device(self) -> str:
        return self._device

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
