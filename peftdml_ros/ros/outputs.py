"""What the node publishes, built from core values: detections, their properties, RViz markers,
diagnostics. Pure functions (plus a small latency window); the node owns the publishers.

Outputs of one frame all carry the same header: stamp = the reference (trigger) sensor's stamp,
frame_id = the configured output frame.

- `~/detections` vision_msgs/Detection3DArray (see conversions.detections_to_msg: size.x = l,
  size.y = w, size.z = h; Detection3D.id = row index).
- `~/detections/properties` sensor_msgs/PointCloud2, one point per detection, in the same order
  as the array: x, y, z (box center, m), vx, vy (m/s, output frame), score, label (uint32 index
  into NUSCENES_CLASSES), attribute (int32 index into model_io.ATTRIBUTES, -1 when the class has
  none), index (uint32, equals Detection3D.id). vision_msgs has no field for velocity or
  attributes; a PointCloud2 is a standard, self-describing message with the same header, so a
  consumer matches it to the array by stamp and index (and RViz can show the centers).
- `~/markers` visualization_msgs/MarkerArray: a DELETEALL first, then per box a LINE_LIST of
  the 12 edges (ns "boxes"), a TEXT_VIEW_FACING "class score" (ns "labels") and an ARROW from
  the center along the velocity (ns "velocity"); marker id = detection index.
- `~/frame_status` diagnostic_msgs/DiagnosticArray per published frame: trigger sensor and
  the presence of every sensor and modality (same header as the detections).
- `~/latency` diagnostic_msgs/DiagnosticArray per published frame: where its time went, stage
  by stage (FrameLatency; same header as the detections).
- `/diagnostics` diagnostic_msgs/DiagnosticArray: one status per sensor and one for the
  pipeline (keys in docs/node.md).
"""

from __future__ import annotations

import array
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from peftdml_ros.core import model_io
from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.health import HealthAssessment, HealthLevel
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections, Modality

# Boxes slower than this get no velocity arrow in ~/markers, m/s.
MIN_ARROW_SPEED_MPS = 0.1

PROPERTY_FIELDS: tuple[str, ...] = (
    "x", "y", "z", "vx", "vy", "score", "label", "attribute", "index",
)  # fmt: skip
NODE_DIAGNOSTIC_PREFIX = "peftdml"

# One color per class (RGB in [0, 1]); traffic-cone orange, pedestrians blue, cars green...
_CLASS_COLORS: dict[str, tuple[float, float, float]] = {
    "car": (0.1, 0.8, 0.2),
    "truck": (0.0, 0.6, 0.6),
    "bus": (0.9, 0.8, 0.0),
    "trailer": (0.6, 0.4, 0.2),
    "construction_vehicle": (0.9, 0.5, 0.1),
    "pedestrian": (0.2, 0.4, 1.0),
    "motorcycle": (0.8, 0.1, 0.8),
    "bicycle": (1.0, 0.4, 0.7),
    "traffic_cone": (1.0, 0.3, 0.0),
    "barrier": (0.6, 0.6, 0.6),
}
# Box corner pairs forming the 12 edges (corners indexed by the bits of (x, y, z) sign).
_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (2, 3), (4, 5), (6, 7),  # along y
    (0, 2), (1, 3), (4, 6), (5, 7),  # along x
    (0, 4), (1, 5), (2, 6), (3, 7),  # along z
)  # fmt: skip


# ---------------------------------------------------------------------------------- properties


def attribute_indices(detections: Detections) -> npt.NDArray[np.int32]:
    """[N] int32 index of each detection's attribute into model_io.ATTRIBUTES (-1: none)."""
    lookup = {name: i for i, name in enumerate(model_io.ATTRIBUTES)}
    names = detections.attribute or ("",) * len(detections)
    return np.array([lookup.get(name, -1) for name in names], dtype=np.int32)


