"""`peftdml replay`: play a rosbag2 bag over ROS 2 (the venv's stand-in for `ros2 bag play`).

  peftdml replay BAG [--rate R] [--clock] [--loop] [--topics T ...] [--remap A:=B ...]
                     [--drop TOPIC@T0-T1 ...]

--drop silences a topic from T0 to T1 seconds after the bag's first message (a sensor dropout
rehearsal); --clock publishes /clock for consumers run with use_sim_time:=true.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from peftdml_ros.core.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftdml replay", description="Play a rosbag2 bag over ROS 2 with rclpy."
    )
    parser.add_argument("bag", help="rosbag2 bag directory (holds metadata.yaml)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed (1 = real time)")
    parser.add_argument("--clock", action="store_true", help="publish /clock (sim time)")
    parser.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these topics")
    parser.add_argument(
        "--remap", action="append", default=[], metavar="FROM:=TO", help="rename a topic"
    )
    parser.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="TOPIC@T0-T1",
        help="silence TOPIC from T0 to T1 s after the bag start (repeatable)",
    )
    parser.add_argument(
        "--delay", type=float, default=0.5, help="seconds to wait for discovery before playing"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from peftdml_ros.ros.replay import BagPlayer, DropWindow, ReplayOptions, parse_remap

    if args.delay < 0:
        raise ConfigError(f"--delay {args.delay} must be >= 0")
    options = ReplayOptions(
        rate=args.rate,
        clock=args.clock,
        loop=args.loop,
        topics=tuple(args.topics) if args.topics else None,
        remaps=dict(parse_remap(r) for r in args.remap),
        drops=tuple(DropWindow.parse(d) for d in args.drop),
    )
    rclpy.init()
    node = rclpy.create_node("peftdml_replay")
    player = None
    try:
        player = BagPlayer(args.bag, node, options)
        player.wait_for_subscribers(timeout_s=args.delay)
        summary = player.play()
        print(
            f"published {summary.total_published} messages in {summary.passes} pass(es), "
            f"{summary.wall_s:.1f} s; dropped {sum(summary.dropped.values())}"
        )
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C is a normal way to end a replay
    finally:
        if player is not None:
            player.stop()
            player.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
