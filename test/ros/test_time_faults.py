"""Time faults over real DDS with sim time: a /clock that stops, a /clock that jumps back, and
stamps from the future (docs/sync.md, "Time faults").

The node runs in-process (test_node's harness); frames are timed where they leave the
synchronizer, on the steady clock, so the inference time of the CPU model does not enter the
bounds checked here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rosgraph_msgs.msg import Clock
from test_node import (  # the same harness and hand-made messages as the node tests
    T0_NS,
    Harness,
    _front_rig,
    _jpeg,
    _lidar,
    wait_for,
)

from peftdml_ros.core.sync import SyncedFrame
from peftdml_ros.ros.conversions import ns_to_stamp

pytestmark = [pytest.mark.ros, pytest.mark.slow]

MS = 1_000_000
STEADY_DEADLINE_NS = 500 * MS
# Slack (s) on top of a steady deadline for the executor to get to its next poll: generous,
# the machines running the suite may be busy with other work.
SLACK_S = 5.0


class Releases:
    """When (time.monotonic_ns) each frame left the node's synchronizer, by frame stamp."""

    def __init__(self, node: Any) -> None:
        self._lock = threading.Lock()
        self._at: dict[int, int] = {}
        hand_off: Callable[[list[SyncedFrame]], None] = node._hand_off

        def timed(frames: list[SyncedFrame]) -> None:
            now_ns = time.monotonic_ns()
            with self._lock:
                for frame in frames:
                    self._at.setdefault(frame.stamp_ns, now_ns)
            hand_off(frames)

        node._hand_off = timed  # the executor thread calls it for every frame that leaves

    def at(self, stamp_ns: int) -> int | None:
        with self._lock:
            return self._at.get(stamp_ns)

    def wait(self, stamp_ns: int, timeout_s: float, what: str) -> int:
        wait_for(lambda: self.at(stamp_ns) is not None, timeout_s, what)
        released = self.at(stamp_ns)
        assert released is not None
        return released


@pytest.fixture
def harness(rclpy_context: Any, repo_root: Path) -> Iterator[Callable[..., Harness]]:
    """Makes harnesses (node + probe, sim time) with parameter overrides; closes them after."""
    made: list[Harness] = []

    def make(*overrides: str) -> Harness:
        made.append(Harness(rclpy_context, repo_root, list(overrides)))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _node_clock_ns(h: Harness) -> int:
    return int(h.node.get_clock().now().nanoseconds)


def _set_clock_exactly(h: Harness, stamp_ns: int) -> None:
    """Publish /clock and wait until the node's clock reads it (also when going back)."""
    h.clock_pub.publish(Clock(clock=ns_to_stamp(stamp_ns)))
    wait_for(lambda: _node_clock_ns(h) == stamp_ns, 10.0, "the node's sim time")


def _accepted(h: Harness, sensor: str) -> int:
    return next(int(s.accepted) for s in h.node.health_snapshot()[0] if s.name == sensor)


def _pending(h: Harness) -> int:
    with h.node._lock:
        return int(h.node._sync.stats().pending_frames)


def _frame_status(h: Harness, stamp_ns: int) -> dict[str, str]:
    wait_for(lambda: stamp_ns in h.record.frame_table(), 30.0, "the frame's status")
    return h.record.frame_table()[stamp_ns]


def _pipeline_shows(h: Harness, key: str, value: str) -> bool:
    return h.pipeline_status().get(key) == value


