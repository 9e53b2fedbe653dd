"""Play a rosbag2 bag over ROS 2 with rclpy: pacing, /clock, loop, remap and sensor dropout.

`ros2 bag play` is not on PyPI, so a venv without a ROS install replays with this instead (on a
ROS install both work on the same bags). The bag is read with rosbags; each message's raw CDR
bytes are published unchanged through an rclpy publisher of the recorded type
(`Publisher.publish(bytes)` publishes a serialized message), so nothing is deserialized and a
replayed message is byte-for-byte the recorded one.

- Messages go out in log-time order, paced so that bag time advances `rate` times as fast as
  wall time. Header stamps are the recorded (sensor) stamps: run consumers with
  `use_sim_time:=true` and `--clock`, or their stale-stamp checks will reject the data.
- `clock=True` publishes rosgraph_msgs/Clock on /clock: before each message, and every
  `clock_period_s` of wall time while waiting.
- /tf_static is published transient-local (latched) so late subscribers still get the mounts;
  other topics use the QoS recorded in the bag (reliable, volatile when none is recorded).
- A drop window silences a topic for [t0, t1) seconds after the bag's first message, to
  rehearse a sensor dropout; `loop` restarts from the beginning (stamps and /clock jump back).

Threading: `play()` blocks the calling thread; `stop()` (any thread) ends it within one clock
period. Publishing needs no executor, so the caller may spin its node elsewhere or not at all.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from peftdml_ros.core.errors import ConfigError, InputDataError

TF_STATIC_TOPIC = "/tf_static"
CLOCK_TOPIC = "/clock"
DEFAULT_QOS = QoSProfile(
    depth=10,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Latched, as tf2_ros's static broadcaster publishes; a bag from a robot holds one message per
# static broadcaster, and a late subscriber needs all of them, not only the last.
TF_STATIC_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


class BagReadError(InputDataError):
    """The bag cannot be opened or read (missing, not rosbag2, unknown message type)."""


@dataclass(frozen=True)
class DropWindow:
    """Silence `topic` (bag name, before remapping) for bag-relative times [start_s, end_s)."""

    topic: str
    start_s: float
    end_s: float

    @staticmethod
    def parse(text: str) -> DropWindow:
        """'TOPIC@T0-T1', seconds after the bag's first message, e.g. /lidar/points@2-4.5."""
        topic, sep, window = text.rpartition("@")
        start, dash, end = window.partition("-")
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            start_s = end_s = float("nan")
        if not sep or not topic or not dash or not 0 <= start_s < end_s:
            raise ConfigError(
                f"drop window {text!r} must look like TOPIC@T0-T1 with 0 <= T0 < T1 seconds "
                "after the bag start, e.g. /lidar/points@2-4.5"
            )
        return DropWindow(topic, start_s, end_s)

    def covers(self, topic: str, relative_s: float) -> bool:
        return topic == self.topic and self.start_s <= relative_s < self.end_s


def parse_remap(text: str) -> tuple[str, str]:
    """'FROM:=TO' -> (FROM, TO)."""
    source, sep, target = text.partition(":=")
    if not sep or not source or not target:
        raise ConfigError(f"remap {text!r} must look like FROM:=TO, e.g. /lidar/points:=/points")
    return source, target


@dataclass(frozen=True)
class ReplayOptions:
    """How to play. topics: bag topics to play (None: all). remaps: bag topic -> published
    topic. loops: how many passes (None: until stop() when loop is set, else 1)."""

    rate: float = 1.0
    clock: bool = False
    clock_period_s: float = 0.01
    loop: bool = False
    loops: int | None = None
    topics: tuple[str, ...] | None = None
    remaps: dict[str, str] = field(default_factory=dict)
    drops: tuple[DropWindow, ...] = ()

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"rate {self.rate} must be > 0 (1 = real time)")
        if not self.clock_period_s > 0:
            raise ConfigError(f"clock_period_s {self.clock_period_s} must be > 0")
        if self.loops is not None and self.loops < 1:
            raise ConfigError(f"loops {self.loops} must be >= 1")

    @property
    def passes(self) -> int | None:
        """Number of passes over the bag; None = until stopped."""
        if self.loops is not None:
            return self.loops
        return None if self.loop else 1


@dataclass
class ReplaySummary:
    """What one play() did: messages published and dropped per bag topic, passes, wall time."""

    published: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    wall_s: float = 0.0
    stopped: bool = False

    @property
    def total_published(self) -> int:
        return sum(self.published.values())


def message_class(msgtype: str) -> Any:
    """The rclpy message class of 'pkg/msg/Name'."""
    package, kind, name = msgtype.split("/")
    try:
        module = importlib.import_module(f"{package}.{kind}")
        return getattr(module, name)
    except (ImportError, AttributeError) as error:
        raise BagReadError(
            f"message type {msgtype} is not available to rclpy ({error}); install or build the "
            f"{package} interface package, or leave its topic out with --topics"
        ) from error


def qos_from_bag(profiles: Sequence[Any]) -> QoSProfile:
    """The rclpy QoS of a bag connection's first offered profile (DEFAULT_QOS when none)."""
    if not profiles:
        return DEFAULT_QOS
    offered = profiles[0]
    reliability = (
        ReliabilityPolicy.BEST_EFFORT
        if offered.reliability.name == "BEST_EFFORT"
        else ReliabilityPolicy.RELIABLE
    )
    durability = (
        DurabilityPolicy.TRANSIENT_LOCAL
        if offered.durability.name == "TRANSIENT_LOCAL"
        else DurabilityPolicy.VOLATILE
    )
    history = (
        HistoryPolicy.KEEP_ALL if offered.history.name == "KEEP_ALL" else (HistoryPolicy.KEEP_LAST)
    )
    return QoSProfile(
        depth=max(1, int(offered.depth)),
        history=history,
        reliability=reliability,
        durability=durability,
    )


