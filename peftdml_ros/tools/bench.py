"""`peftdml bench <target>`: benchmarks kept apart from the tests.

Each target is a `BenchTarget` in TARGETS: its own arguments and a `run(args) -> dict` whose
result is printed as a table (or one JSON object with --json). Add a benchmark by adding a target.

Targets:
  sync  the frame synchronizer's cost per message (add + a 100 Hz poll timer) on simulated
        sensor streams at nuScenes rates: 3 inputs (LiDAR, radar, camera), the full nuScenes rig
        (1 LiDAR, 5 radars, 6 cameras, IMU, GNSS), the rig with a dead camera, and the rig with a
        dead LiDAR (camera fallback); frames/s out against the reference rate, the share of
        frames that hold every live sensor, cameras and radars per frame. message_filters'
        ApproximateTimeSynchronizer is timed on the same 3-input streams where it imports (a ROS
        install); elsewhere its figures are reported as not available.
  model CPU forward time of the default model (PyTorch unmerged/merged, ONNX Runtime;
        tools/bench_model.py).
  dds   large point clouds between two processes over DDS: delivered out of sent with Fast DDS's
        default transports and with config/fastdds_profile.xml (needs rclpy).
  cache the on-disk keyframe cache: build time and size per keyframe, a keyframe and a batch of
        pairs read uncached and cached (tools/bench_cache.py).
  pointcloud  PointCloud2 building and reading against sensor_msgs_py (where it imports) and a
        numpy equivalent of it; the node's LiDAR conversion (tools/bench_pointcloud.py).
  pipeline  frames at full nuScenes sizes through the node's code, stage by stage, for every
        available backend side by side (tools/bench_pipeline.py).

Every wall-clock figure is time.perf_counter; the sync target counts CPU time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.sync import MS, FrameSynchronizer, SyncConfig, SyncedFrame, SyncSensor
from peftdml_ros.core.types import MODALITIES, NUSCENES_CAMERAS, NUSCENES_RADARS, Modality
from peftdml_ros.ros import dds_bench  # imports rclpy only when the dds target runs

NS_PER_S = 1_000_000_000
MESSAGE_FILTERS_QUEUE_SIZE = 10


@dataclass(frozen=True)
class BenchTarget:
    """One benchmark: a summary line, its arguments and a run function returning results."""

    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]


# ------------------------------------------------------------------------ simulated sensor streams


@dataclass(frozen=True)
class StreamSpec:
    """A simulated sensor: rate (Hz) and arrival latency after its stamp (ms, uniform range)."""

    name: str
    modality: Modality
    rate_hz: float
    latency_ms: tuple[float, float]


def nuscenes_rig() -> list[StreamSpec]:
    """The nuScenes rig at its rates: LiDAR 20 Hz, radars 13 Hz, cameras 12 Hz, IMU 100 Hz, and
    GNSS 20 Hz (the bag writer derives one fix per LiDAR sweep). Latencies are plausible
    transport + driver delays, cameras the largest (JPEG encode)."""
    specs = [StreamSpec("LIDAR_TOP", Modality.LIDAR, 20.0, (10.0, 20.0))]
    specs += [StreamSpec(name, Modality.RADAR, 13.0, (5.0, 15.0)) for name in NUSCENES_RADARS]
    specs += [StreamSpec(name, Modality.CAMERA, 12.0, (20.0, 40.0)) for name in NUSCENES_CAMERAS]
    specs.append(StreamSpec("IMU", Modality.IMU, 100.0, (1.0, 3.0)))
    specs.append(StreamSpec("GNSS", Modality.GNSS, 20.0, (5.0, 10.0)))
    return specs


def three_inputs() -> list[StreamSpec]:
    """LiDAR, one radar and one camera: the classic three-input case."""
    rig = {s.name: s for s in nuscenes_rig()}
    return [rig["LIDAR_TOP"], rig["RADAR_FRONT"], rig["CAM_FRONT"]]


def make_events(
    specs: Sequence[StreamSpec], duration_s: float, seed: int, missing: Sequence[str] = ()
) -> list[tuple[int, str, int]]:
    """Messages as (arrival now_ns, sensor, stamp_ns) in arrival order; `missing` send nothing."""
    rng = random.Random(seed)
    events: list[tuple[int, str, int]] = []
    end_ns = int(duration_s * NS_PER_S)
    for spec in specs:
        period_ns = int(NS_PER_S / spec.rate_hz)
        stamp_ns = rng.randrange(period_ns)  # sensors are not phase-locked
        while stamp_ns < end_ns:
            if spec.name not in missing:
                latency_ns = int(rng.uniform(*spec.latency_ms) * MS)
                events.append((stamp_ns + latency_ns, spec.name, stamp_ns))
            stamp_ns += period_ns
    events.sort()
    return events


# ------------------------------------------------------------------------------------ sync target


@dataclass(frozen=True)
class _Scenario:
    label: str
    specs: list[StreamSpec]
    missing: tuple[str, ...] = ()


def _scenarios() -> list[_Scenario]:
    return [
        _Scenario("3 inputs (LiDAR, radar, camera)", three_inputs()),
        _Scenario("nuScenes rig (14 inputs)", nuscenes_rig()),
        _Scenario("nuScenes rig, CAM_BACK dead", nuscenes_rig(), ("CAM_BACK",)),
        _Scenario("nuScenes rig, LiDAR dead", nuscenes_rig(), ("LIDAR_TOP",)),
    ]


def _sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration-s", type=float, default=60.0, help="sensor time simulated per scenario"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per scenario (best)")
    parser.add_argument("--poll-hz", type=float, default=100.0, help="the node's poll timer rate")
    parser.add_argument("--deadline-ms", type=float, default=100.0, help="frame deadline")
    parser.add_argument("--seed", type=int, default=0)


def _replay(
    sensors: list[SyncSensor],
    config: SyncConfig,
    events: list[tuple[int, str, int]],
    poll_ns: int | None,
) -> tuple[float, list[SyncedFrame]]:
    """Feed the events as a node would (callbacks + poll timer); return (CPU seconds, frames).

    CPU time of this process, not wall time: on a shared machine wall time mostly measures
    the other jobs.

    poll_ns None: callbacks only, no timer (what message_filters does); frames then leave on
    the next message after their deadline.
    """
    sync = FrameSynchronizer(sensors, config)
    frames: list[SyncedFrame] = []
    add, poll = sync.add, sync.poll
    if poll_ns is None:
        start = time.process_time()
        for now_ns, name, stamp_ns in events:
            frames += add(name, stamp_ns, None, now_ns)
        return time.process_time() - start, frames
    next_poll_ns = 0
    start = time.process_time()
    for now_ns, name, stamp_ns in events:
        while next_poll_ns <= now_ns:
            frames += poll(next_poll_ns)
            next_poll_ns += poll_ns
        frames += add(name, stamp_ns, None, now_ns)
    end_ns = next_poll_ns + config.deadline_ns
    while next_poll_ns <= end_ns:  # the timer keeps running until the last deadline passed
        frames += poll(next_poll_ns)
        next_poll_ns += poll_ns
    return time.process_time() - start, frames


def _run_sync(args: argparse.Namespace) -> dict[str, Any]:
    if args.repeat < 1 or args.duration_s <= 0 or args.poll_hz <= 0:
        raise ConfigError("--repeat, --duration-s and --poll-hz must be > 0")
    poll_ns = int(NS_PER_S / args.poll_hz)
    config = SyncConfig(deadline_ns=int(args.deadline_ms * MS))
    results = []
    scenarios = _scenarios()
    with tqdm(total=len(scenarios) * args.repeat, desc="bench sync", unit="run") as progress:
        for scenario in scenarios:
            sensors = [SyncSensor(s.name, s.modality) for s in scenario.specs]
            events = make_events(scenario.specs, args.duration_s, args.seed, scenario.missing)
            times_s, add_only_s = [], []
            frames: list[SyncedFrame] = []
            for _ in range(args.repeat):
                elapsed_s, frames = _replay(sensors, config, events, poll_ns)
                times_s.append(elapsed_s)
                add_only_s.append(_replay(sensors, config, events, None)[0])
                progress.update()
            row = _summarize(scenario, events, times_s, frames, args.duration_s)
            row["us_per_message_add_only"] = 1e6 * min(add_only_s) / len(events)
            results.append(row)
    three = scenarios[0]
    return {
        "target": "sync",
        "duration_s": args.duration_s,
        "repeat": args.repeat,
        "poll_hz": args.poll_hz,
        "deadline_ms": args.deadline_ms,
        "slop_ms": {m.value: config.slop_for(m) / MS for m in MODALITIES},
        "python": sys.version.split()[0],
        "message_filters": _message_filters(
            three.specs,
            make_events(three.specs, args.duration_s, args.seed, three.missing),
            config.slop_for(Modality.CAMERA) / NS_PER_S,
            args.repeat,
        ),
        "scenarios": results,
    }


def _message_filters(
    specs: Sequence[StreamSpec], events: list[tuple[int, str, int]], slop_s: float, repeat: int
) -> dict[str, Any]:
    """message_filters.ApproximateTimeSynchronizer (Python) on the same events, where it
    imports: CPU time per message (best of `repeat`) and sets out per second. It is not a
    dependency of this package (not on PyPI); without it nothing is reported."""
    try:
        message_filters = importlib.import_module("message_filters")
        time_type = importlib.import_module("builtin_interfaces.msg").Time
    except ImportError as error:
        return {"available": False, "reason": f"not importable here ({error})"}
    names = [spec.name for spec in specs]
    messages = [
        (name, _StampedMessage(time_type(sec=stamp_ns // NS_PER_S, nanosec=stamp_ns % NS_PER_S)))
        for _, name, stamp_ns in events
    ]
    best_s, sets = float("inf"), 0
    for _ in range(repeat):
        inputs = {name: message_filters.SimpleFilter() for name in names}
        synchronizer = message_filters.ApproximateTimeSynchronizer(
            [inputs[name] for name in names], MESSAGE_FILTERS_QUEUE_SIZE, slop_s
        )
        out: list[int] = []
        synchronizer.registerCallback(lambda *msgs, out=out: out.append(len(msgs)))
        start = time.process_time()
        for name, message in messages:
            inputs[name].signalMessage(message)
        best_s = min(best_s, time.process_time() - start)
        sets = len(out)
    duration_s = (max(e[2] for e in events) - min(e[2] for e in events)) / NS_PER_S
    return {
        "available": True,
        "inputs": len(names),
        "queue_size": MESSAGE_FILTERS_QUEUE_SIZE,
        "slop_s": slop_s,
        "us_per_message": 1e6 * best_s / len(messages),
        "sets_per_s": sets / duration_s if duration_s > 0 else 0.0,
    }


@dataclass
class _Header:
    stamp: Any


class _StampedMessage:
    """The one part of a message that message_filters reads: header.stamp."""

    __slots__ = ("header",)

    def __init__(self, stamp: Any) -> None:
        self.header = _Header(stamp)


def _summarize(
    scenario: _Scenario,
    events: list[tuple[int, str, int]],
    times_s: list[float],
    frames: list[SyncedFrame],
    duration_s: float,
) -> dict[str, Any]:
    reference = scenario.specs[0]
    waits_ms = [(f.emitted_ns - f.trigger_arrival_ns) / MS for f in frames]
    present = {
        m.value: round(100.0 * sum(f.modality_present[m] for f in frames) / max(len(frames), 1))
        for m in MODALITIES
    }
    triggers: dict[str, int] = {}
    for frame in frames:
        triggers[frame.trigger_sensor] = triggers.get(frame.trigger_sensor, 0) + 1
    live = [s.name for s in scenario.specs if s.name not in scenario.missing]
    full = sum(all(f.sensor_present[name] for name in live) for f in frames)
    modality = {s.name: s.modality for s in scenario.specs}

    def per_frame(kind: Modality) -> float:
        held = sum(
            1 for f in frames for n, p in f.sensor_present.items() if p and modality[n] is kind
        )
        return held / max(len(frames), 1)

    return {
        "scenario": scenario.label,
        "inputs": len(scenario.specs) - len(scenario.missing),
        "messages": len(events),
        "us_per_message_best": 1e6 * min(times_s) / len(events),
        "us_per_message_median": 1e6 * statistics.median(times_s) / len(events),
        "frames": len(frames),
        "frames_per_s": len(frames) / duration_s,
        "reference_hz": reference.rate_hz,
        "triggers": triggers,
        "wait_ms_mean": statistics.fmean(waits_ms) if waits_ms else 0.0,
        "wait_ms_max": max(waits_ms, default=0.0),
        "waited_to_deadline_pct": 100.0
        * sum(f.waited_to_deadline for f in frames)
        / max(len(frames), 1),
        "modality_present_pct": present,
        "full_frame_share": full / max(len(frames), 1),
        "cameras_per_frame": per_frame(Modality.CAMERA),
        "radars_per_frame": per_frame(Modality.RADAR),
    }


def _render_sync(result: dict[str, Any]) -> str:
    lines = [
        f"synchronizer CPU time per message (add + {result['poll_hz']:.0f} Hz poll), "
        f"{result['duration_s']:.0f} s of sensor time, best of {result['repeat']}, "
        f"deadline {result['deadline_ms']:.0f} ms, Python {result['python']}",
        "",
        f"{'scenario':<34} {'in':>3} {'msgs':>6} {'us/msg':>7} {'add':>6} {'frames/s':>9} "
        f"{'ref Hz':>7} "
        f"{'wait ms':>8} {'max ms':>7} {'deadline':>8} {'full':>6} {'cam':>4} {'rad':>4}"
        "  present % (L R C I G)",
    ]
    for row in result["scenarios"]:
        present = " ".join(f"{v:>3}" for v in row["modality_present_pct"].values())
        lines.append(
            f"{row['scenario']:<34} {row['inputs']:>3} {row['messages']:>6} "
            f"{row['us_per_message_best']:>7.2f} {row['us_per_message_add_only']:>6.2f} "
            f"{row['frames_per_s']:>9.2f} "
            f"{row['reference_hz']:>7.1f} {row['wait_ms_mean']:>8.1f} {row['wait_ms_max']:>7.1f} "
            f"{row['waited_to_deadline_pct']:>7.1f}% {row['full_frame_share']:>6.3f} "
            f"{row['cameras_per_frame']:>4.1f} {row['radars_per_frame']:>4.1f}  {present}"
        )
    slop = ", ".join(f"{name} {ms:g}" for name, ms in result["slop_ms"].items() if ms)
    lines += [
        "",
        "us/msg: add() plus the poll timer, per message; add: add() alone (no timer).",
        "full: share of frames holding every live sensor; cam, rad: cameras and radars per frame.",
        f"slop ms: {slop}. frames/s equals the LiDAR rate while it is alive; with it dead, "
        "CAM_FRONT (12 Hz) triggers after the reference timeout.",
        _render_message_filters(result["message_filters"]),
    ]
    return "\n".join(lines)


def _render_message_filters(row: dict[str, Any]) -> str:
    name = "message_filters.ApproximateTimeSynchronizer (Python), 3 inputs"
    if not row["available"]:
        return f"{name}: not available ({row['reason']})."
    return (
        f"{name}, queue {row['queue_size']}, slop {row['slop_s'] * 1e3:g} ms, measured now: "
        f"{row['us_per_message']:.2f} us/message, {row['sets_per_s']:.2f} sets/s."
    )


def _model_bench() -> Any:
    """The model benchmark module, imported on use: the other targets need no torch."""
    return importlib.import_module("peftdml_ros.tools.bench_model")


def _cache_bench() -> Any:
    """The cache benchmark module, imported on use (torch and the dataset reader)."""
    return importlib.import_module("peftdml_ros.tools.bench_cache")


def _pointcloud_bench() -> Any:
    """The PointCloud2 benchmark module (its arguments are declared without importing rclpy)."""
    return importlib.import_module("peftdml_ros.tools.bench_pointcloud")


def _pipeline_bench() -> Any:
    """The frame pipeline benchmark module, imported on use (torch, rclpy, the backends)."""
    return importlib.import_module("peftdml_ros.tools.bench_pipeline")


def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="nuScenes-format dataroot")
    parser.add_argument("--version", default="v1.0-synth", help="table version")
    parser.add_argument("--split", default=None, help="split name (default: every scene)")
    parser.add_argument("--scenes", type=int, default=2, help="first N scenes of the split")
    parser.add_argument("--workers", type=int, default=2, help="processes of the second build")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per batch")
    parser.add_argument("--batches", type=int, default=5, help="batches timed per path")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch / ORT intra-op threads")
    parser.add_argument("--runs", type=int, default=20, help="timed forwards per path")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (CPU)")


TARGETS: dict[str, BenchTarget] = {
    "sync": BenchTarget(
        summary="synchronizer cost per message and output rate on nuScenes-rate streams",
        add_arguments=_sync_arguments,
        run=_run_sync,
        render=_render_sync,
    ),
    "model": BenchTarget(
        summary="CPU forward time of the default model: PyTorch (LoRA unmerged, merged) and "
        "ONNX Runtime",
        add_arguments=_model_arguments,
        run=lambda args: _model_bench().run(args),
        render=lambda result: _model_bench().render(result),
    ),
    "dds": BenchTarget(
        summary="large PointCloud2 messages between two processes: Fast DDS defaults vs "
        "config/fastdds_profile.xml, best effort and reliable",
        add_arguments=dds_bench.add_arguments,
        run=dds_bench.run,
        render=dds_bench.render,
    ),
    "cache": BenchTarget(
        summary="the on-disk keyframe cache: build cost, size, reads uncached vs cached",
        add_arguments=_cache_arguments,
        run=lambda args: _cache_bench().run(args),
        render=lambda result: _cache_bench().render(result),
    ),
    "pointcloud": BenchTarget(
        summary="PointCloud2 build and read (300k XYZI, nuScenes sweep) against sensor_msgs_py "
        "and a numpy equivalent of it; the node's LiDAR conversion",
        add_arguments=lambda parser: _pointcloud_bench().add_arguments(parser),
        run=lambda args: _pointcloud_bench().run(args),
        render=lambda result: _pointcloud_bench().render(result),
    ),
    "pipeline": BenchTarget(
        summary="full-size nuScenes frames through the node's code (conversion, sync, "
        "preprocess, inference, decode, output messages) per backend: p50/p99 per stage, "
        "frames/s",
        add_arguments=lambda parser: _pipeline_bench().add_arguments(parser),
        run=lambda args: _pipeline_bench().run(args),
        render=lambda result: _pipeline_bench().render(result),
    ),
}


# ------------------------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftdml bench", description="Benchmarks (kept apart from the tests)."
    )
    sub = parser.add_subparsers(dest="target", metavar="target")
    for name, target in TARGETS.items():
        target_parser = sub.add_parser(name, help=target.summary, description=target.summary)
        target_parser.add_argument("--json", action="store_true", help="print one JSON object")
        target.add_arguments(target_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.target is None:
        parser.print_help()
        return 2
    target = TARGETS[args.target]
    result = target.run(args)
    print(json.dumps(result, indent=2) if args.json else target.render(result))
    return 0
