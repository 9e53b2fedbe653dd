"""Rotations as quaternions: the one implementation the ROS layer, the dataset code and the
synthetic world share. ROS orders quaternions (x, y, z, w); nuScenes (w, x, y, z): both orders
have a function here so that no caller reorders by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import InputDataError

Rotation = npt.NDArray[np.float64]  # [3, 3]


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> Rotation:
    """[3, 3] rotation of a quaternion (normalized here; a zero or non-finite one is an error)."""
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(norm) or norm < 1e-9:
        raise InputDataError(f"quaternion ({x}, {y}, {z}, {w}) is not a rotation")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=np.float64,
    )


def matrix_to_quaternion(rotation: npt.ArrayLike) -> tuple[float, float, float, float]:
    """(x, y, z, w), unit length, w >= 0, of a proper [3, 3] rotation (Shepperd's method: stable
    for any angle, including half turns)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = float(r[0, 0] + r[1, 1] + r[2, 2])
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = ((r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s)
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = (0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s)
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = ((r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = ((r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s)
    norm = math.sqrt(sum(v * v for v in q))
    sign = -1.0 if q[3] < 0 else 1.0  # q and -q are the same rotation; keep w >= 0
    x, y, z, w = (sign * float(v) / norm for v in q)
    return x, y, z, w


def quaternion_wxyz_to_matrix(wxyz: Sequence[float]) -> Rotation:
    """[3, 3] rotation of a nuScenes-order (w, x, y, z) quaternion."""
    w, x, y, z = (float(v) for v in wxyz)
    return quaternion_to_matrix(x, y, z, w)


def matrix_to_quaternion_wxyz(rotation: npt.ArrayLike) -> tuple[float, float, float, float]:
    """nuScenes-order (w, x, y, z), w >= 0, of a proper [3, 3] rotation."""
    x, y, z, w = matrix_to_quaternion(rotation)
    return w, x, y, z


def transform_points_f32(
    xyz: npt.NDArray[np.float32], target_from_source: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """[N, 3] float32 points through a [4, 4] transform, computed in float32.

    The rotation and translation are rounded to float32; each coordinate is
    r0 * x + r1 * y + r2 * z + t, evaluated left to right in float32, element by element. Written
    out rather than as a matrix product, whose BLAS kernel (and so its last bits) depends on
    the arrays' memory layout: the node's message conversion and the dataset reader call this
    one function and get bit-identical points from the same sweep.
    """
    rotation = np.asarray(target_from_source[:3, :3], dtype=np.float32)
    translation = np.asarray(target_from_source[:3, 3], dtype=np.float32)
    points = np.asarray(xyz, dtype=np.float32)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    out = np.empty((points.shape[0], 3), dtype=np.float32)
    for i in range(3):
        out[:, i] = rotation[i, 0] * x + rotation[i, 1] * y + rotation[i, 2] * z + translation[i]
    return out


def rotate_vectors_f32(
    vectors: npt.NDArray[np.float32], target_from_source: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """[N, 3] float32 vectors (velocities) rotated by a [4, 4] transform's rotation, in float32,
    element by element (see transform_points_f32)."""
    rotation = np.asarray(target_from_source[:3, :3], dtype=np.float32)
    v = np.asarray(vectors, dtype=np.float32)
    out = np.empty((v.shape[0], 3), dtype=np.float32)
    for i in range(3):
        out[:, i] = rotation[i, 0] * v[:, 0] + rotation[i, 1] * v[:, 1] + rotation[i, 2] * v[:, 2]
    return out
