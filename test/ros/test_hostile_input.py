"""Hostile input against a running peftdml_node (its own process, the shipped model) over DDS.

A probe publishes a small rig (LiDAR + front camera, wall-clock stamps) one frame at a time and
times each frame from the LiDAR's publication to its detections. First clean frames, then the
same frames with decompression bombs on the camera topic just before them (a 631-byte JPEG
claiming 65000x65000 pixels and a 1.2 MB PNG of 20000x20000: without the header checks each
would have the node allocate gigabytes and decode for seconds), plus an IMU message of 1e308, a
CameraInfo with fx = 1e300 and a /tf_static transform of 1e39 m. The node must refuse each one
under its reason in /diagnostics, keep publishing every frame within its normal latency (a generous
factor of the clean run's) and keep its peak memory (VmHWM) within 200 MB of the clean run's.

`-s` prints the measurements.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from hostile_images import jpeg_claiming, png_bomb
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Imu, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.ros import params
from peftdml_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from peftdml_ros.ros.outputs import diagnostic_values, pointcloud2_message

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
IMAGE_HW = (90, 160)
WARMUP_FRAMES = 2
FRAMES = 6  # per phase
FRAME_TIMEOUT_S = 60.0
MAX_RSS_GROWTH_MB = 200.0
# Bomb-phase median latency must stay below this factor of the clean phase's, plus a margin
# for a loaded machine; one bomb decode alone stalled the node for seconds.
LATENCY_FACTOR = 3.0
LATENCY_MARGIN_S = 1.0


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {key}")


class Probe:
    """Publishers of the rig and a record of what the node publishes (thread-safe)."""

    def __init__(self, context: Any) -> None:
        self.node = Node("hostile_probe", context=context)
        self.lock = threading.Lock()
        self.arrivals: dict[int, float] = {}  # detections stamp -> monotonic receipt time
        self.diagnostics: list[DiagnosticArray] = []
        node = self.node
        node.create_subscription(
            Detection3DArray, "/peftdml/detections", self._on_detections, RELIABLE
        )
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE)
        self.tf = node.create_publisher(TFMessage, "/tf_static", LATCHED)
        self.lidar = node.create_publisher(PointCloud2, "/lidar/points", RELIABLE)
        self.camera = node.create_publisher(
            CompressedImage, "/camera/front/image/compressed", RELIABLE
        )
        self.info = node.create_publisher(CameraInfo, "/camera/front/camera_info", RELIABLE)
        self.imu = node.create_publisher(Imu, "/imu/data", RELIABLE)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_detections(self, msg: Detection3DArray) -> None:
        with self.lock:
            self.arrivals[stamp_to_ns(msg.header.stamp)] = time.monotonic()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics.append(msg)

    def status(self, name: str) -> dict[str, str]:
        with self.lock:
            for array in reversed(self.diagnostics):
                for status in array.status:
                    if status.name == f"peftdml: {name}":
                        return diagnostic_values(status)
        return {}

    def now_ns(self) -> int:
        return int(self.node.get_clock().now().nanoseconds)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


def _transform(parent: str, child: str, xyz: tuple[float, float, float]) -> TransformStamped:
    msg = TransformStamped(child_frame_id=child)
    msg.header.frame_id = parent
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = xyz
    msg.transform.rotation.w = 1.0
    return msg


def _camera_info(fx: float = 100.0) -> CameraInfo:
    info = CameraInfo(header=Header(frame_id="cam_front"), height=IMAGE_HW[0], width=IMAGE_HW[1])
    info.k = [fx, 0.0, 80.0, 0.0, 100.0, 45.0, 0.0, 0.0, 1.0]
    return info


def _lidar(stamp_ns: int, n: int = 2000) -> PointCloud2:
    rng = np.random.default_rng(7)
    angle = rng.uniform(0, 2 * np.pi, n)
    distance = rng.uniform(3, 40, n)
    columns = {
        "x": (distance * np.cos(angle)).astype(np.float32),
        "y": (distance * np.sin(angle)).astype(np.float32),
        "z": rng.uniform(-1.5, 1.0, n).astype(np.float32),
        "intensity": rng.uniform(0, 50, n).astype(np.float32),
    }
    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id="lidar_top")
    return pointcloud2_message(core_pc.pack_points(columns), header)


def _image(stamp_ns: int, data: bytes, fmt: str) -> CompressedImage:
    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id="cam_front")
    return CompressedImage(header=header, format=fmt, data=data)


def _camera_jpeg() -> bytes:
    import cv2

    pixels = np.random.default_rng(3).integers(0, 255, (*IMAGE_HW, 3), dtype=np.uint8)
    return bytes(cv2.imencode(".jpg", pixels)[1].tobytes())


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """peftdml_node as `ros2 run` starts it, with the package's parameters file; reliable QoS
    (no message of the test may be lost) and a stamp-age limit that load cannot reach (the test
    measures stalls as latency, not as stale stamps)."""
    log = (tmp_path / "node.log").open("wb")
    overrides = [
        "qos.reliable:=true",
        "diagnostics_period_s:=0.2",
        "input.max_stamp_age_s:=20.0",
    ]
    command = [sys.executable, "-m", "peftdml_ros.ros.node", "--ros-args", "--params-file"]
    command.append(str(params.default_params_file()))
    for override in overrides:
        command += ["-p", override]
    process = subprocess.Popen(  # outside the source tree: `-m` imports the installed package
        command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        print((tmp_path / "node.log").read_text()[-3000:])


def _frame(
    probe: Probe, camera_jpeg: bytes, bombs: list[tuple[bytes, str]]
) -> tuple[int, float | None]:
    """Bombs (if any), a good image and a LiDAR sweep; the latency of its detections (s), or
    None when none came within FRAME_TIMEOUT_S."""
    stamp_ns = probe.now_ns()
    for data, fmt in bombs:
        probe.camera.publish(_image(stamp_ns - 2_000_000, data, fmt))
    probe.camera.publish(_image(stamp_ns - 1_000_000, camera_jpeg, "jpeg"))
    cloud = _lidar(stamp_ns)
    sent = time.monotonic()
    probe.lidar.publish(cloud)
    deadline = sent + FRAME_TIMEOUT_S
    while time.monotonic() < deadline:
        with probe.lock:
            received = probe.arrivals.get(stamp_ns)
        if received is not None:
            return stamp_ns, received - sent
        time.sleep(0.005)
    return stamp_ns, None


def test_decompression_bombs_neither_stall_nor_bloat_a_running_node(
    rclpy_context: Any, node_process: subprocess.Popen[bytes]
) -> None:
    probe = Probe(rclpy_context)
    try:
        _run(probe, node_process)
    finally:
        probe.close()


def _run(probe: Probe, process: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: bool(probe.status("pipeline")), 120.0, "the node's /diagnostics")
    for pub in (probe.lidar, probe.camera, probe.info, probe.imu):
        wait_for(lambda p=pub: p.get_subscription_count() > 0, 30.0, f"a subscriber on {pub}")
    probe.tf.publish(
        TFMessage(
            transforms=[
                _transform("base_link", "lidar_top", (0.9, 0.0, 1.8)),
                _transform("base_link", "cam_front", (1.7, 0.0, 1.5)),
            ]
        )
    )
    probe.info.publish(_camera_info())

    def rig_known() -> bool:
        missing = probe.status("pipeline").get("transforms_missing", "lidar_top").split(",")
        return "lidar_top" not in missing and "cam_front" not in missing

    wait_for(rig_known, 30.0, "/tf_static in the node")
    camera_jpeg = _camera_jpeg()
    # Until the node has taken the CameraInfo and matched our detections subscription, frames
    # may come without the camera or without detections: warm up until both are there.
    for _ in range(20):
        if _frame(probe, camera_jpeg, [])[1] is not None and _camera_accepted(probe):
            break
    else:
        raise AssertionError(f"no fused frame with detections: {probe.status('pipeline')}")
    for _ in range(WARMUP_FRAMES):
        _frame(probe, camera_jpeg, [])

    clean = [_frame(probe, camera_jpeg, [])[1] for _ in range(FRAMES)]
    hwm_clean_kb = _vm_kb(process.pid, "VmHWM")

    # Hostile messages of the other kinds, once: each refused, none reaching inference.
    stamp_ns = probe.now_ns()
    imu = Imu(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="base_link"))
    imu.linear_acceleration.x = 1e308
    imu.orientation.w = 1.0
    probe.imu.publish(imu)
    probe.info.publish(_camera_info(fx=1e300))
    bad_tf = TFMessage(
        transforms=[
            _transform("base_link", "lidar_top", (1e39, 0.0, 0.0)),
            _transform("base_link", "cam_front", (1.7, 0.0, 1.5)),
        ]
    )
    probe.tf.publish(bad_tf)

    bombs = [(jpeg_claiming(65000, 65000), "jpeg"), (png_bomb(20000, 20000), "png")]
    hostile = [_frame(probe, camera_jpeg, bombs)[1] for _ in range(FRAMES)]
    hwm_bomb_kb = _vm_kb(process.pid, "VmHWM")
    rss_kb = _vm_kb(process.pid, "VmRSS")

    expected_bombs = str(len(bombs) * FRAMES)

    def counted() -> bool:
        camera = probe.status("sensor CAM_FRONT")
        # the bad CameraInfo was refused and the good calibration kept: images still accepted
        accepted = int(camera.get("messages_accepted", "0"))
        return (
            camera.get("rejected.image_too_large") == expected_bombs
            and accepted >= WARMUP_FRAMES + 2 * FRAMES
            and camera.get("camera_info_rejected.non_finite") == "1"
            and probe.status("sensor IMU").get("rejected.non_finite") == "1"
            and probe.status("pipeline").get("tf_static_rejected.non_finite") == "1"
        )

    with_timeout = [t for t in clean + hostile if t is not None]
    clean_s = [t for t in clean if t is not None]
    hostile_s = [t for t in hostile if t is not None]
    growth_mb = (hwm_bomb_kb - hwm_clean_kb) / 1024
    print(
        f"\nclean frames: latency p50 {_p50(clean_s)} s, max {_max(clean_s)} s "
        f"({len(clean_s)}/{FRAMES} with detections)\n"
        f"bomb frames: latency p50 {_p50(hostile_s)} s, max {_max(hostile_s)} s "
        f"({len(hostile_s)}/{FRAMES} with detections; {len(bombs)} bombs before each)\n"
        f"node peak RSS (VmHWM): {hwm_clean_kb / 1024:.0f} MB after the clean frames, "
        f"{hwm_bomb_kb / 1024:.0f} MB after the bombs (+{growth_mb:.0f} MB); "
        f"RSS now {rss_kb / 1024:.0f} MB"
    )
    assert with_timeout and len(clean_s) == FRAMES, clean
    assert len(hostile_s) == FRAMES, f"frames without detections under bombs: {hostile}"
    assert growth_mb < MAX_RSS_GROWTH_MB
    clean_p50 = statistics.median(clean_s)
    assert statistics.median(hostile_s) < LATENCY_FACTOR * clean_p50 + LATENCY_MARGIN_S
    wait_for(counted, 20.0, "every refusal counted under its reason in /diagnostics")
    pipeline = probe.status("pipeline")
    assert pipeline["inference_errors"] == "0", pipeline
    assert probe.status("sensor LIDAR_TOP").get("messages_rejected") == "0"
    assert process.poll() is None  # still running


def _camera_accepted(probe: Probe) -> bool:
    time.sleep(0.3)  # one diagnostics period
    return probe.status("sensor CAM_FRONT").get("messages_accepted", "0") != "0"


def _p50(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "n/a"


def _max(values: list[float]) -> str:
    return f"{max(values):.3f}" if values else "n/a"
