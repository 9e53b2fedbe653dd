"""`peftdml bench pipeline`: full-size nuScenes frames through the node's code, stage by stage.

    peftdml bench pipeline [--backend NAME ...] [--frames 30] [--warmup 3] [--json]
                           (arguments: tools/bench.py)

A real `PeftdmlNode` is built per backend from the package's parameters file (its own rclpy
context; never spun, so nothing reaches it over DDS) and its own code runs every stage on real
ROS message objects, one frame after the other on one thread:

  conversion   PeftdmlNode._convert of every message of the frame: one LiDAR PointCloud2
               (34,720 points in the bag's layout), 5 radar PointCloud2 (the 18 nuScenes
               fields), 6 CompressedImage JPEGs of 1600x900, 5 Imu, 1 NavSatFix;
  sync         the node's FrameSynchronizer: add() of those messages (arrival order) and poll();
  preprocess   node.build_frame and the detector's Preprocessor;
  inference    the backend (Detector timings);
  decode       peaks, boxes, NMS (Detector timings);
  output       Detection3DArray, properties PointCloud2, MarkerArray and frame status built
               (ros.outputs, ros.conversions) and serialized as publish() hands them to DDS.

Every stage is wall time (time.perf_counter); `total` is their sum per frame and `hz` the
frames per second of the whole loop. In the node the callbacks (conversion, sync) and the
worker (the rest) run in two threads, so on two free cores its rate can exceed this one.

With --lidar-sweeps N (default: the number the model was trained with, from its manifest),
each frame also carries the N - 1 previous converted sweeps, as a multi-sweep node would.
Backends: onnxruntime and torch on the CPU; onnxruntime-cuda, torch-cuda and tensorrt where a
GPU (and TensorRT) is present. Those that cannot run here are listed with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import Modality
from peftdml_ros.tools.bench_common import (
    NUSCENES_SWEEP_POINTS,
    lidar_sweep,
    machine_info,
    machine_line,
    percentiles_ms,
)

STAGES: tuple[str, ...] = ("conversion", "sync", "preprocess", "inference", "decode", "output")
NS_PER_MS = 1_000_000
FRAME_PERIOD_NS = 50 * NS_PER_MS  # LiDAR at 20 Hz triggers the frames
T0_NS = 1_700_000_000 * 1_000_000_000
IMU_PER_FRAME = 5  # 100 Hz IMU
RADAR_POINTS = 110  # a nuScenes radar returns about 50-125 clusters a sweep
IMAGE_HW = (900, 1600)
JPEG_QUALITY = 90
POOL = 2  # distinct messages per sensor, used in turns


@dataclass(frozen=True)
class BackendChoice:
    """One benchmark backend: the node's detector.backend and device, and the model it loads."""

    name: str
    backend: str
    device: str
    model_suffix: str  # ".onnx" or ".pt"


