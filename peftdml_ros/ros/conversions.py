"""rclpy messages <-> core types. Pure functions plus one small stateful GNSS converter.

Every input conversion either returns a core value in the ego (output) frame or raises an
`InputDataError` subclass whose class names the reason (`reason_key` turns it into the
diagnostics key, e.g. PointStepError -> "point_step"). Nothing here logs or keeps counters: the
node decides what to warn about and counts.

Transforms are [4, 4] matrices T_ego_sensor from the static store (tf_buffer.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Pose, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, NavSatFix, NavSatStatus
from std_msgs.msg import Header
from vision_msgs.msg import (
    BoundingBox3D,
    Detection3D,
    Detection3DArray,
    ObjectHypothesis,
    ObjectHypothesisWithPose,
)

from peftdml_ros.core import image as core_image
from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core import radar as core_radar
from peftdml_ros.core.errors import InputDataError
from peftdml_ros.core.geometry import (
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotate_vectors_f32,
    transform_points_f32,
)
from peftdml_ros.core.preprocess import scale_intrinsics
from peftdml_ros.core.types import (
    EARTH_RADIUS_M,
    LIDAR_POINT_FIELDS,
    NUSCENES_CLASSES,
    RADAR_POINT_FIELDS,
    CameraImage,
    Detections,
    FloatArray,
    GnssFix,
    ImuSample,
    PointCloud,
)

NS_PER_S = 1_000_000_000
LIDAR_MESSAGE_FIELDS: tuple[str, ...] = ("x", "y", "z", "intensity")
RADAR_MESSAGE_FIELDS: tuple[str, ...] = ("x", "y", "z", "rcs", "vx_comp", "vy_comp")


class ConversionError(InputDataError):
    """A message cannot be turned into a core value."""


class StaleStampError(ConversionError):
    """The message stamp is too far behind the node clock."""


class FutureStampError(ConversionError):
    """The message stamp is too far ahead of the node clock."""


class ZeroStampError(ConversionError):
    """The message stamp is 0 (an unset header)."""


class FrameMismatchError(ConversionError):
    """The message's frame_id is not the configured sensor frame."""


class NonFiniteError(ConversionError):
    """Values are NaN or infinite where a number is needed."""


class MissingCalibrationError(ConversionError):
    """The CameraInfo for a camera has not been received (or is unusable)."""


class NoFixError(ConversionError):
    """A NavSatFix says it has no fix."""


def reason_key(error: BaseException) -> str:
    """Diagnostics key of a rejection: the exception class in snake case without "Error"."""
    name = type(error).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# ------------------------------------------------------------------------------------------ time


