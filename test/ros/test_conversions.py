"""Message <-> core conversions on real rclpy message classes (no DDS needed)."""

from __future__ import annotations

import math
import struct
from typing import Any
from unittest import mock

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from hostile_images import jpeg_claiming, png_bomb, progressive_scan_bomb, small_jpeg
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
from peftdml_ros.core import plausibility as pl
from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.errors import InputDataError
from peftdml_ros.core.geometry import matrix_to_quaternion, quaternion_to_matrix
from peftdml_ros.core.model_io import GNSS_FEATURES
from peftdml_ros.core.preprocess import gnss_features, imu_features
from peftdml_ros.core.types import LIDAR_POINT_FIELDS, RADAR_POINT_FIELDS, Detections, Frame
from peftdml_ros.ros import conversions as cv
from peftdml_ros.ros.outputs import pointcloud2_message
from peftdml_ros.ros.tf_buffer import StaticTransformStore, TransformMissingError

STAMP_NS = 1_700_000_000_123_456_789
MAX_PIXELS = 4096 * 3072  # config/peftdml.yaml input.max_image_pixels


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
    image = cv.compressed_to_core(
        msg, "CAM_FRONT", calibration, ego_from_cam, reduction=2, max_pixels=MAX_PIXELS
    )
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
    image = cv.raw_image_to_core(
        msg, "CAM_FRONT", calibration, np.eye(4), reduction=4, max_pixels=MAX_PIXELS
    )
    assert image.image.shape == (16, 24, 3)
    np.testing.assert_allclose(image.intrinsics[0, 0], 25.0)


def test_bad_images_raise_named_errors() -> None:
    calibration = cv.camera_info_to_calibration(_camera_info(96, 64))
    corrupt = CompressedImage(header=_header(), format="jpeg", data=_jpeg(64, 96)[:200])
    with pytest.raises(core_image.CorruptImageError):
        cv.compressed_to_core(
            corrupt, "C", calibration, np.eye(4), reduction=1, max_pixels=MAX_PIXELS
        )
    raw = Image(header=_header(), height=64, width=96, encoding="yuv422", step=192)
    raw.data = bytes(64 * 192)
    with pytest.raises(core_image.UnsupportedEncodingError) as raised:
        cv.raw_image_to_core(raw, "C", calibration, np.eye(4), reduction=1, max_pixels=MAX_PIXELS)
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
    refused = store.add_message(
        TFMessage(
            transforms=[
                _tf("base_link", "lidar_top", math.pi / 2, (1.0, 0.0, 2.0)),
                _tf("base_link", "mount", 0.0, (0.0, 1.0, 0.0)),
                _tf("mount", "cam_front", 0.0, (1.0, 0.0, 0.0)),
            ]
        )
    )
    assert refused == []
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


# ------------------------------------------------------------ hostile input (property tests)
#
# Generated messages of every input type, with the values a broken or hostile publisher sends
# (NaN, inf, float64 beyond float32, values just past each physical bound, wrong sizes,
# mutated image headers). Property: a conversion either refuses the message with a named
# InputDataError, or returns values that are finite in float32, within the physical ranges, and
# that preprocessing takes without error; an image is never decoded past the pixel limit.

F32_MAX = float(np.finfo(np.float32).max)
HOSTILE_EDGES = [
    1e308, -1e308, 1e39, 3.5e38, F32_MAX, 5e-324, math.nan, math.inf, -math.inf,
    pl.MAX_ACCELERATION_MPS2, pl.MAX_ACCELERATION_MPS2 * 1.001, pl.MAX_ANGULAR_VELOCITY_RPS,
    pl.MAX_ANGULAR_VELOCITY_RPS * 1.001, 90.0, 90.001, 180.001, 1e5, 1e30, 0.0, -1.0, 1.0,
]  # fmt: skip
hostile = st.one_of(
    st.sampled_from(HOSTILE_EDGES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-100.0, 100.0),
)
SMALL_MAX_PIXELS = 64 * 64  # keeps every decode the tests allow tiny