BACKENDS: tuple[BackendChoice, ...] = (
    BackendChoice("onnxruntime", "onnxruntime", "cpu", ".onnx"),
    BackendChoice("torch", "torch", "cpu", ".pt"),
    BackendChoice("onnxruntime-cuda", "onnxruntime", "cuda", ".onnx"),
    BackendChoice("torch-cuda", "torch", "cuda", ".pt"),
    BackendChoice("tensorrt", "tensorrt", "cuda", ".onnx"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=[b.name for b in BACKENDS],
        default=None,
        metavar="NAME",
        help=f"backends to run ({', '.join(b.name for b in BACKENDS)}); default: every one "
        "available here",
    )
    parser.add_argument("--frames", type=int, default=30, help="timed frames per backend")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first")
    parser.add_argument(
        "--model",
        default=None,
        help="model (.onnx or .pt; the other format is looked up beside it); default: the "
        "node's detector.model_path",
    )
    parser.add_argument(
        "--lidar-sweeps",
        type=int,
        default=None,
        help="LiDAR sweeps per frame (default: the model's training setting, else 1)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--params-file", type=Path, default=None, help="node parameters YAML")
    parser.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------- the node under test


def _availability(choice: BackendChoice, model: Path) -> str:
    """'' when `choice` can run here, else why not."""
    if not model.is_file():
        return f"no {choice.model_suffix} model at {model}"
    if choice.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU visible"
    if choice.name == "onnxruntime-cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if choice.backend == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt module is not installed"
    return ""


def _model_for(choice: BackendChoice, model: Path) -> Path:
    return model.with_suffix(choice.model_suffix)


def _node_args(params_file: Path, choice: BackendChoice, model: Path) -> list[str]:
    overrides = {
        "detector.backend": choice.backend,
        "detector.device": choice.device,
        "detector.model_path": str(model),
        "skip_inference_without_subscribers": "false",
    }
    args = ["--ros-args", "--params-file", str(params_file)]
    for name, value in overrides.items():
        args += ["-p", f"{name}:={value}"]
    return args


class NodeUnderTest:
    """A PeftdmlNode in its own rclpy context on a private DDS domain; never spun."""

    def __init__(self, params_file: Path, choice: BackendChoice, model: Path) -> None:
        import rclpy
        from rclpy.context import Context

        from peftdml_ros.ros.node import PeftdmlNode

        # Localhost discovery and a domain id of its own: the node is never spun, so nothing
        # would reach it anyway, but its participant stays off the user's graph.
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.context = Context()
        rclpy.init(args=[], context=self.context, domain_id=100 + os.getpid() % 100)
        try:
            self.node = PeftdmlNode(
                context=self.context, cli_args=_node_args(params_file, choice, model)
            )
        except BaseException:
            rclpy.shutdown(context=self.context)
            raise

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


# ------------------------------------------------------------------------------ the sensor data


def _rig_transform(name: str) -> npt.NDArray[np.float64]:
    """T_ego_sensor of a nuScenes channel (the generated world's rig, close to nuScenes')."""
    from peftdml_ros.data.synth.rig import spec_of

    return spec_of(name).sensor_to_ego()


def _radar_columns(rng: np.random.Generator) -> dict[str, npt.NDArray[Any]]:
    """One radar sweep with the 18 nuScenes PCD fields, in their order and types."""
    from peftdml_ros.data.synth.radar import PCD_DTYPE

    n = RADAR_POINTS
    values = {
        "x": rng.uniform(2.0, 80.0, n),
        "y": rng.uniform(-20.0, 20.0, n),
        "z": rng.uniform(-0.5, 1.0, n),
        "dyn_prop": rng.integers(0, 7, n),
        "id": np.arange(n),
        "rcs": rng.uniform(-5.0, 30.0, n),
        "vx": rng.normal(0.0, 3.0, n),
        "vy": rng.normal(0.0, 1.0, n),
        "vx_comp": rng.normal(0.0, 3.0, n),
        "vy_comp": rng.normal(0.0, 1.0, n),
        "is_quality_valid": np.ones(n),
        "ambig_state": np.full(n, 3),
        "invalid_state": np.zeros(n),
    }
    names = PCD_DTYPE.names or ()
    return {
        name: np.asarray(values.get(name, np.zeros(n))).astype(PCD_DTYPE[name].newbyteorder("="))
        for name in names
    }


def synthetic_jpeg(rng: np.random.Generator) -> bytes:
    """A 1600x900 JPEG with photo-like content: sky and road gradients, objects, noise."""
    import cv2

    height, width = IMAGE_HW
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = np.array([200, 170, 120], np.float32)
    road = np.array([70, 75, 80], np.float32)
    image = np.where(rows < 0.45, sky * (1 - rows), road * (0.6 + rows)).astype(np.float32)
    image = np.broadcast_to(image, (height, width, 3)).copy()
    for _ in range(60):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(height // 3, height))
        size = int(rng.integers(20, 250))
        color = rng.uniform(0, 255, 3).tolist()
        cv2.rectangle(image, (x0, y0), (x0 + size, y0 + size // 2), color, -1)
    image += rng.normal(0.0, 4.0, image.shape).astype(np.float32)
    bgr = np.clip(image, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ConfigError("OpenCV could not encode the benchmark's JPEG")
    return bytes(encoded)


@dataclass
class SensorFeed:
    """A sensor of the node's rig with its pool of messages (restamped for each frame)."""

    spec: Any  # params.SensorSpec
    pool: list[Any]
    offsets_ms: tuple[float, float]  # stamp after the frame stamp, arrival after the stamp


@dataclass
class Fixture:
    """Everything the node is given before and during the run."""

    tf_static: Any
    camera_infos: dict[str, Any]
    feeds: list[SensorFeed]
    lidar_points: int
    radar_points: int
    jpeg_bytes_mean: float


def _header(frame_id: str) -> Any:
    from std_msgs.msg import Header

    return Header(frame_id=frame_id)


def _static_transform(spec: Any, output_frame: str) -> Any:
    """geometry_msgs/TransformStamped output frame <- sensor, from the generated world's rig."""
    from geometry_msgs.msg import TransformStamped

    from peftdml_ros.core.geometry import matrix_to_quaternion

    matrix = _rig_transform(spec.name)
    msg = TransformStamped(child_frame_id=spec.frame_id)
    msg.header.frame_id = output_frame
    translation, rotation = msg.transform.translation, msg.transform.rotation
    translation.x, translation.y, translation.z = (float(v) for v in matrix[:3, 3])
    rotation.x, rotation.y, rotation.z, rotation.w = matrix_to_quaternion(matrix[:3, :3])
    return msg


def _camera_info(spec: Any) -> Any:
    from sensor_msgs.msg import CameraInfo

    from peftdml_ros.data.synth.rig import spec_of

    info = CameraInfo(header=_header(spec.frame_id), width=IMAGE_HW[1], height=IMAGE_HW[0])
    info.k = [float(v) for row in spec_of(spec.name).intrinsic for v in row]
    return info


def _feed(spec: Any, index: int, rng: np.random.Generator, seed: int) -> SensorFeed:
    """The message pool of one sensor; `index` counts the sensors of its modality, so that
    radars and cameras of one frame get distinct stamp offsets (within the slop)."""
    from sensor_msgs.msg import CompressedImage, Imu, NavSatFix, NavSatStatus

    from peftdml_ros.ros.outputs import pointcloud2_message

    header = _header(spec.frame_id)
    if spec.modality is Modality.LIDAR:
        sweeps = [lidar_sweep(NUSCENES_SWEEP_POINTS, seed + i) for i in range(POOL)]
        clouds = [pointcloud2_message(core_pc.pack_points(c), header) for c in sweeps]
        return SensorFeed(spec, clouds, (0.0, 15.0))
    if spec.modality is Modality.RADAR:
        radars = [_radar_columns(rng) for _ in range(POOL)]
        clouds = [pointcloud2_message(core_pc.pack_points(c), header) for c in radars]
        return SensorFeed(spec, clouds, (1.0 + index, 10.0))
    if spec.modality is Modality.CAMERA:
        images = [
            CompressedImage(header=header, format="jpeg", data=synthetic_jpeg(rng))
            for _ in range(POOL)
        ]
        return SensorFeed(spec, images, (6.0 + 2.0 * index, 30.0))
    if spec.modality is Modality.IMU:
        imu = Imu(header=header)
        imu.orientation.w = 1.0
        imu.linear_acceleration.z = 9.81
        return SensorFeed(spec, [imu], (0.0, 2.0))
    fix = NavSatFix(header=header, latitude=42.3, longitude=-71.0)
    fix.status.status = NavSatStatus.STATUS_FIX
    return SensorFeed(spec, [fix], (0.0, 5.0))


def _build_fixture(config: Any, seed: int) -> Fixture:
    """Messages for the node's configured rig (nuScenes channel names), seeded."""
    from tf2_msgs.msg import TFMessage

    rng = np.random.default_rng(seed)
    transforms, infos, feeds = [], {}, []
    counts: dict[Modality, int] = {}
    for spec in config.sensors:
        index = counts.get(spec.modality, 0)
        counts[spec.modality] = index + 1
        if spec.modality in (Modality.LIDAR, Modality.RADAR, Modality.CAMERA):
            transforms.append(_static_transform(spec, config.output_frame))
        if spec.modality is Modality.CAMERA:
            infos[spec.name] = _camera_info(spec)
        feeds.append(_feed(spec, index, rng, seed))
    jpeg_sizes = [
        len(msg.data) for f in feeds if f.spec.modality is Modality.CAMERA for msg in f.pool
    ]
    return Fixture(
        tf_static=TFMessage(transforms=transforms),
        camera_infos=infos,
        feeds=feeds,
        lidar_points=NUSCENES_SWEEP_POINTS,
        radar_points=RADAR_POINTS,
        jpeg_bytes_mean=float(np.mean(jpeg_sizes)) if jpeg_sizes else 0.0,
    )


def frame_messages(fixture: Fixture, k: int) -> list[tuple[int, int, Any, Any]]:
    """Frame k's messages as (arrival ns, stamp ns, sensor spec, message) in arrival order.

    Every LiDAR, radar and camera sends one message stamped at or just after the frame stamp
    (within slop, nearer than the previous frame's), the IMU the samples since the previous
    frame, the GNSS one fix: each frame is complete and fresh, the worst case for conversion.
    Messages come from small pools; the caller stamps each right before converting it.
    """
    frame_ns = T0_NS + k * FRAME_PERIOD_NS
    out: list[tuple[int, int, Any, Any]] = []
    for feed in fixture.feeds:
        stamp_offset_ms, latency_ms = feed.offsets_ms
        if feed.spec.modality is Modality.IMU:
            stamps = [
                frame_ns - FRAME_PERIOD_NS + (i + 1) * FRAME_PERIOD_NS // IMU_PER_FRAME
                for i in range(IMU_PER_FRAME)
            ]
        else:
            stamps = [frame_ns + int(stamp_offset_ms * NS_PER_MS)]
        msg = feed.pool[k % len(feed.pool)]
        for stamp_ns in stamps:
            out.append((stamp_ns + int(latency_ms * NS_PER_MS), stamp_ns, feed.spec, msg))
    out.sort(key=lambda item: item[0])
    return out


# ------------------------------------------------------------------------------------- one backend


@dataclass
class FrameTimes:
    stages_s: dict[str, float]
    conversion_s: dict[str, float]  # the conversion stage by modality
    detections: int


def _run_frame(
    nut: NodeUnderTest,
    fixture: Fixture,
    k: int,
    sweeps: deque[Any],
) -> FrameTimes:
    """Frame k through the node's code; wall time per stage."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from peftdml_ros.ros import conversions, outputs
    from peftdml_ros.ros.node import Received, _with_dt, build_frame

    node = nut.node
    config = node._config
    times = dict.fromkeys(STAGES, 0.0)
    by_modality: dict[str, float] = {}
    frames = []
    last_arrival_ns = 0
    for arrival_ns, stamp_ns, spec, msg in frame_messages(fixture, k):
        msg.header.stamp = conversions.ns_to_stamp(stamp_ns)
        start = time.perf_counter()
        payload, stamp_ns = node._convert(spec, msg, arrival_ns)
        converted = time.perf_counter()
        frames += node._sync.add(spec.name, stamp_ns, Received(payload, 0), arrival_ns)
        times["conversion"] += converted - start
        modality = spec.modality.value
        by_modality[modality] = by_modality.get(modality, 0.0) + converted - start
        times["sync"] += time.perf_counter() - converted
        last_arrival_ns = arrival_ns
        if spec.modality is Modality.LIDAR:
            sweeps.appendleft(payload)
    start = time.perf_counter()
    frames += node._sync.poll(last_arrival_ns)  # the node's poll timer, once a frame here
    times["sync"] += time.perf_counter() - start
    if len(frames) != 1:
        raise ConfigError(
            f"frame {k}: the synchronizer emitted {len(frames)} frames for one complete set of "
            "messages; the benchmark's timeline does not suit this configuration"
        )
    synced = frames[0]
    start = time.perf_counter()
    frame = build_frame(synced, config)
    older = [_with_dt(c, synced.stamp_ns, shared=True) for c in list(sweeps)[1:]]
    if older:
        frame = dataclasses.replace(frame, lidar=(*frame.lidar, *older))
    built = time.perf_counter()
    result = node._detector.detect(frame)
    times["preprocess"] = built - start + result.timings_ms["preprocess_ms"] / 1e3
    times["inference"] = result.timings_ms["inference_ms"] / 1e3
    times["decode"] = result.timings_ms["decode_ms"] / 1e3
    start = time.perf_counter()
    header = Header(stamp=conversions.ns_to_stamp(synced.stamp_ns), frame_id=config.output_frame)
    messages = (
        conversions.detections_to_msg(result.detections, header),
        outputs.properties_cloud(result.detections, header),
        outputs.markers(result.detections, header),
        outputs.frame_status(
            header,
            synced.trigger_sensor,
            synced.sensor_present,
            synced.modality_present,
            len(result.detections),
        ),
    )
    for message in messages:
        serialize_message(message)
    times["output"] = time.perf_counter() - start
    return FrameTimes(times, by_modality, len(result.detections))


def _threads(nut: NodeUnderTest) -> dict[str, Any]:
    import torch

    backend = getattr(nut.node._detector, "backend", None)
    threads: dict[str, Any] = {"torch_intra_op": torch.get_num_threads()}
    ort_threads = getattr(backend, "threads", None)
    if backend is not None and backend.name == "onnxruntime" and ort_threads is not None:
        threads["onnxruntime_intra_op"] = int(ort_threads)
    return threads


def _run_backend(
    choice: BackendChoice,
    model: Path,
    params_file: Path,
    fixture: Fixture,
    args: argparse.Namespace,
    lidar_sweeps: int,
) -> dict[str, Any]:
    nut = NodeUnderTest(params_file, choice, model)
    try:
        node = nut.node
        node._on_tf_static(fixture.tf_static)
        for name, info in fixture.camera_infos.items():
            node._on_camera_info(name, info)
        sweeps: deque[Any] = deque(maxlen=lidar_sweeps)
        samples: list[FrameTimes] = []
        total = args.warmup + args.frames
        loop_s = 0.0
        for k in tqdm(range(total), desc=f"bench pipeline {choice.name}", unit="frame"):
            start = time.perf_counter()
            times = _run_frame(nut, fixture, k, sweeps)
            if k >= args.warmup:
                loop_s += time.perf_counter() - start
                samples.append(times)
        backend = node._detector.backend
        stages = {stage: _p50_p99([s.stages_s[stage] for s in samples]) for stage in STAGES}
        totals = _p50_p99([sum(s.stages_s.values()) for s in samples])
        return {
            "stages": stages,
            "total_p50_ms": totals["p50_ms"],
            "total_p99_ms": totals["p99_ms"],
            "hz": len(samples) / loop_s if loop_s > 0 else 0.0,
            "backend": f"{backend.name} ({backend.device})",
            "model": str(model),
            "threads": _threads(nut),
            "detections_per_frame": float(np.mean([s.detections for s in samples])),
            "conversion_by_modality": {
                modality: _p50_p99([s.conversion_s.get(modality, 0.0) for s in samples])
                for modality in samples[0].conversion_s
            },
        }
    finally:
        nut.close()


def _p50_p99(samples_s: Sequence[float]) -> dict[str, float]:
    summary = percentiles_ms(samples_s)
    return {"p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"]}


# ------------------------------------------------------------------------------------------- run


def _node_config(params_file: Path) -> Any:
    """The NodeConfig the parameters file gives (the node's own validation)."""
    import yaml

    from peftdml_ros.ros import params

    loaded = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    tree = next(iter(loaded.values()))["ros__parameters"]
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node

    walk("", tree)
    return params.config_from_flat(flat)


def _trained_sweeps(model: Path) -> int:
    from peftdml_ros.core.detector import training_data_settings

    recorded = training_data_settings(str(model.with_suffix(".onnx")), None) or {}
    return int(recorded.get("lidar_sweeps", 1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.frames < 1 or args.warmup < 0:
        raise ConfigError("--frames must be >= 1 and --warmup >= 0")
    from peftdml_ros.ros import params

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params_file = args.params_file or params.default_params_file()
    config = _node_config(params_file)
    model = Path(params.resolve_model_path(args.model) if args.model else config.model_path)
    if not model.is_file():
        raise ConfigError(f"model {model} does not exist; pass --model PATH")
    lidar_sweeps = args.lidar_sweeps or _trained_sweeps(model)
    if lidar_sweeps < 1:
        raise ConfigError(f"--lidar-sweeps {lidar_sweeps} must be >= 1")
    wanted = args.backend or [b.name for b in BACKENDS]
    fixture = _build_fixture(config, args.seed)
    results: dict[str, Any] = {}
    not_available: dict[str, str] = {}
    for choice in (b for b in BACKENDS if b.name in wanted):
        reason = _availability(choice, _model_for(choice, model))
        if reason:
            not_available[choice.name] = reason
            continue
        results[choice.name] = _run_backend(
            choice, _model_for(choice, model), params_file, fixture, args, lidar_sweeps
        )
    if args.backend and not results:
        raise ConfigError(f"none of the backends asked for can run here: {not_available}")
    threads = {name: row["threads"] for name, row in results.items()}
    return {
        "target": "pipeline",
        "machine": machine_info(model=str(model), params_file=str(params_file), threads=threads),
        "frames": args.frames,
        "warmup": args.warmup,
        "input": {
            "lidar_points_per_sweep": fixture.lidar_points,
            "lidar_sweeps": lidar_sweeps,
            "radars": sum(f.spec.modality is Modality.RADAR for f in fixture.feeds),
            "radar_points": fixture.radar_points,
            "cameras": len(fixture.camera_infos),
            "image_hw": list(IMAGE_HW),
            "jpeg_kb_mean": fixture.jpeg_bytes_mean / 1024,
            "camera_decode_reduction": config.camera_decode_reduction,
            "imu_per_frame": IMU_PER_FRAME,
        },
        "backends": results,
        "not_available": not_available,
    }


# ------------------------------------------------------------------------------------------ render


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    spec = result["input"]
    names = list(result["backends"])
    lines = [
        f"frame pipeline, {result['frames']} frames per backend after {result['warmup']} "
        f"warm-up; p50 / p99 ms per frame; {machine['clock']}",
        machine_line(machine),
        f"model {machine['model']}",
        f"frame: {spec['lidar_sweeps']} x {spec['lidar_points_per_sweep']:,}-point LiDAR sweep, "
        f"{spec['radars']} radars x {spec['radar_points']} points, {spec['cameras']} JPEGs "
        f"{spec['image_hw'][1]}x{spec['image_hw'][0]} ({spec['jpeg_kb_mean']:.0f} kB, decoded at "
        f"1/{spec['camera_decode_reduction']}), {spec['imu_per_frame']} IMU, 1 GNSS",
        "",
        f"{'stage':<12}" + "".join(f"{name:>22}" for name in names),
    ]
    for stage in STAGES:
        cells = [result["backends"][n]["stages"][stage] for n in names]
        lines.append(
            f"{stage:<12}" + "".join(f"{c['p50_ms']:>12.2f} /{c['p99_ms']:>8.2f}" for c in cells)
        )
    rows = [
        ("total", lambda r: f"{r['total_p50_ms']:>12.2f} /{r['total_p99_ms']:>8.2f}"),
        ("frames/s", lambda r: f"{r['hz']:>22.2f}"),
        ("detections", lambda r: f"{r['detections_per_frame']:>22.1f}"),
    ]
    for label, cell in rows:
        lines.append(f"{label:<12}" + "".join(cell(result["backends"][n]) for n in names))
    lines.append("")
    for name in names:
        row = result["backends"][name]
        lines.append(f"{name}: {row['backend']}, threads {row['threads']}")
        by_modality = row["conversion_by_modality"].items()
        parts = ", ".join(f"{modality} {t['p50_ms']:.2f}" for modality, t in by_modality)
        lines.append(f"  conversion p50 by modality, ms: {parts}")
    for name, reason in result["not_available"].items():
        lines.append(f"{name}: not available ({reason})")
    lines.append(
        "total: the stages in sequence on one thread; the node converts in its executor thread "
        "beside the inference worker."
    )
    return "\n".join(lines)
