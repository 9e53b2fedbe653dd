"""peftdml_node over real DDS: the node runs in-process with its own executor thread, a probe node
publishes sensor data (or a bag player replays a generated bag) and records what comes out.

Every test uses sim time: stamps come from the messages and /clock, so the CPU model can be
given as much wall time per frame as it needs (the bag is replayed at a reduced rate).
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import py_compile
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.types import Modality
from peftdml_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from peftdml_ros.ros.node import PeftdmlNode
from peftdml_ros.ros.outputs import diagnostic_values, pointcloud2_message

pytestmark = [pytest.mark.ros, pytest.mark.slow]

T0_NS = 1_600_000_000_000_000_000
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class Recorder:
    """What the probe received, guarded by a lock (the executor thread appends)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    detections: list[Detection3DArray] = field(default_factory=list)
    markers: list[MarkerArray] = field(default_factory=list)
    diagnostics: list[DiagnosticArray] = field(default_factory=list)
    frames: list[DiagnosticArray] = field(default_factory=list)

    def append(self, name: str, msg: Any) -> None:
        with self.lock:
            getattr(self, name).append(msg)

    def detection_stamps(self) -> list[int]:
        with self.lock:
            return [stamp_to_ns(m.header.stamp) for m in self.detections]

    def frame_table(self) -> dict[int, dict[str, str]]:
        """stamp -> the ~/frame_status values of that published frame."""
        with self.lock:
            return {
                stamp_to_ns(a.header.stamp): diagnostic_values(a.status[0]) for a in self.frames
            }

    def statuses(self, name: str) -> list[tuple[int, dict[str, str]]]:
        """[(diagnostics stamp = node clock, values)] of every /diagnostics status `name`."""
        with self.lock:
            return [
                (stamp_to_ns(array.header.stamp), diagnostic_values(status))
                for array in self.diagnostics
                for status in array.status
                if status.name == name
            ]

    def latest_status(self, name: str) -> dict[str, str]:
        with self.lock:
            for array in reversed(self.diagnostics):
                for status in array.status:
                    if status.name == name:
                        return diagnostic_values(status)
        return {}


class Harness:
    """PeftdmlNode + a probe node spun by one executor thread."""

    def __init__(
        self, context: Any, repo_root: Path, overrides: list[str], subscribe: bool = True
    ) -> None:
        args = ["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")]
        for override in ["use_sim_time:=true", "diagnostics_period_s:=0.2", *overrides]:
            args += ["-p", override]
        self.node = PeftdmlNode(context=context, cli_args=args)
        self.probe = Node("probe", context=context)
        self.record = Recorder()
        outputs = [
            ("/peftdml/detections", Detection3DArray, "detections"),
            ("/peftdml/markers", MarkerArray, "markers"),
            ("/peftdml/frame_status", DiagnosticArray, "frames"),
        ]
        for topic, msg_type, name in [
            *(outputs if subscribe else []),
            ("/diagnostics", DiagnosticArray, "diagnostics"),
        ]:
            self.probe.create_subscription(
                msg_type, topic, lambda msg, n=name: self.record.append(n, msg), RELIABLE
            )
        self.clock_pub = self.probe.create_publisher(Clock, "/clock", RELIABLE)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.probe.destroy_node()

    def set_clock(self, stamp_ns: int) -> None:
        self.clock_pub.publish(Clock(clock=ns_to_stamp(stamp_ns)))
        wait_for(
            lambda: self.node.get_clock().now().nanoseconds >= stamp_ns, 5.0, "the node's sim time"
        )

    def sensor_status(self, sensor: str) -> dict[str, str]:
        return self.record.latest_status(f"peftdml: sensor {sensor}")

    def pipeline_status(self) -> dict[str, str]:
        return self.record.latest_status("peftdml: pipeline")


