"""Physical plausibility of sensor values: is a number one that a real sensor can produce?

Two rules, applied to every number the node reads from an IMU, GNSS, CameraInfo or transform
message before anything uses it:

1. Finite in float32. The model and preprocessing compute in float32: a float64 such as 1e308
   (finite) becomes inf there, and the frame then fails inside inference. NaN, inf and anything
   beyond +-3.4e38 are refused (`NonFiniteError`).
2. Within a physical range (`OutOfRangeError`, `DenormalizedQuaternionError`): the bounds below
   are the widest that real sensors reach, with a margin, so a healthy sensor is never refused
   and a value no sensor produces (a corrupt or hostile message, a unit mix-up) never reaches a
   frame.

Each check raises an `InputDataError` subclass whose class names the reason (the node counts
it as `non_finite`, `out_of_range`, `denormalized_quaternion`, `mount_out_of_range`) and whose
message names the field, the value and the bound. Pure functions of plain numbers: nothing here
imports ROS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import InputDataError

FloatArray64 = npt.NDArray[np.float64]

# IMU. Accelerometer: consumer MEMS parts measure up to +-16 g, the high-g parts fitted for crash
# sensing up to +-200 g (1961 m/s^2); no vehicle IMU reports more per axis.
MAX_ACCELERATION_MPS2 = 2000.0
# Gyroscope: the widest MEMS full-scale ranges are +-4000 deg/s (69.8 rad/s); most automotive
# parts stop at +-2000 deg/s (34.9 rad/s).
MAX_ANGULAR_VELOCITY_RPS = 70.0
# Quaternions (IMU orientation, transforms): |x^2 + y^2 + z^2 + w^2 - 1| must stay below this,
# the rule tf2 applies before it accepts a transform (TF_DENORMALIZED_QUATERNION). Drivers
# publish normalized quaternions; float32 rounding is ~1e-7. A zero quaternion (an IMU that
# has no orientation but did not set orientation_covariance[0] = -1) fails it too.
QUATERNION_NORM_SQ_TOLERANCE = 0.01

# GNSS (NavSatFix altitude is above the WGS-84 ellipsoid). The lowest land (Dead Sea shore,
# -430 m, geoid -20 m) and the highest road (about 5,800 m) with a wide margin: a fix outside
# is a receiver fault, not a vehicle.
MIN_ALTITUDE_M = -1_000.0
MAX_ALTITUDE_M = 10_000.0
# Ground speed implied by two consecutive fixes: about three times the fastest road vehicle.
# Fix noise at 10-20 Hz (metres) stays below it; a jump of a kilometre between fixes does not.
MAX_GROUND_SPEED_MPS = 300.0

# CameraInfo. Focal length in pixels: a 4096-px-wide image would need a field of view under
# 2.4 degrees to exceed 1e5 px (automotive telephoto cameras have about 20-30 degrees).
MAX_FOCAL_LENGTH_PX = 1e5
# Largest image side a CameraInfo may declare (also the JPEG format's own limit).
MAX_IMAGE_SIDE_PX = 65_535
# K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]]; the fixed entries within this.
INTRINSICS_LAYOUT_TOLERANCE = 1e-6

# Transforms on /tf_static. REP 105 allows earth-fixed frames there (ECEF coordinates are about
# 6.4e6 m, UTM northings up to 1e7 m), so a single transform may be that far.
MAX_TRANSFORM_TRANSLATION_M = 1e8
# A sensor's mount relative to output_frame (the vehicle): no vehicle is a kilometre long; a
# larger offset is a unit mix-up (millimetres) or a chain through the wrong frame.
MAX_SENSOR_OFFSET_M = 1_000.0


class PlausibilityError(InputDataError):
    """A value no real sensor produces."""


class NonFiniteError(PlausibilityError):
    """A value is NaN, infinite or beyond the float32 range."""


class OutOfRangeError(PlausibilityError):
    """A finite value outside the physical range of the quantity."""


class DenormalizedQuaternionError(PlausibilityError):
    """A quaternion that is not (close to) unit length, so not a rotation."""


class MountOutOfRangeError(OutOfRangeError):
    """A sensor's static transform puts it implausibly far from the output frame."""


def _short(values: FloatArray64) -> str:
    """The values for a message, at most 9 of them (a hostile array may be long)."""
    shown = ", ".join(f"{v:.6g}" for v in values.reshape(-1)[:9])
    return f"({shown}{', ...' if values.size > 9 else ''})"


