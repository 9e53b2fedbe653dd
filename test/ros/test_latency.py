"""Where a frame's time goes: FrameLatency arithmetic, the ~/latency message, the stage keys of
/diagnostics, and the node publishing them over real DDS (sim time, a stub detector whose
timings are known)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.detector import DetectionResult
from peftdml_ros.core.types import Detections
from peftdml_ros.ros import outputs
from peftdml_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from peftdml_ros.ros.node import PeftdmlNode

pytestmark = pytest.mark.ros

T0_NS = 1_600_000_000_000_000_000
MS = 1_000_000
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
STAGE_KEYS = {f"{stage}_ms" for stage in outputs.LATENCY_STAGES}


# ------------------------------------------------------------------------------- pure functions


def _clock(**overrides: int) -> outputs.FrameClock:
    instants = {
        "received_ns": 1_000 * MS,
        "converted_ns": 1_004 * MS,
        "released_ns": 1_054 * MS,
        "taken_ns": 1_060 * MS,
        "built_ns": 1_061 * MS,
        "detected_ns": 1_101 * MS,
        "published_ns": 1_109 * MS,
    }
    instants.update(overrides)
    return outputs.FrameClock(**instants)


def test_frame_latency_splits_the_steady_time_and_takes_latency_from_the_node_clock() -> None:
    timings = {"preprocess_ms": 12.0, "inference_ms": 25.0, "decode_ms": 3.0, "total_ms": 40.0}
    latency = outputs.frame_latency(_clock(), timings, now_ns=T0_NS + 250 * MS, stamp_ns=T0_NS)
    assert latency.stages_ms == {
        "conversion": 4.0,
        "sync_wait": 50.0,
        "queue": 6.0,
        "preprocess": 13.0,  # build_frame 1 ms + the detector's 12 ms
        "inference": 25.0,
        "decode": 3.0,
        "publish": 8.0,
    }
    assert tuple(latency.stages_ms) == outputs.LATENCY_STAGES  # pipeline order
    assert latency.processing_ms == 109.0 == sum(latency.stages_ms.values())
    assert latency.latency_ms == 250.0  # node clock (sim time in replay), not steady


def test_latency_message_is_one_readable_status_with_the_frame_header() -> None:
    latency = outputs.frame_latency(_clock(), {"inference_ms": 25.0}, T0_NS + 90 * MS, T0_NS)
    header = Header(stamp=ns_to_stamp(T0_NS), frame_id="base_link")
    array = outputs.latency_message(header, latency, "LIDAR_TOP", "/front/peftdml")
    assert stamp_to_ns(array.header.stamp) == T0_NS and array.header.frame_id == "base_link"
    (status,) = array.status
    assert status.name == "front/peftdml: latency"
    values = outputs.diagnostic_values(status)
    assert set(values) == STAGE_KEYS | {"processing_ms", "latency_ms", "trigger"}
    assert values["inference_ms"] == "25.000" and values["sync_wait_ms"] == "50.000"
    assert values["latency_ms"] == "90.000" and values["trigger"] == "LIDAR_TOP"


def test_stage_windows_give_percentiles_per_stage() -> None:
    windows = outputs.StageWindows(size=3)
    assert windows.percentiles(50)["inference"] is None
    for inference_ms in (10.0, 20.0, 30.0, 40.0):  # the first one leaves the window
        windows.add(outputs.frame_latency(_clock(), {"inference_ms": inference_ms}, 5, 0))
    p50, p99 = windows.percentiles(50), windows.percentiles(99)
    assert p50["inference"] == 30.0 and p99["inference"] == pytest.approx(39.8)
    assert p50["queue"] == 6.0 and p50["processing"] == 109.0 and p50["latency"] == 5e-6


def test_pipeline_status_carries_every_stage_p50_and_p99() -> None:
    health = outputs.PipelineHealth(backend="torch", model="m.pt")
    health.stage_p50_ms = {"inference": 25.04, "queue": None}
    values = outputs.diagnostic_values(outputs.pipeline_status(health, "/peftdml"))
    for stage in outputs.LATENCY_STAGES:
        assert f"stage.{stage}_p50_ms" in values and f"stage.{stage}_p99_ms" in values
    assert values["stage.inference_p50_ms"] == "25.0"
    assert values["stage.queue_p50_ms"] == "n/a" and values["stage.decode_p99_ms"] == "n/a"


# ----------------------------------------------------------------------- the node over real DDS

DETECTOR_TIMINGS_MS = {"preprocess_ms": 1.5, "inference_ms": 20.0, "decode_ms": 2.5}
DETECT_SLEEP_S = 0.03  # at least the reported 24 ms: the stub never reports more than it takes
RADAR_DELAY_S = 0.4  # wall time the trigger's frame waits for the radar


class StubDetector:
    """Returns no boxes after DETECT_SLEEP_S and reports DETECTOR_TIMINGS_MS."""

    backend = None
    training_data = None

    def detect(self, frame: Any) -> DetectionResult:
        time.sleep(DETECT_SLEEP_S)
        timings = {**DETECTOR_TIMINGS_MS, "total_ms": sum(DETECTOR_TIMINGS_MS.values())}
        return DetectionResult(Detections.empty(), 0.0, timings)

    def update_thresholds(self, **_: Any) -> None:
        pass


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Probe:
    """The node under test and a probe node (publishers, recorders) on one executor thread."""

    def __init__(self, context: Any, repo_root: Path) -> None:
        args = ["--ros-args", "--params-file", str(repo_root / "config" / "peftdml.yaml")]
        # A steady-clock deadline far away: the frame below is held until its radar arrives.
        overrides = (
            "use_sim_time:=true",
            "diagnostics_period_s:=0.2",
            "sync.steady_deadline_s:=30.0",
        )
        for override in overrides:
            args += ["-p", override]
        self.node = PeftdmlNode(
            context=context, cli_args=args, detector_factory=lambda config: StubDetector()
        )
        self.probe = Node("latency_probe", context=context)
        self.lock = threading.Lock()
        self.latency: list[DiagnosticArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.detections: list[Detection3DArray] = []
        for topic, msg_type, store in (
            ("/peftdml/latency", DiagnosticArray, self.latency),
            ("/diagnostics", DiagnosticArray, self.diagnostics),
            ("/peftdml/detections", Detection3DArray, self.detections),
        ):
            self.probe.create_subscription(msg_type, topic, partial(self._append, store), RELIABLE)
        self.clock = self.probe.create_publisher(Clock, "/clock", RELIABLE)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _append(self, store: list[Any], msg: Any) -> None:
        with self.lock:
            store.append(msg)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.probe.destroy_node()

    def set_clock(self, stamp_ns: int) -> None:
        self.clock.publish(Clock(clock=ns_to_stamp(stamp_ns)))
        wait_for(lambda: self.node.get_clock().now().nanoseconds >= stamp_ns, 10.0, "sim time")

    def pipeline_values(self) -> dict[str, str]:
        with self.lock:
            for array in reversed(self.diagnostics):
                for status in array.status:
                    if status.name == "peftdml: pipeline":
                        return outputs.diagnostic_values(status)
        return {}


@pytest.fixture
def probe(rclpy_context: Any, repo_root: Path) -> Iterator[Probe]:
    made = Probe(rclpy_context, repo_root)
    yield made
    made.close()


def _transform(child: str, xyz: tuple[float, float, float]) -> TransformStamped:
    msg = TransformStamped(child_frame_id=child)
    msg.header.frame_id = "base_link"
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = xyz
    msg.transform.rotation.w = 1.0
    return msg


def _cloud(stamp_ns: int, frame: str, n: int, names: tuple[str, ...]) -> PointCloud2:
    rng = np.random.default_rng(n)
    columns = {name: rng.uniform(1.0, 30.0, n).astype(np.float32) for name in names}
    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame)
    return outputs.pointcloud2_message(core_pc.pack_points(columns), header)


def _accepted(probe: Probe, sensor: str) -> bool:
    return any(s.name == sensor and s.accepted for s in probe.node.health_snapshot()[0])


def _has_subscriber(publisher: Any) -> bool:
    return bool(publisher.get_subscription_count() > 0)


def test_node_publishes_each_frames_latency_and_the_stage_percentiles(probe: Probe) -> None:
    p = probe.probe
    tf_pub = p.create_publisher(TFMessage, "/tf_static", LATCHED)
    lidar_pub = p.create_publisher(PointCloud2, "/lidar/points", RELIABLE)
    radar_pub = p.create_publisher(PointCloud2, "/radar/front/points", RELIABLE)
    for pub in (lidar_pub, radar_pub):
        wait_for(partial(_has_subscriber, pub), 20.0, f"a subscriber on {pub.topic}")
    wait_for(lambda: _has_subscriber(probe.node._latency_pub), 20.0, "the ~/latency reader")
    tf_pub.publish(
        TFMessage(
            transforms=[
                _transform("lidar_top", (0.9, 0.0, 1.8)),
                _transform("radar_front", (3.4, 0.0, 0.5)),
            ]
        )
    )
    wait_for(lambda: probe.node._tf.can_transform("base_link", "radar_front"), 20.0, "/tf_static")
    radar = ("x", "y", "z", "rcs", "vx_comp", "vy_comp")

    # The radar is heard first, so the LiDAR's frame waits for the radar's nearest message.
    probe.set_clock(T0_NS)
    radar_pub.publish(_cloud(T0_NS - 40 * MS, "radar_front", 20, radar))
    wait_for(lambda: _accepted(probe, "RADAR_FRONT"), 20.0, "the first radar message")
    probe.set_clock(T0_NS + 60 * MS)  # then sim time stands still: no node-clock deadline
    lidar_pub.publish(_cloud(T0_NS, "lidar_top", 3000, ("x", "y", "z", "intensity")))
    wait_for(lambda: _accepted(probe, "LIDAR_TOP"), 20.0, "the LiDAR message")
    time.sleep(RADAR_DELAY_S)
    assert probe.node.health_snapshot()[1].frames_synced == 0  # held by the synchronizer
    radar_pub.publish(_cloud(T0_NS + 5 * MS, "radar_front", 20, radar))
    wait_for(lambda: bool(probe.latency), 30.0, "a ~/latency message")

    with probe.lock:
        (array,) = probe.latency
        (detections,) = probe.detections
    assert array.header == detections.header  # the frame's own header: trigger stamp
    assert stamp_to_ns(array.header.stamp) == T0_NS
    values = outputs.diagnostic_values(array.status[0])
    assert values.pop("trigger") == "LIDAR_TOP"
    ms = {key: float(value) for key, value in values.items()}
    assert set(ms) == STAGE_KEYS | {"processing_ms", "latency_ms"}
    # node clock (sim) at publish minus the stamp: /clock stood at T0 + 60 ms throughout
    assert ms["latency_ms"] == 60.0
    # the detector's own timings, as reported; build_frame adds to preprocessing
    assert ms["inference_ms"] == 20.0 and ms["decode_ms"] == 2.5
    assert ms["preprocess_ms"] >= 1.5
    # steady clock: the frame waited for the radar at least as long as the test held it back
    assert ms["sync_wait_ms"] >= RADAR_DELAY_S * 1e3
    assert all(ms[key] >= 0.0 for key in STAGE_KEYS)
    stages = sum(ms[key] for key in STAGE_KEYS)
    assert stages <= ms["processing_ms"] + 0.01  # the stages never claim more than passed

    # /diagnostics: the same frame in the windows (one frame: p50 = p99 = its value)
    wait_for(
        lambda: probe.pipeline_values().get("stage.sync_wait_p50_ms", "n/a") != "n/a",
        20.0,
        "stage percentiles in /diagnostics",
    )
    pipeline = probe.pipeline_values()
    assert pipeline["latency_p50_ms"] == pipeline["latency_p99_ms"] == "60.0"
    assert float(pipeline["stage.sync_wait_p50_ms"]) >= RADAR_DELAY_S * 1e3
    assert pipeline["stage.inference_p99_ms"] == "20.0"
    assert float(pipeline["processing_p50_ms"]) == pytest.approx(ms["processing_ms"], abs=0.06)
