"""Run the node on a bag in one process and record what it published, and when.

Three rclpy nodes share one context: the detector node (exactly what `peftdml_node` runs), a
monitor that subscribes to the node's outputs like any consumer would, and a bag player with its
own /clock. Everything goes over DDS, as between processes; only the process boundary is saved.

Wall-clock latency is measured here, outside the node, on one clock (time.monotonic of this
process): the player notes when it hands each sensor message to DDS (keyed by topic and header
stamp), the monitor notes when a frame's detections arrive (keyed by header stamp, which is the
trigger sensor's stamp). Their difference is the frame's sensor-message-out to detections-in
time: the node's receipt-to-publish time plus two DDS hops, so an upper bound of it.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from vision_msgs.msg import Detection3DArray

from peftdml_ros.core.types import NUSCENES_CLASSES, Detections
from peftdml_ros.ros import params
from peftdml_ros.ros.node import NODE_NAME, PeftdmlNode
from peftdml_ros.ros.replay import BagPlayer, DropWindow, ReplayOptions

NS_PER_S = 1_000_000_000
# CDR encapsulation identifiers (first two bytes of a serialized message): big and little endian.
_CDR_BE, _CDR_LE = b"\x00\x00", b"\x00\x01"


@dataclass(frozen=True)
class FrameRecord:
    """One published frame as a consumer sees it (from ~/detections and ~/frame_status).

    latency_wall_ms: trigger message handed to DDS by the player -> detections received by the
    monitor, time.monotonic of this process; None when either end was not seen.
    """

    stamp_ns: int
    trigger: str
    modalities: str
    detections: int
    latency_wall_ms: float | None = None


@dataclass(frozen=True)
class SessionProgress:
    """A snapshot while the bag plays: bag time played (s after its first message), frames and
    detections received so far, sensors /diagnostics reports missing now."""

    bag_s: float
    duration_s: float
    frames: int
    detections: int
    missing: tuple[str, ...]


@dataclass
class SessionReport:
    frames: list[FrameRecord] = field(default_factory=list)
    detections_by_stamp: dict[int, Detections] = field(default_factory=dict)
    pipeline_status: dict[str, str] = field(default_factory=dict)
    sensor_status: dict[str, dict[str, str]] = field(default_factory=dict)
    missing_seen: dict[str, list[float]] = field(default_factory=dict)  # sensor -> wall times
    messages_published: int = 0
    messages_dropped: dict[str, int] = field(default_factory=dict)  # bag topic -> drop windows
    bag_start_ns: int = 0
    bag_duration_s: float = 0.0
    wall_s: float = 0.0


def header_stamp_ns(raw: bytes) -> int | None:
    """The header stamp (ns) of a serialized message whose first field is std_msgs/Header;
    None when the bytes are not plain CDR (the encapsulation is read, not assumed)."""
    if len(raw) < 12 or raw[:2] not in (_CDR_BE, _CDR_LE):
        return None
    sec, nanosec = struct.unpack_from("<iI" if raw[:2] == _CDR_LE else ">iI", raw, 4)
    return int(sec) * NS_PER_S + int(nanosec)


def bag_span(bag: Path) -> tuple[int, float]:
    """(first message time in ns, duration in s) of a bag; drop windows count from the first."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return int(reader.start_time), int(reader.duration) / NS_PER_S


def detections_from_msg(msg: Detection3DArray) -> Detections:
    """vision_msgs/Detection3DArray -> core Detections (bbox size x, y, z = l, w, h)."""
    rows = []
    for detection in msg.detections:
        if not detection.results:
            continue
        hypothesis = detection.results[0].hypothesis
        pose = detection.bbox.center
        q = pose.orientation
        yaw_rad = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
        size = detection.bbox.size
        label = NUSCENES_CLASSES.index(hypothesis.class_id)
        rows.append(
            (pose.position.x, pose.position.y, pose.position.z, size.y, size.x, size.z,
             yaw_rad, hypothesis.score, label)
        )  # fmt: skip
    if not rows:
        return Detections.empty()
    table = np.asarray(rows, dtype=np.float64)
    return Detections(
        center_m=table[:, 0:3].astype(np.float32),
        size_wlh_m=table[:, 3:6].astype(np.float32),
        yaw_rad=table[:, 6].astype(np.float32),
        velocity_mps=np.zeros((len(rows), 2), np.float32),
        score=table[:, 7].astype(np.float32),
        label=table[:, 8].astype(np.int64),
    )


