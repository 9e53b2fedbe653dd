"""How many large point clouds cross from one process to another, with and without our Fast DDS
profile. Big sensor messages are where DDS set-ups fail first; this measures it on the machine at
hand instead of trusting a number from elsewhere.

Each case runs a publisher and a subscriber as two fresh processes: the publisher sends
`--messages` PointCloud2 messages of `--points` points (20 bytes each) at `--rate-hz` once the
subscriber is matched; the subscriber reports how many arrived intact.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.ros import dds_profile

TOPIC = "dds_bench/points"
# Fast DDS 3 (Kilted) and Fast DDS 2 (Humble, Jazzy) name the profile variable differently.
POINT_STEP_BYTES = 20  # x, y, z, intensity float32 + ring uint16, padded


@dataclass(frozen=True)
class DdsBenchResult:
    transport: str
    reliable: bool
    sent: int
    received: int
    message_mb: float


def _qos(reliable: bool):  # type: ignore[no-untyped-def]
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    # Depth 5 is what the node uses for sensor topics (sensor-data QoS).
    policy = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=5, reliability=policy)


def _cloud(points: int, index: int):  # type: ignore[no-untyped-def]
    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2()
    msg.header.frame_id = "lidar_top"
    msg.header.stamp.sec = index
    msg.height, msg.width = 1, points
    msg.fields = [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, name in enumerate(("x", "y", "z", "intensity"))
    ] + [PointField(name="ring", offset=16, datatype=PointField.UINT16, count=1)]
    msg.point_step = POINT_STEP_BYTES
    msg.row_step = POINT_STEP_BYTES * points
    payload = np.full(POINT_STEP_BYTES * points, index % 251, dtype=np.uint8)
    msg.data = payload.tobytes()
    return msg


def _run_subscriber(expected: int, reliable: bool, timeout_s: float) -> int:
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("dds_bench_subscriber")
    intact: set[int] = set()

    def on_cloud(msg: PointCloud2) -> None:
        index = msg.header.stamp.sec
        data = np.frombuffer(bytes(msg.data[:64]), dtype=np.uint8)
        if len(msg.data) == msg.row_step and bool(np.all(data == index % 251)):
            intact.add(index)

    node.create_subscription(PointCloud2, TOPIC, on_cloud, _qos(reliable))
    print("ready", flush=True)
    deadline_s = time.monotonic() + timeout_s
    while rclpy.ok() and time.monotonic() < deadline_s and len(intact) < expected:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(f"received {len(intact)}", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _run_publisher(messages: int, points: int, rate_hz: float, reliable: bool) -> int:
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("dds_bench_publisher")
    publisher = node.create_publisher(PointCloud2, TOPIC, _qos(reliable))
    match_deadline_s = time.monotonic() + 20.0
    while publisher.get_subscription_count() == 0 and time.monotonic() < match_deadline_s:
        time.sleep(0.05)
    time.sleep(0.5)  # let discovery settle in both directions
    cloud = _cloud(points, 0)
    period_s = 1.0 / rate_hz
    next_s = time.monotonic()
    for index in range(messages):
        cloud.header.stamp.sec = index
        cloud.data = bytes([index % 251]) * (POINT_STEP_BYTES * points)
        publisher.publish(cloud)
        next_s += period_s
        time.sleep(max(0.0, next_s - time.monotonic()))
    print(f"sent {messages}", flush=True)
    time.sleep(1.0)  # keep the writer alive while reliable repairs finish
    node.destroy_node()
    rclpy.shutdown()
    return 0


def run_once(
    *, messages: int, points: int, rate_hz: float, reliable: bool, profile: Path | None
) -> DdsBenchResult:
    """Publish `messages` clouds from one process to another; count what arrived intact.

    Both ends are fresh processes: Fast DDS reads its XML profile once per process, so a case
    run in a process that already made a participant would silently keep the earlier transports.
    """
    env = dict(os.environ)
    for name in (*dds_profile.PROFILE_VARIABLES, "FASTDDS_BUILTIN_TRANSPORTS"):
        env.pop(name, None)
    if profile is not None:
        if not profile.is_file():
            raise ConfigError(f"Fast DDS profile {profile} does not exist; give --profile FILE")
        # Only the variable this Fast DDS reads: given both, Fast DDS 3 loads the profile twice.
        env = dds_profile.apply(env, profile)
    timeout_s = messages / rate_hz + 40.0
    common = [
        sys.executable,
        "-m",
        "peftdml_ros.ros.dds_bench",
        "--messages",
        str(messages),
        "--points",
        str(points),
        "--rate-hz",
        str(rate_hz),
        "--timeout-s",
        str(timeout_s),
    ]
    common += ["--reliable"] if reliable else []  # fmt: skip
    subscriber = subprocess.Popen([*common, "--role", "subscriber"], env=env,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
    publisher = subprocess.Popen([*common, "--role", "publisher"], env=env,
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        publisher.communicate(timeout=timeout_s + 30.0)
        output, _ = subscriber.communicate(timeout=timeout_s + 30.0)
    finally:
        for child in (publisher, subscriber):
            if child.poll() is None:
                child.kill()
    received = int(output.strip().splitlines()[-1].split()[-1])
    return DdsBenchResult(
        transport="peftdml profile (SHM 64 MB + UDPv4)" if profile else "Fast DDS defaults",
        reliable=reliable,
        sent=messages,
        received=received,
        message_mb=POINT_STEP_BYTES * points / 1e6,
    )


def default_profile() -> Path:
    """The package's profile (source tree or installed share directory)."""
    from peftdml_ros.ros.params import config_dir

    return config_dir() / "fastdds_profile.xml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `peftdml bench dds`."""
    parser.add_argument("--messages", type=int, default=100, help="clouds sent per case")
    parser.add_argument("--points", type=int, default=300_000, help="points a cloud (20 B each)")
    parser.add_argument("--rate-hz", type=float, default=20.0, help="publish rate")
    parser.add_argument(
        "--profile",
        type=Path,
        default=default_profile(),
        help="Fast DDS XML profile to compare with the defaults",
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    """All four cases: {Fast DDS defaults, the profile} x {best effort, reliable}."""
    cases = []
    for profile in (None, args.profile):
        for reliable in (False, True):
            result = run_once(
                messages=args.messages,
                points=args.points,
                rate_hz=args.rate_hz,
                reliable=reliable,
                profile=profile,
            )
            cases.append(asdict(result))
    return {
        "points": args.points,
        "rate_hz": args.rate_hz,
        "message_mb": POINT_STEP_BYTES * args.points / 1e6,
        "cases": cases,
    }


def render(result: dict[str, object]) -> str:
    lines = [
        f"PointCloud2 between two processes: {result['points']} points "
        f"({result['message_mb']:.1f} MB) at {result['rate_hz']:g} Hz",
        "",
        f"{'transport':<38} {'QoS':<12} {'delivered':>10}",
    ]
    for case in result["cases"]:  # type: ignore[attr-defined]
        qos = "reliable" if case["reliable"] else "best effort"
        lines.append(f"{case['transport']:<38} {qos:<12} {case['received']:>4}/{case['sent']:<5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry of the two child processes of one case (the matrix is `peftdml bench dds`)."""
    parser = argparse.ArgumentParser(description="one end of a `peftdml bench dds` case")
    parser.add_argument("--role", choices=("publisher", "subscriber"), required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--points", type=int, required=True)
    parser.add_argument("--rate-hz", type=float, required=True)
    parser.add_argument("--reliable", action="store_true")
    parser.add_argument("--timeout-s", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role == "publisher":
        return _run_publisher(args.messages, args.points, args.rate_hz, args.reliable)
    return _run_subscriber(args.messages, args.reliable, args.timeout_s)


if __name__ == "__main__":
    sys.exit(main())
