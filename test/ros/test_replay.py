"""BagPlayer over real DDS (rclpy): order, stamps, bytes, drop windows, /clock, remap, loop."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peftdml_ros.core.errors import ConfigError

pytestmark = pytest.mark.ros

PLAY_WALL_S = 1.0  # each full pass is paced to take about this long
TOPICS = ("/lidar/points", "/gnss/fix", "/radar/front/points", "/ground_truth/detections")


@pytest.fixture(scope="module")
def bag(synth_bag: Path) -> Path:
    """The session's one-scene bag (test/ros/conftest.py)."""
    return synth_bag


@pytest.fixture(scope="module")
def recorded(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(log time ns, raw CDR)] of the bag."""
    from rosbags.rosbag2 import Reader

    out: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    with Reader(bag) as reader:
        for conn, stamp, raw in reader.messages():
            out[conn.topic].append((stamp, bytes(raw)))
    return out


@pytest.fixture(scope="module")
def rate(recorded: dict[str, list[tuple[int, bytes]]]) -> float:
    stamps = [s for items in recorded.values() for s, _ in items]
    return (max(stamps) - min(stamps)) * 1e-9 / PLAY_WALL_S


@pytest.fixture
def nodes(rclpy_context: Any) -> Iterator[tuple[Any, Any]]:
    """(player node, listener node spun by an executor thread)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    player_node = rclpy.create_node("replay_player", context=rclpy_context)
    listener = rclpy.create_node("replay_listener", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(listener)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield player_node, listener
    finally:
        executor.shutdown()
        thread.join(timeout=5)
        listener.destroy_node()
        player_node.destroy_node()


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _subscribe_raw(listener: Any, topic: str, msg_type: Any, sink: list[bytes]) -> Any:
    from peftdml_ros.ros.replay import DEFAULT_QOS

    return listener.create_subscription(msg_type, topic, sink.append, DEFAULT_QOS, raw=True)


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _types() -> dict[str, Any]:
    from sensor_msgs.msg import NavSatFix, PointCloud2
    from vision_msgs.msg import Detection3DArray

    return {
        "/lidar/points": PointCloud2,
        "/gnss/fix": NavSatFix,
        "/radar/front/points": PointCloud2,
        "/ground_truth/detections": Detection3DArray,
    }


def test_replay_delivers_every_message_in_order_byte_for_byte(
    nodes: tuple[Any, Any], bag: Path, recorded: Any, rate: float
) -> None:
    from rclpy.serialization import deserialize_message

    from peftdml_ros.ros.replay import BagPlayer, ReplayOptions

    player_node, listener = nodes
    received: dict[str, list[bytes]] = {topic: [] for topic in TOPICS}
    for topic, msg_type in _types().items():
        _subscribe_raw(listener, topic, msg_type, received[topic])
    player = BagPlayer(bag, player_node, ReplayOptions(rate=rate, topics=TOPICS))
    assert player.wait_for_subscribers(timeout_s=5.0)
    started = time.monotonic()
    summary = player.play()
    elapsed = time.monotonic() - started
    player.close()
    expected = {topic: recorded[topic] for topic in TOPICS}
    assert _wait_for(lambda: all(len(received[t]) == len(expected[t]) for t in TOPICS))
    for topic in TOPICS:
        assert received[topic] == [raw for _, raw in expected[topic]], topic
        stamps = [_stamp_ns(deserialize_message(raw, _types()[topic])) for raw in received[topic]]
        assert stamps == [stamp for stamp, _ in expected[topic]]
    assert summary.total_published == sum(len(v) for v in expected.values())
    assert summary.passes == 1 and not summary.stopped
    # Paced: about PLAY_WALL_S, not as fast as possible.
    assert 0.8 * PLAY_WALL_S < elapsed < 3 * PLAY_WALL_S


def test_drop_window_silences_the_topic(
    nodes: tuple[Any, Any], bag: Path, recorded: Any, rate: float
) -> None:
    from peftdml_ros.ros.replay import BagPlayer, DropWindow, ReplayOptions

    player_node, listener = nodes
    lidar: list[bytes] = []
    gnss: list[bytes] = []
    _subscribe_raw(listener, "/lidar/points", _types()["/lidar/points"], lidar)
    _subscribe_raw(listener, "/gnss/fix", _types()["/gnss/fix"], gnss)
    start_ns = min(s for items in recorded.values() for s, _ in items)
    duration_s = rate * PLAY_WALL_S
    window = DropWindow("/lidar/points", 0.25 * duration_s, 0.6 * duration_s)
    options = ReplayOptions(rate=rate, topics=("/lidar/points", "/gnss/fix"), drops=(window,))
    player = BagPlayer(bag, player_node, options)
    assert player.wait_for_subscribers(timeout_s=5.0)
    summary = player.play()
    player.close()
    kept = [
        raw
        for s, raw in recorded["/lidar/points"]
        if not window.covers("/lidar/points", (s - start_ns) * 1e-9)
    ]
    silenced = len(recorded["/lidar/points"]) - len(kept)
    assert silenced > 0 and kept
    ok = _wait_for(lambda: len(lidar) == len(kept) and len(gnss) == len(recorded["/gnss/fix"]))
    assert ok, (len(lidar), len(kept), len(gnss), len(recorded["/gnss/fix"]))
    assert lidar == kept
    assert summary.dropped == {"/lidar/points": silenced}


def test_clock_remap_and_latched_tf_static(
    nodes: tuple[Any, Any], bag: Path, recorded: Any, rate: float, rclpy_context: Any
) -> None:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from tf2_msgs.msg import TFMessage

    from peftdml_ros.ros.replay import BagPlayer, ReplayOptions

    player_node, listener = nodes
    clock: list[int] = []
    remapped: list[bytes] = []
    listener.create_subscription(
        Clock, "/clock", lambda m: clock.append(m.clock.sec * 1_000_000_000 + m.clock.nanosec), 100
    )
    _subscribe_raw(listener, "/sim/gnss", _types()["/gnss/fix"], remapped)
    options = ReplayOptions(
        rate=rate,
        clock=True,
        topics=("/gnss/fix", "/tf_static"),
        remaps={"/gnss/fix": "/sim/gnss"},
    )
    player = BagPlayer(bag, player_node, options)
    assert player.wait_for_subscribers(["/gnss/fix"], timeout_s=5.0)
    player.play()
    gnss_stamps = [s for s, _ in recorded["/gnss/fix"]]
    assert _wait_for(lambda: len(remapped) == len(gnss_stamps))
    assert _wait_for(lambda: bool(clock) and clock[-1] == gnss_stamps[-1])
    assert clock == sorted(clock) and clock[0] >= recorded["/tf_static"][0][0]
    assert len(clock) > len(gnss_stamps)  # ticks between messages too
    # A subscriber that starts after the replay still gets the sensor mounts (transient local).
    latched: list[Any] = []
    qos = QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    listener.create_subscription(TFMessage, "/tf_static", latched.append, qos)
    assert _wait_for(lambda: len(latched) == 1)
    assert {t.child_frame_id for t in latched[0].transforms} >= {
        "lidar_top",
        "cam_front",
        "radar_front",
    }
    player.close()


def test_loop_replays_and_stop_ends_it(
    nodes: tuple[Any, Any], bag: Path, recorded: Any, rate: float
) -> None:
    from peftdml_ros.ros.replay import BagPlayer, ReplayOptions

    player_node, listener = nodes
    gnss: list[bytes] = []
    _subscribe_raw(listener, "/gnss/fix", _types()["/gnss/fix"], gnss)
    player = BagPlayer(
        bag, player_node, ReplayOptions(rate=rate * 2, loops=2, topics=("/gnss/fix",))
    )
    assert player.wait_for_subscribers(timeout_s=5.0)
    summary = player.play()
    n = len(recorded["/gnss/fix"])
    assert summary.passes == 2 and summary.published == {"/gnss/fix": 2 * n}
    assert _wait_for(lambda: len(gnss) == 2 * n)
    assert gnss[:n] == gnss[n:]  # stamps jump back at the restart
    # Endless loop, stopped from another thread.
    forever = BagPlayer(
        bag, player_node, ReplayOptions(rate=rate, loop=True, topics=("/gnss/fix",))
    )
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(forever.play()))
    thread.start()
    time.sleep(0.3)
    forever.stop()
    thread.join(timeout=2.0)
    assert not thread.is_alive() and result[0].stopped
    forever.close()
    player.close()