class _PublishTimes:
    """When the player handed each sensor message to DDS: (topic, header stamp) -> monotonic s.

    Installed by swapping the player's publishers for timing proxies (and swapped back before
    the player closes), so the player itself stays the one every other user runs.
    """

    def __init__(self) -> None:
        self.times: dict[tuple[str, int], float] = {}
        self.last_stamp_ns: int | None = None
        self._originals: dict[str, Any] = {}

    def install(self, player: BagPlayer, topics: set[str]) -> None:
        for topic in sorted(topics & set(player.publishers)):
            self._originals[topic] = player.publishers[topic]
            player.publishers[topic] = _TimedPublisher(self._originals[topic], topic, self)

    def remove(self, player: BagPlayer) -> None:
        player.publishers.update(self._originals)
        self._originals = {}

    def note(self, topic: str, raw: bytes) -> None:
        stamp_ns = header_stamp_ns(raw)
        if stamp_ns is not None:
            self.times[(topic, stamp_ns)] = time.monotonic()
            self.last_stamp_ns = stamp_ns


class _TimedPublisher:
    """A publisher that notes the time just before each message goes out."""

    def __init__(self, inner: Any, topic: str, times: _PublishTimes) -> None:
        self._inner, self._topic, self._times = inner, topic, times

    def publish(self, raw: bytes) -> None:
        self._times.note(self._topic, raw)
        self._inner.publish(raw)

    def get_subscription_count(self) -> int:
        return int(self._inner.get_subscription_count())


