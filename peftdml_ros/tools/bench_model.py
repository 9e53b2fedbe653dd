"""`peftdml bench model`: CPU forward time of the model, PyTorch unmerged/merged and ONNX Runtime.

    peftdml bench model [--threads 1] [--runs 20] [--onnx]   (arguments: tools/bench.py)

Reports the median and the minimum over `runs` timed forwards (after warm-up) of one frame of
`example_inputs` with the default ModelConfig. The minimum is the figure to compare on a shared
machine (other load only ever adds time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.detector_net import build_model, example_inputs
from peftdml_ros.core.model.export import export_onnx
from peftdml_ros.core.model.lora import merge_lora
from peftdml_ros.core.model_io import OUTPUT_NAMES


def time_ms(fn: Callable[[], object], runs: int, label: str) -> tuple[float, float]:
    """(median, min) wall time of fn in ms over `runs` calls after 2 warm-up calls."""
    fn()
    fn()
    samples = []
    for _ in tqdm(range(runs), desc=label, unit="run", leave=False):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), min(samples)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Median and minimum forward time (ms) per path for one frame of the default config."""
    torch.set_num_threads(args.threads)
    config = ModelConfig()
    model = build_model(config).eval()
    merged = merge_lora(model).eval()
    inputs = example_inputs(config, 1, torch.Generator().manual_seed(0))
    results: dict[str, tuple[float, float]] = {}
    with torch.inference_mode():
        results["torch (LoRA unmerged)"] = time_ms(lambda: model(**inputs), args.runs, "unmerged")
        results["torch (LoRA merged)"] = time_ms(lambda: merged(**inputs), args.runs, "merged")
    if args.onnx:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / "model.onnx")
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {k: v.numpy() for k, v in inputs.items()}
        results["onnxruntime"] = time_ms(
            lambda: session.run(list(OUTPUT_NAMES), feed), args.runs, "onnxruntime"
        )
    return {
        "threads": args.threads,
        "runs": args.runs,
        "paths": {name: {"median_ms": m, "min_ms": b} for name, (m, b) in results.items()},
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"default ModelConfig, 1 frame, {result['threads']} thread(s), {result['runs']} runs"]
    for name, timing in result["paths"].items():
        lines.append(
            f"  {name:<24} median {timing['median_ms']:7.1f} ms   min {timing['min_ms']:7.1f} ms"
        )
    return "\n".join(lines)
