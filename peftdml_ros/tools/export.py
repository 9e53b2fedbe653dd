"""`peftdml export`: checkpoint -> ONNX (LoRA merged) + manifest, with an ORT-vs-PyTorch check.

    peftdml export --checkpoint runs/a/checkpoint.pt --out models/peftdml.onnx

Writes `<out>` (the model_io graph; its config is also in the ONNX metadata) and
`<stem>.manifest.json` beside it (classes, ranges, grid, cameras, tensor names, versions), then
runs one generated frame through PyTorch and ONNX Runtime (CPU) and prints the largest absolute
difference per output; a difference above --tolerance is an error (exit 1). With --build-engine
it then builds the TensorRT engine beside `<out>` (tools/engine_build.py, docs/tensorrt.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from peftdml_ros.core.backends.torch_backend import TorchBackend
from peftdml_ros.core.detector import build_manifest, manifest_path
from peftdml_ros.core.errors import ModelArtifactError
from peftdml_ros.core.model import ModelConfig, export_onnx, load_checkpoint
from peftdml_ros.core.model.detector_net import camera_rig
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor, scale_intrinsics
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    MODALITIES,
    RADAR_POINT_FIELDS,
    CameraImage,
    Frame,
    GnssFix,
    ImuSample,
    PointCloud,
)
from peftdml_ros.tools import engine_build


def random_frame(
    config: ModelConfig,
    seed: int = 0,
    stamp_ns: int = 1_000_000_000,
    lidar_points: int | None = None,
    image_scale: float = 2.0,
) -> Frame:
    """A plausible full-rig Frame for `config`: every modality present, every camera.

    Points uniform in the BEV range (plus 10% outside it, which preprocessing crops;
    `lidar_points`, default twice the model's maximum), noise images at `image_scale` times the
    model input size (so the resize path runs) with the matching K, an IMU window of 10 samples
    and a GNSS fix with velocity.
    """
    rng = np.random.default_rng(seed)
    x0, y0, z0, x1, y1, z1 = config.point_cloud_range_m
    low, high = np.array([x0, y0, z0]), np.array([x1, y1, z1])

    def cloud(name: str, count: int, fields: tuple[str, ...]) -> PointCloud:
        xyz = rng.uniform(low - 0.05 * (high - low), high + 0.05 * (high - low), (count, 3))
        rest = rng.uniform(0.0, 1.0, (count, len(fields) - 3))
        return PointCloud(name, stamp_ns, np.hstack([xyz, rest]).astype(np.float32), fields)

    k, to_ego = (t.numpy() for t in camera_rig(config))
    h, w = config.image_size_hw
    src_h, src_w = round(h * image_scale), round(w * image_scale)
    scale_x, scale_y = src_w / w, src_h / h
    cameras = []
    for i, name in enumerate(config.camera_names):
        image = rng.integers(0, 256, (src_h, src_w, 3), dtype=np.uint8)
        k2 = scale_intrinsics(k[i], scale_x, scale_y)
        cameras.append(CameraImage(name, stamp_ns, image, k2.astype(np.float32), to_ego[i]))
    imu = tuple(
        ImuSample(
            stamp_ns - (10 - j) * 10_000_000,
            tuple(rng.normal(0.0, 0.05, 3).tolist()),  # type: ignore[arg-type]
            tuple((rng.normal(0.0, 0.3, 3) + np.array([0.0, 0.0, 9.81])).tolist()),  # type: ignore[arg-type]
        )
        for j in range(10)
    )
    return Frame(
        stamp_ns=stamp_ns,
        trigger_sensor="LIDAR_TOP",
        lidar=(
            cloud("LIDAR_TOP", lidar_points or 2 * config.max_lidar_points, LIDAR_POINT_FIELDS),
        ),
        radar=tuple(
            cloud(f"RADAR_{i}", config.max_radar_points // 4, RADAR_POINT_FIELDS) for i in range(5)
        ),
        cameras=tuple(cameras),
        imu=imu,
        gnss=GnssFix(stamp_ns - 50_000_000, 42.336, -71.057, 10.0, (4.0, 3.0)),
        modality_present={m: True for m in MODALITIES},
    )


def parity(onnx_path: Path, torch_backend: TorchBackend, frame: Frame) -> dict[str, float]:
    """Largest absolute difference per output between ONNX Runtime (CPU) and PyTorch."""
    inputs = Preprocessor(PreprocessConfig.from_model_config(torch_backend.config))(frame)
    reference = torch_backend.run(inputs)
    candidate = OnnxRuntimeBackend(onnx_path, device="cpu").run(inputs)
    return {
        name: float(np.max(np.abs(reference[name] - candidate[name])))
        for name in model_io.OUTPUT_NAMES
    }


def benchmark(
    onnx_path: Path, torch_backend: TorchBackend, repeats: int, seed: int = 0
) -> dict[str, float]:
    """Median ms per frame on this machine's CPU: preprocessing of a nuScenes-sized frame
    (300k LiDAR points, six 1600x900 images), PyTorch and ONNX Runtime inference (batch 1)."""
    config = torch_backend.config
    frame = random_frame(
        config, seed, lidar_points=300_000, image_scale=1600 / config.image_size_hw[1]
    )
    preprocessor = Preprocessor(PreprocessConfig.from_model_config(config))
    ort_backend = OnnxRuntimeBackend(onnx_path, device="cpu")
    inputs = preprocessor(frame)
    stages = {
        "preprocess_ms": lambda: preprocessor(frame),
        "torch_cpu_ms": lambda: torch_backend.run(inputs),
        "onnxruntime_cpu_ms": lambda: ort_backend.run(inputs),
    }
    result = {}
    for name, stage in stages.items():
        stage()  # warm-up: allocations, ORT's first-run graph work
        times = []
        for _ in tqdm(range(repeats), desc=name, leave=False):
            start = time.perf_counter()
            stage()
            times.append((time.perf_counter() - start) * 1e3)
        result[name] = float(np.median(times))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftdml export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .pt from peftdml train")
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max abs ORT-torch diff")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated check frame")
    parser.add_argument(
        "--bench", type=int, default=0, metavar="N", help="also time preprocess/torch/ORT N times"
    )
    engine_build.add_engine_arguments(parser)
    args = parser.parse_args(argv)
    engine_build.check_engine_arguments(args)
    if args.out.suffix != ".onnx":
        raise ModelArtifactError(f"--out {args.out} must end in .onnx")

    loaded = load_checkpoint(args.checkpoint)
    export_onnx(loaded.model, args.out, dynamic_batch=args.dynamic_batch)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")

    torch.manual_seed(args.seed)
    backend = TorchBackend(loaded.model, loaded.config, device="cpu")
    diffs = parity(args.out, backend, random_frame(loaded.config, args.seed))
    print("max |onnxruntime - torch| per output:")
    for name, diff in diffs.items():
        print(f"  {name:<18} {diff:.3e}")
    worst = max(diffs.values())
    manifest = build_manifest(
        loaded.config,
        {
            "source_checkpoint": args.checkpoint.name,
            "checkpoint_extra": loaded.extra,
            "dynamic_batch": args.dynamic_batch,
            "parity_max_abs_diff": diffs,
        },
    )
    if not math.isfinite(worst) or worst > args.tolerance:
        args.out.unlink()  # an unfaithful export must not be left where a node would load it
        raise ModelArtifactError(
            f"ONNX Runtime and PyTorch differ by {worst:.3e} (> --tolerance {args.tolerance}); "
            "the export is not faithful (removed): report it with the checkpoint"
        )
    target = manifest_path(args.out)
    target.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    print(f"wrote {target}")
    if args.build_engine:
        engine_build.build_engine(args, args.out, loaded.config, loaded.extra.get("data"))
    if args.bench > 0:
        print(
            f"median ms per frame over {args.bench} runs (CPU, {torch.get_num_threads()} threads):"
        )
        for name, value in benchmark(args.out, backend, args.bench, args.seed).items():
            print(f"  {name:<20} {value:8.1f}")
    return 0