def test_the_reported_hostile_messages_are_refused_with_their_reason() -> None:
    calibration = cv.camera_info_to_calibration(_camera_info(1600, 900))
    for data, fmt in [(jpeg_claiming(65000, 65000), "jpeg"), (png_bomb(20000, 20000), "png")]:
        msg = CompressedImage(header=_header("cam_front"), format=fmt, data=data)
        with pytest.raises(core_image.ImageTooLargeError) as raised:
            cv.compressed_to_core(
                msg, "C", calibration, np.eye(4), reduction=4, max_pixels=MAX_PIXELS
            )
        assert cv.reason_key(raised.value) == "image_too_large"
    wrong_size = CompressedImage(header=_header("cam_front"), format="jpeg", data=_jpeg(64, 96))
    with pytest.raises(core_image.ImageSizeMismatchError) as raised:
        cv.compressed_to_core(
            wrong_size, "C", calibration, np.eye(4), reduction=4, max_pixels=MAX_PIXELS
        )
    assert cv.reason_key(raised.value) == "image_size_mismatch"
    # a CPU bomb within the pixel limit: thousands of empty progressive scans
    scans = CompressedImage(format="jpeg", data=progressive_scan_bomb(64, 5000))
    with pytest.raises(core_image.TooManyScansError) as raised:
        cv.compressed_to_core(
            scans, "C", calibration, np.eye(4), reduction=4, max_pixels=MAX_PIXELS
        )
    assert cv.reason_key(raised.value) == "too_many_scans"

    imu = Imu(header=_header("imu_link"))
    imu.linear_acceleration.x = 1e308  # finite in float64, inf in float32
    imu.orientation.w = 1.0
    with pytest.raises(InputDataError) as raised:
        cv.imu_to_core(imu, np.eye(4))
    assert cv.reason_key(raised.value) == "non_finite"
    imu.linear_acceleration.x = 3000.0
    with pytest.raises(InputDataError) as raised:
        cv.imu_to_core(imu, np.eye(4))
    assert cv.reason_key(raised.value) == "out_of_range"

    info = _camera_info(1600, 900)
    info.k[0] = 1e300
    with pytest.raises(InputDataError) as raised:
        cv.camera_info_to_calibration(info)
    assert cv.reason_key(raised.value) == "non_finite"
    info.k[0] = 2e5
    with pytest.raises(InputDataError) as raised:
        cv.camera_info_to_calibration(info)
    assert cv.reason_key(raised.value) == "out_of_range"

    store = StaticTransformStore()
    refused = store.add_message(
        TFMessage(
            transforms=[
                _tf("base_link", "lidar_top", 0.0, (1e39, 0.0, 0.0)),
                _tf("base_link", "cam_front", 0.0, (1.7, 0.0, 1.5)),
            ]
        )
    )
    assert [cv.reason_key(e) for e in refused] == ["non_finite"]
    assert store.can_transform("base_link", "cam_front")  # the good one of the message is kept
    assert not store.can_transform("base_link", "lidar_top")


def test_binned_camera_images_match_their_camera_info() -> None:
    info = _camera_info(192, 128)
    info.binning_x = info.binning_y = 2
    calibration = cv.camera_info_to_calibration(info)
    assert calibration.image_hw == (64, 96)
    msg = CompressedImage(header=_header("cam_front"), format="jpeg", data=_jpeg(64, 96))
    image = cv.compressed_to_core(
        msg, "C", calibration, np.eye(4), reduction=2, max_pixels=MAX_PIXELS
    )
    # K was calibrated at 192x128: the 32x48 decoded image is a quarter of it per axis
    np.testing.assert_allclose(image.intrinsics[0, 0], 25.0)


def _finite32(values: Any) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.asarray(values, np.float64).astype(np.float32)).all())