class _Monitor:
    """Subscribes to the node's outputs and keeps what the demo reports."""

    def __init__(self, node: Any, report: SessionReport, namespace: str) -> None:
        self.report = report
        self._lock = threading.Lock()
        self._status_by_stamp: dict[int, tuple[str, str]] = {}
        self._arrival_s: dict[int, float] = {}
        self._detections = 0
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        prefix = f"{namespace}/{NODE_NAME}"
        node.create_subscription(Detection3DArray, f"{prefix}/detections", self._on_dets, qos)
        node.create_subscription(DiagnosticArray, f"{prefix}/frame_status", self._on_frame, qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos)
        self._started_s = time.monotonic()

    def _on_frame(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            stamp_ns = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
            with self._lock:
                self._status_by_stamp[stamp_ns] = (
                    values.get("trigger", "?"),
                    values.get("modalities", "?"),
                )

    def _on_dets(self, msg: Detection3DArray) -> None:
        arrival_s = time.monotonic()  # first thing: the latency's end point
        stamp_ns = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
        detections = detections_from_msg(msg)
        with self._lock:
            self._arrival_s[stamp_ns] = arrival_s
            self.report.detections_by_stamp[stamp_ns] = detections
            self._detections += len(detections)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now_s = time.monotonic() - self._started_s
        with self._lock:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if "frames_published" in values:
                    self.report.pipeline_status = values
                elif "present" in values:
                    name = status.name.rsplit(" ", 1)[-1]  # "peftdml: sensor <NAME>"
                    self.report.sensor_status[name] = values
                    if values["present"] == "false":
                        self.report.missing_seen.setdefault(name, []).append(now_s)

    def counts(self) -> tuple[int, int, tuple[str, ...]]:
        """(frames, detections, sensors reported missing by the latest /diagnostics)."""
        with self._lock:
            missing = tuple(
                sorted(n for n, v in self.report.sensor_status.items() if v["present"] == "false")
            )
            return len(self._arrival_s), self._detections, missing

    def finish(self, publish_times: _PublishTimes, topic_of: dict[str, str]) -> None:
        with self._lock:
            for stamp_ns in sorted(self.report.detections_by_stamp):
                trigger, modalities = self._status_by_stamp.get(stamp_ns, ("?", "?"))
                sent_s = publish_times.times.get((topic_of.get(trigger, ""), stamp_ns))
                latency_ms = None
                if sent_s is not None:
                    latency_ms = (self._arrival_s[stamp_ns] - sent_s) * 1e3
                count = len(self.report.detections_by_stamp[stamp_ns])
                self.report.frames.append(
                    FrameRecord(stamp_ns, trigger, modalities, count, latency_ms)
                )


def _sensor_topics(detector_node: PeftdmlNode) -> dict[str, str]:
    """Sensor name -> topic, as the node was configured."""
    config = params.config_from_flat(params.flat_values(detector_node))
    return {spec.name: spec.topic for spec in config.sensors}


def run_node_on_bag(
    bag: Path,
    *,
    params_file: Path,
    model_path: str,
    rate: float,
    drops: tuple[str, ...] = (),
    namespace: str = "",
    settle_s: float = 3.0,
    on_progress: Callable[[SessionProgress], None] | None = None,
    progress_period_s: float = 0.5,
) -> SessionReport:
    """Start the node, play `bag` into it with /clock (sim time), return what it published.

    on_progress, when given, is called every `progress_period_s` of wall time from a thread of
    its own while the bag plays and the last frames settle, and once more at the end.
    """
    context = rclpy.context.Context()
    rclpy.init(context=context)
    report = SessionReport()
    report.bag_start_ns, report.bag_duration_s = bag_span(bag)
    cli_args = ["--ros-args", "--params-file", str(params_file), "-p", "use_sim_time:=true"]
    if model_path:  # else the params file's value (the shipped model)
        cli_args += ["-p", f"detector.model_path:={model_path}"]
    detector_node = PeftdmlNode(context=context, cli_args=cli_args, namespace=namespace or None)
    topic_of = _sensor_topics(detector_node)
    monitor_node = rclpy.create_node("peftdml_demo_monitor", context=context)
    player_node = rclpy.create_node("peftdml_demo_player", context=context)
    monitor = _Monitor(monitor_node, report, namespace)
    # The detector node gets a single-threaded executor of its own, as `peftdml_node` does
    # (its callbacks rely on running one at a time); the monitor and player share another.
    executors = [SingleThreadedExecutor(context=context), SingleThreadedExecutor(context=context)]
    executors[0].add_node(detector_node)
    executors[1].add_node(monitor_node)
    executors[1].add_node(player_node)
    spinners = [threading.Thread(target=e.spin, daemon=True) for e in executors]
    for spinner in spinners:
        spinner.start()
    options = ReplayOptions(rate=rate, clock=True, drops=tuple(DropWindow.parse(d) for d in drops))
    player = BagPlayer(bag, player_node, options)
    publish_times = _PublishTimes()
    publish_times.install(player, set(topic_of.values()))

    def snapshot(played_all: bool = False) -> SessionProgress:
        last_ns = publish_times.last_stamp_ns
        played_s = 0.0 if last_ns is None else (last_ns - report.bag_start_ns) / NS_PER_S
        if played_all:
            played_s = report.bag_duration_s
        frames, detections, missing = monitor.counts()
        played_s = min(max(played_s, 0.0), report.bag_duration_s)
        return SessionProgress(played_s, report.bag_duration_s, frames, detections, missing)

    stop_ticks = threading.Event()
    ticker = None
    if on_progress is not None:
        report_progress = on_progress

        def tick() -> None:
            while not stop_ticks.wait(progress_period_s):
                report_progress(snapshot())

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    started_s = time.monotonic()
    try:
        player.wait_for_subscribers(["/lidar/points"], timeout_s=10.0)
        summary = player.play()
        report.messages_published = summary.total_published
        report.messages_dropped = dict(summary.dropped)
        time.sleep(settle_s)  # the last frames' deadline, inference and a diagnostics period
    finally:
        report.wall_s = time.monotonic() - started_s
        stop_ticks.set()
        if ticker is not None:
            ticker.join(timeout=5.0)
        publish_times.remove(player)
        player.close()
        monitor.finish(publish_times, topic_of)
        for executor, spinner in zip(executors, spinners, strict=True):
            executor.shutdown()
            spinner.join(timeout=5.0)
        for node in (detector_node, monitor_node, player_node):
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    if on_progress is not None:
        on_progress(snapshot(played_all=True))
    return report