@pytest.fixture
def harness_factory(rclpy_context: Any, repo_root: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(*overrides: str, subscribe: bool = True) -> Harness:
        harness = Harness(rclpy_context, repo_root, list(overrides), subscribe)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


# ------------------------------------------------------------------ hand-made sensor messages


def _transform(parent: str, child: str, xyz: tuple[float, float, float]) -> TransformStamped:
    msg = TransformStamped(child_frame_id=child)
    msg.header.frame_id = parent
    msg.header.stamp = ns_to_stamp(T0_NS)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = xyz
    msg.transform.rotation.w = 1.0
    return msg


def _cloud(stamp_ns: int, frame: str, columns: dict[str, npt.NDArray[Any]]) -> PointCloud2:
    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame)
    return pointcloud2_message(core_pc.pack_points(columns), header)


def _lidar(stamp_ns: int, n: int = 2000) -> PointCloud2:
    rng = np.random.default_rng(stamp_ns % 1000)
    angle = rng.uniform(0, 2 * math.pi, n)
    distance = rng.uniform(3, 40, n)
    return _cloud(
        stamp_ns,
        "lidar_top",
        {
            "x": (distance * np.cos(angle)).astype(np.float32),
            "y": (distance * np.sin(angle)).astype(np.float32),
            "z": rng.uniform(-1.5, 1.0, n).astype(np.float32),
            "intensity": rng.uniform(0, 50, n).astype(np.float32),
        },
    )


def _radar(stamp_ns: int, n: int = 20) -> PointCloud2:
    rng = np.random.default_rng(1)
    return _cloud(
        stamp_ns,
        "radar_front",
        {
            name: rng.uniform(0, 30, n).astype(np.float32)
            for name in ("x", "y", "z", "rcs", "vx_comp", "vy_comp")
        },
    )


def _jpeg(stamp_ns: int, fmt: str = "jpeg", cut: int = 0) -> CompressedImage:
    pixels = np.random.default_rng(2).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", pixels)[1].tobytes()
    data = data[: len(data) - cut] if cut else data
    return CompressedImage(
        header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="cam_front"), format=fmt, data=data
    )


def _malformed_lidar(kind: str, stamp_ns: int) -> PointCloud2:
    msg = _lidar(stamp_ns, n=100)
    if kind == "point_step":
        msg.point_step = 8
    elif kind == "data_length":
        msg.data = bytes(msg.data)[:-5]
    elif kind == "unknown_datatype":
        msg.fields[3].datatype = 13
    elif kind == "missing_field":
        msg.fields = msg.fields[1:]  # no x
    elif kind == "non_finite":
        columns = {k: np.full(10, np.nan, np.float32) for k in ("x", "y", "z", "intensity")}
        msg = _cloud(stamp_ns, "lidar_top", columns)
    elif kind == "empty_cloud":
        msg.width, msg.row_step, msg.data = 0, 0, b""
    elif kind == "cloud_too_large":
        msg.width, msg.row_step, msg.data = 5_000_000, 5_000_000 * msg.point_step, b""
    elif kind == "frame_mismatch":
        msg.header.frame_id = "radar_front"
    return msg


def _has_subscriber(publisher: Any) -> bool:
    return bool(publisher.get_subscription_count() > 0)


def _front_rig(h: Harness) -> tuple[Any, Any, Any]:
    """Publishers of the LiDAR, the front radar and the front camera, with their /tf_static and
    CameraInfo delivered; returns (lidar, radar, camera) publishers."""
    probe = h.probe
    tf_pub = probe.create_publisher(TFMessage, "/tf_static", LATCHED)
    lidar_pub = probe.create_publisher(PointCloud2, "/lidar/points", RELIABLE)
    radar_pub = probe.create_publisher(PointCloud2, "/radar/front/points", RELIABLE)
    cam_pub = probe.create_publisher(CompressedImage, "/camera/front/image/compressed", RELIABLE)
    info_pub = probe.create_publisher(CameraInfo, "/camera/front/camera_info", RELIABLE)
    for pub in (lidar_pub, radar_pub, cam_pub, info_pub):
        wait_for(partial(_has_subscriber, pub), 10.0, f"a subscriber on {pub.topic}")
    wait_for(lambda: bool(h.record.diagnostics), 10.0, "/diagnostics")
    assert h.pipeline_status()["transforms_missing"]  # nothing received yet: reported

    tf_pub.publish(
        TFMessage(
            transforms=[
                _transform("base_link", "lidar_top", (0.9, 0.0, 1.8)),
                _transform("base_link", "radar_front", (3.4, 0.0, 0.5)),
                _transform("base_link", "cam_front", (1.7, 0.0, 1.5)),
            ]
        )
    )
    info = CameraInfo(header=Header(frame_id="cam_front"), width=160, height=90)
    info.k = [100.0, 0.0, 80.0, 0.0, 100.0, 45.0, 0.0, 0.0, 1.0]
    info_pub.publish(info)
    wait_for(lambda: h.node._tf.can_transform("base_link", "cam_front"), 10.0, "/tf_static")
    wait_for(lambda: "CAM_FRONT" in h.node._calibrations, 10.0, "CameraInfo")

    return lidar_pub, radar_pub, cam_pub