def properties_cloud(detections: Detections, header: Header) -> PointCloud2:
    """One point per detection with its center, velocity, score, label, attribute and index."""
    n = len(detections)
    packed = core_pc.pack_points(
        {
            "x": detections.center_m[:, 0].astype(np.float32),
            "y": detections.center_m[:, 1].astype(np.float32),
            "z": detections.center_m[:, 2].astype(np.float32),
            "vx": detections.velocity_mps[:, 0].astype(np.float32),
            "vy": detections.velocity_mps[:, 1].astype(np.float32),
            "score": detections.score.astype(np.float32),
            "label": detections.label.astype(np.uint32),
            "attribute": attribute_indices(detections),
            "index": np.arange(n, dtype=np.uint32),
        }
    )
    return pointcloud2_message(packed, header)


def pointcloud2_message(packed: core_pc.PackedCloud, header: Header) -> PointCloud2:
    """A sensor_msgs/PointCloud2 carrying the core's packed cloud (one copy of its bytes)."""
    msg = PointCloud2(
        header=header,
        height=packed.height,
        width=packed.width,
        fields=[
            PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
            for f in packed.fields
        ],
        is_bigendian=packed.is_bigendian,
        point_step=packed.point_step,
        row_step=packed.row_step,
        is_dense=packed.is_dense,
    )
    set_uint8_data(msg, packed.data)
    return msg


def set_uint8_data(msg: Any, data: bytes | memoryview) -> None:
    """msg.data (a uint8[] field) <- the bytes of `data`, copied once.

    rclpy keeps uint8[] fields as array.array("B"). Its setter copies an array it is given a
    second time (and, with ROS_PYTHON_CHECK_FIELDS=1, walks a bytes object element by element
    in Python), so the array is stored in the field's slot directly, as sensor_msgs_py's
    create_cloud does; a message class without that slot goes through the setter.
    """
    buffer = array.array("B")
    buffer.frombytes(data)
    if "_data" in getattr(type(msg), "__slots__", ()):
        msg._data = buffer
    else:
        msg.data = buffer


# ------------------------------------------------------------------------------------- markers


def box_corners(
    center: Sequence[float], size_wlh: Sequence[float], yaw_rad: float
) -> npt.NDArray[np.float64]:
    """[8, 3] corners; corner k has sign bits (k & 1 -> y, k & 2 -> x, k & 4 -> z)."""
    half_w, half_l, half_h = (float(v) / 2 for v in size_wlh)
    local = np.array(
        [
            [
                half_l * (1 if k & 2 else -1),
                half_w * (1 if k & 1 else -1),
                half_h * (1 if k & 4 else -1),
            ]
            for k in range(8)
        ]
    )
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    corners: npt.NDArray[np.float64] = local @ rotation.T + np.asarray(center, dtype=np.float64)
    return corners


def _color(label: int, alpha: float = 1.0) -> ColorRGBA:
    r, g, b = _CLASS_COLORS[NUSCENES_CLASSES[label]]
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def _point(xyz: Sequence[float]) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def markers(detections: Detections, header: Header) -> MarkerArray:
    """DELETEALL, then box edges, a label and a velocity arrow per detection."""
    out = MarkerArray()
    clear = Marker(header=header, action=Marker.DELETEALL)
    out.markers.append(clear)
    for i in range(len(detections)):
        label = int(detections.label[i])
        center = detections.center_m[i]
        corners = box_corners(center, detections.size_wlh_m[i], float(detections.yaw_rad[i]))
        box = Marker(header=header, ns="boxes", id=i, type=Marker.LINE_LIST, action=Marker.ADD)
        box.pose.orientation.w = 1.0
        box.scale.x = 0.05  # line width, m
        box.color = _color(label)
        box.points = [_point(corners[k]) for edge in _EDGES for k in edge]
        out.markers.append(box)

        text = Marker(
            header=header, ns="labels", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD
        )
        text.pose.position = _point(
            (center[0], center[1], center[2] + detections.size_wlh_m[i][2] / 2 + 0.3)
        )
        text.pose.orientation.w = 1.0
        text.scale.z = 0.5  # text height, m
        text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        text.text = f"{NUSCENES_CLASSES[label]} {float(detections.score[i]):.2f}"
        out.markers.append(text)

        vx, vy = (float(v) for v in detections.velocity_mps[i])
        if math.hypot(vx, vy) < MIN_ARROW_SPEED_MPS:
            continue  # parked cars, cones: a zero-length arrow would point anywhere
        arrow = Marker(header=header, ns="velocity", id=i, type=Marker.ARROW, action=Marker.ADD)
        arrow.pose.orientation.w = 1.0
        arrow.points = [_point(center), _point((center[0] + vx, center[1] + vy, center[2]))]
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.1, 0.2, 0.2  # shaft, head width, length
        arrow.color = _color(label)
        out.markers.append(arrow)
    return out


