"""Training frames = run-time frames: one generated scene through the node's path and through
the dataset path gives, for every keyframe, the same sensor choice and the same engine inputs.

Node path: the scene's bag (data.bag_writer) read with rosbags, each message deserialized into
the rclpy type the node subscribes to, converted by the node's own code (PeftdmlNode._convert:
ros.conversions with the /tf_static transforms and CameraInfo calibrations), fed to the node's
FrameSynchronizer (its sync_config from config/peftdml.yaml) on a simulated clock with a 100 Hz
poll timer, turned into a Frame by the node's build_frame and into engine inputs by the core
Preprocessor. Dataset path: NuScenesReader with the node's settings -> Preprocessor.

No DDS is involved: the node's methods run on a stand-in holding only the state they read.

GNSS is the one sensor a frame never waits for (docs/sync.md): the node takes the frame rule's
fix among the fixes received when the frame leaves, the reader among all fixes. With a GNSS
latency below the frame's wait both are the fix of the frame's own LiDAR sweep; in the "late
GNSS" profile (GNSS slower than every other sensor) some frames leave before their own fix
arrives and hold an earlier one: that is asserted, and so is everything else being equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Imu, NavSatFix, PointCloud2
from tf2_msgs.msg import TFMessage

from peftdml_ros.core import frame_rule
from peftdml_ros.core.preprocess import Preprocessor
from peftdml_ros.core.sync import FrameSynchronizer, SyncedFrame, SyncSensor
from peftdml_ros.core.types import Modality
from peftdml_ros.data import nuscenes_reader as nr
from peftdml_ros.ros import conversions, params
from peftdml_ros.ros.node import PeftdmlNode, Received, build_frame, sync_config
from peftdml_ros.ros.params import NodeConfig
from peftdml_ros.ros.tf_buffer import StaticTransformStore

pytestmark = pytest.mark.ros

MS = 1_000_000
POLL_NS = 10 * MS
# Transport + driver delay after the stamp, per modality: the orders of magnitude of a vehicle
# (cameras the slowest: JPEG encoding). "stamp order" delivers everything 20 ms late.
LATENCY_PROFILES: dict[str, dict[Modality, int]] = {
    "stamp order": {m: 20 * MS for m in Modality},
    "vehicle": {
        Modality.LIDAR: 15 * MS,
        Modality.RADAR: 10 * MS,
        Modality.CAMERA: 30 * MS,
        Modality.IMU: 2 * MS,
        Modality.GNSS: 7 * MS,
    },
    # A receiver that reports 60 ms after its fix: later than every other sensor, so frames
    # that need no camera wait leave before their own sweep's fix is in.
    "late GNSS": {
        Modality.LIDAR: 15 * MS,
        Modality.RADAR: 10 * MS,
        Modality.CAMERA: 30 * MS,
        Modality.IMU: 2 * MS,
        Modality.GNSS: 60 * MS,
    },
}


def _flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _node_config(repo_root: Path) -> NodeConfig:
    text = (repo_root / "config" / "peftdml.yaml").read_text()
    tree = yaml.safe_load(text)["/**"]["ros__parameters"]
    return params.config_from_flat(dict(_flatten(tree)))


def _bag_messages(bag: Path) -> Iterator[tuple[str, int, bytes]]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        for connection, log_time_ns, raw in reader.messages():
            yield connection.topic, log_time_ns, bytes(raw)


_TYPES: dict[Modality, Any] = {
    Modality.LIDAR: PointCloud2,
    Modality.RADAR: PointCloud2,
    Modality.CAMERA: CompressedImage,
    Modality.IMU: Imu,
    Modality.GNSS: NavSatFix,
}


@dataclass(frozen=True)
class NodeFrame:
    """A frame the node's synchronizer emitted, and the stamps of the GNSS fixes it had
    received by then (in arrival order)."""

    synced: SyncedFrame
    gnss_received_ns: tuple[int, ...]


def _node_frames(
    bag: Path, config: NodeConfig, latency_ns: dict[Modality, int]
) -> list[NodeFrame]:
    """The bag through the node's conversions and synchronizer, in arrival order."""
    node = SimpleNamespace(  # what PeftdmlNode._convert / _on_tf_static read
        _config=config,
        _tf=StaticTransformStore(),
        _gnss=conversions.GnssConverter(),
        _calibrations={},
    )
    by_topic = {s.topic: s for s in config.sensors}
    info_topics = {s.camera_info_topic: s for s in config.sensors if s.camera_info_topic}
    arrivals: list[tuple[int, int, Any, Any]] = []  # (arrival, sequence, spec, message)
    for seq, (topic, stamp_ns, raw) in enumerate(_bag_messages(bag)):
        if topic == "/tf_static":
            PeftdmlNode._on_tf_static(node, deserialize_message(raw, TFMessage))
        elif topic in info_topics:  # CameraInfo is written before its image (same stamp)
            msg = deserialize_message(raw, CameraInfo)
            node._calibrations[info_topics[topic].name] = conversions.camera_info_to_calibration(
                msg
            )
        elif topic in by_topic:
            spec = by_topic[topic]
            msg = deserialize_message(raw, _TYPES[spec.modality])
            arrivals.append((stamp_ns + latency_ns[spec.modality], seq, spec, msg))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    sync = FrameSynchronizer(
        [SyncSensor(s.name, s.modality) for s in config.sensors], sync_config(config)
    )
    frames: list[NodeFrame] = []
    gnss: list[int] = []

    def emitted(out: list[SyncedFrame]) -> None:
        frames.extend(NodeFrame(synced, tuple(gnss)) for synced in out)

    next_poll_ns = arrivals[0][0]
    for now_ns, _, spec, msg in arrivals:
        while next_poll_ns <= now_ns:
            emitted(sync.poll(next_poll_ns))
            next_poll_ns += POLL_NS
        payload, stamp_ns = PeftdmlNode._convert(node, spec, msg, now_ns)
        if spec.modality is Modality.GNSS:
            gnss.append(stamp_ns)  # buffered before add() releases any frame
        emitted(sync.add(spec.name, stamp_ns, Received(payload, now_ns), now_ns))
    end_ns = next_poll_ns + 2 * sync.config.deadline_ns
    while next_poll_ns <= end_ns:
        emitted(sync.poll(next_poll_ns))
        next_poll_ns += POLL_NS
    return frames


