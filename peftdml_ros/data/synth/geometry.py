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
