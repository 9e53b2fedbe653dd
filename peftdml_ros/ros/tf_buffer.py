"""A small store of static transforms, filled from /tf_static.

tf2_ros is not on PyPI, and the node only needs the fixed sensor mounts from it (base_link ->
sensor frames, latched on /tf_static with transient-local QoS). A transform that was never
received is reported with `TransformMissingError`; nothing is guessed (no identity fallback).

Matrices are [4, 4] float64 and map points from the source frame into the target frame:
p_target = T_target_source @ p_source.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from peftdml_ros.core.errors import InputDataError
from peftdml_ros.core.geometry import quaternion_to_matrix

Matrix4 = npt.NDArray[np.float64]

# What tf2_ros's static broadcaster publishes with and its listener subscribes with: a late
# subscriber still receives every transform published before it started.
TF_STATIC_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


class TransformMissingError(InputDataError):
    """No chain of received transforms connects the two frames."""


@dataclass(frozen=True)
class StampedTransform:
    parent: str
    child: str
    stamp_ns: int
    matrix: Matrix4  # parent <- child


def transform_msg_to_stamped(msg: object) -> StampedTransform:
    """geometry_msgs/TransformStamped -> StampedTransform (parent <- child)."""
    t = msg.transform.translation  # type: ignore[attr-defined]
    q = msg.transform.rotation  # type: ignore[attr-defined]
    matrix = np.eye(4, dtype=np.float64)
    matrix[:3, :3] = quaternion_to_matrix(q.x, q.y, q.z, q.w)
    matrix[:3, 3] = (t.x, t.y, t.z)
    if not np.isfinite(matrix).all():
        raise InputDataError(f"transform to {msg.child_frame_id!r} has non-finite values")  # type: ignore[attr-defined]
    stamp = msg.header.stamp  # type: ignore[attr-defined]
    return StampedTransform(
        parent=_frame(msg.header.frame_id),  # type: ignore[attr-defined]
        child=_frame(msg.child_frame_id),  # type: ignore[attr-defined]
        stamp_ns=int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec),
        matrix=matrix,
    )


def _frame(name: str) -> str:
    return str(name).lstrip("/")  # tf2 ignores a leading slash


class StaticTransformStore:
    """Static transforms as a tree (each child has one parent); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parent_of: dict[str, StampedTransform] = {}

    def add(self, transform: StampedTransform) -> None:
        with self._lock:
            self._parent_of[transform.child] = transform

    def add_message(self, msg: object) -> int:
        """Add every transform of a tf2_msgs/TFMessage; return how many."""
        transforms = [transform_msg_to_stamped(t) for t in msg.transforms]  # type: ignore[attr-defined]
        for transform in transforms:
            self.add(transform)
        return len(transforms)

    def frames(self) -> set[str]:
        with self._lock:
            return set(self._parent_of) | {t.parent for t in self._parent_of.values()}

    def can_transform(self, target: str, source: str) -> bool:
        try:
            self.lookup(target, source)
        except TransformMissingError:
            return False
        return True

    def lookup(self, target: str, source: str) -> Matrix4:
        """T_target_source ([4, 4]); TransformMissingError when the frames are not connected."""
        target, source = _frame(target), _frame(source)
        if target == source:
            return np.eye(4, dtype=np.float64)
        with self._lock:
            up_source = self._chain_to_root(source)
            up_target = self._chain_to_root(target)
        roots_source = {frame: m for frame, m in up_source}
        for frame, root_from_target in up_target:
            if frame in roots_source:
                # frame is the lowest common ancestor: T_t_s = inv(T_a_t) @ T_a_s
                return np.linalg.inv(root_from_target) @ roots_source[frame]
        known = sorted(self.frames())
        raise TransformMissingError(
            f"no static transform connects {source!r} to {target!r} (known frames: {known}); "
            "check that /tf_static is published (transient local) and names these frames"
        )

    def _chain_to_root(self, frame: str) -> list[tuple[str, Matrix4]]:
        """[(ancestor, T_ancestor_frame)] from the frame itself up to its root."""
        chain: list[tuple[str, Matrix4]] = [(frame, np.eye(4, dtype=np.float64))]
        seen = {frame}
        current, accumulated = frame, np.eye(4, dtype=np.float64)
        while current in self._parent_of:
            link = self._parent_of[current]
            accumulated = link.matrix @ accumulated
            current = link.parent
            if current in seen:  # a cycle in published transforms: stop rather than loop
                break
            seen.add(current)
            chain.append((current, accumulated.copy()))
        return chain