def _node_choice(synced: SyncedFrame) -> dict[str, int | None]:
    """Sensor -> stamp of the message the frame holds (IMU: the newest sample's)."""
    out: dict[str, int | None] = dict(synced.stamps_ns)
    out["imu"] = max((s.value.stamp_ns for s in synced.imu), default=None)
    out["imu_count"] = len(synced.imu)
    out["gnss"] = None if synced.gnss is None else synced.gnss.value.stamp_ns
    return out


def _reader_choice(record: nr.KeyframeRecord) -> dict[str, int | None]:
    frame = record.frame
    out: dict[str, int | None] = {c.sensor: c.stamp_ns for c in (*frame.lidar, *frame.radar)}
    out.update({c.sensor: c.stamp_ns for c in frame.cameras})
    out["imu"] = max((s.stamp_ns for s in frame.imu), default=None)
    out["imu_count"] = len(frame.imu)
    out["gnss"] = None if frame.gnss is None else frame.gnss.stamp_ns
    return out


@pytest.fixture(scope="module")
def config(repo_root: Path) -> NodeConfig:
    return _node_config(repo_root)


@pytest.fixture(scope="module")
def records(synth_dataroot: Path, config: NodeConfig) -> dict[int, nr.KeyframeRecord]:
    reader = nr.NuScenesReader(
        synth_dataroot,
        "v1.0-synth",
        lidar_sweeps=1,  # the node: one message per sensor and frame
        radar_sweeps=1,
        camera_downscale=config.camera_decode_reduction,
        slop_s={m.value: v for m, v in config.slop_s.items()},
        imu_window_s=config.imu_window_s,
        gnss_staleness_s=config.gnss_staleness_s,
        radar_filter=True,  # the node keeps the same clusters (core.radar)
        compensate_ego_motion=False,  # the node has /tf_static only
    )
    return {record.timestamp_ns: record for record in reader}


