"""A vision_msgs/Detection3DArray crosses DDS (real rclpy, Fast DDS) with every field intact."""

from __future__ import annotations

import math
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is part of the venv; make setup installs it")
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from vision_msgs.msg import (  # noqa: E402
    BoundingBox3D,
    Detection3D,
    Detection3DArray,
    ObjectHypothesis,
    ObjectHypothesisWithPose,
)


def _detection(index: int) -> Detection3D:
    yaw_rad = 0.3 * index
    detection = Detection3D()
    detection.header.frame_id = "base_link"
    detection.header.stamp.sec = 1_700_000_000
    detection.header.stamp.nanosec = 123_456_789 + index
    detection.id = f"obj-{index}"
    hypothesis = ObjectHypothesisWithPose(
        hypothesis=ObjectHypothesis(
            class_id=("car", "pedestrian", "barrier")[index % 3], score=0.5 + 0.1 * index
        ),
        pose=PoseWithCovariance(
            pose=Pose(
                position=Point(x=10.0 + index, y=-2.5 * index, z=0.9),
                orientation=Quaternion(z=math.sin(yaw_rad / 2), w=math.cos(yaw_rad / 2)),
            ),
            covariance=[float(i + index) for i in range(36)],
        ),
    )
    detection.results = [hypothesis]
    detection.bbox = BoundingBox3D(
        center=hypothesis.pose.pose, size=Vector3(x=4.5 + index, y=1.9, z=1.6)
    )
    return detection


def test_detection3d_array_round_trip_over_dds(rclpy_context: object) -> None:
    sent = Detection3DArray()
    sent.header.frame_id = "base_link"
    sent.header.stamp.sec = 1_700_000_000
    sent.header.stamp.nanosec = 42
    sent.detections = [_detection(i) for i in range(5)]

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publisher_node = rclpy.create_node("roundtrip_pub", context=rclpy_context)
    subscriber_node = rclpy.create_node("roundtrip_sub", context=rclpy_context)
    received: list[Detection3DArray] = []
    subscriber_node.create_subscription(Detection3DArray, "roundtrip", received.append, qos)
    publisher = publisher_node.create_publisher(Detection3DArray, "roundtrip", qos)

    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(publisher_node)
    executor.add_node(subscriber_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline_s = time.monotonic() + 10.0
        while not received and time.monotonic() < deadline_s:
            publisher.publish(sent)
            time.sleep(0.1)
    finally:
        executor.shutdown()
        spinner.join(timeout=5.0)
        publisher_node.destroy_node()
        subscriber_node.destroy_node()

    assert received, "no Detection3DArray arrived within 10 s"
    # Generated ROS 2 messages compare field by field, nested messages and arrays included.
    assert received[0] == sent
    assert len(received[0].detections) == 5
    assert received[0].detections[3].results[0].pose.covariance[35] == pytest.approx(38.0)