def test_malformed_messages_are_survived_and_counted(harness_factory: Any) -> None:
    # a deep queue: the burst of bad messages below must not be thinned out by the history depth
    h = harness_factory("input.max_points:=1000000", "qos.depth:=50")
    lidar_pub, radar_pub, cam_pub = _front_rig(h)
    step_ns = 100_000_000
    h.set_clock(T0_NS)
    lidar_pub.publish(_lidar(T0_NS))
    wait_for(lambda: T0_NS in h.record.detection_stamps(), 60.0, "the first detections")

    stamp = T0_NS + step_ns
    h.set_clock(stamp)
    lidar_kinds = [
        "point_step", "data_length", "unknown_datatype", "missing_field", "non_finite",
        "empty_cloud", "cloud_too_large", "frame_mismatch",
    ]  # fmt: skip
    for i, kind in enumerate(lidar_kinds):
        lidar_pub.publish(_malformed_lidar(kind, stamp + i))
    lidar_pub.publish(_lidar(stamp - 10 * 1_000_000_000))  # stale
    lidar_pub.publish(_lidar(stamp + 10 * 1_000_000_000))  # from the future
    bad_radar = _radar(stamp)
    bad_radar.row_step = 1  # smaller than width x point_step
    radar_pub.publish(bad_radar)
    cam_pub.publish(_jpeg(stamp, cut=300))  # truncated JPEG
    cam_pub.publish(_jpeg(stamp + 1, fmt="tiff"))  # a format the decoder does not handle

    expected_lidar = {*lidar_kinds, "stale_stamp", "future_stamp"}
    expected = {
        "LIDAR_TOP": expected_lidar,
        "RADAR_FRONT": {"row_step"},
        "CAM_FRONT": {"corrupt_image", "unsupported_encoding"},
    }

    def counted() -> bool:
        return all(
            all(h.sensor_status(s).get(f"rejected.{r}") == "1" for r in reasons)
            for s, reasons in expected.items()
        )

    wait_for(counted, 20.0, "every rejection in /diagnostics")
    assert h.sensor_status("LIDAR_TOP")["messages_rejected"] == str(len(expected_lidar))

    # still alive: a good LiDAR + radar + camera frame after all that gets detections, fused
    stamp += step_ns
    h.set_clock(stamp)
    radar_pub.publish(_radar(stamp))
    cam_pub.publish(_jpeg(stamp))

    def accepted(sensor: str) -> int:
        return next(int(s.accepted) for s in h.node.health_snapshot()[0] if s.name == sensor)

    # a sensor never heard is not waited for, so let radar and camera arrive before the trigger
    wait_for(lambda: accepted("RADAR_FRONT") == accepted("CAM_FRONT") == 1, 10.0, "radar+cam")
    lidar_pub.publish(_lidar(stamp))
    wait_for(lambda: stamp in h.record.detection_stamps(), 60.0, "detections after bad input")
    wait_for(
        lambda: "RADAR_FRONT" in h.pipeline_status().get("last_sensors_present", ""),
        10.0,
        "the fused frame in diagnostics",
    )
    status = h.pipeline_status()
    assert set(status["last_modalities"].split(",")) == {"lidar", "radar", "camera"}
    assert "CAM_FRONT" in status["last_sensors_present"]
    assert h.sensor_status("LIDAR_TOP")["messages_accepted"] == "2"
    # The frame's normality score as a percentile of the shipped model's clean calibration.
    normality = h.record.latest_status("peftdml: normality")
    assert "clean keyframes" in normality["calibration"]
    assert 0.0 <= float(normality["normality_percentile"]) <= 100.0
    assert normality["level"] in ("OK", "WARN", "ERROR")
    assert normality["warn_percentile"] == "1.00" and normality["error_percentile"] == "0.10"
    with h.record.lock:
        last = h.record.detections[-1]
    assert last.header.frame_id == "base_link"


