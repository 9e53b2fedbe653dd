"""Message <-> core conversions on real rclpy message classes (no DDS needed)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import (
    CameraInfo,
    CompressedImage,
    Image,
    Imu,
    NavSatFix,
    NavSatStatus,
    PointCloud2,
)
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from peftdml_ros.core import image as core_image
from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.geometry import matrix_to_quaternion, quaternion_to_matrix
from peftdml_ros.core.model_io import GNSS_FEATURES
from peftdml_ros.core.preprocess import gnss_features
from peftdml_ros.core.types import LIDAR_POINT_FIELDS, RADAR_POINT_FIELDS, Detections, Frame
from peftdml_ros.ros import conversions as cv
from peftdml_ros.ros.outputs import pointcloud2_message
from peftdml_ros.ros.tf_buffer import StaticTransformStore, TransformMissingError

STAMP_NS = 1_700_000_000_123_456_789


def _header(frame: str = "sensor", stamp_ns: int = STAMP_NS) -> Header:
    return Header(stamp=cv.ns_to_stamp(stamp_ns), frame_id=frame)


def _cloud(columns: dict[str, npt.NDArray[Any]], frame: str = "sensor") -> PointCloud2:
    return pointcloud2_message(core_pc.pack_points(columns), _header(frame))


def _yaw_transform(
    yaw_rad: float, translation: tuple[float, float, float]
) -> npt.NDArray[np.float64]:
    t = np.eye(4)
    t[:3, :3] = quaternion_to_matrix(0.0, 0.0, math.sin(yaw_rad / 2), math.cos(yaw_rad / 2))
    t[:3, 3] = translation
    return t


def _lidar_columns(n: int = 4) -> dict[str, npt.NDArray[Any]]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.uniform(-10, 10, n).astype(np.float32),
        "y": rng.uniform(-10, 10, n).astype(np.float32),
        "z": rng.uniform(-1, 1, n).astype(np.float32),
        "intensity": rng.uniform(0, 100, n).astype(np.float32),
        "ring": np.arange(n, dtype=np.uint16),
    }


# ------------------------------------------------------------------------------------ time


def test_stamp_round_trip_and_checks() -> None:
    assert cv.stamp_to_ns(cv.ns_to_stamp(STAMP_NS)) == STAMP_NS
    second = 1_000_000_000
    cv.check_stamp(STAMP_NS, STAMP_NS + second, 2 * second, second)
    with pytest.raises(cv.StaleStampError, match="use_sim_time"):
        cv.check_stamp(STAMP_NS, STAMP_NS + 3 * second, 2 * second, second)
    with pytest.raises(cv.FutureStampError):
        cv.check_stamp(STAMP_NS + 2 * second, STAMP_NS, 2 * second, second)
    with pytest.raises(cv.ZeroStampError):
        cv.check_stamp(0, STAMP_NS, 2 * second, second)
    cv.check_frame("/lidar_top", "lidar_top")
    cv.check_frame("", "lidar_top")
    with pytest.raises(cv.FrameMismatchError, match="radar_front"):
        cv.check_frame("radar_front", "lidar_top")


def test_reason_keys_name_the_error() -> None:
    assert cv.reason_key(core_pc.PointStepError("x")) == "point_step"
    assert cv.reason_key(core_image.CorruptImageError("x")) == "corrupt_image"
    assert cv.reason_key(cv.StaleStampError("x")) == "stale_stamp"


# ------------------------------------------------------------------------------ point clouds


def test_lidar_points_go_into_the_ego_frame() -> None:
    columns = _lidar_columns()
    ego_from_lidar = _yaw_transform(math.pi / 2, (1.0, 2.0, 3.0))
    cloud = cv.lidar_to_core(_cloud(columns), "LIDAR_TOP", ego_from_lidar, max_points=100)
    assert cloud.fields == LIDAR_POINT_FIELDS and cloud.stamp_ns == STAMP_NS
    # a 90 degree yaw maps (x, y) to (-y, x)
    np.testing.assert_allclose(cloud.points[:, 0], -columns["y"] + 1.0, atol=1e-5)
    np.testing.assert_allclose(cloud.points[:, 1], columns["x"] + 2.0, atol=1e-5)
    np.testing.assert_allclose(cloud.points[:, 2], columns["z"] + 3.0, atol=1e-5)
    np.testing.assert_allclose(cloud.points[:, 3], columns["intensity"])
    assert (cloud.points[:, 4] == 0).all()


def test_radar_velocity_is_rotated_into_the_ego_frame() -> None:
    n = 3
    columns: dict[str, npt.NDArray[Any]] = {
        "x": np.full(n, 10.0, np.float32),
        "y": np.zeros(n, np.float32),
        "z": np.zeros(n, np.float32),
        "dyn_prop": np.zeros(n, np.int8),
        "rcs": np.full(n, 5.0, np.float32),
        "vx_comp": np.full(n, 2.0, np.float32),
        "vy_comp": np.zeros(n, np.float32),
    }
    ego_from_radar = _yaw_transform(math.pi / 2, (3.0, 0.0, 0.5))
    cloud = cv.radar_to_core(_cloud(columns), "RADAR_FRONT", ego_from_radar, max_points=10)
    assert cloud.fields == RADAR_POINT_FIELDS
    np.testing.assert_allclose(cloud.points[:, :3], [[3.0, 10.0, 0.5]] * n, atol=1e-5)
    np.testing.assert_allclose(cloud.points[:, 3], 5.0)
    np.testing.assert_allclose(cloud.points[:, 4:6], [[0.0, 2.0]] * n, atol=1e-5)


def test_radar_keeps_the_clusters_training_data_keeps() -> None:
    # nuScenes-style states: cluster 0 valid; 1 invalid; 2 ambiguous Doppler; 3 unknown dynProp.
    columns = {
        "x": np.arange(4, dtype=np.float32) + 10.0,
        "y": np.zeros(4, np.float32),
        "z": np.zeros(4, np.float32),
        "dyn_prop": np.array([0, 0, 0, 7], np.int8),
        "rcs": np.ones(4, np.float32),
        "vx_comp": np.zeros(4, np.float32),
        "vy_comp": np.zeros(4, np.float32),
        "ambig_state": np.array([3, 3, 1, 3], np.int8),
        "invalid_state": np.array([0, 5, 0, 0], np.int8),
    }
    cloud = cv.radar_to_core(_cloud(columns), "RADAR_FRONT", np.eye(4), max_points=10)
    np.testing.assert_allclose(cloud.points[:, 0], [10.0])


def test_an_empty_radar_cloud_is_valid() -> None:
    columns = {
        name: np.zeros(0, np.float32) for name in ("x", "y", "z", "rcs", "vx_comp", "vy_comp")
    }
    cloud = cv.radar_to_core(_cloud(columns), "RADAR_FRONT", np.eye(4), max_points=10)
    assert cloud.points.shape == (0, len(RADAR_POINT_FIELDS))


def _malformed(kind: str) -> PointCloud2:
    msg = _cloud(_lidar_columns())
    if kind == "point_step":
        msg.point_step = 8
        msg.row_step = 8 * msg.width
        msg.data = bytes(msg.data)[: msg.row_step]
    elif kind == "data_length":
        msg.data = bytes(msg.data)[:-3]
    elif kind == "unknown_datatype":
        msg.fields[3].datatype = 42
    elif kind == "missing_field":
        msg.fields = [f for f in msg.fields if f.name != "z"]
    elif kind == "empty_cloud":
        msg.width = 0
        msg.row_step = 0
        msg.data = b""
    elif kind == "cloud_too_large":
        msg.width = 1000
        msg.row_step = 1000 * msg.point_step
    return msg


@pytest.mark.parametrize(
    "kind",
    [
        "point_step",
        "data_length",
        "unknown_datatype",
        "missing_field",
        "empty_cloud",
        "cloud_too_large",
    ],
)
def test_malformed_clouds_raise_named_errors(kind: str) -> None:
    with pytest.raises(core_pc.PointCloudError) as raised:
        cv.lidar_to_core(_malformed(kind), "LIDAR_TOP", np.eye(4), max_points=100)
    assert cv.reason_key(raised.value) == kind


def test_non_finite_points_are_dropped_and_all_non_finite_is_refused() -> None:
    columns = _lidar_columns(4)
    columns["x"][1] = np.nan
    columns["intensity"][2] = np.inf
    cloud = cv.lidar_to_core(_cloud(columns), "LIDAR_TOP", np.eye(4), max_points=100)
    assert cloud.points.shape[0] == 2 and np.isfinite(cloud.points).all()
    columns["x"][:] = np.nan
    with pytest.raises(cv.NonFiniteError):
        cv.lidar_to_core(_cloud(columns), "LIDAR_TOP", np.eye(4), max_points=100)


# ---------------------------------------------------------------------------------- cameras


def _camera_info(width: int, height: int) -> CameraInfo:
    info = CameraInfo(header=_header("cam_front"), width=width, height=height)
    info.k = [100.0, 0.0, width / 2, 0.0, 110.0, height / 2, 0.0, 0.0, 1.0]
    return info


def _jpeg(height: int, width: int) -> bytes:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2, 0] = 255  # left half red
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def test_compressed_image_is_decoded_reduced_with_scaled_intrinsics() -> None:
    calibration = cv.camera_info_to_calibration(_camera_info(96, 64))
    msg = CompressedImage(header=_header("cam_front"), format="jpeg", data=_jpeg(64, 96))
    ego_from_cam = _yaw_transform(0.3, (1.0, 0.0, 1.5))
    image = cv.compressed_to_core(msg, "CAM_FRONT", calibration, ego_from_cam, reduction=2)
    assert image.image.shape == (32, 48, 3) and image.image.dtype == np.uint8
    assert image.image[16, 5, 0] > 200 and image.image[16, 40, 0] < 50  # RGB order kept
    # Half-pixel rule, as in training data and preprocessing: c' = (c + 0.5) s - 0.5, f' = f s.
    np.testing.assert_allclose(image.intrinsics[0], [50.0, 0.0, (48.0 + 0.5) * 0.5 - 0.5])
    np.testing.assert_allclose(image.intrinsics[1], [0.0, 55.0, (32.0 + 0.5) * 0.5 - 0.5])
    np.testing.assert_allclose(image.camera_to_ego, ego_from_cam, atol=1e-6)


def test_raw_image_is_reduced_like_a_jpeg() -> None:
    calibration = cv.camera_info_to_calibration(_camera_info(96, 64))
    pixels = np.full((64, 96, 3), 7, np.uint8)
    msg = Image(header=_header("cam_front"), height=64, width=96, encoding="bgr8", step=96 * 3)
    msg.data = pixels.tobytes()
    image = cv.raw_image_to_core(msg, "CAM_FRONT", calibration, np.eye(4), reduction=4)
    assert image.image.shape == (16, 24, 3)
    np.testing.assert_allclose(image.intrinsics[0, 0], 25.0)


def test_bad_images_raise_named_errors() -> None:
    calibration = cv.camera_info_to_calibration(_camera_info(96, 64))
    corrupt = CompressedImage(header=_header(), format="jpeg", data=_jpeg(64, 96)[:200])
    with pytest.raises(core_image.CorruptImageError):
        cv.compressed_to_core(corrupt, "C", calibration, np.eye(4), reduction=1)
    raw = Image(header=_header(), height=2, width=2, encoding="yuv422", step=4)
    raw.data = bytes(8)
    with pytest.raises(core_image.UnsupportedEncodingError) as raised:
        cv.raw_image_to_core(raw, "C", calibration, np.eye(4), reduction=1)
    assert cv.reason_key(raised.value) == "unsupported_encoding"
    with pytest.raises(cv.MissingCalibrationError):
        cv.camera_info_to_calibration(CameraInfo())


# -------------------------------------------------------------------------------- IMU, GNSS


def test_imu_vectors_are_rotated_into_the_ego_frame() -> None:
    msg = Imu(header=_header("imu_link"))
    msg.angular_velocity.x = 1.0
    msg.linear_acceleration.x = 9.0
    msg.orientation.w = 1.0
    sample = cv.imu_to_core(msg, _yaw_transform(math.pi / 2, (0.0, 0.0, 0.0)))
    np.testing.assert_allclose(sample.angular_velocity_rps, (0.0, 1.0, 0.0), atol=1e-9)
    np.testing.assert_allclose(sample.linear_acceleration_mps2, (0.0, 9.0, 0.0), atol=1e-9)
    # world <- imu is identity, so world <- ego is a -90 degree yaw
    x, y, z, w = sample.orientation_xyzw
    assert abs(x) < 1e-9 and abs(y) < 1e-9
    assert math.isclose(2 * math.atan2(z, w), -math.pi / 2, abs_tol=1e-9)
    msg.angular_velocity.y = math.nan
    with pytest.raises(cv.NonFiniteError):
        cv.imu_to_core(msg, np.eye(4))


def _fix(
    stamp_ns: int, lat: float, lon: float, status: int = NavSatStatus.STATUS_FIX
) -> NavSatFix:
    msg = NavSatFix(header=_header("base_link", stamp_ns), latitude=lat, longitude=lon)
    msg.status.status = status
    return msg


def test_gnss_velocity_comes_from_consecutive_fixes() -> None:
    converter = cv.GnssConverter()
    first = converter.convert(_fix(STAMP_NS, 42.0, -71.0))
    assert first.velocity_en_mps is None
    north_deg = math.degrees(10.0 / cv.EARTH_RADIUS_M)  # 10 m north
    second = converter.convert(_fix(STAMP_NS + 1_000_000_000, 42.0 + north_deg, -71.0))
    assert second.velocity_en_mps is not None
    np.testing.assert_allclose(second.velocity_en_mps, (0.0, 10.0), atol=1e-6)
    # No heading from a NavSatFix: preprocessing derives the course, as for training data.
    assert second.heading_rad is None
    frame = Frame(stamp_ns=second.stamp_ns, trigger_sensor="LIDAR_TOP", gnss=second)
    features = dict(zip(GNSS_FEATURES, gnss_features(frame), strict=True))
    assert math.isclose(features["heading_sin"], 1.0, abs_tol=1e-6)  # due north
    assert math.isclose(features["heading_cos"], 0.0, abs_tol=1e-6)
    with pytest.raises(cv.NoFixError):
        converter.convert(_fix(STAMP_NS, 42.0, -71.0, NavSatStatus.STATUS_NO_FIX))
    back = converter.convert(_fix(STAMP_NS - 5_000_000_000, 42.0, -71.0))  # bag loop
    assert back.velocity_en_mps is None
    after = converter.convert(_fix(STAMP_NS - 4_000_000_000, 42.0 + north_deg, -71.0))
    assert after.velocity_en_mps is not None  # differencing resumes from the first fix after


# ------------------------------------------------------------------------------- transforms


def _tf(
    parent: str, child: str, yaw_rad: float, xyz: tuple[float, float, float]
) -> TransformStamped:
    msg = TransformStamped(child_frame_id=child)
    msg.header.frame_id = parent
    msg.header.stamp = Time(sec=1)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = xyz
    msg.transform.rotation.z = math.sin(yaw_rad / 2)
    msg.transform.rotation.w = math.cos(yaw_rad / 2)
    return msg


def test_static_store_composes_chains_and_reports_missing_frames() -> None:
    store = StaticTransformStore()
    count = store.add_message(
        TFMessage(
            transforms=[
                _tf("base_link", "lidar_top", math.pi / 2, (1.0, 0.0, 2.0)),
                _tf("base_link", "mount", 0.0, (0.0, 1.0, 0.0)),
                _tf("mount", "cam_front", 0.0, (1.0, 0.0, 0.0)),
            ]
        )
    )
    assert count == 3
    np.testing.assert_allclose(store.lookup("base_link", "cam_front")[:3, 3], (1.0, 1.0, 0.0))
    lidar_from_cam = store.lookup("lidar_top", "cam_front")
    expected = np.linalg.inv(store.lookup("base_link", "lidar_top")) @ store.lookup(
        "base_link", "cam_front"
    )
    np.testing.assert_allclose(lidar_from_cam, expected, atol=1e-12)
    np.testing.assert_allclose(store.lookup("/base_link", "base_link"), np.eye(4))
    with pytest.raises(TransformMissingError, match="radar_front"):
        store.lookup("base_link", "radar_front")


unit = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(unit, unit, unit, unit)
def test_quaternion_matrix_round_trip(x: float, y: float, z: float, w: float) -> None:
    if x * x + y * y + z * z + w * w < 1e-3:
        return
    rotation = quaternion_to_matrix(x, y, z, w)
    back = quaternion_to_matrix(*matrix_to_quaternion(rotation))
    np.testing.assert_allclose(back, rotation, atol=1e-9)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)


# ------------------------------------------------------------------------------- detections


def test_detections_become_a_detection3d_array() -> None:
    detections = Detections(
        center_m=np.array([[10.0, -2.0, 0.5], [5.0, 5.0, 1.0]], np.float32),
        size_wlh_m=np.array([[1.9, 4.5, 1.6], [0.6, 0.8, 1.8]], np.float32),
        yaw_rad=np.array([math.pi / 2, 0.0], np.float32),
        velocity_mps=np.zeros((2, 2), np.float32),
        score=np.array([0.9, 0.4], np.float32),
        label=np.array([0, 5], np.int64),
        attribute=("vehicle.moving", "pedestrian.standing"),
    )
    header = _header("base_link")
    msg = cv.detections_to_msg(detections, header)
    assert msg.header.stamp == header.stamp and msg.header.frame_id == "base_link"
    assert [d.id for d in msg.detections] == ["0", "1"]
    car = msg.detections[0]
    assert car.results[0].hypothesis.class_id == "car"
    assert math.isclose(car.results[0].hypothesis.score, 0.9, rel_tol=1e-6)
    # size along the box's own axes: x = length, y = width, z = height
    assert math.isclose(car.bbox.size.x, 4.5, rel_tol=1e-6)
    assert math.isclose(car.bbox.size.y, 1.9, rel_tol=1e-6)
    assert math.isclose(car.bbox.size.z, 1.6, rel_tol=1e-6)
    q = car.bbox.center.orientation
    assert math.isclose(2 * math.atan2(q.z, q.w), math.pi / 2, rel_tol=1e-6)
    assert msg.detections[1].results[0].hypothesis.class_id == "pedestrian"
    assert len(cv.detections_to_msg(Detections.empty(), header).detections) == 0