# --------------------------------------------------------------------------------- diagnostics


class LatencyWindow:
    """The last `size` latencies (ms) and their percentiles."""

    def __init__(self, size: int = 500) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._values.append(value_ms)

    def percentile(self, q: float) -> float | None:
        if not self._values:
            return None
        return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q))

    def __len__(self) -> int:
        return len(self._values)


# Where a published frame's time went, in pipeline order (keys of ~/latency and, as
# stage.<name>_p50_ms / _p99_ms, of the pipeline status). docs/node.md names each clock.
LATENCY_STAGES: tuple[str, ...] = (
    "conversion", "sync_wait", "queue", "preprocess", "inference", "decode", "publish",
)  # fmt: skip


@dataclass(frozen=True)
class FrameLatency:
    """One published frame's times, ms.

    stages_ms (steady clock, wall time that neither sim time nor a clock jump bends):
      conversion  the trigger message's callback: received -> converted to core types;
      sync_wait   converted -> released by the synchronizer (waiting for the other sensors, at
                  most sync.deadline_s of node time);
      queue       released -> taken by the inference worker (it was busy with an older frame);
      preprocess  the frame assembled (build_frame) and preprocessed by the detector;
      inference   the engine; decode: peaks, boxes, NMS;
      publish     the output messages built and published.
    processing_ms: received -> published (steady clock): the sum of the stages, up to the few
      microseconds between them that no stage counts.
    latency_ms: node clock at publish - the trigger's header stamp; under use_sim_time the
      node clock is /clock, so this is sim time (replay at half speed doubles it in wall time).
    """

    stages_ms: Mapping[str, float]
    processing_ms: float
    latency_ms: float


@dataclass(frozen=True)
class FrameClock:
    """Steady-clock instants (ns) of one frame on its way through the node, in order."""

    received_ns: int  # the trigger message reached its callback
    converted_ns: int  # its conversion ended
    released_ns: int  # the synchronizer released the frame
    taken_ns: int  # the inference worker took it
    built_ns: int  # the core Frame was assembled (build_frame)
    detected_ns: int  # the detector returned
    published_ns: int  # the outputs were published


def frame_latency(
    clock: FrameClock, timings_ms: Mapping[str, float], now_ns: int, stamp_ns: int
) -> FrameLatency:
    """FrameLatency from the frame's steady-clock instants, the detector's own timings
    (preprocess_ms, inference_ms, decode_ms) and, for `latency_ms`, the node clock at publish
    (`now_ns`) and the trigger stamp."""
    stages_ms = {
        "conversion": (clock.converted_ns - clock.received_ns) / 1e6,
        "sync_wait": (clock.released_ns - clock.converted_ns) / 1e6,
        "queue": (clock.taken_ns - clock.released_ns) / 1e6,
        "preprocess": (clock.built_ns - clock.taken_ns) / 1e6
        + float(timings_ms.get("preprocess_ms", 0.0)),
        "inference": float(timings_ms.get("inference_ms", 0.0)),
        "decode": float(timings_ms.get("decode_ms", 0.0)),
        "publish": (clock.published_ns - clock.detected_ns) / 1e6,
    }
    return FrameLatency(
        stages_ms=stages_ms,
        processing_ms=(clock.published_ns - clock.received_ns) / 1e6,
        latency_ms=(now_ns - stamp_ns) / 1e6,
    )