@settings(max_examples=150)
@given(
    st.lists(hostile, min_size=13, max_size=13),
    st.sampled_from([-1.0, 0.0, math.nan, 1e308]),
    st.floats(-math.pi, math.pi),
)
def test_hostile_imu_messages_are_refused_or_plausible(
    values: list[float], orientation_flag: float, yaw_rad: float
) -> None:
    msg = Imu(header=_header("imu_link"))
    v = msg.angular_velocity
    v.x, v.y, v.z = values[0:3]
    a = msg.linear_acceleration
    a.x, a.y, a.z = values[3:6]
    q = msg.orientation
    q.x, q.y, q.z, q.w = values[6:10]
    msg.orientation_covariance = [orientation_flag, *values[10:13], 0.0, 0.0, 0.0, 0.0, 0.0]
    msg.linear_acceleration_covariance = [values[12]] * 9
    try:
        sample = cv.imu_to_core(msg, _yaw_transform(yaw_rad, (0.0, 0.0, 0.0)))
    except InputDataError:
        return
    gyro, accel = sample.angular_velocity_rps, sample.linear_acceleration_mps2
    assert _finite32([*gyro, *accel, *sample.orientation_xyzw])
    # rotated into the ego frame: a vector's norm, not each axis, is kept
    assert math.hypot(*gyro) <= pl.MAX_ANGULAR_VELOCITY_RPS * math.sqrt(3) * (1 + 1e-9)
    assert math.hypot(*accel) <= pl.MAX_ACCELERATION_MPS2 * math.sqrt(3) * (1 + 1e-9)
    frame = Frame(stamp_ns=sample.stamp_ns, trigger_sensor="LIDAR_TOP", imu=(sample, sample))
    assert np.isfinite(imu_features(frame)).all()  # what failed inside inference before


fix_values = st.tuples(hostile, hostile, hostile, hostile)
stamps_ns = st.sampled_from([1, 1_000, 50_000_000, 1_000_000_000])


@settings(max_examples=150)
@given(st.lists(st.tuples(fix_values, stamps_ns), min_size=1, max_size=4))
def test_hostile_fixes_are_refused_or_plausible(fixes: list[Any]) -> None:
    converter = cv.GnssConverter()
    stamp_ns = STAMP_NS
    for (lat, lon, alt, covariance), step_ns in fixes:
        stamp_ns += step_ns
        msg = _fix(stamp_ns, lat, lon)
        msg.altitude = alt
        msg.position_covariance = [covariance] * 9
        try:
            fix = converter.convert(msg)
        except InputDataError:
            continue
        assert abs(fix.latitude_deg) <= 90 and abs(fix.longitude_deg) <= 180
        if fix.velocity_en_mps is not None:
            assert math.hypot(*fix.velocity_en_mps) <= pl.MAX_GROUND_SPEED_MPS
        frame = Frame(stamp_ns=stamp_ns, trigger_sensor="LIDAR_TOP", gnss=fix)
        assert np.isfinite(gnss_features(frame)).all()


@settings(max_examples=150)
@given(
    st.lists(st.tuples(st.integers(0, 8), hostile), max_size=4),
    st.lists(hostile, max_size=6),
    st.tuples(st.integers(0, 70_000), st.integers(0, 70_000)),
    st.tuples(st.integers(0, 4), st.integers(0, 4)),
)
def test_hostile_camera_info_is_refused_or_plausible(
    k_changes: list[tuple[int, float]],
    distortion: list[float],
    size_hw: tuple[int, int],
    binning_hw: tuple[int, int],
) -> None:
    info = _camera_info(96, 64)
    k = list(info.k)
    for index, value in k_changes:
        k[index] = value
    info.k, info.d = k, distortion
    info.height, info.width = size_hw
    info.binning_y, info.binning_x = binning_hw
    try:
        calibration = cv.camera_info_to_calibration(info)
    except InputDataError:
        return
    intrinsics = calibration.intrinsics
    assert _finite32(intrinsics)
    assert 0 < intrinsics[0, 0] <= pl.MAX_FOCAL_LENGTH_PX
    assert 0 < intrinsics[1, 1] <= pl.MAX_FOCAL_LENGTH_PX
    msg = CompressedImage(header=_header("cam_front"), format="jpeg", data=_jpeg(64, 96))
    try:
        image = cv.compressed_to_core(
            msg, "C", calibration, np.eye(4), reduction=2, max_pixels=SMALL_MAX_PIXELS * 2
        )
    except core_image.ImageSizeMismatchError:
        assert calibration.image_hw not in (None, (64, 96))
        return
    assert calibration.image_hw in (None, (64, 96))
    assert _finite32(image.intrinsics)