def finite_f32(values: float | Iterable[float], what: str) -> FloatArray64:
    """The values as a float64 array; NonFiniteError unless each is finite in float32."""
    array = np.asarray(values if not isinstance(values, float | int) else [values], np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(array.astype(np.float32))
    if not finite.all():
        raise NonFiniteError(
            f"{what} {_short(array)} has NaN, inf or a value beyond the float32 range "
            "(+-3.4e38); the sensor or its driver is faulty"
        )
    return array


def check_abs_max(values: FloatArray64, limit: float, what: str, unit: str) -> None:
    """OutOfRangeError when any |value| > limit (values already finite)."""
    if values.size and float(np.max(np.abs(values))) > limit:
        raise OutOfRangeError(
            f"{what} {_short(values)} {unit} exceeds +-{limit:g} {unit}, more than any real "
            "sensor measures; the message is corrupt or its units are wrong"
        )


def check_quaternion(xyzw: Sequence[float], what: str) -> FloatArray64:
    """Finite in float32 and unit length within tf2's tolerance; returns it as an array."""
    q = finite_f32(xyzw, what)
    norm_sq = float(np.dot(q, q))
    if abs(norm_sq - 1.0) > QUATERNION_NORM_SQ_TOLERANCE:
        raise DenormalizedQuaternionError(
            f"{what} {_short(q)} has squared norm {norm_sq:.6g}, not 1 (tolerance "
            f"{QUATERNION_NORM_SQ_TOLERANCE}); publish a normalized quaternion"
        )
    return q


# ------------------------------------------------------------------------------------------ IMU


def check_imu(
    angular_velocity_rps: Sequence[float],
    linear_acceleration_mps2: Sequence[float],
    covariances: Sequence[Sequence[float]] = (),
) -> None:
    """Gyro and accel finite in float32 and within a MEMS IMU's full-scale ranges; covariances
    finite in float32 (their -1 "not provided" flag, REP 145, is finite). The orientation, when
    present, is checked with `check_quaternion`."""
    gyro = finite_f32(angular_velocity_rps, "angular_velocity")
    accel = finite_f32(linear_acceleration_mps2, "linear_acceleration")
    check_abs_max(gyro, MAX_ANGULAR_VELOCITY_RPS, "angular_velocity", "rad/s")
    check_abs_max(accel, MAX_ACCELERATION_MPS2, "linear_acceleration", "m/s^2")
    for covariance in covariances:
        finite_f32(covariance, "covariance")


# ----------------------------------------------------------------------------------------- GNSS


def check_fix(
    latitude_deg: float,
    longitude_deg: float,
    altitude_m: float,
    position_covariance: Sequence[float] = (),
) -> None:
    """WGS-84 degrees in range, altitude in range or NaN (NavSatFix: quiet NaN = no altitude),
    covariance finite in float32."""
    lat, lon = finite_f32((latitude_deg, longitude_deg), "latitude, longitude")
    if abs(lat) > 90.0 or abs(lon) > 180.0:
        raise OutOfRangeError(
            f"fix ({lat:.9g}, {lon:.9g}) is outside the WGS-84 ranges (|lat| <= 90, |lon| <= 180)"
        )
    if not math.isnan(altitude_m):
        altitude = float(finite_f32(altitude_m, "altitude")[0])
        if not MIN_ALTITUDE_M <= altitude <= MAX_ALTITUDE_M:
            raise OutOfRangeError(
                f"altitude {altitude:.6g} m is outside [{MIN_ALTITUDE_M:g}, {MAX_ALTITUDE_M:g}] m "
                "(above the WGS-84 ellipsoid); the receiver has no valid fix"
            )
    finite_f32(position_covariance, "position_covariance")


def check_ground_speed(speed_mps: float, dt_s: float) -> None:
    """OutOfRangeError when two fixes dt_s apart imply more than MAX_GROUND_SPEED_MPS."""
    if not speed_mps <= MAX_GROUND_SPEED_MPS:  # also NaN
        raise OutOfRangeError(
            f"this fix is {speed_mps * dt_s:.6g} m from the previous one, {dt_s:.6g} s earlier: "
            f"{speed_mps:.6g} m/s, more than {MAX_GROUND_SPEED_MPS:g} m/s; a position jump "
            "(fixes are used again once they are consistent or after a gap)"
        )


# ------------------------------------------------------------------------------------ CameraInfo


def check_camera_info(
    k: Sequence[float],
    d: Sequence[float],
    r: Sequence[float],
    p: Sequence[float],
    size_hw: tuple[int, int],
) -> None:
    """K, D, R, P finite in float32; K upper-triangular with K[2,2] = 1; fx, fy in
    (0, MAX_FOCAL_LENGTH_PX]; the principal point inside the calibrated image (or, without a
    size, within MAX_IMAGE_SIDE_PX); the size within MAX_IMAGE_SIDE_PX per side.

    An uncalibrated camera (fx = 0, as CameraInfo defines it) is the caller's case to report.
    """
    height, width = size_hw
    if not (0 <= height <= MAX_IMAGE_SIDE_PX and 0 <= width <= MAX_IMAGE_SIDE_PX):
        raise OutOfRangeError(
            f"CameraInfo size {width}x{height} exceeds {MAX_IMAGE_SIDE_PX} px per side"
        )
    matrix = finite_f32(k, "K").reshape(3, 3)
    for name, values in (("D", d), ("R", r), ("P", p)):
        finite_f32(values, name)
    fixed = np.array([matrix[1, 0], matrix[2, 0], matrix[2, 1], matrix[2, 2] - 1.0])
    if float(np.max(np.abs(fixed))) > INTRINSICS_LAYOUT_TOLERANCE:
        raise OutOfRangeError(
            f"K {_short(matrix)} is not [[fx, s, cx], [0, fy, cy], [0, 0, 1]]; fix the "
            "camera's calibration file"
        )
    for name, value in (("fx", matrix[0, 0]), ("fy", matrix[1, 1])):
        if not 0.0 < value <= MAX_FOCAL_LENGTH_PX:
            raise OutOfRangeError(
                f"CameraInfo {name} = {value:.6g} px is outside (0, {MAX_FOCAL_LENGTH_PX:g}] px"
            )
    if abs(matrix[0, 1]) > MAX_FOCAL_LENGTH_PX:
        raise OutOfRangeError(f"CameraInfo skew {matrix[0, 1]:.6g} px is implausible")
    max_cx = width if width > 0 else MAX_IMAGE_SIDE_PX
    max_cy = height if height > 0 else MAX_IMAGE_SIDE_PX
    cx, cy = float(matrix[0, 2]), float(matrix[1, 2])
    if not (0.0 <= cx <= max_cx and 0.0 <= cy <= max_cy):
        raise OutOfRangeError(
            f"CameraInfo principal point ({cx:.6g}, {cy:.6g}) px is outside the "
            f"{max_cx}x{max_cy} image"
        )


# ------------------------------------------------------------------------------------ transforms


def check_transform(
    translation_m: Sequence[float], rotation_xyzw: Sequence[float], what: str
) -> None:
    """A /tf_static transform: translation finite in float32 and within
    MAX_TRANSFORM_TRANSLATION_M, rotation a unit quaternion."""
    translation = finite_f32(translation_m, f"{what} translation")
    norm_m = float(np.linalg.norm(translation))
    if norm_m > MAX_TRANSFORM_TRANSLATION_M:
        raise OutOfRangeError(
            f"{what} translation {_short(translation)} m is {norm_m:.6g} m long, more than "
            f"{MAX_TRANSFORM_TRANSLATION_M:g} m (beyond any earth-fixed frame)"
        )
    check_quaternion(rotation_xyzw, f"{what} rotation")


def check_sensor_mount(ego_from_sensor: FloatArray64, frame: str) -> None:
    """The composed [4, 4] output_frame <- sensor transform: finite in float32 and the sensor
    within MAX_SENSOR_OFFSET_M of the output frame's origin."""
    matrix = finite_f32(np.asarray(ego_from_sensor, np.float64).reshape(-1), f"mount of {frame}")
    offset_m = float(np.linalg.norm(matrix.reshape(4, 4)[:3, 3]))
    if offset_m > MAX_SENSOR_OFFSET_M:
        raise MountOutOfRangeError(
            f"/tf_static puts {frame!r} {offset_m:.6g} m from the output frame (limit "
            f"{MAX_SENSOR_OFFSET_M:g} m); check the transform's units (metres) and parent frames"
        )