class StageWindows:
    """A LatencyWindow per stage of FrameLatency, plus processing and latency."""

    def __init__(self, size: int = 500) -> None:
        names = (*LATENCY_STAGES, "processing", "latency")
        self._windows = {name: LatencyWindow(size) for name in names}

    def add(self, frame: FrameLatency) -> None:
        for name, value_ms in frame.stages_ms.items():
            self._windows[name].add(value_ms)
        self._windows["processing"].add(frame.processing_ms)
        self._windows["latency"].add(frame.latency_ms)

    def percentiles(self, q: float) -> dict[str, float | None]:
        """{stage: the q-th percentile over the window} (None before the first frame)."""
        return {name: window.percentile(q) for name, window in self._windows.items()}


def latency_message(
    header: Header, frame: FrameLatency, trigger_sensor: str, hardware_id: str
) -> DiagnosticArray:
    """`~/latency`: one frame's FrameLatency as a DiagnosticArray (same header as the frame's
    detections), readable with `ros2 topic echo`. One status "<node>: latency" with keys
    <stage>_ms for every LATENCY_STAGES entry, processing_ms, latency_ms and trigger."""
    values = [
        KeyValue(key=f"{name}_ms", value=f"{frame.stages_ms.get(name, float('nan')):.3f}")
        for name in LATENCY_STAGES
    ]
    values += [
        KeyValue(key="processing_ms", value=f"{frame.processing_ms:.3f}"),
        KeyValue(key="latency_ms", value=f"{frame.latency_ms:.3f}"),
        KeyValue(key="trigger", value=trigger_sensor),
    ]
    status = DiagnosticStatus(
        level=DiagnosticStatus.OK,
        name=f"{_status_prefix(hardware_id)}: latency",
        message="ms per stage (steady clock); latency_ms: node clock at publish - stamp",
        hardware_id=hardware_id,
        values=values,
    )
    return DiagnosticArray(header=header, status=[status])


@dataclass
class SensorHealth:
    """What the node knows about one sensor, for diagnostics."""

    name: str
    modality: str
    topic: str
    received: int = 0
    accepted: int = 0
    rate_hz: float | None = None
    age_s: float | None = None  # node clock now - last accepted stamp
    present: bool = False
    rejected: dict[str, int] = field(default_factory=dict)
    last_rejection: str = ""
    # CameraInfo messages refused per reason (cameras): the previous calibration stays in use.
    camera_info_rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineHealth:
    """Frame counters and timings of the pipeline, for diagnostics."""

    backend: str
    model: str
    frames_synced: int = 0
    frames_published: int = 0
    frames_dropped: int = 0  # replaced by a newer frame before inference started
    frames_skipped: int = 0  # no subscriber, inference skipped
    # Time faults (docs/sync.md): frames the steady-clock deadline released while the node
    # clock stood still or crawled, and node-clock jumps back that restarted the synchronizer.
    frames_steady_deadline: int = 0
    clock_jumps_back: int = 0
    inference_errors: int = 0
    # Since the previous diagnostics report: a status reflects now, not the node's whole life.
    recent_inference_errors: int = 0
    stalled: bool = False  # no frame published or skipped for lack of subscribers
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    processing_p50_ms: float | None = None
    processing_p99_ms: float | None = None
    inference_p50_ms: float | None = None
    # Per LATENCY_STAGES entry, over the last frames (StageWindows): published as
    # stage.<name>_p50_ms / stage.<name>_p99_ms.
    stage_p50_ms: dict[str, float | None] = field(default_factory=dict)
    stage_p99_ms: dict[str, float | None] = field(default_factory=dict)
    normality_score: float | None = None
    # The last frame's sensor-health assessment (core/health.py; None before the first frame)
    # and what the model's calibration is, for the normality status.
    normality: HealthAssessment | None = None
    normality_calibration: str = ""
    health_warn_percentile: float | None = None
    health_error_percentile: float | None = None
    last_trigger: str = ""
    last_modalities: str = ""
    last_sensors_present: str = ""
    transforms_missing: str = ""
    # /tf_static transforms refused per reason (each refused transform counted once).
    tf_static_rejected: dict[str, int] = field(default_factory=dict)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def sensor_status(health: SensorHealth, hardware_id: str) -> DiagnosticStatus:
    if health.present:
        level, message = DiagnosticStatus.OK, "present"
    elif health.accepted == 0 and health.received == 0:
        level, message = DiagnosticStatus.WARN, "missing: no message received"
    elif health.accepted == 0:
        level, message = DiagnosticStatus.WARN, "missing: every message rejected"
    else:
        level, message = DiagnosticStatus.WARN, "missing: silent past sensor_timeout_s"
    if health.present and health.rejected:
        message = f"present, some messages rejected ({health.last_rejection})"
    values = [
        KeyValue(key="topic", value=health.topic),
        KeyValue(key="modality", value=health.modality),
        KeyValue(key="present", value=str(health.present).lower()),
        KeyValue(key="rate_hz", value=_fmt(health.rate_hz, 2)),
        KeyValue(key="age_s", value=_fmt(health.age_s, 3)),
        KeyValue(key="messages_received", value=str(health.received)),
        KeyValue(key="messages_accepted", value=str(health.accepted)),
        KeyValue(key="messages_rejected", value=str(sum(health.rejected.values()))),
        KeyValue(key="last_rejection", value=health.last_rejection),
    ]
    values += [
        KeyValue(key=f"rejected.{reason}", value=str(count))
        for reason, count in sorted(health.rejected.items())
    ]
    values += [
        KeyValue(key=f"camera_info_rejected.{reason}", value=str(count))
        for reason, count in sorted(health.camera_info_rejected.items())
    ]
    return DiagnosticStatus(
        level=level,
        name=f"{_status_prefix(hardware_id)}: sensor {health.name}",
        message=message,
        hardware_id=hardware_id,
        values=values,
    )


