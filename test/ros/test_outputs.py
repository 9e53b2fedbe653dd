"""Output messages: the properties cloud, markers and diagnostics built from core values."""

from __future__ import annotations

import math

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from peftdml_ros.core import model_io
from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.types import Detections
from peftdml_ros.ros import outputs
from peftdml_ros.ros.conversions import ns_to_stamp


def _detections() -> Detections:
    return Detections(
        center_m=np.array([[10.0, -2.0, 0.5], [5.0, 5.0, 1.0], [0.0, 3.0, 0.3]], np.float32),
        size_wlh_m=np.array([[2.0, 4.0, 1.6], [0.6, 0.8, 1.8], [0.4, 0.4, 1.0]], np.float32),
        yaw_rad=np.array([math.pi / 2, 0.0, 0.0], np.float32),
        velocity_mps=np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32),
        score=np.array([0.9, 0.4, 0.7], np.float32),
        label=np.array([0, 5, 8], np.int64),
        attribute=("vehicle.moving", "pedestrian.standing", ""),
    )


def _header() -> Header:
    return Header(stamp=ns_to_stamp(1_700_000_000_000_000_000), frame_id="base_link")


def test_properties_cloud_rows_follow_the_detection_array() -> None:
    detections = _detections()
    msg = outputs.properties_cloud(detections, _header())
    assert msg.header.frame_id == "base_link" and msg.width == 3
    columns = core_pc.unpack_points(msg)
    assert tuple(columns) == outputs.PROPERTY_FIELDS
    np.testing.assert_allclose(columns["vx"], [3.0, 0.0, 0.0])
    np.testing.assert_allclose(columns["vy"], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(columns["index"], [0, 1, 2])
    np.testing.assert_array_equal(columns["label"], [0, 5, 8])
    attributes = [model_io.ATTRIBUTES[i] if i >= 0 else "" for i in columns["attribute"]]
    assert attributes == list(detections.attribute)
    empty = outputs.properties_cloud(Detections.empty(), _header())
    assert empty.width == 0 and len(empty.data) == 0


def test_markers_clear_first_then_box_label_and_arrow_per_moving_detection() -> None:
    detections = _detections()
    array = outputs.markers(detections, _header())
    assert array.markers[0].action == Marker.DELETEALL
    body = array.markers[1:]
    # A box and a label each; an arrow only for the two moving ones (the cone stands still).
    assert len(body) == 3 * len(detections) - 1
    boxes = [m for m in body if m.ns == "boxes"]
    labels = [m for m in body if m.ns == "labels"]
    arrows = [m for m in body if m.ns == "velocity"]
    assert [m.id for m in boxes] == [0, 1, 2] and all(m.type == Marker.LINE_LIST for m in boxes)
    assert all(len(m.points) == 24 for m in boxes)  # 12 edges
    assert labels[0].text == "car 0.90" and labels[1].text == "pedestrian 0.40"
    assert [m.id for m in arrows] == [0, 1]
    end = arrows[0].points[1]
    assert (end.x, end.y) == (13.0, -2.0)
    assert all(m.header.frame_id == "base_link" for m in array.markers)
    assert len(outputs.markers(Detections.empty(), _header()).markers) == 1


def test_box_corners_follow_the_box_convention() -> None:
    corners = outputs.box_corners((0.0, 0.0, 0.0), (2.0, 4.0, 1.0), 0.0)
    np.testing.assert_allclose(corners.max(axis=0), (2.0, 1.0, 0.5))  # l along x, w along y
    turned = outputs.box_corners((1.0, 0.0, 0.0), (2.0, 4.0, 1.0), math.pi / 2)
    np.testing.assert_allclose(turned.max(axis=0), (2.0, 2.0, 0.5), atol=1e-9)


def test_latency_window_percentiles() -> None:
    window = outputs.LatencyWindow(size=100)
    assert window.percentile(50) is None
    for value in range(1, 201):
        window.add(float(value))
    assert len(window) == 100
    assert window.percentile(50) == 150.5
    p99 = window.percentile(99)
    assert p99 is not None and 199 < p99 <= 200


def test_pipeline_status_reflects_the_last_period_and_the_namespace() -> None:
    healthy = outputs.PipelineHealth(backend="torch", model="m.pt", inference_errors=3)
    status = outputs.pipeline_status(healthy, "/front/peftdml")
    assert status.name == "front/peftdml: pipeline"  # two detectors stay apart
    assert status.level == DiagnosticStatus.OK  # old errors only: the pipeline is fine now
    failing = outputs.PipelineHealth(backend="torch", model="m.pt", recent_inference_errors=2)
    assert outputs.pipeline_status(failing, "/peftdml").level == DiagnosticStatus.WARN
    stalled = outputs.PipelineHealth(backend="torch", model="m.pt", stalled=True)
    status = outputs.pipeline_status(stalled, "/peftdml")
    assert status.level == DiagnosticStatus.WARN and "no frame" in status.message


def test_diagnostics_report_sensors_and_pipeline() -> None:
    present = outputs.SensorHealth(
        "LIDAR_TOP", "lidar", "/lidar/points", received=10, accepted=9, rate_hz=20.0,
        age_s=0.01, present=True, rejected={"point_step": 1}, last_rejection="point_step",
    )  # fmt: skip
    silent = outputs.SensorHealth("CAM_FRONT", "camera", "/camera/front/image/compressed")
    pipeline = outputs.PipelineHealth(
        backend="torch", model="m.pt", frames_published=5, latency_p50_ms=12.0
    )
    array = outputs.diagnostics(_header(), [present, silent], pipeline, "/peftdml")
    assert [s.name for s in array.status] == [
        "peftdml: pipeline",
        "peftdml: sensor LIDAR_TOP",
        "peftdml: sensor CAM_FRONT",
        "peftdml: normality",
    ]
    pipe = outputs.diagnostic_values(array.status[0])
    assert pipe["backend"] == "torch" and pipe["frames_published"] == "5"
    assert pipe["latency_p50_ms"] == "12.0" and pipe["latency_p99_ms"] == "n/a"
    lidar = outputs.diagnostic_values(array.status[1])
    assert lidar["present"] == "true" and lidar["rejected.point_step"] == "1"
    assert lidar["messages_rejected"] == "1" and lidar["rate_hz"] == "20.00"
    assert array.status[1].level == DiagnosticStatus.OK
    assert array.status[2].level == DiagnosticStatus.WARN
    assert "no message" in array.status[2].message
