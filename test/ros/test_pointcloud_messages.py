"""PointCloud2 messages of rclpy: built with one copy, read back exactly, serialized as DDS sends
them; the node's LiDAR conversion equals a plain reference on every layout drivers use."""

from __future__ import annotations

import array
from typing import Any

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from peftdml_ros.core import pointcloud as core_pc
from peftdml_ros.core.geometry import transform_points_f32
from peftdml_ros.core.types import LIDAR_POINT_FIELDS
from peftdml_ros.ros import conversions as cv
from peftdml_ros.ros.outputs import pointcloud2_message, set_uint8_data

pytestmark = pytest.mark.ros

XYZI = ("x", "y", "z", "intensity")


def _ego_from_lidar() -> np.ndarray:
    yaw = 0.3
    transform = np.eye(4)
    transform[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
    transform[:3, 3] = (0.94, 0.0, 1.84)
    return transform


def _columns(n: int, seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.normal(size=n) * 20).astype(dtype) for name in XYZI}


def _message(columns: dict[str, np.ndarray]) -> PointCloud2:
    return pointcloud2_message(core_pc.pack_points(columns), Header(frame_id="lidar_top"))


def _reference(msg: PointCloud2, transform: np.ndarray) -> np.ndarray:
    """What lidar_to_core must give: the columns as float32, rows with NaN/inf dropped, x, y, z
    through core.geometry's transform, dt_s 0 — computed the plain way, column by column."""
    columns = core_pc.unpack_points(msg, XYZI)
    points = np.stack([columns[n].astype(np.float32) for n in XYZI], axis=1)
    points = points[np.isfinite(points).all(axis=1)]
    out = np.zeros((points.shape[0], len(LIDAR_POINT_FIELDS)), np.float32)
    out[:, :4] = points
    out[:, :3] = transform_points_f32(points[:, :3], transform)
    return out


def test_built_message_holds_the_packed_bytes_once_and_survives_serialization() -> None:
    packed = core_pc.pack_points({**_columns(1000), "ring": np.arange(1000, dtype=np.uint16)})
    msg = pointcloud2_message(packed, Header(frame_id="lidar_top"))
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    assert bytes(msg.data) == bytes(packed.data)
    assert (msg.point_step, msg.row_step, msg.width) == (18, 18_000, 1000)
    back = deserialize_message(serialize_message(msg), PointCloud2)
    assert bytes(back.data) == bytes(packed.data)
    assert [f.name for f in back.fields] == ["x", "y", "z", "intensity", "ring"]
    np.testing.assert_array_equal(
        core_pc.points_as_array(back, XYZI), core_pc.points_as_array(packed, XYZI)
    )


def test_uint8_data_is_stored_with_and_without_field_checks() -> None:
    raw = bytes(range(256)) * 3
    for check_fields in (False, True):
        msg = PointCloud2(check_fields=check_fields)
        set_uint8_data(msg, memoryview(raw))
        assert bytes(msg.data) == raw and isinstance(msg.data, array.array)

    class Plain:  # a message class without rclpy's slots: the attribute is simply set
        data: Any = None

    plain = Plain()
    set_uint8_data(plain, raw)
    assert bytes(plain.data) == raw


@pytest.mark.parametrize(
    "layout",
    ["xyzi_float32", "nuscenes_bag_with_ring", "padded_driver_layout", "float64_fields"],
)
def test_lidar_conversion_equals_the_plain_reference(layout: str) -> None:
    n = 5000
    if layout == "xyzi_float32":
        columns = _columns(n)
    elif layout == "nuscenes_bag_with_ring":
        columns = {**_columns(n), "ring": (np.arange(n) % 32).astype(np.uint16)}
    elif layout == "padded_driver_layout":  # x, y, z, 4 bytes of padding, intensity, ring
        base = _columns(n)
        columns = {
            "x": base["x"],
            "y": base["y"],
            "z": base["z"],
            "pad": np.zeros(n, np.float32),
            "intensity": base["intensity"],
            "ring": np.zeros(n, np.uint16),
        }
    else:
        columns = _columns(n, dtype=np.float64)
    msg = _message(columns)
    msg.header.stamp.sec = 7
    transform = _ego_from_lidar()
    cloud = cv.lidar_to_core(msg, "LIDAR_TOP", transform, max_points=10 * n)
    np.testing.assert_array_equal(cloud.points, _reference(msg, transform))
    assert cloud.points.dtype == np.float32 and cloud.points.flags.c_contiguous
    assert cloud.fields == LIDAR_POINT_FIELDS and cloud.stamp_ns == 7_000_000_000


def test_lidar_conversion_drops_bad_rows_and_refuses_bad_clouds() -> None:
    columns = _columns(6)
    columns["x"][1] = np.nan
    columns["intensity"][4] = np.inf
    msg = _message(columns)
    cloud = cv.lidar_to_core(msg, "LIDAR_TOP", np.eye(4), max_points=100)
    np.testing.assert_array_equal(cloud.points, _reference(msg, np.eye(4)))
    assert cloud.points.shape == (4, len(LIDAR_POINT_FIELDS))
    for name in XYZI:
        columns[name][:] = np.nan
    with pytest.raises(cv.NonFiniteError, match="all 6 points"):
        cv.lidar_to_core(_message(columns), "LIDAR_TOP", np.eye(4), max_points=100)
    with pytest.raises(core_pc.EmptyCloudError):
        cv.lidar_to_core(_message(_columns(0)), "LIDAR_TOP", np.eye(4), max_points=100)