def _status_prefix(hardware_id: str) -> str:
    """Status names start with the node's fully qualified name ("peftdml", "front/peftdml"):
    aggregators key on the name, so two detectors in different namespaces stay apart."""
    return hardware_id.lstrip("/") or NODE_DIAGNOSTIC_PREFIX


def pipeline_status(health: PipelineHealth, hardware_id: str) -> DiagnosticStatus:
    level, message = DiagnosticStatus.OK, "running"
    if health.transforms_missing:
        level, message = DiagnosticStatus.WARN, f"missing transforms: {health.transforms_missing}"
    elif health.stalled:
        level, message = DiagnosticStatus.WARN, "no frame in the last period (no sensor data?)"
    elif health.recent_inference_errors:
        level = DiagnosticStatus.WARN
        message = f"{health.recent_inference_errors} inference error(s) in the last period"
    values = [
        KeyValue(key="backend", value=health.backend),
        KeyValue(key="model", value=health.model),
        KeyValue(key="frames_synced", value=str(health.frames_synced)),
        KeyValue(key="frames_published", value=str(health.frames_published)),
        KeyValue(key="frames_dropped", value=str(health.frames_dropped)),
        KeyValue(key="frames_skipped_no_subscriber", value=str(health.frames_skipped)),
        KeyValue(key="frames_released_steady_deadline", value=str(health.frames_steady_deadline)),
        KeyValue(key="clock_jumps_back", value=str(health.clock_jumps_back)),
        KeyValue(key="inference_errors", value=str(health.inference_errors)),
        KeyValue(key="latency_p50_ms", value=_fmt(health.latency_p50_ms)),
        KeyValue(key="latency_p99_ms", value=_fmt(health.latency_p99_ms)),
        KeyValue(key="processing_p50_ms", value=_fmt(health.processing_p50_ms)),
        KeyValue(key="processing_p99_ms", value=_fmt(health.processing_p99_ms)),
        KeyValue(key="inference_p50_ms", value=_fmt(health.inference_p50_ms)),
        KeyValue(key="normality_score", value=_fmt(health.normality_score, 3)),
        KeyValue(key="last_trigger", value=health.last_trigger),
        KeyValue(key="last_modalities", value=health.last_modalities),
        KeyValue(key="last_sensors_present", value=health.last_sensors_present),
        KeyValue(key="transforms_missing", value=health.transforms_missing),
    ]
    values += [
        KeyValue(key=f"tf_static_rejected.{reason}", value=str(count))
        for reason, count in sorted(health.tf_static_rejected.items())
    ]
    for stage in LATENCY_STAGES:
        values += [
            KeyValue(key=f"stage.{stage}_p50_ms", value=_fmt(health.stage_p50_ms.get(stage))),
            KeyValue(key=f"stage.{stage}_p99_ms", value=_fmt(health.stage_p99_ms.get(stage))),
        ]
    return DiagnosticStatus(
        level=level,
        name=f"{_status_prefix(hardware_id)}: pipeline",
        message=message,
        hardware_id=hardware_id,
        values=values,
    )


