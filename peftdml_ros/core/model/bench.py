"""CPU forward-time benchmark of the model (not a test): PyTorch unmerged/merged and ONNX Runtime.

    python -m peftdml_ros.core.model.bench [--threads 1] [--runs 20] [--onnx]

Reports the median and the minimum over `runs` timed forwards (after warm-up) of one frame of
`example_inputs` with the default ModelConfig. The minimum is the figure to compare on a shared
machine (other load only ever adds time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=1, help="torch / ORT intra-op threads")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (CPU)")
    args = parser.parse_args(argv)
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
    print(f"default ModelConfig, 1 frame, {args.threads} thread(s), {args.runs} runs")
    for name, (median, best) in results.items():
        print(f"  {name:<24} median {median:7.1f} ms   min {best:7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