def test_parameters_change_at_run_time(harness_factory: Any) -> None:
    h = harness_factory()
    results = h.node.set_parameters(
        [
            Parameter("detector.score_threshold", value=0.6),
            Parameter("detector.nms_iou_threshold", value=0.3),
            Parameter("detector.max_detections", value=7),
            Parameter("sync.slop_s.camera", value=0.02),
            Parameter("sync.deadline_s", value=0.25),
        ]
    )
    assert all(r.successful for r in results), results
    assert h.node._detector.thresholds == (0.6, 0.3, 7)
    sync_config = h.node._sync.config
    assert sync_config.deadline_ns == 250_000_000
    assert sync_config.slop_for(Modality.CAMERA) == 20_000_000
    refused = h.node.set_parameters([Parameter("detector.score_threshold", value=1.0)])
    assert not refused[0].successful and "1.0" in refused[0].reason
    assert h.node._detector.thresholds[0] == 0.6
    # Health thresholds change at run time; ERROR must stay the rarer level.
    assert h.node.set_parameters([Parameter("health_warn_percentile", value=5.0)])[0].successful
    assert h.node._config.health_warn_percentile == 5.0
    refused = h.node.set_parameters([Parameter("health_error_percentile", value=50.0)])
    assert not refused[0].successful and "health_error_percentile" in refused[0].reason


# ------------------------------------------------------------------------------ bag replay


def _bag_stamps(bag: Path) -> dict[str, list[int]]:
    """topic -> log times (the writer stamps headers with the same sensor time)."""
    from rosbags.rosbag2 import Reader

    out: dict[str, list[int]] = {}
    with Reader(bag) as reader:
        for conn, stamp_ns, _ in reader.messages():
            out.setdefault(conn.topic, []).append(stamp_ns)
    return out


RADAR_NAMES = ("front", "front_left", "front_right", "back_left", "back_right")
CAMERA_NAMES = ("front", "front_right", "front_left", "back", "back_left", "back_right")
RADARS = [f"/radar/{n}/points" for n in RADAR_NAMES]
CAMERAS = [f"/camera/{n}/image/compressed" for n in CAMERA_NAMES]
SENSOR_TOPICS = ["/lidar/points", *RADARS, *CAMERAS, "/imu/data", "/gnss/fix"]
# Slow enough that the CPU model (about 0.2-0.7 s a frame here) keeps up with 20 Hz LiDAR.
REPLAY_RATE = float(os.environ.get("PEFTDML_TEST_REPLAY_RATE", "0.08"))


@dataclass
class Replay:
    """One replay of the bag into a running node, and what came out."""

    stamps: dict[str, list[int]]  # bag topic -> message stamps
    start_ns: int
    summary: Any

    def rel(self, stamp_ns: int) -> float:
        return (stamp_ns - self.start_ns) / 1e9