def diagnostics(
    stamp_header: Header,
    sensors: Sequence[SensorHealth],
    pipeline: PipelineHealth,
    hardware_id: str,
) -> DiagnosticArray:
    array = DiagnosticArray(header=stamp_header)
    array.status = [pipeline_status(pipeline, hardware_id)]
    array.status += [sensor_status(s, hardware_id) for s in sensors]
    array.status.append(normality_status(pipeline, hardware_id))
    return array


def normality_status(health: PipelineHealth, hardware_id: str) -> DiagnosticStatus:
    """The "<node>: normality" status: the last frame's sensor-health level (core/health.py): OK,
    WARN below health_warn_percentile, ERROR below health_error_percentile of the clean
    calibration frames; OK with a message without a frame yet or without calibration. Keys: the
    raw normality_score, its normality_percentile, the thresholds and the calibration."""
    assessment = health.normality
    if assessment is None:
        level, message, percentile = HealthLevel.OK, "no frame scored yet", None
    else:
        level, message, percentile = assessment.level, assessment.message, assessment.percentile
    values = [
        KeyValue(key="normality_score", value=_fmt(health.normality_score, 3)),
        KeyValue(key="normality_percentile", value=_fmt(percentile, 2)),
        KeyValue(key="level", value=level.name),
        KeyValue(key="warn_percentile", value=_fmt(health.health_warn_percentile, 2)),
        KeyValue(key="error_percentile", value=_fmt(health.health_error_percentile, 2)),
        KeyValue(key="calibration", value=health.normality_calibration or "none"),
    ]
    return DiagnosticStatus(
        level=_DIAGNOSTIC_LEVEL[level],
        name=f"{_status_prefix(hardware_id)}: normality",
        message=message,
        hardware_id=hardware_id,
        values=values,
    )


_DIAGNOSTIC_LEVEL = {
    HealthLevel.OK: DiagnosticStatus.OK,
    HealthLevel.WARN: DiagnosticStatus.WARN,
    HealthLevel.ERROR: DiagnosticStatus.ERROR,
}


def frame_status(
    header: Header,
    trigger_sensor: str,
    sensor_present: Mapping[str, bool],
    modality_present: Mapping[Modality, bool],
    detections: int,
) -> DiagnosticArray:
    """`~/frame_status`: what one published frame was made of (same header as its detections).

    One status "peftdml: frame" with keys trigger, modalities (present ones, comma-separated),
    detections, and "sensor.<name>" = true/false for every configured sensor. Level WARN when
    a sensor was missing from the frame.
    """
    missing = [name for name, present in sensor_present.items() if not present]
    values = [
        KeyValue(key="trigger", value=trigger_sensor),
        KeyValue(
            key="modalities",
            value=",".join(m.value for m, present in modality_present.items() if present),
        ),
        KeyValue(key="detections", value=str(detections)),
    ]
    values += [
        KeyValue(key=f"sensor.{name}", value=str(present).lower())
        for name, present in sensor_present.items()
    ]
    status = DiagnosticStatus(
        level=DiagnosticStatus.WARN if missing else DiagnosticStatus.OK,
        name=f"{NODE_DIAGNOSTIC_PREFIX}: frame",
        message=f"missing: {','.join(missing)}" if missing else "all sensors present",
        values=values,
    )
    return DiagnosticArray(header=header, status=[status])


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """{key: value} of one status (for tests and tools reading /diagnostics)."""
    return {kv.key: kv.value for kv in status.values}
