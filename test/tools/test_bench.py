"""The benchmarks' own checks: each target runs on a tiny workload and prints the JSON object its
documentation describes (figures are not checked: they belong to the machine)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from typing import Any

import pytest

from peftdml_ros.tools import bench

pytestmark = pytest.mark.ros  # rclpy messages (pointcloud) and a node (pipeline)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert bench.main(argv) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)  # one object, nothing else
    return result


def _is_ms(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value >= 0.0


def test_every_bench_target_lives_in_tools() -> None:
    for name in bench.TARGETS:
        assert bench.TARGETS[name].summary
    assert bench._model_bench().__name__ == "peftdml_ros.tools.bench_model"
    assert importlib.util.find_spec("peftdml_ros.core.model.bench") is None


def test_bench_pointcloud_json_and_peers(capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, ["pointcloud", "--runs", "2", "--large-points", "2000", "--json"])
    assert result["target"] == "pointcloud"
    assert {"cpu_model", "cores", "clock"} <= set(result["machine"])
    real = importlib.util.find_spec("sensor_msgs_py") is not None
    assert result["sensor_msgs_py"]["available"] is real
    assert result["reference_peer"] == ("sensor_msgs_py" if real else "numpy_equivalent")
    labels = [case["case"] for case in result["cases"]]
    assert labels == ["XYZI float32, 2,000 points", "nuScenes LiDAR layout (bag), 34,720 points"]
    assert [case["point_step"] for case in result["cases"]] == [16, 18]
    for case in result["cases"]:
        assert set(case["ops"]) == {"build", "read_owned", "read_view"}
        for timings in case["ops"].values():
            # a peer that does not import has no figure at all, not a zero
            assert ("sensor_msgs_py" in timings) is real
            assert all(_is_ms(t["median_ms"]) and _is_ms(t["min_ms"]) for t in timings.values())
        ratio = case["ratio_vs"][result["reference_peer"]]["build"]
        assert ratio["median"] > 0 and ratio["min"] > 0
        assert _is_ms(case["lidar_to_core"]["median_ms"])
    text = bench._pointcloud_bench().render(result)
    assert ("sensor_msgs_py: not available" in text) is not real
    assert "numpy equivalent of sensor_msgs_py (written here)" in text


def test_bench_pipeline_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["pipeline", "--backend", "onnxruntime", "--frames", "2", "--warmup", "0", "--json"]
    result = _json(capsys, argv)
    assert result["target"] == "pipeline"
    machine = result["machine"]
    assert {"cpu_model", "cores", "clock", "model", "threads"} <= set(machine)
    assert machine["model"].endswith("peftdml_synth_cpu30.onnx")  # the node's default model
    assert "perf_counter" in machine["clock"]
    assert result["input"]["lidar_points_per_sweep"] == 34_720
    assert result["input"]["cameras"] == 6 and result["input"]["radars"] == 5
    assert result["input"]["image_hw"] == [900, 1600]
    (name,) = result["backends"]
    row = result["backends"][name]
    assert name == "onnxruntime" and row["backend"].startswith("onnxruntime")
    stages = bench._pipeline_bench().STAGES
    assert tuple(row["stages"]) == stages
    for stage in stages:
        assert set(row["stages"][stage]) == {"p50_ms", "p99_ms"}
        assert _is_ms(row["stages"][stage]["p50_ms"]) and _is_ms(row["stages"][stage]["p99_ms"])
    assert _is_ms(row["total_p50_ms"]) and row["hz"] > 0
    assert row["total_p50_ms"] >= row["stages"]["inference"]["p50_ms"]
    assert machine["threads"]["onnxruntime"]["onnxruntime_intra_op"] >= 1
    text = bench._pipeline_bench().render(result)
    assert "onnxruntime" in text and "frames/s" in text and "perf_counter" in text


def test_bench_pipeline_names_what_cannot_run_here(tmp_path: Any) -> None:
    pipeline = bench._pipeline_bench()
    missing = tmp_path / "model.onnx"
    onnx = next(b for b in pipeline.BACKENDS if b.name == "onnxruntime")
    assert "no .onnx model" in pipeline._availability(onnx, missing)
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        checkpoint = tmp_path / "model.pt"
        checkpoint.write_bytes(b"")
        cuda = next(b for b in pipeline.BACKENDS if b.name == "torch-cuda")
        assert pipeline._availability(cuda, checkpoint) == "no CUDA GPU visible"
