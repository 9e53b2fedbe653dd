"""The demo session's wall-clock bookkeeping: header stamps read from serialized messages."""

from __future__ import annotations

import struct

import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, PointCloud2

from peftdml_ros.ros.demo_session import header_stamp_ns

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("message_type", [PointCloud2, CompressedImage])
def test_header_stamp_is_read_from_the_serialized_message(message_type: type) -> None:
    msg = message_type()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_533_151_603, 150_000_001
    msg.header.frame_id = "lidar_top"
    assert header_stamp_ns(serialize_message(msg)) == 1_533_151_603_150_000_001


def test_big_endian_cdr_and_other_bytes() -> None:
    big_endian = b"\x00\x00\x00\x00" + struct.pack(">iI", 5, 7) + b"\x00" * 8
    assert header_stamp_ns(big_endian) == 5_000_000_007
    assert header_stamp_ns(b"\x00\x07\x00\x00" + b"\x00" * 12) is None  # not plain CDR
    assert header_stamp_ns(b"\x00\x01\x00\x00\x01") is None  # too short for a stamp
