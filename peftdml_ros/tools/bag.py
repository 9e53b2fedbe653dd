"""`peftdml bag`: nuScenes (real or generated) -> rosbag2 directory with MCAP storage.

  peftdml bag DATAROOT --version v1.0-mini --out nusc_mini_bag [--scenes scene-0061 ...]

Every sweep of the chosen scenes becomes a message stamped with its sensor time; the result
plays with `ros2 bag play nusc_mini_bag` and `peftdml replay nusc_mini_bag`. The topic table is
in docs/bag_replay.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from peftdml_ros.data.bag_writer import write_bag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftdml bag",
        description="Convert a nuScenes dataset (every sweep) into a rosbag2 MCAP bag.",
    )
    parser.add_argument("dataroot", help="nuScenes root (holds samples/, sweeps/, <version>/)")
    parser.add_argument(
        "--version", default="v1.0-mini", help="table folder, e.g. v1.0-mini (default)"
    )
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument(
        "--scenes", nargs="+", metavar="SCENE", help="scene names to convert (default: all)"
    )
    parser.add_argument(
        "--no-can-bus",
        action="store_true",
        help="write no /imu/data (for a download without the CAN bus expansion)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = write_bag(
        args.dataroot,
        args.version,
        args.out,
        scenes=args.scenes,
        can_bus=not args.no_can_bus,
        progress=not args.quiet,
    )
    for topic, count in summary.topics.items():
        print(f"  {topic:<40} {count:>7}")
    print(summary.line())
    return 0
