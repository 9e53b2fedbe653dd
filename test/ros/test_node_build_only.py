"""detector.build_only: the node builds (or loads) its engine, says so, and exits 0 without
subscribing; where the engine cannot be built it says why and exits non-zero."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from peftdml_ros.core.model import build_model, export_onnx, tiny_config
from peftdml_ros.ros.node import PeftdmlNode
from peftdml_ros.ros.params import NodeConfig

pytestmark = pytest.mark.ros

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
TIMEOUT_S = 240.0  # a cold start imports torch, onnxruntime and rclpy: seconds, more when loaded


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export_onnx(build_model(tiny_config()), tmp_path_factory.mktemp("m") / "m.onnx")


def test_build_only_stops_after_the_detector(rclpy_context: Any, repo_root: Path) -> None:
    made: list[NodeConfig] = []

    def factory(config: NodeConfig) -> Any:
        made.append(config)
        return SimpleNamespace(backend=SimpleNamespace(name="tensorrt", device="cuda"))

    args = ["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")]
    args += ["-p", "detector.build_only:=true", "-p", "detector.precision:=fp32"]
    node = PeftdmlNode(context=rclpy_context, cli_args=args, detector_factory=factory)
    try:
        assert node.build_only_done
        assert len(made) == 1 and made[0].build_only and made[0].precision == "fp32"
        assert list(node.subscriptions) == []  # nothing subscribed, no timers, no worker
        assert list(node.timers) == []
        assert getattr(node, "_worker", None) is None
    finally:
        node.destroy_node()  # a build_only node is destroyed like any other


def test_a_normal_start_is_not_build_only(rclpy_context: Any, repo_root: Path) -> None:
    def factory(config: NodeConfig) -> Any:
        return SimpleNamespace(backend=SimpleNamespace(name="torch", device="cpu"))

    args = ["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")]
    node = PeftdmlNode(context=rclpy_context, cli_args=args, detector_factory=factory)
    try:
        assert not node.build_only_done and list(node.subscriptions)
    finally:
        node.destroy_node()


def _run_node(repo_root: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "peftdml_ros.ros.node", "--ros-args"]
    command += ["--params-file", str(repo_root / "config" / "peftdml.yaml")]
    for override in overrides:
        command += ["-p", override]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=repo_root, check=False
    )


def test_build_only_process_exits_0_with_the_model_loaded(
    repo_root: Path, tiny_onnx: Path
) -> None:
    done = _run_node(
        repo_root,
        "detector.build_only:=true",
        f"detector.model_path:={tiny_onnx}",
        "detector.backend:=onnxruntime",
        "detector.device:=cpu",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "detector.build_only: onnxruntime (cpu) ready for" in output
    assert "exiting without subscribing" in output
    assert "peftdml_node ready" not in output  # it never started the pipeline


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is importable here")
def test_build_only_without_tensorrt_says_why_and_fails(repo_root: Path, tiny_onnx: Path) -> None:
    done = _run_node(
        repo_root,
        "detector.build_only:=true",
        f"detector.model_path:={tiny_onnx}",
        "detector.backend:=tensorrt",
        "detector.precision:=fp16",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TensorRT is not installed" in done.stderr
