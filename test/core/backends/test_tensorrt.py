"""The TensorRT backend: build progress and layer pinning logic here; on a machine where
`tensorrt` imports and a CUDA GPU is visible, engines of every precision against ONNX Runtime
on all outputs, the cache, and INT8 calibration on dataset frames.

Where TensorRT cannot import, the pinning and capability checks run against stand-ins for the
`tensorrt` module (SimpleNamespace objects holding only what the code reads); everything that
builds or runs an engine is marked gpu and skips.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch

from peftdml_ros.core import model_io
from peftdml_ros.core.backends import engine_cache as ec
from peftdml_ros.core.backends.fp32_layers import select_fp32_layers
from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from peftdml_ros.core.backends.tensorrt_backend import (
    BuildStatus,
    BuildTicker,
    check_builder_supports,
    pin_fp32_layers,
    progress_monitor,
)
from peftdml_ros.core.errors import BackendUnavailableError
from peftdml_ros.core.model import build_model, export_onnx, tiny_config
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor, collate
from peftdml_ros.tools.export import random_frame

HAS_CUDA = torch.cuda.is_available()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(
    not (HAS_CUDA and HAS_TENSORRT), reason="needs a CUDA GPU and TensorRT"
)
CONFIG = tiny_config()


# ------------------------------------------------------------------ progress (no TensorRT)


def test_build_status_text() -> None:
    assert BuildStatus(12.4).text() == "building TensorRT engine: 12 s elapsed"
    status = BuildStatus(75.0, "Tactic selection", 3, 40)
    assert status.text() == "building TensorRT engine: 75 s elapsed - Tactic selection 3/40"
    assert BuildStatus(301.0, done=True).text().startswith("built TensorRT engine: 301 s")


def test_the_ticker_reports_while_building_and_once_at_the_end() -> None:
    statuses: list[BuildStatus] = []
    three = threading.Event()

    def collect(status: BuildStatus) -> None:
        statuses.append(status)
        if len(statuses) >= 3:
            three.set()

    with BuildTicker(collect, interval_s=0.01) as ticker:
        ticker.phase("Building engine", 2, 5)
        assert three.wait(timeout=30.0), "no periodic progress from the ticker"
    assert statuses[-1].done and not any(s.done for s in statuses[:-1])
    assert statuses[-1].phase == "Building engine" and statuses[-1].steps == 5
    elapsed = [s.elapsed_s for s in statuses]
    assert elapsed == sorted(elapsed)


def test_a_broken_progress_display_does_not_stop_the_build() -> None:
    calls: list[float] = []

    def broken(status: BuildStatus) -> None:
        calls.append(status.elapsed_s)
        raise ValueError("terminal closed")

    with BuildTicker(broken, interval_s=0.01):
        pass  # the final report raises inside the ticker, not here
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="build failed"), BuildTicker(broken, 0.01):
        raise RuntimeError("build failed")  # no "done" report after a failed build
    assert len(calls) == 1


def test_without_iprogressmonitor_only_the_ticker_reports() -> None:
    ticker = BuildTicker(None, 1.0)
    assert progress_monitor(SimpleNamespace(), ticker) is None


# ----------------------------------------------- TensorRT capability and pinning (stand-ins)


def _trt_stand_in(*, fp16: bool = True, int8: bool = True) -> SimpleNamespace:
    """What check_builder_supports and pin_fp32_layers read of the tensorrt module: TensorRT 10
    (fp16 and int8 True) or the strongly typed TensorRT 11 (both False)."""
    flags = {"TF32": 1}
    if fp16:
        flags.update(FP16=2, OBEY_PRECISION_CONSTRAINTS=3)
    if int8:
        flags["INT8"] = 4
    module = SimpleNamespace(
        __version__="10.16.1" if fp16 else "11.4.0",
        BuilderFlag=SimpleNamespace(**flags),
        float32="float32",
        float16="float16",
        int32="int32",
        bool="bool",
    )
    if int8:
        module.IInt8EntropyCalibrator2 = object
    return module


def test_precisions_this_tensorrt_cannot_build_are_refused() -> None:
    for precision in ("fp32", "fp16", "int8"):
        check_builder_supports(_trt_stand_in(), precision)
    strongly_typed = _trt_stand_in(fp16=False, int8=False)
    check_builder_supports(strongly_typed, "fp32")
    with pytest.raises(BackendUnavailableError, match=r"11\.4\.0 builds only strongly typed"):
        check_builder_supports(strongly_typed, "fp16")
    with pytest.raises(BackendUnavailableError, match="needs TensorRT 10"):
        check_builder_supports(strongly_typed, "int8")
    with pytest.raises(BackendUnavailableError, match="no INT8 calibration"):
        check_builder_supports(_trt_stand_in(int8=False), "int8")


class _Tensor:
    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype = name, dtype


class _Layer:
    """An ILayer as the ONNX parser makes it: named after its node, outputs after its tensors."""

    def __init__(self, name: str, outputs: list[_Tensor]) -> None:
        self.name = name
        self._outputs = outputs
        self.num_outputs = len(outputs)
        self.precision: str | None = None
        self.output_types: dict[int, str] = {}

    def get_output(self, index: int) -> _Tensor:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


def test_pinning_sets_precision_and_output_types_of_float_layers(tiny_onnx: Path) -> None:
    graph = onnx.load(str(tiny_onnx))
    pins = select_fp32_layers(graph)
    inferred = onnx.shape_inference.infer_shapes(graph).graph
    float_tensors = {
        v.name
        for v in [*inferred.value_info, *inferred.output]
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    layers = [
        _Layer(
            node.name,
            [_Tensor(t, "float32" if t in float_tensors else "int32") for t in node.output],
        )
        for node in graph.graph.node
    ]
    # A helper layer the parser adds with its own name but writing a pinned tensor.
    layers.append(_Layer("ONNXTRT_ShapeTensor_7", [_Tensor(model_io.OUTPUT_NAMES[-1], "float32")]))
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    counts = pin_fp32_layers(_trt_stand_in(), network, pins)
    pinned = [layer for layer in layers if layer.precision is not None]
    assert sum(counts.values()) == len(pinned) > 0
    assert layers[-1].precision == "float32"
    for layer in pinned:
        assert layer.precision == "float32"
        assert layer.output_types == dict.fromkeys(range(layer.num_outputs), "float32")
    assert all(layer.name in pins.nodes or layer is layers[-1] for layer in pinned)
    head = [layer for layer in layers if layer.name.startswith("/net/head/")]
    assert head and all(layer.precision is None for layer in head)


def test_no_matching_layer_is_said_loudly(
    caplog: pytest.LogCaptureFixture, tiny_onnx: Path
) -> None:
    pins = select_fp32_layers(onnx.load(str(tiny_onnx)))
    other = [_Layer("renamed_by_a_future_parser", [_Tensor("t0", "float32")])]
    network = SimpleNamespace(num_layers=1, get_layer=lambda i: other[i])
    assert pin_fp32_layers(_trt_stand_in(), network, pins) == {}
    assert "none of the" in caplog.text and "compare it with precision fp32" in caplog.text


# --------------------------------------------------------------------- on a GPU with TensorRT

# fp32 is IEEE fp32 (TF32 off); fp16 keeps the pinned GMM in fp32 but the fused features that
# feed it come from fp16 layers, so the normality score is compared relatively.
ABS_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
NORMALITY_RTOL = {"fp32": 1e-4, "fp16": 1e-2}


def _sharp_gmm_model(seed: int = 7) -> torch.nn.Module:
    """The tiny model with a GMM at its variance floor, so normality_score is large (above
    fp16's range for these frames) and sensitive: the case the fp32 pins exist for."""
    torch.manual_seed(seed)
    model = build_model(CONFIG).eval()
    pre = Preprocessor(PreprocessConfig.from_model_config(CONFIG))
    inputs = {k: torch.from_numpy(v) for k, v in pre(random_frame(CONFIG, seed=0)).items()}
    with torch.no_grad():
        pooled = model.forward_with_embeddings(inputs)[1].pooled
        model.gmm.means.copy_(pooled.repeat(model.gmm.components, 1) + 2.0)
        model.gmm.log_vars.fill_(float(np.log(1e-4)))
        model.gmm.fitted.fill_(1.0)
    return model


def _inputs(batch: int, seed: int = 100) -> dict[str, npt.NDArray[np.float32]]:
    pre = Preprocessor(PreprocessConfig.from_model_config(CONFIG))
    return collate([pre(random_frame(CONFIG, seed=seed + s)) for s in range(batch)])


@pytest.fixture(scope="module")
def sharp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trt") / "sharp.onnx"
    return export_onnx(_sharp_gmm_model(), path, dynamic_batch=True)


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime_on_every_output(sharp_onnx: Path, precision: str) -> None:
    from peftdml_ros.core.backends.tensorrt_backend import TensorRTBackend, ensure_engine

    built = ensure_engine(sharp_onnx, precision, "cuda", rebuild=True)
    assert built.built and built.path == ec.engine_path(sharp_onnx, precision)
    if precision == "fp16":
        assert built.pinned.get("normality", 0) > 0 and built.pinned.get("pillars", 0) > 0
    backend = TensorRTBackend(sharp_onnx, "cuda", precision=precision)
    assert backend.engine_path == built.path  # loaded from the cache, not built again
    reference = OnnxRuntimeBackend(sharp_onnx, "cpu")
    for batch in (1, 3):
        inputs = _inputs(batch)
        expected = reference.run(inputs)
        outputs = backend.run(inputs)
        assert tuple(outputs) == model_io.OUTPUT_NAMES
        assert float(expected["normality_score"].min()) > float(np.finfo(np.float16).max)
        for name in model_io.OUTPUT_NAMES:
            got, want = outputs[name], expected[name]
            assert got.shape == want.shape and got.dtype == np.float32, name
            assert np.isfinite(got).all(), f"{precision} {name} is not finite"
            if name == "normality_score":
                np.testing.assert_allclose(got, want, rtol=NORMALITY_RTOL[precision], err_msg=name)
            else:
                np.testing.assert_allclose(got, want, atol=ABS_TOLERANCE[precision], err_msg=name)


@pytest.mark.gpu
@needs_tensorrt
def test_the_cache_is_reused_and_rebuilt_when_the_model_changes(
    tmp_path: Path, tiny_onnx: Path
) -> None:
    from peftdml_ros.core.backends.tensorrt_backend import ensure_engine, plan_engine

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(tiny_onnx.read_bytes())
    statuses: list[BuildStatus] = []
    first = ensure_engine(onnx_path, "fp16", progress=statuses.append, progress_interval_s=0.05)
    assert first.built and statuses and statuses[-1].done
    assert (tmp_path / "tensorrt_timing.cache").is_file()
    assert not ensure_engine(onnx_path, "fp16").built
    assert plan_engine(onnx_path, "fp16").found.hit
    assert not plan_engine(onnx_path, "fp32").found.hit  # another precision, another file
    export_onnx(_sharp_gmm_model(seed=8), onnx_path, dynamic_batch=True)
    plan = plan_engine(onnx_path, "fp16")
    assert not plan.found.hit and "onnx_sha256" in plan.found.reason
    assert plan.announcement().startswith("BUILDING a TensorRT engine")
    assert ensure_engine(onnx_path, "fp16").built


@pytest.mark.gpu
@needs_tensorrt
def test_int8_calibrates_on_dataset_frames_and_reuses_its_table(tmp_path: Path) -> None:
    from peftdml_ros.core.backends.tensorrt_backend import ensure_engine
    from peftdml_ros.data.synth import generate_dataset
    from peftdml_ros.tools.engine_build import calibration_frames

    if not hasattr(importlib.import_module("tensorrt"), "IInt8EntropyCalibrator2"):
        pytest.skip("this TensorRT has no INT8 calibration (TensorRT 11 and later)")
    root = Path(
        generate_dataset(tmp_path / "data", scenes=1, seed=2, preset="small", progress=False)
    )
    onnx_path = export_onnx(_sharp_gmm_model(), tmp_path / "m.onnx", dynamic_batch=True)
    frames = list(calibration_frames(root, "v1.0-synth", None, CONFIG, None, limit=8))
    assert len(frames) == 8
    built = ensure_engine(onnx_path, "int8", calibration=iter(frames))
    table = ec.calibration_cache_path(onnx_path)
    assert built.built and table.is_file()
    assert built.key.calibration_sha256 == ec.sha256_file(table)
    assert not ensure_engine(onnx_path, "int8").built  # the cached engine
    built.path.unlink()
    again = ensure_engine(onnx_path, "int8")  # rebuilt from the table alone, no frames
    assert again.built and again.key.calibration_sha256 == built.key.calibration_sha256
    from peftdml_ros.core.backends.tensorrt_backend import TensorRTBackend

    inputs = frames[0]
    outputs = TensorRTBackend(onnx_path, "cuda", precision="int8").run(inputs)
    expected = OnnxRuntimeBackend(onnx_path, "cpu").run(inputs)
    for name in model_io.OUTPUT_NAMES:
        assert outputs[name].shape == expected[name].shape and np.isfinite(outputs[name]).all()
    assert float(np.abs(outputs["heatmap"] - expected["heatmap"]).mean()) < 0.05


@pytest.mark.gpu
@needs_tensorrt
def test_a_serialized_engine_runs_directly_and_auto_picks_it(tiny_onnx: Path) -> None:
    from peftdml_ros.core.backends import create_backend
    from peftdml_ros.core.backends.tensorrt_backend import ensure_engine

    engine = ensure_engine(tiny_onnx, "fp32").path
    backend: Any = create_backend("auto", engine, "auto")
    assert backend.name == "tensorrt" and "serialized TensorRT engine" in backend.selection_reason
    outputs = backend.run(_inputs(1))
    expected = OnnxRuntimeBackend(tiny_onnx, "cpu").run(_inputs(1))
    np.testing.assert_allclose(outputs["heatmap"], expected["heatmap"], atol=1e-3)