def stamp_to_ns(stamp: TimeMsg) -> int:
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> TimeMsg:
    return TimeMsg(sec=int(stamp_ns // NS_PER_S), nanosec=int(stamp_ns % NS_PER_S))


def check_stamp(stamp_ns: int, now_ns: int, max_age_ns: int, max_future_ns: int) -> None:
    """Refuse unset, stale and future stamps (against the node clock, sim time included)."""
    if stamp_ns <= 0:
        raise ZeroStampError("header.stamp is 0; the publisher must stamp its messages")
    if stamp_ns < now_ns - max_age_ns:
        raise StaleStampError(
            f"stamp is {(now_ns - stamp_ns) / NS_PER_S:.3f} s old (limit "
            f"{max_age_ns / NS_PER_S:.3f} s); with a bag, play it with --clock and set "
            "use_sim_time:=true"
        )
    if stamp_ns > now_ns + max_future_ns:
        raise FutureStampError(
            f"stamp is {(stamp_ns - now_ns) / NS_PER_S:.3f} s ahead of the node clock (limit "
            f"{max_future_ns / NS_PER_S:.3f} s); check clock sync or use_sim_time"
        )


def check_frame(frame_id: str, expected: str) -> None:
    """A non-empty message frame must be the configured one (calibration is looked up by it)."""
    got = frame_id.lstrip("/")
    if got and expected and got != expected.lstrip("/"):
        raise FrameMismatchError(
            f"message frame_id {got!r} is not the configured frame {expected!r}; fix "
            "sensors.<name>.frame_id or the topic remapping"
        )


# -------------------------------------------------------------------------------- point clouds


def _transform_points(points: FloatArray, ego_from_sensor: npt.NDArray[np.float64]) -> None:
    """In place: points[:, 0:3] <- R @ p + t (float32 [N, >=3]), with the dataset reader's
    function (core.geometry), so live and recorded sweeps give bit-identical points."""
    points[:, 0:3] = transform_points_f32(points[:, 0:3], ego_from_sensor)


def _finite_rows(points: FloatArray, what: str) -> FloatArray:
    """Drop rows with any NaN/inf (drivers mark missing returns so); refuse all-bad clouds."""
    finite = np.isfinite(points).all(axis=1)
    if finite.all():
        return points
    if not finite.any():
        raise NonFiniteError(f"all {points.shape[0]} points of the {what} cloud are NaN or inf")
    kept: FloatArray = points[finite]
    return kept


def lidar_to_core(
    msg: object,
    sensor: str,
    ego_from_sensor: npt.NDArray[np.float64],
    *,
    max_points: int,
) -> PointCloud:
    """PointCloud2 (x, y, z, intensity) -> PointCloud in the ego frame, LIDAR_POINT_FIELDS.

    Points with a NaN/inf value are dropped; dt_s is 0 (the sweep is its own reference). An
    empty sweep is refused: a working LiDAR always returns points, so it means a fault.
    """
    points = core_pc.points_as_array(msg, LIDAR_MESSAGE_FIELDS, max_points=max_points)  # type: ignore[arg-type]
    if points.shape[0] == 0:
        raise core_pc.EmptyCloudError("LiDAR cloud has no points; check the driver")
    points = _finite_rows(points, "LiDAR")
    out = np.zeros((points.shape[0], len(LIDAR_POINT_FIELDS)), dtype=np.float32)
    out[:, :4] = points
    _transform_points(out, ego_from_sensor)
    return PointCloud(sensor, stamp_to_ns(msg.header.stamp), out, LIDAR_POINT_FIELDS)  # type: ignore[attr-defined]


def radar_to_core(
    msg: object,
    sensor: str,
    ego_from_sensor: npt.NDArray[np.float64],
    *,
    max_points: int,
) -> PointCloud:
    """Radar PointCloud2 -> PointCloud in the ego frame, RADAR_POINT_FIELDS.

    x, y, z are transformed; the compensated velocity (vx_comp, vy_comp; planar in the radar
    frame) is rotated into the ego frame. An empty cloud is valid (the radar saw nothing).
    Clouds that carry the nuScenes cluster states (invalid_state, dyn_prop, ambig_state) keep
    only the clusters the training data keeps (core.radar); others are used whole.
    """
    points = core_pc.points_as_array(msg, RADAR_MESSAGE_FIELDS, max_points=max_points)  # type: ignore[arg-type]
    field_names = {field.name for field in msg.fields}  # type: ignore[attr-defined]
    if points.shape[0] and set(core_radar.STATE_FIELDS) <= field_names:
        states = core_pc.unpack_points(msg, core_radar.STATE_FIELDS, max_points=max_points)  # type: ignore[arg-type]
        points = points[
            core_radar.cluster_keep_mask(*(states[f] for f in core_radar.STATE_FIELDS))
        ]
    if points.shape[0]:
        points = _finite_rows(points, "radar")
    out = np.zeros((points.shape[0], len(RADAR_POINT_FIELDS)), dtype=np.float32)
    out[:, :6] = points
    _transform_points(out, ego_from_sensor)
    velocity = np.zeros((points.shape[0], 3), dtype=np.float32)
    velocity[:, :2] = points[:, 4:6]
    out[:, 4:6] = rotate_vectors_f32(velocity, ego_from_sensor)[:, :2]
    return PointCloud(sensor, stamp_to_ns(msg.header.stamp), out, RADAR_POINT_FIELDS)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class CameraCalibration:
    """K from CameraInfo, for images of `size_hw` (the size CameraInfo was calibrated at)."""

    intrinsics: FloatArray  # [3, 3]
    size_hw: tuple[int, int]


def camera_info_to_calibration(msg: CameraInfo) -> CameraCalibration:
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise MissingCalibrationError(
            f"CameraInfo K {k.reshape(-1).tolist()} has no positive focal lengths; calibrate "
            "the camera"
        )
    return CameraCalibration(k.astype(np.float32), (int(msg.height), int(msg.width)))


def _scaled_intrinsics(
    calibration: CameraCalibration, source_hw: tuple[int, int], out_hw: tuple[int, int]
) -> FloatArray:
    """K for the decoded image: scaled by decoded size / calibrated size, per axis, with the
    half-pixel rule the training data and preprocessing use (core.preprocess.scale_intrinsics)."""
    cal_h, cal_w = calibration.size_hw
    if cal_h <= 0 or cal_w <= 0:
        cal_h, cal_w = source_hw  # CameraInfo without a size: K is for the published image
    return scale_intrinsics(calibration.intrinsics, out_hw[1] / cal_w, out_hw[0] / cal_h)


def compressed_to_core(
    msg: CompressedImage,
    sensor: str,
    calibration: CameraCalibration,
    ego_from_camera: npt.NDArray[np.float64],
    *,
    reduction: int,
) -> CameraImage:
    """CompressedImage (JPEG/PNG) -> CameraImage decoded at 1/reduction, K scaled to match."""
    rgb = core_image.decode_compressed(msg.data, reduction=reduction, fmt=msg.format)
    source_hw = calibration.size_hw
    if source_hw[0] <= 0 or source_hw[1] <= 0:  # only then is the encoded size needed
        source_hw = core_image.compressed_image_size(msg.data)
    k = _scaled_intrinsics(calibration, source_hw, (rgb.shape[0], rgb.shape[1]))
    return CameraImage(
        sensor, stamp_to_ns(msg.header.stamp), rgb, k, ego_from_camera.astype(np.float32)
    )


def raw_image_to_core(
    msg: Image,
    sensor: str,
    calibration: CameraCalibration,
    ego_from_camera: npt.NDArray[np.float64],
    *,
    reduction: int,
) -> CameraImage:
    """Image (rgb8, bgr8, rgba8, bgra8, mono8) -> CameraImage shrunk by 1/reduction."""
    rgb = core_image.decode_raw(msg)
    source_hw = (rgb.shape[0], rgb.shape[1])
    if reduction > 1:
        # Same output size as a reduced JPEG decode (ceil), area-averaged.
        out_hw = (-(-source_hw[0] // reduction), -(-source_hw[1] // reduction))
        rgb = np.asarray(
            cv2.resize(rgb, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
    k = _scaled_intrinsics(calibration, source_hw, (rgb.shape[0], rgb.shape[1]))
    return CameraImage(
        sensor,
        stamp_to_ns(msg.header.stamp),
        np.ascontiguousarray(rgb),
        k,
        ego_from_camera.astype(np.float32),
    )


# ------------------------------------------------------------------------------------ IMU, GNSS


def _finite(values: tuple[float, ...], what: str) -> tuple[float, ...]:
    if not all(math.isfinite(v) for v in values):
        raise NonFiniteError(f"{what} {values} has NaN or inf")
    return values


def imu_to_core(msg: Imu, ego_from_imu: npt.NDArray[np.float64]) -> ImuSample:
    """Imu -> ImuSample with vectors and orientation expressed for the ego frame.

    Orientation: world <- ego = (world <- imu) @ (imu <- ego). An IMU without orientation
    (orientation_covariance[0] == -1, REP 145) keeps the identity quaternion.
    """
    rotation = ego_from_imu[:3, :3]
    gyro = _finite(
        (msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z), "gyro"
    )
    accel = _finite(
        (msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z), "accel"
    )
    gyro_ego = rotation @ np.asarray(gyro)
    accel_ego = rotation @ np.asarray(accel)
    orientation = (0.0, 0.0, 0.0, 1.0)
    if msg.orientation_covariance[0] != -1.0:
        q = msg.orientation
        _finite((q.x, q.y, q.z, q.w), "orientation")
        world_from_ego = quaternion_to_matrix(q.x, q.y, q.z, q.w) @ rotation.T
        orientation = matrix_to_quaternion(world_from_ego)
    return ImuSample(
        stamp_ns=stamp_to_ns(msg.header.stamp),
        angular_velocity_rps=(float(gyro_ego[0]), float(gyro_ego[1]), float(gyro_ego[2])),
        linear_acceleration_mps2=(float(accel_ego[0]), float(accel_ego[1]), float(accel_ego[2])),
        orientation_xyzw=orientation,
    )


class GnssConverter:
    """NavSatFix -> GnssFix, with ground velocity from differencing consecutive fixes.

    Velocity (east, north) m/s = displacement on a local sphere / time between fixes; it is None
    for the first fix, after a gap longer than `max_gap_s`, and after time went back (bag loop).
    No heading (a NavSatFix has none): preprocessing derives the course from the velocity, with
    the same rule as for training data.
    """

    def __init__(self, max_gap_s: float = 2.0) -> None:
        self._max_gap_ns = int(max_gap_s * NS_PER_S)
        self._previous: GnssFix | None = None

    def convert(self, msg: NavSatFix) -> GnssFix:
        if msg.status.status < NavSatStatus.STATUS_FIX:
            raise NoFixError(f"NavSatFix status {msg.status.status} means no fix")
        lat, lon, alt = _finite((msg.latitude, msg.longitude, msg.altitude), "fix")
        if abs(lat) > 90.0 or abs(lon) > 180.0:
            raise ConversionError(f"fix ({lat}, {lon}) is outside WGS-84 degree ranges")
        stamp_ns = stamp_to_ns(msg.header.stamp)
        fix = GnssFix(stamp_ns, lat, lon, alt, self._velocity(stamp_ns, lat, lon), None)
        self._previous = fix
        return fix

    def _velocity(self, stamp_ns: int, lat: float, lon: float) -> tuple[float, float] | None:
        previous = self._previous
        if previous is None:
            return None
        dt_ns = stamp_ns - previous.stamp_ns
        if dt_ns <= 0 or dt_ns > self._max_gap_ns:
            return None
        mean_lat_rad = math.radians(0.5 * (lat + previous.latitude_deg))
        east_m = (
            math.radians(lon - previous.longitude_deg) * EARTH_RADIUS_M * math.cos(mean_lat_rad)
        )
        north_m = math.radians(lat - previous.latitude_deg) * EARTH_RADIUS_M
        dt_s = dt_ns / NS_PER_S
        return (east_m / dt_s, north_m / dt_s)


# ------------------------------------------------------------------------- detections (output)


def yaw_to_quaternion(yaw_rad: float) -> Quaternion:
    half = 0.5 * float(yaw_rad)
    return Quaternion(x=0.0, y=0.0, z=math.sin(half), w=math.cos(half))


def detections_to_msg(detections: Detections, header: Header) -> Detection3DArray:
    """Detections -> Detection3DArray in the header's frame and stamp.

    Per detection: one ObjectHypothesisWithPose (class_id = nuScenes class name, score; its pose
    repeats the box pose), bbox center = box center with yaw as a quaternion around +z,
    bbox size = (l, w, h): vision_msgs sizes run along the box's own x, y, z axes and the box's
    x axis is its heading, so size.x = length, size.y = width, size.z = height (core boxes are
    w, l, h). Detection3D.id = the index of the detection in this array ("0", "1", ...), which
    ties it to the same row of the `detections/properties` cloud (velocity, attribute).
    """
    array = Detection3DArray(header=header)
    for i in range(len(detections)):
        cx, cy, cz = (float(v) for v in detections.center_m[i])
        width_m, length_m, height_m = (float(v) for v in detections.size_wlh_m[i])
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = cx, cy, cz
        pose.orientation = yaw_to_quaternion(float(detections.yaw_rad[i]))
        hypothesis = ObjectHypothesisWithPose(
            hypothesis=ObjectHypothesis(
                class_id=NUSCENES_CLASSES[int(detections.label[i])],
                score=float(detections.score[i]),
            )
        )
        hypothesis.pose.pose = pose
        detection = Detection3D(
            header=header,
            results=[hypothesis],
            bbox=BoundingBox3D(center=pose, size=Vector3(x=length_m, y=width_m, z=height_m)),
            id=str(i),
        )
        array.detections.append(detection)
    return array