def test_stopped_clock_releases_pending_frames_on_the_steady_clock(harness: Any) -> None:
    # Timeouts far beyond the test: only the steady deadline can end a frame's wait.
    h = harness(
        f"sync.steady_deadline_s:={STEADY_DEADLINE_NS / 1e9}",
        "sync.sensor_timeout_s:=30.0",
        "sync.reference_timeout_s:=30.0",
    )
    releases = Releases(h.node)
    lidar_pub, _, cam_pub = _front_rig(h)
    h.set_clock(T0_NS)
    # The camera is alive, but its one message is too far from the frames: they wait for it.
    cam_pub.publish(_jpeg(T0_NS - 100 * MS))
    wait_for(lambda: _accepted(h, "CAM_FRONT") == 1, 10.0, "the camera")

    # /clock stays at T0 from here on, while the LiDAR goes on publishing. One frame at a
    # time: a frame released while the worker is busy would be replaced by the next one.
    stamps = [T0_NS + k * 50 * MS for k in range(3)]
    for stamp in stamps:
        sent_ns = time.monotonic_ns()
        lidar_pub.publish(_lidar(stamp))
        released = releases.wait(stamp, 10.0 + SLACK_S, "a frame released by the steady clock")
        waited_s = (released - sent_ns) / 1e9
        assert STEADY_DEADLINE_NS / 1e9 <= waited_s <= STEADY_DEADLINE_NS / 1e9 + SLACK_S
        status = _frame_status(h, stamp)
        assert status["trigger"] == "LIDAR_TOP" and status["sensor.CAM_FRONT"] == "false"
    assert _node_clock_ns(h) == T0_NS  # sim time never moved: the steady clock did it all

    # A stamp beyond input.max_stamp_future_s (0.5 s) ahead of the stopped clock is refused.
    lidar_pub.publish(_lidar(T0_NS + 5_000 * MS))
    wait_for(
        lambda: h.sensor_status("LIDAR_TOP").get("rejected.future_stamp") == "1",
        10.0,
        "the future stamp counted in /diagnostics",
    )
    wait_for(
        lambda: _pipeline_shows(h, "frames_released_steady_deadline", "3"),
        10.0,
        "the steady-deadline releases counted in /diagnostics",
    )
    assert h.pipeline_status()["clock_jumps_back"] == "0"
    assert _accepted(h, "LIDAR_TOP") == len(stamps) and _pending(h) == 0


def test_clock_jump_back_releases_pending_frames_and_starts_over(harness: Any) -> None:
    # A steady deadline far beyond the waits below: what releases frames here is the jump.
    h = harness(
        "sync.steady_deadline_s:=60.0",
        "sync.sensor_timeout_s:=30.0",
        "sync.reference_timeout_s:=30.0",
    )
    releases = Releases(h.node)
    lidar_pub, _, cam_pub = _front_rig(h)
    late_ns = T0_NS + 20_000 * MS
    h.set_clock(late_ns)
    cam_pub.publish(_jpeg(late_ns - 100 * MS))
    wait_for(lambda: _accepted(h, "CAM_FRONT") == 1, 10.0, "the camera")
    lidar_pub.publish(_lidar(late_ns))
    wait_for(lambda: _pending(h) == 1, 10.0, "a frame waiting for the camera")

    _set_clock_exactly(h, T0_NS)  # sim time reset: 20 s back, past sync.jump_back_threshold_s
    releases.wait(late_ns, SLACK_S, "the pending frame released at the jump")
    assert _frame_status(h, late_ns)["sensor.CAM_FRONT"] == "false"

    # On the new timeline the camera has not been heard: it is not waited for, as at start-up
    # (were its arrival before the jump remembered, this frame would wait 60 s).
    new_ns = T0_NS + 50 * MS
    lidar_pub.publish(_lidar(new_ns))
    releases.wait(new_ns, SLACK_S, "the first frame after the jump, not waiting")
    assert _frame_status(h, new_ns)["sensor.CAM_FRONT"] == "false"
    assert _node_clock_ns(h) == T0_NS

    # A message stamped on the old timeline is now 20 s in the future: refused, counted.
    cam_pub.publish(_jpeg(late_ns))
    wait_for(
        lambda: h.sensor_status("CAM_FRONT").get("rejected.future_stamp") == "1",
        10.0,
        "the old-timeline stamp counted as future_stamp",
    )
    wait_for(
        lambda: _pipeline_shows(h, "clock_jumps_back", "1"),
        10.0,
        "the clock jump counted in /diagnostics",
    )
    assert h.pipeline_status()["frames_released_steady_deadline"] == "0"