def _replay(h: Harness, bag: Path, drops: list[Any], loops: int = 1) -> Replay:
    from peftdml_ros.ros.replay import BagPlayer, ReplayOptions

    stamps = _bag_stamps(bag)
    start_ns = min(min(v) for v in stamps.values())
    player_node = Node("player", context=h.node.context)
    player = BagPlayer(
        bag,
        player_node,
        ReplayOptions(rate=REPLAY_RATE, clock=True, drops=tuple(drops), loops=loops),
    )
    try:
        assert player.wait_for_subscribers(SENSOR_TOPICS, timeout_s=10.0)
        summary = player.play()
    finally:
        player.close()
        player_node.destroy_node()
    # Let the executor take in the tail of the bag, then let sim time pass (it stops with the
    # bag) so that the last frame, waiting for its deadline in sim time, goes out.
    sent = sum(n for topic, n in summary.published.items() if topic in SENSOR_TOPICS)

    def received() -> int:
        return sum(s.received for s in h.node.health_snapshot()[0])

    with contextlib.suppress(AssertionError):  # best effort may lose a message: never mind
        wait_for(lambda: received() >= sent, 5.0, "the tail of the bag")
    # /clock stops with the bag, as with `ros2 bag play`: a last frame still waiting for a
    # sensor goes out at its steady-clock deadline (sync.steady_deadline_s). Sim time is not
    # pushed past the bag: the LiDAR would then look silent to messages still being taken in,
    # and a camera could trigger a frame after the last sweep, racing the collection below.
    last_lidar = stamps["/lidar/points"][-1]
    wait_for(
        # Its frame status too: the node publishes it just after the detections.
        lambda: (
            h.record.detection_stamps().count(last_lidar) == loops
            and last_lidar in h.record.frame_table()
        ),
        30.0,
        "the last frame",
    )
    # Detections and frame status travel on two topics, ordered within each topic only: wait
    # for the status of every array received (a status never published still fails here).
    wait_for(
        lambda: set(h.record.detection_stamps()) <= set(h.record.frame_table()),
        10.0,
        "the frame status of every detection array",
    )
    return Replay(stamps, start_ns, summary)


def test_replay_gives_one_array_per_lidar_frame_and_loops(
    harness_factory: Any, synth_bag: Path
) -> None:
    # A zero threshold makes the model publish boxes on every frame, so that detections,
    # properties and markers always carry content.
    h = harness_factory("detector.score_threshold:=0.0", "detector.max_detections:=20")
    replay = _replay(h, synth_bag, drops=[], loops=2)
    lidar = replay.stamps["/lidar/points"]
    assert replay.summary.passes == 2 and replay.summary.published["/lidar/points"] == 2 * len(
        lidar
    )
    out = h.record.detection_stamps()
    # the loop jumps back in time once; each pass covers (almost) every LiDAR frame
    jumps = [i for i in range(1, len(out)) if out[i] < out[i - 1]]
    assert len(jumps) == 1, [replay.rel(s) for s in out]
    passes = (set(out[: jumps[0]]), set(out[jumps[0] :]))
    got = [sum(1 for s in lidar if s in stamps) for stamps in passes]
    _, pipeline = h.node.health_snapshot()
    print(f"LiDAR frames per pass {len(lidar)}, with detections {got}; {pipeline}")
    assert sum(got) >= 0.95 * 2 * len(lidar), pipeline
    foreign = [replay.rel(s) for s in out if s not in lidar]
    assert not foreign, f"arrays not stamped by a LiDAR sweep at {foreign}"
    assert pipeline.frames_published == len(out), pipeline
    assert pipeline.latency_p50_ms is not None and pipeline.processing_p99_ms is not None
    # frames carry every modality the rig has
    frames = h.record.frame_table()
    full = [s for s in frames if frames[s]["modalities"] == "lidar,radar,camera,imu,gnss"]
    assert len(full) >= 0.6 * len(frames), (len(full), len(frames))  # cameras: 12 Hz
    # boxes, and markers that clear the previous frame's first
    with h.record.lock:
        arrays = {stamp_to_ns(a.header.stamp): a for a in h.record.detections}
        marker_arrays = list(h.record.markers)
    assert all(len(a.detections) == 20 for a in arrays.values()), [
        len(a.detections) for a in arrays.values()
    ]
    assert marker_arrays
    for markers in marker_arrays:
        assert markers.markers[0].action == Marker.DELETEALL
        stamp = stamp_to_ns(markers.markers[0].header.stamp)
        count = {ns: sum(m.ns == ns for m in markers.markers) for ns in ("boxes", "labels")}
        arrows = sum(m.ns == "velocity" for m in markers.markers)
        n = len(arrays[stamp].detections)
        # a box and a label per detection; an arrow only for the moving ones
        assert count == {"boxes": n, "labels": n} and arrows <= n
        assert len(markers.markers) == 1 + 2 * n + arrows


