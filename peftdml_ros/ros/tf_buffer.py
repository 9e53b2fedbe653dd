"""A small store of static transforms, filled from /tf_static.

tf2_ros is not on PyPI, and the node only needs the fixed sensor mounts from it (base_link ->
sensor frames, latched on /tf_static with transient-local QoS). A transform that was never
received is reported with `TransformMissingError`; nothing is guessed (no identity fallback).
A transform that is not plausible (core.plausibility: translation finite in float32 and within
earth-fixed magnitudes, rotation a unit quaternion by tf2's rule) is refused on its own; the
other transforms of its message are kept.

Matrices are [4, 4] float64 and map points from the source frame into the target frame:
p_target = T_target_source @ p_source.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from peftdml_ros.core import plausibility
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
    """geometry_msgs/TransformStamped -> StampedTransform (parent <- child); a plausibility
    error (core.plausibility) when its values are not a real mount."""
    t = msg.transform.translation  # type: ignore[attr-defined]
    q = msg.transform.rotation  # type: ignore[attr-defined]
    what = f"transform {msg.header.frame_id!r} -> {msg.child_frame_id!r}"  # type: ignore[attr-defined]
    plausibility.check_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w), what)
    matrix = np.eye(4, dtype=np.float64)
    matrix[:3, :3] = quaternion_to_matrix(q.x, q.y, q.z, q.w)
    matrix[:3, 3] = (t.x, t.y, t.z)
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
        # Every sensor message asks for the same few lookups: answer them from a cache that a new
        # static transform clears (the matrix products cost milliseconds on a loaded machine).
        self._lookups: dict[tuple[str, str], Matrix4] = {}

    def add(self, transform: StampedTransform) -> None:
        with self._lock:
            self._parent_of[transform.child] = transform
            self._lookups.clear()

    def add_message(self, msg: object) -> list[InputDataError]:
        """Add every plausible transform of a tf2_msgs/TFMessage; return the refusals, one per
        transform left out (a refused transform never replaces a stored one)."""
        refused: list[InputDataError] = []
        for transform_msg in msg.transforms:  # type: ignore[attr-defined]
            try:
                transform = transform_msg_to_stamped(transform_msg)
            except InputDataError as error:
                refused.append(error)
                continue
            self.add(transform)
        return refused

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
        """T_target_source ([4, 4], read-only); TransformMissingError when the frames are not
        connected."""
        target, source = _frame(target), _frame(source)
        with self._lock:
            cached = self._lookups.get((target, source))
            if cached is not None:
                return cached
            found = self._find(target, source)
            if found is not None:
                found.setflags(write=False)
                self._lookups[(target, source)] = found
                return found
        known = sorted(self.frames())
        raise TransformMissingError(
            f"no static transform connects {source!r} to {target!r} (known frames: {known}); "
            "check that /tf_static is published (transient local) and names these frames"
        )

    def _find(self, target: str, source: str) -> Matrix4 | None:
        """T_target_source through the lowest common ancestor, or None; the lock is held."""
        if target == source:
            return np.eye(4, dtype=np.float64)
        up_source = self._chain_to_root(source)
        up_target = self._chain_to_root(target)
        roots_source = {frame: m for frame, m in up_source}
        for frame, root_from_target in up_target:
            if frame in roots_source:
                # frame is the lowest common ancestor: T_t_s = inv(T_a_t) @ T_a_s
                found: Matrix4 = np.linalg.inv(root_from_target) @ roots_source[frame]
                return found
        return None

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