def test_bad_options_and_topics(nodes: tuple[Any, Any], bag: Path, tmp_path: Path) -> None:
    from peftdml_ros.ros.replay import (
        BagPlayer,
        BagReadError,
        DropWindow,
        ReplayOptions,
        parse_remap,
    )

    player_node, _ = nodes
    for text in ("/lidar/points", "/lidar/points@3-1", "@1-2", "/lidar/points@a-b"):
        with pytest.raises(ConfigError, match="TOPIC@T0-T1"):
            DropWindow.parse(text)
    assert DropWindow.parse("/radar/front/points@1.5-4") == DropWindow(
        "/radar/front/points", 1.5, 4.0
    )
    with pytest.raises(ConfigError, match="FROM:=TO"):
        parse_remap("/a=/b")
    with pytest.raises(ConfigError, match="rate"):
        ReplayOptions(rate=0)
    with pytest.raises(ConfigError, match="/no/such"):
        BagPlayer(bag, player_node, ReplayOptions(topics=("/no/such",)))
    with pytest.raises(BagReadError, match=r"metadata\.yaml"):
        BagPlayer(tmp_path, player_node)


def test_cli_replays_a_topic(bag: Path, repo_root: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peftdml_ros.tools.cli",
            "replay",
            str(bag),
            "--rate",
            "50",
            "--topics",
            "/gnss/fix",
            "--delay",
            "0",
            "--drop",
            "/gnss/fix@0-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout and "dropped" in proc.stdout


def test_bag_type_hashes_match_the_rclpy_types(nodes: tuple[Any, Any], bag: Path) -> None:
    """The bag's type_description_hash is what ROS 2 computes for the same type (Kilted)."""
    from rosbags.rosbag2 import Reader

    from peftdml_ros.ros.replay import BagPlayer

    player_node, _ = nodes
    player = BagPlayer(bag, player_node)
    with Reader(bag) as reader:
        digests = {c.topic: c.digest for c in reader.connections}
    for topic in player.publishers:
        (info,) = player_node.get_publishers_info_by_topic(topic)
        assert str(info.topic_type_hash) == digests[topic], topic
    player.close()
