"""rclpy messages <-> core types. Pure functions plus one small stateful GNSS converter.

Every input conversion either returns a core value in the ego (output) frame or raises an
`InputDataError` subclass whose class names the reason (`reason_key` turns it into the
diagnostics key, e.g. PointStepError -> "point_step"). Nothing here logs or keeps counters: the
node decides what to warn about and counts.

Hostile input is bounded before it costs anything: an image's size is read from its header and
refused (too large, or not the CameraInfo's size) before any decode; IMU, GNSS and CameraInfo
values must be finite in float32 and physically plausible (core.plausibility), so a value that
would poison a frame is refused with its message instead of failing inside inference.

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
from peftdml_ros.core import plausibility
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


# NaN, inf or beyond the float32 range where a number is needed (one class for every input).
NonFiniteError = plausibility.NonFiniteError


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


def _finite_rows(points: FloatArray, what: str, columns: int) -> FloatArray:
    """Drop rows with a NaN/inf in their first `columns` values (drivers mark missing returns
    so); refuse all-bad clouds. The all-finite case, the usual one, allocates nothing."""
    values = points[:, :columns]
    if core_pc.all_finite(values):
        return points
    finite = np.isfinite(values).all(axis=1)
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
    No per-point Python: the fields are read through zero-copy views of the message, x, y, z
    copied once into contiguous columns (a column-major [N, 3]), on which the transform runs
    several times faster than through the interleaved rows of the output.
    """
    columns = core_pc.unpack_points(msg, LIDAR_MESSAGE_FIELDS, max_points=max_points)  # type: ignore[arg-type]
    num_points = int(columns["x"].shape[0])
    if num_points == 0:
        raise core_pc.EmptyCloudError("LiDAR cloud has no points; check the driver")
    xyz = np.empty((num_points, 3), dtype=np.float32, order="F")
    for i, name in enumerate(("x", "y", "z")):
        xyz[:, i] = columns[name]
    out = np.empty((num_points, len(LIDAR_POINT_FIELDS)), dtype=np.float32)
    out[:, 3] = columns["intensity"]  # values are checked as float32, as the model gets them
    out[:, 4] = 0.0  # dt_s
    if not (core_pc.all_finite(xyz) and core_pc.all_finite(out[:, 3])):
        finite = np.isfinite(xyz).all(axis=1) & np.isfinite(out[:, 3])
        if not finite.any():
            raise NonFiniteError(f"all {num_points} points of the LiDAR cloud are NaN or inf")
        xyz, out = xyz[finite], out[finite]
    # core.geometry's transform, which the dataset reader uses too: bit-identical points.
    out[:, 0:3] = transform_points_f32(xyz, ego_from_sensor)
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
        points = _finite_rows(points, "radar", len(RADAR_MESSAGE_FIELDS))
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
    """K from CameraInfo, for images of `size_hw` (the size CameraInfo was calibrated at);
    the camera publishes images of that size divided by `binning_hw` (REP 104)."""

    intrinsics: FloatArray  # [3, 3]
    size_hw: tuple[int, int]
    binning_hw: tuple[int, int] = (1, 1)

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """The size of the published images, None when the CameraInfo gives no size."""
        height, width = self.size_hw
        if height <= 0 or width <= 0:
            return None
        return height // max(self.binning_hw[0], 1), width // max(self.binning_hw[1], 1)


