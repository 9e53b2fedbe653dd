"""Physical plausibility checks: float32 finiteness and the ranges of IMU, GNSS, CameraInfo and
transforms (core.plausibility), including generated hostile values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peftdml_ros.core import plausibility as pl
from peftdml_ros.core.errors import InputDataError

F32_MAX = float(np.finfo(np.float32).max)
# Values a hostile or broken publisher sends: overflow float32, NaN/inf, just past each bound.
EDGES = [
    1e308, -1e308, 1e39, 3.5e38, F32_MAX, -F32_MAX, 5e-324, math.nan, math.inf, -math.inf,
    2000.0, 2000.0001, 70.0, 70.0001, 1e5, 1e5 + 1, 1e8, 1e8 * 1.0001, 0.0, -0.0, 1.0,
]  # fmt: skip
hostile = st.one_of(
    st.sampled_from(EDGES), st.floats(allow_nan=True, allow_infinity=True), st.floats(-50, 50)
)
K_OK = (1266.0, 0.0, 816.0, 0.0, 1266.0, 491.0, 0.0, 0.0, 1.0)  # nuScenes-like CAM_FRONT


def _f32_finite(value: float) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(value)))


@given(st.lists(hostile, min_size=1, max_size=6))
def test_finite_f32_refuses_exactly_what_float32_cannot_hold(values: list[float]) -> None:
    if all(_f32_finite(v) for v in values):
        np.testing.assert_array_equal(pl.finite_f32(values, "v"), np.asarray(values))
    else:
        with pytest.raises(pl.NonFiniteError, match="float32"):
            pl.finite_f32(values, "v")


def test_the_reported_imu_and_tf_values_are_refused() -> None:
    with pytest.raises(pl.NonFiniteError):  # 1e308 is finite in float64, inf in float32
        pl.check_imu((0.0, 0.0, 0.0), (1e308, 0.0, 9.81))
    with pytest.raises(pl.NonFiniteError):
        pl.check_transform((1e39, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), "tf")
    with pytest.raises(pl.NonFiniteError, match="K"):  # fx = 1e300 overflows float32
        pl.check_camera_info((1e300, 0, 816, 0, 1266, 491, 0, 0, 1), (), (), (), (900, 1600))
    with pytest.raises(pl.OutOfRangeError, match="fx"):
        pl.check_camera_info((1e30, 0, 816, 0, 1266, 491, 0, 0, 1), (), (), (), (900, 1600))


def test_imu_ranges() -> None:
    pl.check_imu((34.9, -34.9, 0.0), (-156.9, 0.0, 9.81))  # +-2000 deg/s, 16 g: accepted
    with pytest.raises(pl.OutOfRangeError, match="angular_velocity"):
        pl.check_imu((pl.MAX_ANGULAR_VELOCITY_RPS * 1.01, 0.0, 0.0), (0.0, 0.0, 9.81))
    with pytest.raises(pl.OutOfRangeError, match="linear_acceleration"):
        pl.check_imu((0.0, 0.0, 0.0), (0.0, -pl.MAX_ACCELERATION_MPS2 * 1.01, 9.81))
    pl.check_imu((0.0,) * 3, (0.0,) * 3, [(-1.0,) + (0.0,) * 8])  # REP 145 "no orientation"
    with pytest.raises(pl.NonFiniteError, match="covariance"):
        pl.check_imu((0.0,) * 3, (0.0,) * 3, [(math.nan,) * 9])


@given(st.tuples(hostile, hostile, hostile), st.tuples(hostile, hostile, hostile))
def test_accepted_imu_values_are_finite_and_in_range(
    gyro: tuple[float, float, float], accel: tuple[float, float, float]
) -> None:
    try:
        pl.check_imu(gyro, accel)
    except pl.PlausibilityError:
        return
    assert all(_f32_finite(v) for v in (*gyro, *accel))
    assert max(abs(v) for v in gyro) <= pl.MAX_ANGULAR_VELOCITY_RPS
    assert max(abs(v) for v in accel) <= pl.MAX_ACCELERATION_MPS2


def test_quaternions_follow_tf2s_normalization_rule() -> None:
    half = math.sqrt(0.5)
    pl.check_quaternion((0.0, 0.0, half, half), "q")
    pl.check_quaternion((0.0, 0.0, 0.0, 1.004), "q")  # |q|^2 - 1 = 0.008
    for bad in [(0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 2.0), (1e-3, 0.0, 0.0, 0.99)]:
        with pytest.raises(pl.DenormalizedQuaternionError, match="normalized"):
            pl.check_quaternion(bad, "q")


def test_gnss_ranges() -> None:
    pl.check_fix(42.3, -71.1, 20.0, (1.0,) * 9)
    pl.check_fix(-89.9, 179.9, math.nan)  # NavSatFix: NaN altitude = "not available"
    pl.check_fix(31.5, 35.4, -430.0)  # Dead Sea shore
    for lat, lon, alt in [(90.1, 0.0, 0.0), (0.0, -180.1, 0.0), (0.0, 0.0, 1e5), (0, 0, -2e3)]:
        with pytest.raises(pl.OutOfRangeError):
            pl.check_fix(lat, lon, alt)
    with pytest.raises(pl.NonFiniteError):
        pl.check_fix(0.0, 0.0, math.inf)
    with pytest.raises(pl.NonFiniteError):
        pl.check_fix(0.0, 0.0, 0.0, (1e308,) * 9)
    pl.check_ground_speed(70.0, 0.05)
    for speed in (1e16, math.inf, math.nan):
        with pytest.raises(pl.OutOfRangeError, match="position jump"):
            pl.check_ground_speed(speed, 1e-9)


def test_camera_info_ranges() -> None:
    size = (900, 1600)
    pl.check_camera_info(K_OK, (0.1, -0.2, 0.0, 0.0, 0.01), (1, 0, 0, 0, 1, 0, 0, 0, 1), (), size)
    pl.check_camera_info(K_OK, (), (), (), (0, 0))  # no size: cx, cy checked loosely
    bad_k = {
        "fx": (-1266.0, 0, 816, 0, 1266, 491, 0, 0, 1),
        "fy": (1266.0, 0, 816, 0, 2e5, 491, 0, 0, 1),
        "principal point": (1266.0, 0, 1700, 0, 1266, 491, 0, 0, 1),
        "K .* is not": (1266.0, 0, 816, 0, 1266, 491, 0, 0, 2),
    }
    for match, k in bad_k.items():
        with pytest.raises(pl.OutOfRangeError, match=match):
            pl.check_camera_info(k, (), (), (), size)
    with pytest.raises(pl.NonFiniteError, match="D"):
        pl.check_camera_info(K_OK, (math.nan,), (), (), size)
    with pytest.raises(pl.OutOfRangeError, match="65535"):
        pl.check_camera_info(K_OK, (), (), (), (900, 70000))


def test_transform_and_mount_ranges() -> None:
    pl.check_transform((6.4e6, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), "earth -> map")  # ECEF
    with pytest.raises(pl.OutOfRangeError, match="translation"):
        pl.check_transform((2e8, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), "tf")
    with pytest.raises(pl.DenormalizedQuaternionError):
        pl.check_transform((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), "tf")
    mount = np.eye(4)
    mount[:3, 3] = (1.7, 0.0, 1.5)
    pl.check_sensor_mount(mount, "cam_front")
    mount[:3, 3] = (1700.0, 0.0, 1500.0)  # millimetres
    with pytest.raises(pl.MountOutOfRangeError, match="units"):
        pl.check_sensor_mount(mount, "cam_front")


@given(st.lists(hostile, min_size=3, max_size=3), st.lists(hostile, min_size=4, max_size=4))
def test_accepted_transforms_are_finite_rotations(
    translation: list[float], rotation: list[float]
) -> None:
    try:
        pl.check_transform(translation, rotation, "tf")
    except InputDataError:
        return
    assert np.linalg.norm(translation) <= pl.MAX_TRANSFORM_TRANSLATION_M
    assert abs(float(np.dot(rotation, rotation)) - 1.0) <= pl.QUATERNION_NORM_SQ_TOLERANCE


def test_messages_stay_short_for_long_hostile_arrays() -> None:
    with pytest.raises(pl.NonFiniteError) as raised:
        pl.finite_f32([math.nan] * 100_000, "D")
    assert len(str(raised.value)) < 400 and "..." in str(raised.value)
