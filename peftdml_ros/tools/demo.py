"""`peftdml demo`: the main job end to end on generated data, with a sensor dying on the way.

1. generate a nuScenes-format scene (`peftdml synth`), 2. convert it to a rosbag2 MCAP bag
(`peftdml bag`), 3. run the detector node on the bag over DDS with /clock (sim time) while the
LiDAR is silenced for a stretch (`peftdml replay --drop`), 4. score what the node published with
the official nuScenes metrics and draw a BEV picture and a frame timeline.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from peftdml_ros.core.errors import ConfigError

if TYPE_CHECKING:  # the ROS layer is imported only when the demo runs
    from peftdml_ros.ros.demo_session import SessionReport

VERSION = "v1.0-synth"
NS_PER_S = 1_000_000_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftdml demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("build/demo"),
        help="where the dataset, bag and results go (reused when present)",
    )
    parser.add_argument("--seed", type=int, default=101, help="seed of the generated scene")
    parser.add_argument("--preset", choices=("small", "full"), default="full")
    parser.add_argument(
        "--model",
        default="",
        help="checkpoint, ONNX file or engine (default: the parameters file's, the shipped model; "
        "'untrained' for the untrained default model, announced as such)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.5,
        help="replay speed (1 = real time); the CPU model needs < 1 to keep up",
    )
    parser.add_argument(
        "--drop",
        action="append",
        default=None,
        metavar="TOPIC@T0-T1",
        help="silence a topic for a window of bag time (s); default: /lidar/points@8-12",
    )
    parser.add_argument(
        "--params-file",
        type=Path,
        default=None,
        help="node parameters (default: the package's config/peftdml.yaml)",
    )
    return parser


def _prepare_bag(workdir: Path, seed: int, preset: str) -> tuple[Path, Path]:
    from peftdml_ros.data.bag_writer import write_bag
    from peftdml_ros.data.synth import generate_dataset

    dataroot = workdir / f"dataset-{preset}-{seed}"
    if not (dataroot / VERSION / "sample.json").is_file():
        print(f"[1/4] generating one {preset} scene (seed {seed}) in {dataroot}")
        generate_dataset(dataroot, scenes=1, seed=seed, preset=preset, overwrite=True)
    else:
        print(f"[1/4] reusing {dataroot}")
    bag = workdir / f"bag-{preset}-{seed}"
    if not (bag / "metadata.yaml").is_file():
        print(f"[2/4] converting it to a rosbag2 MCAP bag in {bag}")
        summary = write_bag(dataroot, VERSION, bag)
        print(f"      {summary.line()}")
    else:
        print(f"[2/4] reusing {bag}")
    return dataroot, bag


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.rate > 0:
        raise ConfigError(f"--rate {args.rate} must be > 0")
    model: str = args.model
    drops = tuple(args.drop) if args.drop else ("/lidar/points@8-12",)
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    dataroot, bag = _prepare_bag(workdir, args.seed, args.preset)

    from peftdml_ros.ros.demo_session import run_node_on_bag
    from peftdml_ros.ros.params import default_params_file

    params_file: Path = args.params_file or default_params_file()

    print(
        f"[3/4] running peftdml_node on the bag at {args.rate:g}x with /clock; "
        f"dropouts: {', '.join(drops)}; model: {model or 'UNTRAINED default'}"
    )
    report = run_node_on_bag(bag, params_file=params_file, model_path=model,
                             rate=args.rate, drops=drops)  # fmt: skip
    if not report.frames:
        print("the node published no detections; see the warnings above")
        return 1
    print("[4/4] scoring and drawing")
    _print_frames(report, bag)
    _score_and_draw(report, dataroot, workdir, drops, _bag_start_and_lidar_count(bag)[0])
    return 0


def _bag_start_and_lidar_count(bag: Path) -> tuple[int, int]:
    """(first message time in ns, LiDAR messages) of a bag; drop windows count from the first."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic == "/lidar/points"]
        return int(reader.start_time), sum(c.msgcount for c in connections)