# bag-relative drop windows (s): radars, then cameras, then the LiDAR go silent for a while
RADAR_DROP = (0.2, 0.9)
CAMERA_DROP = (0.5, 1.2)
LIDAR_DROP = (1.2, 1.75)


def test_sensor_dropouts_keep_detections_flowing(harness_factory: Any, synth_bag: Path) -> None:
    from peftdml_ros.ros.replay import DropWindow

    h = harness_factory("sync.sensor_timeout_s:=0.25", "sync.reference_timeout_s:=0.15")
    drops = [DropWindow(t, *RADAR_DROP) for t in RADARS]
    drops += [DropWindow(t, *CAMERA_DROP) for t in CAMERAS]
    drops.append(DropWindow("/lidar/points", *LIDAR_DROP))
    replay = _replay(h, synth_bag, drops)
    rel, lidar = replay.rel, replay.stamps["/lidar/points"]
    frames = h.record.frame_table()
    assert set(h.record.detection_stamps()) <= set(frames)  # each array has its frame status

    def modalities(stamp_ns: int) -> set[str]:
        return set(frames[stamp_ns]["modalities"].split(","))

    def window(lo: float, hi: float) -> list[int]:
        return sorted(s for s in frames if lo <= rel(s) <= hi)

    # radars silent: frames well inside the window have no radar; back afterwards
    assert window(0.3, 0.85) and all("radar" not in modalities(s) for s in window(0.3, 0.85))
    assert any("radar" in modalities(s) for s in window(0.95, 1.2))
    # cameras silent, then back
    assert window(0.6, 1.15) and all("camera" not in modalities(s) for s in window(0.6, 1.15))
    assert any("camera" in modalities(s) for s in window(1.25, 2.1))
    # LiDAR silent: camera/radar-triggered frames keep coming, without LiDAR in the mask
    fallback = window(LIDAR_DROP[0] + 0.2, LIDAR_DROP[1] - 0.01)
    assert len(fallback) >= 2
    for s in fallback:
        assert frames[s]["trigger"] != "LIDAR_TOP" and "lidar" not in modalities(s), frames[s]
        assert frames[s]["sensor.LIDAR_TOP"] == "false"
        assert s not in lidar
    # ... and the LiDAR triggers again when it is back
    back = window(LIDAR_DROP[1] + 0.05, 2.1)
    assert back and all(frames[s]["trigger"] == "LIDAR_TOP" for s in back)

    # /diagnostics showed each dropout while it happened (diagnostics carry node-clock stamps)
    def reported(sensor: str, lo: float, hi: float, present: str) -> bool:
        statuses = h.record.statuses(f"peftdml: sensor {sensor}")
        return any(lo <= rel(t) <= hi and v["present"] == present for t, v in statuses)

    assert reported("RADAR_FRONT", RADAR_DROP[0] + 0.3, RADAR_DROP[1], "false")
    assert reported("RADAR_FRONT", RADAR_DROP[1] + 0.1, CAMERA_DROP[1], "true")
    assert reported("CAM_FRONT", CAMERA_DROP[0] + 0.3, CAMERA_DROP[1], "false")
    assert reported("LIDAR_TOP", LIDAR_DROP[0] + 0.3, LIDAR_DROP[1], "false")
    assert reported("LIDAR_TOP", LIDAR_DROP[1] + 0.1, 2.1, "true")
    assert not reported("LIDAR_TOP", 0.1, LIDAR_DROP[0], "false")


def test_inference_is_skipped_while_nobody_listens(harness_factory: Any) -> None:
    h = harness_factory(subscribe=False)
    lidar_pub, _, _ = _front_rig(h)
    for i in range(3):
        stamp = T0_NS + i * 50_000_000
        h.set_clock(stamp)
        lidar_pub.publish(_lidar(stamp))
    h.set_clock(T0_NS + 1_000_000_000)  # past every deadline
    wait_for(lambda: h.node.health_snapshot()[1].frames_skipped == 3, 10.0, "3 skipped frames")
    assert h.node.health_snapshot()[1].frames_published == 0