class BagPlayer:
    """Publishes a bag's messages on `node`. Create, optionally wait for subscribers, play()."""

    def __init__(self, bag: Path | str, node: Node, options: ReplayOptions | None = None) -> None:
        from rosbags.rosbag2 import Reader

        self.bag = Path(bag)
        self.node = node
        self.options = options or ReplayOptions()
        self._stop = threading.Event()
        if not (self.bag / "metadata.yaml").is_file():
            raise BagReadError(f"{self.bag}: no metadata.yaml; give a rosbag2 bag directory")
        try:
            self._reader = Reader(self.bag)
            self._reader.open()
        except Exception as error:  # rosbags raises several types; all mean "not a usable bag"
            raise BagReadError(f"{self.bag}: cannot open the bag ({error})") from error
        self.connections = self._select_connections()
        self.publishers: dict[str, Any] = {}
        for conn in self.connections:
            if conn.topic not in self.publishers:
                self.publishers[conn.topic] = self._create_publisher(conn)
        self.clock_publisher = None
        if self.options.clock:
            clock_type = message_class("rosgraph_msgs/msg/Clock")
            self.clock_publisher = node.create_publisher(clock_type, CLOCK_TOPIC, CLOCK_QOS)
            self._clock_type = clock_type

    def _select_connections(self) -> list[Any]:
        connections = list(self._reader.connections)
        wanted = self.options.topics
        if wanted is not None:
            available = {c.topic for c in connections}
            unknown = sorted(set(wanted) - available)
            if unknown:
                raise ConfigError(
                    f"topic(s) {unknown} are not in {self.bag}; it has {sorted(available)}"
                )
            connections = [c for c in connections if c.topic in wanted]
        return connections

    def _create_publisher(self, conn: Any) -> Any:
        topic = self.options.remaps.get(conn.topic, conn.topic)
        if conn.topic == TF_STATIC_TOPIC:
            qos = TF_STATIC_QOS
        else:
            qos = qos_from_bag(getattr(conn.ext, "offered_qos_profiles", []))
        return self.node.create_publisher(message_class(conn.msgtype), topic, qos)

    def close(self) -> None:
        """Close the bag and destroy the publishers (the node stays the caller's)."""
        self._reader.close()
        for publisher in self.publishers.values():
            self.node.destroy_publisher(publisher)
        if self.clock_publisher is not None:
            self.node.destroy_publisher(self.clock_publisher)
        self.publishers = {}

    def stop(self) -> None:
        """Ask play() to return (thread-safe)."""
        self._stop.set()

    def wait_for_subscribers(
        self, topics: Iterable[str] | None = None, timeout_s: float = 5.0
    ) -> bool:
        """Wait until each of `topics` (bag names; all when None) has a matched subscriber."""
        names = list(self.publishers) if topics is None else list(topics)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if all(self.publishers[n].get_subscription_count() > 0 for n in names):
                return True
            time.sleep(0.01)
        return False

    def play(self) -> ReplaySummary:
        """Publish the bag (once, `loops` times, or until stop() with loop); blocks."""
        summary = ReplaySummary()
        started = time.monotonic()
        passes = self.options.passes
        while not self._stop.is_set() and (passes is None or summary.passes < passes):
            self._play_once(summary)
            if not self._stop.is_set():
                summary.passes += 1
        summary.stopped = self._stop.is_set()
        summary.wall_s = time.monotonic() - started
        return summary

    def _play_once(self, summary: ReplaySummary) -> None:
        rate = self.options.rate
        # Times are relative to the whole bag's start, also when only some topics are played.
        bag_start_ns = int(self._reader.start_time)
        wall_start = time.monotonic()
        self._publish_clock(bag_start_ns)
        for conn, stamp_ns, raw in self._reader.messages(connections=self.connections):
            relative_s = (stamp_ns - bag_start_ns) * 1e-9
            if not self._wait_until(
                wall_start + relative_s / rate, stamp_ns, bag_start_ns, wall_start
            ):
                return
            if any(d.covers(conn.topic, relative_s) for d in self.options.drops):
                summary.dropped[conn.topic] = summary.dropped.get(conn.topic, 0) + 1
                continue
            self._publish_clock(stamp_ns)
            self.publishers[conn.topic].publish(bytes(raw))
            summary.published[conn.topic] = summary.published.get(conn.topic, 0) + 1

    def _wait_until(
        self, wall_target: float, stamp_ns: int, bag_start_ns: int, wall_start: float
    ) -> bool:
        """Sleep until `wall_target` (monotonic s), ticking /clock; False when stopped.

        Ticks never pass `stamp_ns`, the next message's time, so /clock never runs backwards.
        """
        period = self.options.clock_period_s
        while True:
            remaining = wall_target - time.monotonic()
            if remaining <= 0:
                return not self._stop.is_set()
            if self._stop.wait(min(remaining, period)):
                return False
            if self.clock_publisher is not None:
                elapsed_ns = int((time.monotonic() - wall_start) * self.options.rate * 1e9)
                self._publish_clock(min(bag_start_ns + elapsed_ns, stamp_ns))

    def _publish_clock(self, stamp_ns: int) -> None:
        if self.clock_publisher is None:
            return
        msg = self._clock_type()
        msg.clock.sec, msg.clock.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        self.clock_publisher.publish(msg)