def _with_size(data: bytes, height: int, width: int) -> bytes:
    """The image with its header's size replaced (JPEG SOF0 or PNG IHDR)."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        out[16:24] = struct.pack(">II", width, height)  # the IHDR CRC is not checked first
    else:
        sof = out.index(b"\xff\xc0")
        out[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(out)


@settings(max_examples=150)
@given(
    st.sampled_from(["jpeg", "png"]),
    st.tuples(*[st.one_of(st.integers(0, 80), st.integers(0, 65535))] * 2),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    st.booleans(),
    st.sampled_from([1, 2, 4, 8]),
)
def test_hostile_compressed_images_are_never_decoded_past_the_limit(
    kind: str,
    size_hw: tuple[int, int],
    flips: list[tuple[int, int]],
    calibrated_size: bool,
    reduction: int,
) -> None:
    base = (
        small_jpeg(16, 24)
        if kind == "jpeg"
        else bytes(cv2.imencode(".png", np.zeros((16, 24, 3), np.uint8))[1].tobytes())
    )
    data = bytearray(_with_size(base, *size_hw))
    for position, value in flips:
        if 24 <= position < len(data) - 2:  # keep the magic, the size and the end marker
            data[position] = value
    info = _camera_info(24, 16) if calibrated_size else _camera_info(0, 0)
    if not calibrated_size:
        info.k = [100.0, 0.0, 12.0, 0.0, 100.0, 8.0, 0.0, 0.0, 1.0]
    calibration = cv.camera_info_to_calibration(info)
    msg = CompressedImage(header=_header("cam_front"), format=kind, data=bytes(data))
    height, width = size_hw
    decode = mock.patch.object(core_image, "decode_compressed", wraps=core_image.decode_compressed)
    with decode as decoder:
        try:
            image = cv.compressed_to_core(
                msg, "C", calibration, np.eye(4), reduction=reduction, max_pixels=SMALL_MAX_PIXELS
            )
        except InputDataError:
            image = None
    if height * width > SMALL_MAX_PIXELS or height * width == 0:
        assert not decoder.called  # refused from the header: the decoder never saw it
    if image is not None:
        # The decoder's own idea of the size (its output is ceil or floor of size / reduction)
        # stays within the limit too: flipped bytes never smuggled a larger frame past it.
        out_h, out_w = image.image.shape[:2]
        assert (out_h - 1) * (out_w - 1) * reduction**2 <= SMALL_MAX_PIXELS
        assert _finite32(image.intrinsics)


@settings(max_examples=100)
@given(
    st.integers(0, 1 << 20),
    st.integers(0, 1 << 20),
    st.sampled_from(["rgb8", "bgr8", "mono8", "rgba8", "yuv422", "32FC1"]),
    st.integers(0, 1 << 22),
    st.integers(0, 4096),
)
def test_hostile_raw_images_are_refused_or_small(
    height: int, width: int, encoding: str, step: int, data_len: int
) -> None:
    info = _camera_info(0, 0)
    info.k = [100.0, 0.0, 12.0, 0.0, 100.0, 8.0, 0.0, 0.0, 1.0]
    calibration = cv.camera_info_to_calibration(info)
    msg = Image(header=_header("cam_front"), height=height, width=width, encoding=encoding)
    msg.step = step
    msg.data = bytes(data_len)
    try:
        image = cv.raw_image_to_core(
            msg, "C", calibration, np.eye(4), reduction=2, max_pixels=SMALL_MAX_PIXELS
        )
    except InputDataError:
        return
    assert 0 < height * width <= SMALL_MAX_PIXELS and image.image.dtype == np.uint8


@settings(max_examples=150)
@given(st.lists(st.tuples(st.lists(hostile, min_size=7, max_size=7), st.booleans()), max_size=3))
def test_hostile_static_transforms_are_refused_one_by_one(
    transforms: list[tuple[list[float], bool]],
) -> None:
    store = StaticTransformStore()
    store.add_message(TFMessage(transforms=[_tf("base_link", "cam_front", 0.0, (1.7, 0, 1.5))]))
    msgs = []
    for i, (values, reuse_child) in enumerate(transforms):
        msg = _tf("base_link", "cam_front" if reuse_child else f"sensor_{i}", 0.0, (0, 0, 0))
        t, q = msg.transform.translation, msg.transform.rotation
        t.x, t.y, t.z, q.x, q.y, q.z, q.w = values
        msgs.append(msg)
    refused = store.add_message(TFMessage(transforms=msgs))
    assert all(isinstance(error, pl.PlausibilityError) for error in refused)
    for frame in ["cam_front", *(f"sensor_{i}" for i in range(len(transforms)))]:
        if not store.can_transform("base_link", frame):
            continue
        ego_from_sensor = store.lookup("base_link", frame)
        assert np.isfinite(ego_from_sensor).all()  # stored transforms are plausible ones
        assert np.linalg.norm(ego_from_sensor[:3, 3]) <= pl.MAX_TRANSFORM_TRANSLATION_M
        try:
            pl.check_sensor_mount(ego_from_sensor, frame)
        except pl.MountOutOfRangeError:
            assert np.linalg.norm(ego_from_sensor[:3, 3]) > pl.MAX_SENSOR_OFFSET_M


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # -> inf
@settings(max_examples=100)
@given(
    st.lists(st.tuples(hostile, hostile, hostile, hostile), min_size=1, max_size=20),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["none", "point_step", "row_step", "width", "datatype", "offset"]),
    st.integers(0, 64),
)
def test_hostile_point_clouds_are_refused_or_finite(
    rows: list[tuple[float, float, float, float]],
    dtype: Any,
    corruption: str,
    number: int,
) -> None:
    with np.errstate(over="ignore"):
        columns = {
            name: np.array([row[i] for row in rows], dtype=dtype)
            for i, name in enumerate(("x", "y", "z", "intensity"))
        }
    msg = _cloud(columns)
    if corruption == "point_step":
        msg.point_step = number
    elif corruption == "row_step":
        msg.row_step = number
    elif corruption == "width":
        msg.width = number * 1000
    elif corruption == "datatype":
        msg.fields[number % 4].datatype = number
    elif corruption == "offset":
        msg.fields[number % 4].offset = number
    for convert in (cv.lidar_to_core, cv.radar_to_core):
        try:
            cloud = convert(msg, "S", np.eye(4), max_points=10_000)
        except InputDataError:
            continue
        assert cloud.points.dtype == np.float32 and np.isfinite(cloud.points).all()


def test_static_transform_lookups_are_cached_until_a_new_transform_arrives() -> None:
    from peftdml_ros.ros.tf_buffer import StampedTransform, StaticTransformStore

    def shifted(x_m: float) -> StampedTransform:
        matrix = np.eye(4)
        matrix[0, 3] = x_m
        return StampedTransform(parent="base_link", child="lidar", stamp_ns=0, matrix=matrix)

    store = StaticTransformStore()
    store.add(shifted(1.0))
    first = store.lookup("base_link", "lidar")
    assert store.lookup("base_link", "lidar") is first  # answered from the cache
    assert not first.flags.writeable  # shared: callers cannot change the cached answer
    assert store.lookup("lidar", "base_link")[0, 3] == pytest.approx(-1.0)
    store.add(shifted(2.5))  # a re-published mount replaces the cached answers
    assert store.lookup("base_link", "lidar")[0, 3] == pytest.approx(2.5)
    assert store.lookup("lidar", "base_link")[0, 3] == pytest.approx(-2.5)
