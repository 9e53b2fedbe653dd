"""Small rigid-transform helpers shared by the generator (nuScenes quaternions are w, x, y, z)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def yaw_quaternion(yaw_rad: float) -> list[float]:
    """[w, x, y, z] of a rotation by `yaw_rad` around +z."""
    return [float(np.cos(yaw_rad / 2.0)), 0.0, 0.0, float(np.sin(yaw_rad / 2.0))]


def rot_z(yaw_rad: float) -> F64:
    """[3, 3] rotation by `yaw_rad` around +z."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def matrix_to_quaternion(rotation: F64) -> list[float]:
    """[w, x, y, z] (w >= 0) of a proper [3, 3] rotation matrix."""
    m = rotation
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0.0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    sign = -1.0 if q[0] < 0.0 else 1.0
    return [float(sign * v) for v in q]


def quaternion_to_matrix(q_wxyz: list[float] | tuple[float, ...]) -> F64:
    """[3, 3] rotation matrix of a unit quaternion [w, x, y, z]."""
    w, x, y, z = (float(v) for v in q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def box_corners(center: F64, size_wlh: F64, yaw_rad: F64) -> F64:
    """[N, 8, 3] corners of N yawed boxes; bottom face first (counter-clockwise seen from above).

    center [N, 3] (box center), size_wlh [N, 3], yaw_rad [N].
    """
    half_l = size_wlh[:, 1:2] / 2.0
    half_w = size_wlh[:, 0:1] / 2.0
    half_h = size_wlh[:, 2:3] / 2.0
    sx = np.array([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    sy = np.array([1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
    sz = np.array([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    lx, ly, lz = half_l * sx, half_w * sy, half_h * sz  # [N, 8] each, box frame
    c, s = np.cos(yaw_rad)[:, None], np.sin(yaw_rad)[:, None]
    x = center[:, 0:1] + c * lx - s * ly
    y = center[:, 1:2] + s * lx + c * ly
    z = center[:, 2:3] + lz
    return np.stack([x, y, z], axis=-1)