# ------------------------------------------------------------------ console script and launch


def test_console_script_needs_the_parameters_file(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peftdml_ros.ros.node"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--params-file" in result.stderr and "sync.deadline_s" in result.stderr


def test_console_script_runs_and_ctrl_c_is_a_normal_exit(repo_root: Path) -> None:
    params_file = repo_root / "config" / "peftdml.yaml"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peftdml_ros.ros.node",
            "--ros-args",
            "--params-file",
            str(params_file),
        ],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "peftdml_node ready" in line:
                break
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        lines.append(rest)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines)
    assert "Traceback" not in "".join(lines)


def test_launch_file_compiles_and_names_its_arguments(repo_root: Path) -> None:
    path = repo_root / "launch" / "peftdml.launch.py"
    py_compile.compile(str(path), doraise=True)  # launch/launch_ros are not in the venv
    tree = ast.parse(path.read_text())
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "DeclareLaunchArgument"
        and isinstance(node.args[0], ast.Constant)
    }
    assert declared == {
        "params_file",
        "namespace",
        "use_sim_time",
        "backend",
        "model_path",
        "rviz",
        "managed",
        "autostart",
    }
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    for name in ("peftdml.yaml", "fastdds_profile.xml", "peftdml.rviz"):
        assert name in strings and (repo_root / "config" / name).is_file()
    assert "peftdml_node" in strings  # the Fast DDS variables: test_launch_and_signals.py


# ------------------------------------------------------------------------ pieces of the node


def _synced(stamp_ns: int, items: dict[str, Any]) -> Any:
    from peftdml_ros.core.sync import SyncedFrame

    return SyncedFrame(
        stamp_ns=stamp_ns,
        trigger_sensor="LIDAR_TOP",
        items=items,
        stamps_ns={name: item.value.stamp_ns for name, item in items.items()},
        imu=[],
        gnss=None,
        sensor_present={name: True for name in items},
        modality_present={m: m in (Modality.LIDAR, Modality.RADAR) for m in Modality},
        trigger_arrival_ns=0,
        emitted_ns=0,
        waited_to_deadline=False,
    )


def test_frame_slot_keeps_only_the_newest_frame() -> None:
    from peftdml_ros.ros.node import FrameSlot

    slot = FrameSlot()
    frames = [_synced(i, {}) for i in range(3)]
    for frame in frames:
        slot.put(frame)
    assert slot.take(timeout_s=0.0) is frames[2] and slot.dropped == 2
    assert slot.take(timeout_s=0.0) is None
    slot.close()
    assert slot.closed and slot.take(timeout_s=1.0) is None


def test_build_frame_groups_by_modality_and_fills_dt(repo_root: Path, rclpy_context: Any) -> None:
    from peftdml_ros.core.types import LIDAR_POINT_FIELDS, RADAR_POINT_FIELDS, PointCloud
    from peftdml_ros.ros import params
    from peftdml_ros.ros.node import Received, build_frame

    node = Node(
        "peftdml",
        context=rclpy_context,
        cli_args=["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")],
    )
    config = params.declare_parameters(node)
    node.destroy_node()
    lidar = PointCloud("LIDAR_TOP", T0_NS, np.zeros((4, 5), np.float32), LIDAR_POINT_FIELDS)
    radar = PointCloud(
        "RADAR_FRONT", T0_NS - 30_000_000, np.zeros((2, 7), np.float32), RADAR_POINT_FIELDS
    )
    items = {"LIDAR_TOP": Received(lidar, 0), "RADAR_FRONT": Received(radar, 0)}
    frame = build_frame(_synced(T0_NS, items), config)
    assert frame.lidar == (lidar,) and frame.cameras == ()
    assert [(c.sensor, c.stamp_ns) for c in frame.radar] == [("RADAR_FRONT", radar.stamp_ns)]
    np.testing.assert_allclose(frame.radar[0].points[:, -1], 0.03)  # dt_s = frame - sweep
    # A contributor may serve later frames too (frame rule reuse): its payload stays untouched.
    assert (radar.points[:, -1] == 0).all()
    assert frame.modality_mask().tolist() == [True, True, False, False, False]
