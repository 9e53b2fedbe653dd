"""`python -m peftdml_ros.tools.bench_backends`: timing harness, frames and one tiny-model run."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from peftdml_ros.core.model import build_model, export_onnx, save_checkpoint, tiny_config
from peftdml_ros.core.model.export import read_onnx_config
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor
from peftdml_ros.tools import bench_backends as bb
from peftdml_ros.tools.export import random_frame

CONFIG = tiny_config()


def test_candidates_are_timed_round_by_round() -> None:
    calls: list[str] = []
    timings = bb.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=1
    )
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert set(timings) == {"a", "b"}
    for timing in timings.values():
        assert 0.0 <= timing["min_ms"] <= timing["median_ms"]
    with pytest.raises(ValueError, match="runs"):
        bb.time_interleaved({"a": lambda: None}, runs=0)


def test_frames_decode_at_each_scale_with_matching_intrinsics() -> None:
    bench = bb.generated_bench_frame(CONFIG, seed=4)
    assert len(bench.jpegs) == len(CONFIG.camera_names)
    camera = bench.frame.cameras[0]
    for reduction, expected_hw in ((1, (900, 1600)), (4, (225, 400)), (8, (113, 200))):
        decoded = bb.decoded_frame(bench, reduction).cameras[0]
        assert decoded.image.shape == (*expected_hw, 3)
        # Focal lengths follow the width and height ratios (core.preprocess.scale_intrinsics).
        scale_x = expected_hw[1] / camera.image.shape[1]
        scale_y = expected_hw[0] / camera.image.shape[0]
        assert decoded.intrinsics[0, 0] == pytest.approx(camera.intrinsics[0, 0] * scale_x)
        assert decoded.intrinsics[1, 1] == pytest.approx(camera.intrinsics[1, 1] * scale_y)


@pytest.mark.parametrize("reduction", [1, 8])
def test_threaded_decode_gives_the_sequential_pixels(reduction: int) -> None:
    jpegs = [bb.generated_jpeg(seed) for seed in range(3)]
    sequential = bb.decode_all(jpegs, reduction)
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = bb.decode_all_threaded(pool, jpegs, reduction)
    assert len(threaded) == len(sequential) == 3
    for a, b in zip(threaded, sequential, strict=True):
        np.testing.assert_array_equal(a, b)


def test_frame_budget_sums_the_stages() -> None:
    timings = {
        "6 JPEG decode 1/4": {"min_ms": 5.0},
        "preprocess, images 1/4": {"min_ms": 2.0},
        "engine": {"min_ms": 20.0},
        "detection decoding": {"min_ms": 3.0},
    }
    budget = bb.frame_budget(timings, "engine", 4, "min_ms")
    assert budget["total_ms"] == pytest.approx(30.0)
    assert budget["non_inference_share"] == pytest.approx(10.0 / 30.0)
    assert budget["non_inference_share_without_decode"] == pytest.approx(5.0 / 25.0)


def test_a_run_on_a_tiny_model_reports_every_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = build_model(CONFIG)
    checkpoint = save_checkpoint(tmp_path / "m.pt", model)
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    threads = torch.get_num_threads()
    try:
        code = bb.main(
            ["--onnx", str(onnx_path), "--checkpoint", str(checkpoint), "--threads", "1",
             "--runs", "1", "--json"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)  # the benchmark sets the process-wide torch threads
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    timings = result["timings"]
    for name in ("torch eager", "onnxruntime defaults", "onnxruntime backend",
                 "6 JPEG decode 1/8, 1 threads",
                 "preprocess, images 1/4", "detection decoding"):  # fmt: skip
        assert timings[name]["min_ms"] > 0.0, name
    ratio = result["ratios"]["torch eager / onnxruntime backend (min)"]
    assert ratio == pytest.approx(
        timings["torch eager"]["min_ms"] / timings["onnxruntime backend"]["min_ms"]
    )
    budget = result["frame_budgets"]["onnxruntime backend, decode 1/4 (min)"]
    assert 0.0 < budget["non_inference_share_without_decode"] < budget["non_inference_share"] < 1
    assert "frame budget" in bb.render(result)


def test_int8_quantization_of_the_shipped_model_runs_close_to_fp32(
    repo_root: Path, tmp_path: Path
) -> None:
    onnx_path = repo_root / "models/peftdml_synth_cpu30.onnx"
    config = read_onnx_config(onnx_path)
    inputs = Preprocessor(PreprocessConfig.from_model_config(config))(random_frame(config, 1))
    fp32 = OnnxRuntimeBackend(onnx_path, "cpu").run(inputs)
    int8 = OnnxRuntimeBackend(bb.int8_model(onnx_path, tmp_path), "cpu").run(inputs)
    for name, reference in fp32.items():
        error = float(np.abs(int8[name] - reference).max())
        # Quantization noise: a few percent of each output's range (measured: 1-17%).
        assert 0.0 < error < 0.25 * float(np.abs(reference).max()), name
