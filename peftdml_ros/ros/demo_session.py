"""Run the node on a bag in one process and record what it published.

Three rclpy nodes share one context: the detector node (exactly what `peftdml_node` runs), a
monitor that subscribes to the node's outputs like any consumer would, and a bag player with its
own /clock. Everything goes over DDS, as between processes; only the process boundary is saved.
"""

from __future__ import annotations

import math
import threading
import time
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
from peftdml_ros.ros.node import NODE_NAME, PeftdmlNode
from peftdml_ros.ros.replay import BagPlayer, DropWindow, ReplayOptions

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class FrameRecord:
    """One published frame as a consumer sees it (from ~/detections and ~/frame_status)."""

    stamp_ns: int
    trigger: str
    modalities: str
    detections: int


@dataclass
class SessionReport:
    frames: list[FrameRecord] = field(default_factory=list)
    detections_by_stamp: dict[int, Detections] = field(default_factory=dict)
    pipeline_status: dict[str, str] = field(default_factory=dict)
    sensor_status: dict[str, dict[str, str]] = field(default_factory=dict)
    missing_seen: dict[str, list[float]] = field(default_factory=dict)  # sensor -> wall times
    messages_published: int = 0
    wall_s: float = 0.0


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


class _Monitor:
    """Subscribes to the node's outputs and keeps what the demo reports."""

    def __init__(self, node: Any, report: SessionReport, namespace: str) -> None:
        self.report = report
        self._lock = threading.Lock()
        self._status_by_stamp: dict[int, tuple[str, str]] = {}
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
        stamp_ns = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
        with self._lock:
            self.report.detections_by_stamp[stamp_ns] = detections_from_msg(msg)

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

    def finish(self) -> None:
        with self._lock:
            for stamp_ns in sorted(self.report.detections_by_stamp):
                trigger, modalities = self._status_by_stamp.get(stamp_ns, ("?", "?"))
                count = len(self.report.detections_by_stamp[stamp_ns])
                self.report.frames.append(FrameRecord(stamp_ns, trigger, modalities, count))


def run_node_on_bag(
    bag: Path,
    *,
    params_file: Path,
    model_path: str,
    rate: float,
    drops: tuple[str, ...] = (),
    namespace: str = "",
    settle_s: float = 3.0,
) -> SessionReport:
    """Start the node, play `bag` into it with /clock (sim time), return what it published."""
    context = rclpy.context.Context()
    rclpy.init(context=context)
    report = SessionReport()
    cli_args = ["--ros-args", "--params-file", str(params_file), "-p", "use_sim_time:=true"]
    if model_path:  # else the params file's value (the shipped model)
        cli_args += ["-p", f"detector.model_path:={model_path}"]
    detector_node = PeftdmlNode(context=context, cli_args=cli_args, namespace=namespace or None)
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
    started_s = time.monotonic()
    try:
        player.wait_for_subscribers(["/lidar/points"], timeout_s=10.0)
        summary = player.play()
        report.messages_published = summary.total_published
        time.sleep(settle_s)  # the last frames' deadline, inference and a diagnostics period
    finally:
        report.wall_s = time.monotonic() - started_s
        player.close()
        monitor.finish()
        for executor, spinner in zip(executors, spinners, strict=True):
            executor.shutdown()
            spinner.join(timeout=5.0)
        for node in (detector_node, monitor_node, player_node):
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    return report