def camera_info_to_calibration(msg: CameraInfo) -> CameraCalibration:
    """CameraInfo -> CameraCalibration; MissingCalibrationError for an uncalibrated camera
    (K[0] = 0, as CameraInfo defines it), plausibility errors for values no camera has."""
    size_hw = (int(msg.height), int(msg.width))
    k = plausibility.finite_f32(msg.k, "CameraInfo K")
    if k[0] == 0.0:
        raise MissingCalibrationError(
            "CameraInfo K is zero (an uncalibrated camera); calibrate the camera"
        )
    plausibility.check_camera_info(msg.k, msg.d, msg.r, msg.p, size_hw)
    binning_hw = (int(msg.binning_y), int(msg.binning_x))
    return CameraCalibration(k.reshape(3, 3).astype(np.float32), size_hw, binning_hw)


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
    max_pixels: int,
) -> CameraImage:
    """CompressedImage (JPEG/PNG) -> CameraImage decoded at 1/reduction, K scaled to match.

    The header is read first: an image of more than `max_pixels` pixels, of another size than
    the CameraInfo's or (JPEG) with too many scans is refused before the decoder allocates or
    spends anything on it.
    """
    header = core_image.read_image_header(msg.data)
    core_image.check_image_size(
        header.size_hw, max_pixels=max_pixels, expected_hw=calibration.image_hw
    )
    rgb = core_image.decode_compressed(msg.data, reduction=reduction, fmt=msg.format)
    source_hw = calibration.size_hw
    if source_hw[0] <= 0 or source_hw[1] <= 0:  # CameraInfo without a size: K is for this image
        source_hw = header.size_hw
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
    max_pixels: int,
) -> CameraImage:
    """Image (rgb8, bgr8, rgba8, bgra8, mono8) -> CameraImage shrunk by 1/reduction; refused
    like a compressed image when larger than `max_pixels` or not the CameraInfo's size."""
    core_image.check_image_size(
        (int(msg.height), int(msg.width)), max_pixels=max_pixels, expected_hw=calibration.image_hw
    )
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


def imu_to_core(msg: Imu, ego_from_imu: npt.NDArray[np.float64]) -> ImuSample:
    """Imu -> ImuSample with vectors and orientation expressed for the ego frame.

    Orientation: world <- ego = (world <- imu) @ (imu <- ego). An IMU without orientation
    (orientation_covariance[0] == -1, REP 145) keeps the identity quaternion. Rates,
    accelerations and covariances must be finite in float32 and within a MEMS IMU's ranges,
    a given orientation a unit quaternion (core.plausibility).
    """
    rotation = ego_from_imu[:3, :3]
    gyro = (msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z)
    accel = (msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z)
    plausibility.check_imu(
        gyro,
        accel,
        (
            msg.orientation_covariance,
            msg.angular_velocity_covariance,
            msg.linear_acceleration_covariance,
        ),
    )
    gyro_ego = rotation @ np.asarray(gyro)
    accel_ego = rotation @ np.asarray(accel)
    orientation = (0.0, 0.0, 0.0, 1.0)
    if msg.orientation_covariance[0] != -1.0:
        q = msg.orientation
        plausibility.check_quaternion(
            (q.x, q.y, q.z, q.w),
            "orientation (set orientation_covariance[0] = -1 when the IMU has none, REP 145)",
        )
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
    the same rule as for training data. A fix must be plausible (core.plausibility: WGS-84
    ranges, altitude, finite covariance) and must not imply more than MAX_GROUND_SPEED_MPS from
    the previous accepted fix: a refused fix is never differenced against.
    """

    def __init__(self, max_gap_s: float = 2.0) -> None:
        self._max_gap_ns = int(max_gap_s * NS_PER_S)
        self._previous: GnssFix | None = None

    def convert(self, msg: NavSatFix) -> GnssFix:
        if msg.status.status < NavSatStatus.STATUS_FIX:
            raise NoFixError(f"NavSatFix status {msg.status.status} means no fix")
        plausibility.check_fix(msg.latitude, msg.longitude, msg.altitude, msg.position_covariance)
        # A NaN altitude ("not available", NavSatFix) is kept: nothing downstream reads it.
        lat, lon, alt = float(msg.latitude), float(msg.longitude), float(msg.altitude)
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
        delta_lon_deg = (lon - previous.longitude_deg + 180.0) % 360.0 - 180.0  # antimeridian
        east_m = math.radians(delta_lon_deg) * EARTH_RADIUS_M * math.cos(mean_lat_rad)
        north_m = math.radians(lat - previous.latitude_deg) * EARTH_RADIUS_M
        dt_s = dt_ns / NS_PER_S
        plausibility.check_ground_speed(math.hypot(east_m, north_m) / dt_s, dt_s)
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