def _print_frames(report: SessionReport, bag: Path) -> None:
    frames = report.frames
    _, lidar_total = _bag_start_and_lidar_count(bag)
    by_trigger = Counter(f.trigger for f in frames)
    by_modalities = Counter(f.modalities for f in frames)
    status = report.pipeline_status
    print(
        f"\nframes published: {len(frames)}  (LiDAR messages in the bag: {lidar_total}; "
        f"bag messages replayed: {report.messages_published}; wall {report.wall_s:.1f} s)"
    )
    print("triggered by:    " + ", ".join(f"{k} {v}" for k, v in by_trigger.most_common()))
    print("modalities held: " + "; ".join(f"[{k}] {v}" for k, v in by_modalities.most_common()))
    print(f"detections a frame: mean {sum(f.detections for f in frames) / len(frames):.1f}")
    for key in (
        "backend",
        "frames_synced",
        "frames_published",
        "frames_dropped",
        "latency_p50_ms",
        "latency_p99_ms",
        "inference_p50_ms",
        "normality_score",
    ):
        print(f"  {key:<18} {status.get(key, 'n/a')}")
    if report.missing_seen:
        print("sensors reported missing in /diagnostics: " + ", ".join(
            f"{name} ({len(times)} reports)" for name, times in sorted(report.missing_seen.items())
        ))  # fmt: skip


def _score_and_draw(
    report: SessionReport, dataroot: Path, workdir: Path, drops: tuple[str, ...], bag_start_ns: int
) -> None:
    from peftdml_ros.core.types import Detections
    from peftdml_ros.data.evaluation import evaluate_submission
    from peftdml_ros.data.nuscenes_reader import NuScenesReader
    from peftdml_ros.data.nuscenes_results import SubmissionBuilder
    from peftdml_ros.data.synth import VAL_SPLIT
    from peftdml_ros.ros.replay import DropWindow
    from peftdml_ros.tools.plots import plot_bev, plot_timeline

    reader = NuScenesReader(dataroot, VERSION, VAL_SPLIT, lidar_sweeps=1, gt_min_points=1)
    builder = SubmissionBuilder()
    best = None
    for index in range(len(reader)):
        record = reader[index]
        detections = report.detections_by_stamp.get(record.timestamp_ns, Detections.empty())
        builder.add(record.sample_token, detections, record.ego_to_global)
        if best is None or len(detections) > len(best[1]):
            best = (record, detections)
    submission = builder.write(workdir / "results_nusc.json")
    metrics = evaluate_submission(dataroot, VERSION, VAL_SPLIT, submission, workdir / "eval",
                                  nusc=reader.nusc)  # fmt: skip
    print(
        "\nnuScenes metrics of what the node published (keyframes of the scene, ROS path; "
        "velocities not read back, so mAVE is not meaningful here):"
    )
    for line in metrics.summary_lines():
        print(f"  {line}")

    windows = [DropWindow.parse(d) for d in drops]
    timeline = plot_timeline(
        workdir / "demo_timeline.png",
        times_s=[(f.stamp_ns - bag_start_ns) / NS_PER_S for f in report.frames],
        triggers=[f.trigger for f in report.frames],
        modalities=[f.modalities for f in report.frames],
        detections=[f.detections for f in report.frames],
        dropouts=[(w.topic, w.start_s, w.end_s) for w in windows],
        title="peftdml_node on a generated scene: every published frame",
    )
    if best is not None:
        record, detections = best
        lidar = record.frame.lidar[0].points if record.frame.lidar else None
        bev = plot_bev(
            workdir / "demo_bev.png",
            points_xy=None if lidar is None else lidar[:, :2],
            ground_truth=record.ground_truth,
            detections=detections,
            title=f"{record.scene_name} @ {(record.timestamp_ns - bag_start_ns) / 1e9:.1f} s: "
            f"{len(detections)} detections, {len(record.ground_truth)} GT boxes",
        )
        print(f"\npictures: {bev}, {timeline}")
    (workdir / "demo_summary.json").write_text(json.dumps({
        "frames_published": len(report.frames),
        "pipeline": report.pipeline_status,
        "mean_ap": metrics.mean_ap,
        "nd_score": metrics.nd_score,
    }, indent=2))  # fmt: skip
