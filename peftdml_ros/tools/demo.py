"""`peftdml demo`: the main job end to end on generated data, with a sensor dying on the way.

1. generate a nuScenes-format scene (`peftdml synth`), 2. convert it to a rosbag2 MCAP bag
(`peftdml bag`), 3. run the detector node on the bag over DDS with /clock (sim time) while the
LiDAR is silenced for a stretch (`peftdml replay --drop`), 4. score what the node published with
the official nuScenes DetectionEval and write metrics.json, a BEV picture, a camera picture and
a frame timeline to the output directory (out/demo by default).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import Detections

if TYPE_CHECKING:  # the ROS layer and the devkit are imported only when the demo runs
    from peftdml_ros.data.evaluation import DetectionMetrics, SplitScorer
    from peftdml_ros.data.nuscenes_reader import NuScenesReader
    from peftdml_ros.ros.demo_session import FrameRecord, SessionProgress, SessionReport
    from peftdml_ros.ros.replay import DropWindow

VERSION = "v1.0-synth"
NS_PER_S = 1_000_000_000
DEFAULT_DROP = "/lidar/points@8-12"
# A keyframe without a frame at its own stamp (its LiDAR sweep was silenced) is scored with the
# nearest published frame at most this far away: a camera-triggered frame (12 Hz) is always
# within half a camera period of a keyframe while the camera runs.
KEYFRAME_MATCH_S = 0.05
PICTURE_CAMERA = "CAM_FRONT"
PICTURE_CAMERA_DOWNSCALE = 2  # half-size images: pictures people can read
METRICS_NAME = "metrics.json"

# Which clock each figure of metrics.json is measured on (also written into the file).
CLOCK_DEMO_WALL = (
    "wall: time.monotonic of the demo process (the node runs in it); from the player handing "
    "the trigger sensor's message to DDS to the monitor receiving the frame's detections, so "
    "the node's receipt-to-publish time plus two DDS hops"
)
CLOCK_NODE_STEADY = (
    "wall: the node's steady clock; trigger message received -> outputs published, as the node "
    "reports it in /diagnostics (processing_p50_ms, processing_p99_ms; last 500 frames)"
)
CLOCK_SIM = (
    "sim: ROS time of the node (/clock from the player, bag time); trigger sensor stamp -> "
    "publish, as the node reports it in /diagnostics (latency_p50_ms, latency_p99_ms); bag "
    "time runs at --rate times wall time"
)
CLOCK_BAG = "bag time: seconds after the bag's first message (as --drop windows are given)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftdml demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("build/demo"),
        help="where the generated dataset and bag go (reused when present)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/demo"),
        help="where metrics.json, the pictures and the scored submission go",
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
        help=f"silence a topic for a window of bag time (s); default: {DEFAULT_DROP}",
    )
    parser.add_argument(
        "--params-file",
        type=Path,
        default=None,
        help="node parameters (default: the package's config/peftdml.yaml)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (the summary is still printed)"
    )
    return parser


# ------------------------------------------------------------------------------ the steps


def _prepare_bag(workdir: Path, seed: int, preset: str, progress: bool) -> tuple[Path, Path]:
    from peftdml_ros.data.bag_writer import write_bag
    from peftdml_ros.data.synth import generate_dataset

    dataroot = workdir / f"dataset-{preset}-{seed}"
    if not (dataroot / VERSION / "sample.json").is_file():
        print(f"[1/4] generating one {preset} scene (seed {seed}) in {dataroot}", flush=True)
        generate_dataset(
            dataroot, scenes=1, seed=seed, preset=preset, overwrite=True, progress=progress
        )
    else:
        print(f"[1/4] reusing {dataroot}")
    bag = workdir / f"bag-{preset}-{seed}"
    if not (bag / "metadata.yaml").is_file():
        print(f"[2/4] converting it to a rosbag2 MCAP bag in {bag}", flush=True)
        summary = write_bag(dataroot, VERSION, bag, progress=progress)
        print(f"      {summary.line()}")
    else:
        print(f"[2/4] reusing {bag}")
    return dataroot, bag


def _params_file_model(params_file: Path) -> str:
    """detector.model_path of a node parameters file ('' when it has none)."""
    import yaml

    try:
        tree = yaml.safe_load(params_file.read_text())
        return str(tree["/**"]["ros__parameters"]["detector"]["model_path"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return ""


class _LiveBar:
    """A tqdm bar over bag time with frames, detections and missing sensors as it plays."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    def __call__(self, progress: SessionProgress) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=round(progress.duration_s, 1),
                desc="      bag time",
                unit="s",
                disable=not self._enabled,
                smoothing=0.0,  # rate and ETA from the whole run: bag time per wall time
                # rate_noinv: never "s/unit" (tqdm inverts slow rates), bag s per wall s
                bar_format="{desc} {percentage:3.0f}%|{bar:24}| {n:.1f}/{total:.1f} s "
                "[{elapsed}<{remaining}, {rate_noinv_fmt}]{postfix}",
            )
        played_s = round(progress.bag_s, 1)
        self._bar.update(played_s - self._bar.n)
        per_frame = progress.detections / progress.frames if progress.frames else 0.0
        text = f"{progress.frames} frames, {per_frame:.1f} det/frame"
        if progress.missing:
            text += f", MISSING: {','.join(progress.missing)}"
        self._bar.set_postfix_str(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    started_s = time.monotonic()
    args = _parser().parse_args(argv)
    if not args.rate > 0:
        raise ConfigError(f"--rate {args.rate} must be > 0")
    from peftdml_ros.ros.replay import DropWindow

    drops = tuple(args.drop) if args.drop else (DEFAULT_DROP,)
    windows = [DropWindow.parse(d) for d in drops]  # refuse a bad window before any work
    workdir: Path = args.workdir
    out: Path = args.out
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    dataroot, bag = _prepare_bag(workdir, args.seed, args.preset, progress)
    prepared_s = time.monotonic()  # the node's stage counts from here: imports, start-up, play

    from peftdml_ros.ros.demo_session import run_node_on_bag
    from peftdml_ros.ros.params import default_params_file

    params_file: Path = args.params_file or default_params_file()
    model: str = args.model
    model_text = model or f"the parameters file's ({_params_file_model(params_file) or '?'})"
    print(
        f"[3/4] running peftdml_node on the bag at {args.rate:g}x with /clock; "
        f"dropouts: {', '.join(drops)}; model: {model_text}",
        flush=True,
    )
    bar = _LiveBar(progress)
    try:
        report = run_node_on_bag(bag, params_file=params_file, model_path=model,
                                 rate=args.rate, drops=drops, on_progress=bar)  # fmt: skip
    finally:
        bar.close()
    if not report.frames:
        print("the node published no detections; see the warnings above")
        return 1
    print("[4/4] scoring with the official nuScenes DetectionEval and drawing", flush=True)
    scoring_s = time.monotonic()
    metrics = score_and_draw(report, dataroot, out, windows)
    finished_s = time.monotonic()
    metrics["run"].update({
        "wall_s": round(finished_s - started_s, 1),
        "scene_and_bag_wall_s": round(prepared_s - started_s, 1),
        "node_stage_wall_s": round(scoring_s - prepared_s, 1),
        "scoring_and_pictures_wall_s": round(finished_s - scoring_s, 1), "rate": args.rate,
        "seed": args.seed, "preset": args.preset, "dataroot": str(dataroot), "bag": str(bag),
        "params_file": str(params_file), "drops": list(drops),
    })  # fmt: skip
    (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
    print()
    for line in summary_lines(metrics, out):
        print(line)
    return 0


# ---------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Keyframe:
    """One scored sample: its token, LiDAR stamp and ego pose (the frame GT is drawn in)."""

    token: str
    stamp_ns: int
    ego_to_global: npt.NDArray[np.float64]


def match_keyframes(
    keyframe_stamps_ns: Sequence[int], frame_stamps_ns: Sequence[int], tolerance_ns: int
) -> list[int | None]:
    """For each keyframe, the published frame that scores it: the one at its own stamp, else the
    nearest one within `tolerance_ns` (earlier on a tie), else None."""
    stamps = np.asarray(sorted(frame_stamps_ns), dtype=np.int64)
    present = set(frame_stamps_ns)
    out: list[int | None] = []
    for stamp_ns in keyframe_stamps_ns:
        if stamp_ns in present:
            out.append(stamp_ns)
            continue
        if not len(stamps):
            out.append(None)
            continue
        index = int(np.searchsorted(stamps, stamp_ns))
        near = [int(s) for s in stamps[max(index - 1, 0) : index + 1]]
        best = min(near, key=lambda s: (abs(s - stamp_ns), s))
        out.append(best if abs(best - stamp_ns) <= tolerance_ns else None)
    return out


def moved(detections: Detections, transform: npt.NDArray[np.float64]) -> Detections:
    """Detections carried through a [4, 4] rigid transform (yaw about z)."""
    rotation, translation = transform[:3, :3], transform[:3, 3]
    centers = detections.center_m.astype(np.float64) @ rotation.T + translation
    yaw_rad = detections.yaw_rad + math.atan2(rotation[1, 0], rotation[0, 0])
    return Detections(
        center_m=centers.astype(np.float32),
        size_wlh_m=detections.size_wlh_m,
        yaw_rad=np.arctan2(np.sin(yaw_rad), np.cos(yaw_rad)).astype(np.float32),
        velocity_mps=detections.velocity_mps,
        score=detections.score,
        label=detections.label,
    )


def _keyframes(reader: NuScenesReader, scorer: SplitScorer) -> list[Keyframe]:
    from peftdml_ros.data.nuscenes_reader import LIDAR_CHANNEL, US_TO_NS

    nusc = reader.nusc
    out = []
    for token in reader.sample_tokens:
        lidar = nusc.get("sample_data", nusc.get("sample", token)["data"][LIDAR_CHANNEL])
        stamp_ns = int(lidar["timestamp"]) * US_TO_NS
        out.append(Keyframe(token, stamp_ns, scorer.ego_to_global(token)))
    return out


def _frame_poses(reader: NuScenesReader) -> dict[tuple[str, int], npt.NDArray[np.float64]]:
    """(channel, stamp ns) -> ego pose of every sample_data of the dataset: where a frame
    triggered by that sensor at that stamp puts its detections."""
    from peftdml_ros.data.nuscenes_reader import US_TO_NS, global_from_ego

    poses = {}
    for records in reader.scene_sample_data().values():
        for record in records:
            key = (str(record["channel"]), int(record["timestamp"]) * US_TO_NS)
            poses[key] = global_from_ego(reader.nusc, record)
    return poses


@dataclass(frozen=True)
class Scored:
    metrics: DetectionMetrics
    during: list[DetectionMetrics | None]  # per drop window: its keyframes alone
    keyframes: list[Keyframe]
    matches: list[int | None]  # per keyframe: the frame stamp that scored it
    by_keyframe: dict[str, Detections]  # in the keyframe's ego frame


def score(
    report: SessionReport, reader: NuScenesReader, out: Path, windows: Sequence[DropWindow]
) -> Scored:
    """Every keyframe of the scene scored with the frame the node published for it (see
    match_keyframes), by the official DetectionEval; again for each drop window's keyframes."""
    from peftdml_ros.data.evaluation import SplitScorer
    from peftdml_ros.data.nuscenes_results import detections_to_boxes

    scorer = SplitScorer(reader.nusc, reader.sample_tokens)
    keyframes = _keyframes(reader, scorer)
    frames = {f.stamp_ns: f for f in report.frames}
    matches = match_keyframes(
        [k.stamp_ns for k in keyframes], list(frames), int(KEYFRAME_MATCH_S * NS_PER_S)
    )
    poses = _frame_poses(reader)
    by_keyframe: dict[str, Detections] = {}
    results = {}
    for keyframe, stamp_ns in zip(keyframes, matches, strict=True):
        detections, pose = Detections.empty(), keyframe.ego_to_global
        if stamp_ns is not None:
            frame_pose = poses.get((frames[stamp_ns].trigger, stamp_ns))
            if frame_pose is not None or stamp_ns == keyframe.stamp_ns:
                detections = report.detections_by_stamp[stamp_ns]
                pose = keyframe.ego_to_global if frame_pose is None else frame_pose
        by_keyframe[keyframe.token] = moved(
            detections, np.linalg.inv(keyframe.ego_to_global) @ pose
        )
        results[keyframe.token] = detections_to_boxes(detections, pose, keyframe.token)
    metrics = scorer.score_results(results, out / "eval")
    submission = out / "eval" / "results_nusc.json"
    during: list[DetectionMetrics | None] = []
    for index, window in enumerate(windows):
        tokens = [k.token for k in keyframes if _in_window(k.stamp_ns, window, report)]
        during.append(
            scorer.score(submission, out / "eval" / f"dropout_{index}", sample_tokens=tokens)
            if tokens
            else None
        )
    return Scored(metrics, during, keyframes, matches, by_keyframe)


def _in_window(stamp_ns: int, window: DropWindow, report: SessionReport) -> bool:
    relative_s = (stamp_ns - report.bag_start_ns) / NS_PER_S
    return window.start_s <= relative_s < window.end_s


# ------------------------------------------------------------------------------ figures


def latency_stats(values_ms: Sequence[float | None]) -> dict[str, Any]:
    """{"frames", "frames_not_measured", "p50", "p90", "p99", "max", "mean"} (ms, 0.1 ms)."""
    measured = np.asarray([v for v in values_ms if v is not None], dtype=np.float64)
    stats: dict[str, Any] = {
        "frames": len(measured),
        "frames_not_measured": len(values_ms) - len(measured),
    }
    for name in ("p50", "p90", "p99", "max", "mean"):
        stats[name] = None
    if len(measured):
        p50, p90, p99 = np.percentile(measured, [50, 90, 99])
        stats.update(p50=p50, p90=p90, p99=p99, max=measured.max(), mean=measured.mean())
        stats = {k: round(float(v), 1) if isinstance(v, np.floating | float) else v
                 for k, v in stats.items()}  # fmt: skip
    return stats


def window_stats(
    frames: Sequence[FrameRecord],
    window: DropWindow,
    bag_start_ns: int,
    *,
    messages_dropped: int,
) -> dict[str, Any]:
    """What the node published while `window`'s topic was silenced."""
    during = [f for f in frames if window.start_s <= (f.stamp_ns - bag_start_ns) / NS_PER_S
              < window.end_s]  # fmt: skip
    with_detections = [f for f in during if f.detections > 0]
    return {
        "topic": window.topic,
        "start_s": window.start_s,
        "end_s": window.end_s,
        "clock": CLOCK_BAG,
        "messages_dropped": messages_dropped,
        "frames_during": len(during),
        "frames_with_detections_during": len(with_detections),
        "detections_during": sum(f.detections for f in during),
        "triggers_during": dict(Counter(f.trigger for f in during).most_common()),
    }


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def build_metrics(
    report: SessionReport, scored: Scored, windows: Sequence[DropWindow]
) -> dict[str, Any]:
    """The content of metrics.json (without "pictures" and the run's arguments)."""
    frames = report.frames
    status = report.pipeline_status
    dropouts = []
    for window, during in zip(windows, scored.during, strict=True):
        dropped = report.messages_dropped.get(window.topic, 0)
        stats = window_stats(frames, window, report.bag_start_ns, messages_dropped=dropped)
        stats["keyframes_during"] = sum(
            _in_window(k.stamp_ns, window, report) for k in scored.keyframes
        )
        stats["mAP_during"] = None if during is None else during.mean_ap
        stats["NDS_during"] = None if during is None else during.nd_score
        dropouts.append(stats)
    exact = sum(m == k.stamp_ns for m, k in zip(scored.matches, scored.keyframes, strict=True))
    matched = sum(m is not None for m in scored.matches)
    return {
        "mAP": scored.metrics.mean_ap,
        "NDS": scored.metrics.nd_score,
        "frames": len(frames),
        "frames_with_detections": sum(f.detections > 0 for f in frames),
        "detections_per_frame": round(sum(f.detections for f in frames) / max(len(frames), 1), 2),
        "triggers": dict(Counter(f.trigger for f in frames).most_common()),
        # sensor -> how many /diagnostics messages reported it missing during the run
        "sensors_reported_missing": {n: len(t) for n, t in sorted(report.missing_seen.items())},
        "dropout": dropouts[0] if dropouts else None,
        "dropouts": dropouts,
        "scoring": {
            "evaluator": "nuscenes-devkit DetectionEval (detection_cvpr_2019)",
            "keyframes": len(scored.keyframes),
            "keyframes_scored_with_own_frame": exact,
            "keyframes_scored_with_nearest_frame": matched - exact,
            "keyframes_without_frame": len(scored.keyframes) - matched,
            "nearest_frame_within_s": KEYFRAME_MATCH_S,
            "note": "velocities and attributes are not carried by Detection3DArray, so mAVE and "
            "mAAE count as errors",
            **scored.metrics.as_dict(),
        },
        "latency": {
            "receipt_to_publish_wall_ms": {
                "clock": CLOCK_DEMO_WALL,
                **latency_stats([f.latency_wall_ms for f in frames]),
            },
            "node_processing_wall_ms": {
                "clock": CLOCK_NODE_STEADY,
                "p50": _number(status.get("processing_p50_ms")),
                "p99": _number(status.get("processing_p99_ms")),
            },
            "stamp_to_publish_sim_ms": {
                "clock": CLOCK_SIM,
                "p50": _number(status.get("latency_p50_ms")),
                "p99": _number(status.get("latency_p99_ms")),
            },
            "inference_ms": {
                "clock": "wall: inside the detector (preprocess, engine, decode), p50",
                "p50": _number(status.get("inference_p50_ms")),
            },
        },
        "node": dict(status),
        "run": {
            "node_run_wall_s": round(report.wall_s, 1),
            "bag_duration_s": round(report.bag_duration_s, 2),
            "messages_published": report.messages_published,
            "messages_dropped": dict(report.messages_dropped),
        },
        "timeline_clock": CLOCK_BAG,
        "timeline": [
            {
                "t_s": round((f.stamp_ns - report.bag_start_ns) / NS_PER_S, 4),
                "stamp_ns": f.stamp_ns,
                "trigger": f.trigger,
                "modalities": f.modalities,
                "detections": f.detections,
                "latency_wall_ms": None if f.latency_wall_ms is None
                else round(f.latency_wall_ms, 1),
            }
            for f in frames
        ],
    }  # fmt: skip


# ----------------------------------------------------------------------------- pictures


def _most_gt(reader: NuScenesReader, scored: Scored, candidates: Sequence[int]) -> int | None:
    """Index of the candidate keyframe with the most ground truth (first on a tie)."""
    from peftdml_ros.data.nuscenes_reader import ground_truth_in_ego

    best, best_count = None, -1
    for index in candidates:
        keyframe = scored.keyframes[index]
        sample = reader.nusc.get("sample", keyframe.token)
        gt = ground_truth_in_ego(
            reader.nusc, sample, np.linalg.inv(keyframe.ego_to_global), reader.gt_filter
        )
        if len(gt.boxes) > best_count:
            best, best_count = index, len(gt.boxes)
    return best


def draw(
    report: SessionReport,
    reader: NuScenesReader,
    scored: Scored,
    windows: Sequence[DropWindow],
    out: Path,
) -> dict[str, str]:
    """bev.png and camera.png (the keyframe with the most ground truth among those scored with
    their own frame, else among those scored with a frame at all), bev_dropout.png (the same
    within the first drop window), timeline.png; {name: file name} of those written."""
    from peftdml_ros.data.nuscenes_reader import NuScenesReader
    from peftdml_ros.tools.plots import plot_bev, plot_camera_boxes, plot_timeline

    frames = report.frames
    pictures = {"timeline": plot_timeline(
        out / "timeline.png",
        times_s=[(f.stamp_ns - report.bag_start_ns) / NS_PER_S for f in frames],
        triggers=[f.trigger for f in frames],
        modalities=[f.modalities for f in frames],
        detections=[f.detections for f in frames],
        dropouts=[(w.topic, w.start_s, w.end_s) for w in windows],
        latencies_ms=[f.latency_wall_ms for f in frames],
        latency_label="receipt -> publish\nwall (ms)",
        title="peftdml_node on a generated scene: every published frame",
    ).name}  # fmt: skip
    pairs = list(zip(scored.keyframes, scored.matches, strict=True))
    # A loaded machine may drop every LiDAR frame at a keyframe stamp (the node's hand-off keeps
    # the newest frame): then a keyframe scored with its nearest frame is drawn instead.
    own = [i for i, (k, m) in enumerate(pairs) if m == k.stamp_ns]
    own = own or [i for i, (_, m) in enumerate(pairs) if m is not None]
    pictures_reader = NuScenesReader(
        reader.dataroot, reader.version, None, nusc=reader.nusc, lidar_sweeps=1,
        camera_downscale=PICTURE_CAMERA_DOWNSCALE, gt_min_points=1,
    )  # fmt: skip
    index = _most_gt(pictures_reader, scored, own)
    if index is not None:
        keyframe = scored.keyframes[index]
        record = pictures_reader.record(keyframe.token)
        detections = scored.by_keyframe[keyframe.token]
        when = f"{(keyframe.stamp_ns - report.bag_start_ns) / NS_PER_S:.1f} s"
        pictures["bev"] = plot_bev(
            out / "bev.png", points_xy=record.frame.lidar[0].points[:, :2],
            ground_truth=record.ground_truth, detections=detections,
            title=f"{record.scene_name} @ {when}: {len(detections)} detections (color), "
            f"{len(record.ground_truth)} GT boxes (dashed)",
        ).name  # fmt: skip
        cameras = [c for c in record.frame.cameras if c.sensor == PICTURE_CAMERA]
        camera = cameras[0] if cameras else (record.frame.cameras or (None,))[0]
        if camera is not None:
            pictures["camera"] = plot_camera_boxes(
                out / "camera.png", image=camera.image, intrinsics=camera.intrinsics,
                camera_to_ego=camera.camera_to_ego, ground_truth=record.ground_truth,
                detections=detections,
                title=f"{record.scene_name} @ {when}, {camera.sensor}: detections (color), "
                "ground truth (dashed)",
            ).name  # fmt: skip
    if windows:
        window = windows[0]
        matched = {i: m for i, (k, m) in enumerate(pairs)
                   if m is not None and _in_window(k.stamp_ns, window, report)}  # fmt: skip
        index = _most_gt(pictures_reader, scored, list(matched))
        if index is not None:
            keyframe, stamp_ns = scored.keyframes[index], matched[index]
            frame = next(f for f in frames if f.stamp_ns == stamp_ns)
            record = pictures_reader.record(keyframe.token)
            detections = scored.by_keyframe[keyframe.token]
            offset_ms = (stamp_ns - keyframe.stamp_ns) / 1e6
            pictures["bev_dropout"] = plot_bev(
                out / "bev_dropout.png", points_xy=None, ground_truth=record.ground_truth,
                detections=detections,
                title=f"{window.topic} silenced, keyframe @ "
                f"{(keyframe.stamp_ns - report.bag_start_ns) / NS_PER_S:.1f} s: "
                f"{len(detections)} detections (color), {len(record.ground_truth)} GT boxes "
                f"(dashed)\nframe triggered by {frame.trigger} ({offset_ms:+.0f} ms), "
                f"modalities {frame.modalities}",
            ).name  # fmt: skip
    return pictures


def score_and_draw(
    report: SessionReport, dataroot: Path, out: Path, windows: Sequence[DropWindow]
) -> dict[str, Any]:
    """Score, draw, and return the content of metrics.json (pictures included)."""
    from peftdml_ros.data.nuscenes_reader import NuScenesReader
    from peftdml_ros.data.synth import VAL_SPLIT

    reader = NuScenesReader(dataroot, VERSION, VAL_SPLIT, lidar_sweeps=1, gt_min_points=1)
    scored = score(report, reader, out, windows)
    metrics = build_metrics(report, scored, windows)
    metrics["pictures"] = draw(report, reader, scored, windows, out)
    return metrics


def summary_lines(metrics: Mapping[str, Any], out: Path) -> list[str]:
    """The few lines printed at the end, from metrics.json's content."""
    latency = metrics["latency"]["receipt_to_publish_wall_ms"]
    node = metrics["latency"]["node_processing_wall_ms"]
    triggers = ", ".join(f"{n} {c}" for n, c in metrics["triggers"].items())
    run = metrics["run"]
    lines = [
        f"peftdml demo: done in {run.get('wall_s', math.nan):.0f} s wall (scene and bag "
        f"{run.get('scene_and_bag_wall_s', math.nan):.0f} s, node start-up and bag "
        f"{run.get('node_stage_wall_s', math.nan):.0f} s, scoring and pictures "
        f"{run.get('scoring_and_pictures_wall_s', math.nan):.0f} s)",
        f"  mAP {metrics['mAP']:.3f}  NDS {metrics['NDS']:.3f}  (official nuScenes "
        f"DetectionEval, {metrics['scoring']['keyframes']} keyframes)",
        f"  frames {metrics['frames']}, {metrics['frames_with_detections']} with detections "
        f"(triggered by {triggers})",
    ]
    for dropout in metrics["dropouts"]:
        scored = "" if dropout["mAP_during"] is None else f", mAP {dropout['mAP_during']:.3f}"
        lines.append(
            f"  {dropout['topic']} silenced {dropout['start_s']:g}-{dropout['end_s']:g} s: "
            f"{dropout['frames_during']} frames, {dropout['frames_with_detections_during']} "
            f"with detections{scored}"
        )
    lines.append(
        f"  latency receipt -> publish, wall: p50 {_ms(latency['p50'])}, p99 "
        f"{_ms(latency['p99'])} (demo process, monotonic clock; in the node "
        f"p50 {_ms(node['p50'])}, p99 {_ms(node['p99'])})"
    )
    names = [METRICS_NAME, *sorted(metrics.get("pictures", {}).values())]
    lines.append(f"  files: {out}/ {', '.join(names)}")
    return lines


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"
