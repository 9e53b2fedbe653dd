"""Where a frame's CPU time goes, backend by backend (a benchmark, not a test).

    python -m peftdml_ros.tools.bench_backends [--onnx M.onnx] [--checkpoint M.pt]
        [--threads 2] [--runs 30] [--data DATAROOT [--version V] [--split S]] [--int8] [--json]

Defaults: the shipped model (models/peftdml_synth_cpu30.onnx and .pt, the node's default).
Times one frame (batch 1) on the CPU:

- inference: PyTorch eager (the checkpoint, LoRA merged, `--threads` intra-op threads);
  ONNX Runtime with the library's default session options apart from the optimization level
  ("onnxruntime defaults": what the backend used before it set them) and with the backend's own
  session options (`OnnxRuntimeBackend(threads=--threads)`); with `--int8` also a dynamic INT8
  quantization (onnxruntime.quantization.quantize_dynamic, uint8 weights) of the ONNX model;
- the rest of a frame: six 1600x900 JPEGs decoded (core.image.decode_compressed) at full size
  and at 1/4 and 1/8 by DCT scaling, one after the other and in a pool of `--threads` threads;
  the Preprocessor (point packing, camera resize and normalization) on the frame decoded at
  each scale; the LiDAR and radar packing alone; detection decoding (peaks, boxes, NMS).

Candidates are timed round by round (one call of each per round), so a change of machine load
hits them alike; min and median ms are reported. The minimum is the figure to compare on a
shared machine (other load only adds time); the ratios are computed for both.

The frame budget sums what one frame costs on one thread: the six decodes at the node's
`camera_decode_reduction` (and at 1/8), the Preprocessor, inference and detection decoding, and
gives the share of everything but inference with the decodes and without them: the node decodes
each image in its executor thread as it arrives, beside the inference worker, so the share with
the decodes is an upper bound and the one without is the worker's own.

Frames: with `--data`, the first keyframe of the dataset (its six camera JPEGs and its LiDAR and
radar points, one sweep each, as the node builds frames); without, a generated frame (35k LiDAR
points uniform in range, six generated 1600x900 JPEGs of smooth content, quality 90, about 200
kB each).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from peftdml_ros.core import image as core_image
from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from peftdml_ros.core.backends.torch_backend import TorchBackend
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.decode import decode_detections
from peftdml_ros.core.preprocess import (
    Inputs,
    PreprocessConfig,
    Preprocessor,
    pack_points,
    scale_intrinsics,
)
from peftdml_ros.core.types import LIDAR_POINT_FIELDS, RADAR_POINT_FIELDS, Frame
from peftdml_ros.tools import bench_common
from peftdml_ros.tools.export import random_frame

SHIPPED_ONNX = "models/peftdml_synth_cpu30.onnx"
SHIPPED_CHECKPOINT = "models/peftdml_synth_cpu30.pt"
SOURCE_HW = (900, 1600)  # nuScenes camera images
NODE_REDUCTION = 4  # config/peftdml.yaml input.camera_decode_reduction
REDUCTIONS = (1, 4, 8)
NUSCENES_LIDAR_POINTS = 35_000  # one 32-beam sweep
JPEG_QUALITY = 90

Timing = dict[str, float]


# ------------------------------------------------------------------------------------ timing


def time_interleaved(
    candidates: Mapping[str, Callable[[], object]], runs: int, warmup: int = 2
) -> dict[str, Timing]:
    """{name: {"min_ms", "median_ms"}} over `runs` rounds that call every candidate once, in
    order, after `warmup` untimed calls of each (allocations, ONNX Runtime's first-run work)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    samples = bench_common.time_interleaved(candidates, runs, warmup)
    return {
        name: {"min_ms": min(values) * 1e3, "median_ms": statistics.median(values) * 1e3}
        for name, values in samples.items()
    }


# ------------------------------------------------------------------------------------ frames


@dataclasses.dataclass(frozen=True)
class BenchFrame:
    """A frame whose cameras are still JPEG bytes: `frame` carries the points (and images at
    some scale, replaced by `decoded`); `jpegs[k]` is the camera `frame.cameras[k]`'s image."""

    frame: Frame
    jpegs: tuple[bytes, ...]
    source: str


def generated_jpeg(seed: int, size_hw: tuple[int, int] = SOURCE_HW) -> bytes:
    """A 1600x900 JPEG of smooth shapes and mild noise (about 200 kB): the entropy of a camera
    image, roughly (decode time grows with the compressed size; pure noise would decode
    several times slower than any photograph)."""
    rng = np.random.default_rng(seed)
    h, w = size_hw
    coarse = rng.integers(0, 256, (h // 50 + 1, w // 50 + 1, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image + rng.normal(0.0, 2.0, image.shape), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return bytes(encoded)


def generated_bench_frame(config: ModelConfig, seed: int = 0) -> BenchFrame:
    frame = random_frame(config, seed, lidar_points=NUSCENES_LIDAR_POINTS)
    jpegs = tuple(generated_jpeg(seed + k) for k in range(len(frame.cameras)))
    return BenchFrame(frame, jpegs, "generated")


def dataset_bench_frame(dataroot: Path, version: str, split: str | None) -> BenchFrame:
    """The first keyframe of a nuScenes-format dataset, built as the node builds frames."""
    from peftdml_ros.data.nuscenes_reader import NuScenesReader

    reader = NuScenesReader(
        dataroot, version, split, lidar_sweeps=1, radar_sweeps=1,
        camera_downscale=NODE_REDUCTION, compensate_ego_motion=False,
    )  # fmt: skip
    token = reader.sample_tokens[0]
    chosen = reader.chosen_sample_data(token)
    frame = reader.record(token).frame
    jpegs = tuple((dataroot / chosen[c.sensor]["filename"]).read_bytes() for c in frame.cameras)
    return BenchFrame(frame, jpegs, f"{dataroot} ({version}) keyframe {token}")


def decoded_frame(bench: BenchFrame, reduction: int) -> Frame:
    """`bench.frame` with its camera images decoded at 1/reduction (intrinsics rescaled)."""
    cameras = []
    for camera, jpeg in zip(bench.frame.cameras, bench.jpegs, strict=True):
        image = core_image.decode_compressed(jpeg, reduction=reduction)
        old_h, old_w = camera.image.shape[:2]
        k = scale_intrinsics(camera.intrinsics, image.shape[1] / old_w, image.shape[0] / old_h)
        cameras.append(dataclasses.replace(camera, image=image, intrinsics=k))
    return dataclasses.replace(bench.frame, cameras=tuple(cameras))


# ----------------------------------------------------------------------------------- stages


def decode_all(jpegs: Sequence[bytes], reduction: int) -> list[npt.NDArray[np.uint8]]:
    return [core_image.decode_compressed(data, reduction=reduction) for data in jpegs]


def decode_all_threaded(
    pool: ThreadPoolExecutor, jpegs: Sequence[bytes], reduction: int
) -> list[npt.NDArray[np.uint8]]:
    # OpenCV releases the GIL while it decodes: the pool's threads decode side by side.
    return list(
        pool.map(lambda data: core_image.decode_compressed(data, reduction=reduction), jpegs)
    )


def int8_model(onnx_path: Path, out_dir: Path) -> Path:
    """A dynamic INT8 quantization of an exported model (uint8 weights: ONNX Runtime's faster
    ConvInteger path on x86), written into out_dir."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = out_dir / f"{onnx_path.stem}.int8.onnx"
    quantize_dynamic(onnx_path, target, weight_type=QuantType.QUInt8)
    return target


def _default_session(onnx_path: Path) -> Callable[[Inputs], object]:
    """ONNX Runtime with the library's session defaults (threads, spinning, execution mode)
    and full graph optimization: the backend's settings before it chose them itself."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, dict(inputs))


def inference_candidates(
    torch_backend: TorchBackend,
    onnx_path: Path,
    threads: int,
    int8_path: Path | None,
    inputs: Inputs,
    startup_ms: dict[str, float],
) -> dict[str, Callable[[], object]]:
    """The inference paths to time; fills startup_ms with each ONNX Runtime session's start
    (graph load and optimization: what an optimized-model cache file would save)."""
    start = time.perf_counter()
    ort_backend = OnnxRuntimeBackend(onnx_path, device="cpu", threads=threads)
    startup_ms["onnxruntime backend"] = (time.perf_counter() - start) * 1e3
    default = _default_session(onnx_path)
    candidates: dict[str, Callable[[], object]] = {
        "torch eager": lambda: torch_backend.run(inputs),
        "onnxruntime defaults": lambda: default(inputs),
        "onnxruntime backend": lambda: ort_backend.run(inputs),
    }
    if int8_path is not None:
        start = time.perf_counter()
        int8_backend = OnnxRuntimeBackend(int8_path, device="cpu", threads=threads)
        startup_ms["onnxruntime backend int8"] = (time.perf_counter() - start) * 1e3
        candidates["onnxruntime backend int8"] = lambda: int8_backend.run(inputs)
    return candidates


def frame_candidates(
    bench: BenchFrame, preprocessor: Preprocessor, outputs: Mapping[str, Any],
    model: ModelConfig, pool: ThreadPoolExecutor, threads: int,
) -> dict[str, Callable[[], object]]:  # fmt: skip
    config = preprocessor.config
    candidates: dict[str, Callable[[], object]] = {}
    for r in REDUCTIONS:
        candidates[f"6 JPEG decode 1/{r}"] = functools.partial(decode_all, bench.jpegs, r)
        candidates[f"6 JPEG decode 1/{r}, {threads} threads"] = functools.partial(
            decode_all_threaded, pool, bench.jpegs, r
        )
    for r in REDUCTIONS:
        candidates[f"preprocess, images 1/{r}"] = functools.partial(
            preprocessor, decoded_frame(bench, r)
        )
    candidates["points (LiDAR + radar packing)"] = lambda: (
        pack_points(
            bench.frame.lidar, LIDAR_POINT_FIELDS, config.point_cloud_range_m,
            config.max_lidar_points,
        ),
        pack_points(
            bench.frame.radar, RADAR_POINT_FIELDS, config.point_cloud_range_m,
            config.max_radar_points,
        ),
    )  # fmt: skip
    candidates["detection decoding"] = lambda: decode_detections(outputs, model)
    return candidates


# -------------------------------------------------------------------------------------- run


def frame_budget(
    timings: Mapping[str, Timing], inference: str, reduction: int, stat: str
) -> dict[str, float]:
    """Per-frame ms of each stage and the share of everything but inference, with the six
    decodes and without them (the node's inference worker does not decode)."""
    parts = {
        "decode_ms": timings[f"6 JPEG decode 1/{reduction}"][stat],
        "preprocess_ms": timings[f"preprocess, images 1/{reduction}"][stat],
        "inference_ms": timings[inference][stat],
        "detection_decoding_ms": timings["detection decoding"][stat],
    }
    total = sum(parts.values())
    worker = total - parts["decode_ms"]  # the node decodes in its executor thread, not here
    return {
        **parts,
        "total_ms": total,
        "non_inference_share": 1.0 - parts["inference_ms"] / total,
        "non_inference_share_without_decode": 1.0 - parts["inference_ms"] / worker,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)  # one decode per thread: the pool, not OpenCV, decides the parallelism
    onnx_path, checkpoint = _resolve(args.onnx), _resolve(args.checkpoint)
    start = time.perf_counter()
    torch_backend = TorchBackend.from_checkpoint(checkpoint, device="cpu")
    startup_ms = {"torch checkpoint": (time.perf_counter() - start) * 1e3}
    model = torch_backend.config
    preprocessor = Preprocessor(PreprocessConfig.from_model_config(model))
    bench = (
        dataset_bench_frame(args.data, args.version, args.split)
        if args.data is not None
        else generated_bench_frame(model)
    )
    inputs = preprocessor(decoded_frame(bench, NODE_REDUCTION))
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = int8_model(onnx_path, Path(tmp)) if args.int8 else None
        inference = time_interleaved(
            inference_candidates(
                torch_backend, onnx_path, args.threads, int8_path, inputs, startup_ms
            ),
            args.runs,
        )
    outputs = OnnxRuntimeBackend(onnx_path, device="cpu", threads=args.threads).run(inputs)
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        stages = time_interleaved(
            frame_candidates(bench, preprocessor, outputs, model, pool, args.threads), args.runs
        )
    timings = {**inference, **stages}
    ratios = {
        f"{a} / {b} ({stat})": timings[a][f"{stat}_ms"] / timings[b][f"{stat}_ms"]
        for a, b in (
            ("torch eager", "onnxruntime backend"),
            ("onnxruntime defaults", "onnxruntime backend"),
        )
        for stat in ("min", "median")
    }
    budgets = {
        f"{inference_name}, decode 1/{r} ({stat})": frame_budget(
            timings, inference_name, r, f"{stat}_ms"
        )
        for inference_name in ("onnxruntime backend", "torch eager")
        for r in (NODE_REDUCTION, 8)
        for stat in ("min", "median")
    }
    return {
        "model": str(onnx_path),
        "checkpoint": str(checkpoint),
        "frame": bench.source,
        "jpeg_kb_mean": sum(len(j) for j in bench.jpegs) / len(bench.jpegs) / 1e3,
        "threads": args.threads,
        "runs": args.runs,
        "load_average_1min": _load_average(),
        "startup_ms": startup_ms,
        "timings": timings,
        "ratios": ratios,
        "frame_budgets": budgets,
    }


def render(result: Mapping[str, Any]) -> str:
    lines = [
        f"model {result['model']}, checkpoint {result['checkpoint']}",
        f"frame: {result['frame']}; JPEGs of {result['jpeg_kb_mean']:.0f} kB on average",
        f"{result['threads']} threads, {result['runs']} rounds, wall clock; 1-min load average "
        f"at the end {result['load_average_1min']}",
        "",
        f"{'stage (one frame)':<44} {'min ms':>8} {'median ms':>10}",
    ]
    for name, timing in result["timings"].items():
        lines.append(f"{name:<44} {timing['min_ms']:>8.2f} {timing['median_ms']:>10.2f}")
    lines += ["", "start-up (once, ms):"]
    lines += [f"  {name:<44} {value:8.1f}" for name, value in result["startup_ms"].items()]
    lines += ["", "ratios:"]
    lines += [f"  {name:<44} {value:6.2f}" for name, value in result["ratios"].items()]
    lines += ["", "frame budget (ms; share of everything but inference):"]
    for name, b in result["frame_budgets"].items():
        lines.append(
            f"  {name:<48} decode {b['decode_ms']:6.2f}  preprocess {b['preprocess_ms']:6.2f}  "
            f"inference {b['inference_ms']:7.2f}  detections {b['detection_decoding_ms']:6.2f}"
            f"  total {b['total_ms']:7.2f}  share {100 * b['non_inference_share']:5.1f}% "
            f"({100 * b['non_inference_share_without_decode']:4.1f}% without decode)"
        )
    return "\n".join(lines)


def _resolve(path: Path) -> Path:
    """A path as given when it exists, else the package's file of that name (shipped models)."""
    from peftdml_ros.ros.params import resolve_model_path

    return Path(resolve_model_path(str(path)))


def _load_average() -> float | None:
    try:
        with open("/proc/loadavg", encoding="ascii") as file:
            return float(file.read().split()[0])
    except OSError:
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m peftdml_ros.tools.bench_backends", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--onnx", type=Path, default=Path(SHIPPED_ONNX), help="exported model")
    parser.add_argument(
        "--checkpoint", type=Path, default=Path(SHIPPED_CHECKPOINT), help="its checkpoint"
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (= cores)")
    parser.add_argument("--runs", type=int, default=30, help="timed rounds")
    parser.add_argument("--data", type=Path, default=None, help="nuScenes-format dataroot")
    parser.add_argument("--version", default="v1.0-synth", help="its table version")
    parser.add_argument("--split", default=None, help="its split (default: every scene)")
    parser.add_argument("--int8", action="store_true", help="also time a dynamic INT8 model")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1 or args.runs < 1:
        raise SystemExit("--threads and --runs must be at least 1")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