def _gnss_received_rule(frame: NodeFrame, config: NodeConfig) -> int | None:
    """The documented node rule: the frame rule's fix among the fixes received when the frame
    left (not among all fixes, as in the dataset)."""
    received = sorted(frame.gnss_received_ns)
    index = frame_rule.gnss_index(
        received,
        frame.synced.stamp_ns,
        round(config.slop_s[Modality.GNSS] * 1e9),
        round(config.gnss_staleness_s * 1e9),
    )
    return None if index is None else received[index]


@pytest.mark.parametrize("profile", sorted(LATENCY_PROFILES))
def test_node_and_dataset_build_the_same_keyframes(
    profile: str, synth_bag: Path, config: NodeConfig, records: dict[int, nr.KeyframeRecord]
) -> None:
    latency = LATENCY_PROFILES[profile]
    frames = {f.synced.stamp_ns: f for f in _node_frames(synth_bag, config, latency)}
    preprocess = Preprocessor()
    first_keyframe = min(records)
    assert len(records) >= 4
    earlier_fixes = 0
    for stamp_ns, record in sorted(records.items()):
        node_frame = frames[stamp_ns]  # every keyframe is a node frame (LiDAR-triggered)
        synced = node_frame.synced
        assert synced.trigger_sensor == "LIDAR_TOP" and not synced.waited_to_deadline
        node_choice, data_choice = _node_choice(synced), _reader_choice(record)
        # GNSS: the node's rule on the fixes it had received; the reader's fix is its own
        # sweep's. They agree whenever the GNSS latency is below the LiDAR's.
        assert node_choice.pop("gnss") == _gnss_received_rule(node_frame, config), stamp_ns
        data_fix_ns = data_choice.pop("gnss")
        assert data_fix_ns == stamp_ns
        if latency[Modality.GNSS] <= latency[Modality.LIDAR]:
            assert synced.gnss is not None and synced.gnss.value.stamp_ns == data_fix_ns
        node_fix_ns = None if synced.gnss is None else synced.gnss.value.stamp_ns
        earlier_fixes += node_fix_ns != data_fix_ns
        assert node_choice == data_choice, stamp_ns
        assert len([v for k, v in data_choice.items() if k in nr.KNOWN_CHANNELS]) == 12
        node_inputs = preprocess(build_frame(synced, config))
        data_inputs = preprocess(record.frame)
        for name, expected in data_inputs.items():
            got = node_inputs[name]
            if name == "gnss_features":
                continue
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} at {stamp_ns}")
        got, expected = node_inputs["gnss_features"][0], data_inputs["gnss_features"][0]
        if node_fix_ns is None:  # no fix received yet (the first keyframe, a late GNSS)
            assert not got.any() and stamp_ns == first_keyframe
            continue
        # Fix age: the same fix, or the node's is older by exactly the stamp difference.
        np.testing.assert_allclose(got[5], expected[5] + (data_fix_ns - node_fix_ns) / 1e9)
        # GNSS velocity: the node differences consecutive NavSatFix lat/lon on a sphere, the
        # reader the two ego poses in metres (the lat/lon were made from those poses): equal
        # to ~1e-4 relative. Before its second fix the node has no velocity at all.
        if stamp_ns != first_keyframe and node_fix_ns == data_fix_ns:
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    # The late profile reaches the difference (the others never do).
    assert (earlier_fixes > 0) is (latency[Modality.GNSS] > latency[Modality.LIDAR])
