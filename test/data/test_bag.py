"""nuScenes -> rosbag2 (MCAP): read the bag back with rosbags, compare with the dataset files."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from peftdml_ros.core import pointcloud
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import NUSCENES_CLASSES
from peftdml_ros.data import bag_writer as bw
from peftdml_ros.data import nuscenes_reader as nr
from peftdml_ros.data.rosbag_types import typestore

VERSION = "v1.0-synth"
MCAP_MAGIC = b"\x89MCAP0\r\n"


@pytest.fixture(scope="module")
def dataroot(synth3_dataroot: Path) -> Path:
    return synth3_dataroot


@pytest.fixture(scope="module")
def nusc(dataroot: Path) -> Any:
    return nr.open_nuscenes(dataroot, VERSION)


@pytest.fixture(scope="module")
def scene_names(nusc: Any) -> list[str]:
    return [s["name"] for s in nusc.scene][:2]


@pytest.fixture(scope="module")
def bag(dataroot: Path, scene_names: list[str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("bags") / "synth_bag"
    return bw.write_bag(dataroot, VERSION, out, scenes=scene_names, progress=False)


@pytest.fixture(scope="module")
def messages(bag: Any) -> dict[str, list[tuple[int, Any, bytes]]]:
    """topic -> [(log time ns, deserialized message, raw CDR)] in bag order."""
    store = typestore()
    out: dict[str, list[tuple[int, Any, bytes]]] = defaultdict(list)
    with Reader(bag.path) as reader:
        for conn, stamp, raw in reader.messages():
            out[conn.topic].append((stamp, store.deserialize_cdr(raw, conn.msgtype), raw))
    return out


def _scene_sample_data(nusc: Any, scene_names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """channel -> sample_data records of the chosen scenes, sorted by time."""
    scenes = {s["token"] for s in nusc.scene if s["name"] in scene_names}
    by_channel: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sd in nusc.sample_data:
        if nusc.get("sample", sd["sample_token"])["scene_token"] in scenes:
            by_channel[nr.sensor_channel(nusc, sd)].append(sd)
    return {ch: sorted(sds, key=lambda sd: sd["timestamp"]) for ch, sds in by_channel.items()}


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def test_metadata_is_rosbag2_mcap(bag: Any) -> None:
    meta = yaml.safe_load((bag.path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap"
    assert meta["version"] == 9
    (relative,) = meta["relative_file_paths"]
    assert relative.endswith(".mcap")
    data = (bag.path / relative).read_bytes()
    assert data.startswith(MCAP_MAGIC) and data.endswith(MCAP_MAGIC)
    counts = {
        t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]
    }
    assert sum(counts.values()) == meta["message_count"] == bag.messages
    assert counts == bag.topics
    topics = {
        t["topic_metadata"]["name"]: t["topic_metadata"] for t in meta["topics_with_message_count"]
    }
    static_qos = topics["/tf_static"]["offered_qos_profiles"]
    assert static_qos[0]["durability"] == "transient_local"
    assert static_qos[0]["reliability"] == "reliable"
    assert topics["/ground_truth/detections"]["type"] == "vision_msgs/msg/Detection3DArray"
    assert all(t["type_description_hash"].startswith("RIHS01_") for t in topics.values())
    assert meta["duration"]["nanoseconds"] > 0


def test_every_sample_data_is_one_message_with_its_stamp_and_frame(
    bag: Any, messages: Any, nusc: Any, scene_names: list[str]
) -> None:
    expected = _scene_sample_data(nusc, scene_names)
    assert set(expected) == set(nr.KNOWN_CHANNELS)
    for channel, sds in expected.items():
        for topic in bw.sensor_topics(channel):
            got = messages[topic]
            assert len(got) == len(sds), topic
            stamps = [sd["timestamp"] * 1000 for sd in sds]
            assert [log_time for log_time, _, _ in got] == stamps, topic
            assert [_stamp_ns(msg) for _, msg, _ in got] == stamps, topic
            assert {msg.header.frame_id for _, msg, _ in got} == {channel.lower()}


def test_topic_names_follow_the_convention(bag: Any) -> None:
    assert {
        "/lidar/points",
        "/radar/front/points",
        "/radar/back_right/points",
        "/camera/front/image/compressed",
        "/camera/back_left/camera_info",
        "/imu/data",
        "/gnss/fix",
        "/tf",
        "/tf_static",
        "/ground_truth/detections",
    } <= set(bag.topics)
    assert len(bag.topics) == 1 + 5 + 12 + 5


def test_bag_messages_are_in_time_order(bag: Any) -> None:
    with Reader(bag.path) as reader:
        stamps = [stamp for _, stamp, _ in reader.messages()]
    assert len(stamps) == bag.messages
    assert stamps == sorted(stamps)


def test_jpeg_bytes_are_unchanged_and_camera_info_has_calibration(
    messages: Any, nusc: Any, dataroot: Path, scene_names: list[str]
) -> None:
    expected = _scene_sample_data(nusc, scene_names)
    for channel in nr.CAMERA_CHANNELS:
        image_topic, info_topic = bw.sensor_topics(channel)
        for sd, (_, img, _), (_, info, _) in zip(
            expected[channel], messages[image_topic], messages[info_topic], strict=True
        ):
            assert img.format == "jpeg"
            assert bytes(img.data) == (dataroot / sd["filename"]).read_bytes()
            k = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"]
            np.testing.assert_array_equal(info.k.reshape(3, 3), k)
            np.testing.assert_array_equal(info.p.reshape(3, 4)[:, :3], k)
            assert (info.width, info.height) == (sd["width"], sd["height"]) == (1600, 900)
            assert info.distortion_model == "plumb_bob" and not info.d.any()


def test_lidar_point_values_are_equal(
    messages: Any, nusc: Any, dataroot: Path, scene_names: list[str]
) -> None:
    sds = _scene_sample_data(nusc, scene_names)["LIDAR_TOP"]
    for sd, (_, msg, _) in zip(sds, messages["/lidar/points"], strict=True):
        raw = np.fromfile(dataroot / sd["filename"], dtype=np.float32).reshape(-1, 5)
        cols = pointcloud.unpack_points(msg)
        assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "ring"]
        for i, name in enumerate(("x", "y", "z", "intensity")):
            assert cols[name].dtype == np.float32
            np.testing.assert_array_equal(cols[name], raw[:, i])
        assert cols["ring"].dtype == np.uint16
        np.testing.assert_array_equal(cols["ring"], raw[:, 4])


def test_radar_keeps_all_18_fields_and_bytes(
    messages: Any, nusc: Any, dataroot: Path, scene_names: list[str]
) -> None:
    sds = _scene_sample_data(nusc, scene_names)["RADAR_FRONT_LEFT"]
    for sd, (_, msg, _) in zip(sds, messages["/radar/front_left/points"], strict=True):
        pcd = nr.read_radar_pcd(dataroot / sd["filename"])
        assert [f.name for f in msg.fields] == [name for name, _ in pcd.fields]
        assert len(msg.fields) == 18 and msg.point_step == 43
        assert bytes(msg.data) == pcd.data
        cols = pointcloud.unpack_points(msg)
        assert cols["dyn_prop"].dtype == np.int8 and cols["id"].dtype == np.int16
        np.testing.assert_array_equal(cols["vx_comp"], pcd.points["vx_comp"])


def test_tf_static_gives_every_sensor_mount(
    messages: Any, nusc: Any, scene_names: list[str]
) -> None:
    statics = messages["/tf_static"]
    assert len(statics) == len(scene_names)  # once per scene, at its start
    assert statics[0][0] == min(stamp for items in messages.values() for stamp, _, _ in items)
    transforms = {t.child_frame_id: t for t in statics[0][1].transforms}
    assert set(transforms) == {ch.lower() for ch in nr.KNOWN_CHANNELS}
    sample = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    for channel, sd_token in sample["data"].items():
        cal = nusc.get(
            "calibrated_sensor", nusc.get("sample_data", sd_token)["calibrated_sensor_token"]
        )
        tf = transforms[channel.lower()]
        assert tf.header.frame_id == "base_link"
        t, q = tf.transform.translation, tf.transform.rotation
        np.testing.assert_allclose([t.x, t.y, t.z], cal["translation"])
        np.testing.assert_allclose([q.w, q.x, q.y, q.z], cal["rotation"])


def test_tf_follows_ego_poses(messages: Any, nusc: Any) -> None:
    tfs = messages["/tf"]
    assert len(tfs) > 0
    poses = {p["timestamp"] * 1000: p for p in nusc.ego_pose}
    for stamp, msg, _ in tfs[:50]:
        (tf,) = msg.transforms
        assert (tf.header.frame_id, tf.child_frame_id) == ("map", "base_link")
        assert _stamp_ns(tf) == stamp
        t = tf.transform.translation
        np.testing.assert_allclose([t.x, t.y, t.z], poses[stamp]["translation"])


def test_ground_truth_per_keyframe(messages: Any, nusc: Any, scene_names: list[str]) -> None:
    scenes = [s for s in nusc.scene if s["name"] in scene_names]
    samples = [s for s in nusc.sample if s["scene_token"] in {sc["token"] for sc in scenes}]
    gts = messages["/ground_truth/detections"]
    assert sorted(s["timestamp"] * 1000 for s in samples) == [stamp for stamp, _, _ in gts]
    n_boxes = 0
    for stamp, msg, _ in gts:
        assert msg.header.frame_id == "base_link" and _stamp_ns(msg) == stamp
        for det in msg.detections:
            (hyp,) = det.results
            assert hyp.hypothesis.class_id in NUSCENES_CLASSES
            assert hyp.hypothesis.score == 1.0
            assert det.bbox.size.x > 0 and det.id
            n_boxes += 1
    assert n_boxes > 0


def test_imu_and_gnss(messages: Any, dataroot: Path, scene_names: list[str], nusc: Any) -> None:
    imu = messages["/imu/data"]
    can = json.loads((dataroot / "can_bus" / f"{scene_names[0]}_ms_imu.json").read_text())
    first = imu[0][1]
    match = next(m for m in can if m["utime"] * 1000 == imu[0][0])
    assert first.header.frame_id == "base_link"
    np.testing.assert_allclose(
        [first.angular_velocity.x, first.angular_velocity.y, first.angular_velocity.z],
        match["rotation_rate"],
    )
    np.testing.assert_allclose(
        [first.orientation.w, first.orientation.x, first.orientation.y, first.orientation.z],
        match["q"],
    )
    gnss = messages["/gnss/fix"]
    assert len(gnss) == len(messages["/lidar/points"])
    location = nusc.get("log", nusc.scene[0]["log_token"])["location"]
    lat0, lon0 = nr.MAP_ORIGINS_LATLON_DEG[location]
    assert all(
        abs(m.latitude - lat0) < 0.05 and abs(m.longitude - lon0) < 0.05 for _, m, _ in gnss
    )


def test_summary_reports_speed(bag: Any) -> None:
    line = bag.line()
    assert "msg/s" in line and "x real time" in line
    assert bag.messages_per_s > 0 and bag.realtime_factor > 0


def test_cli_writes_one_scene(
    dataroot: Path, scene_names: list[str], tmp_path: Path, capsys: Any
) -> None:
    from peftdml_ros.tools.cli import main

    out = tmp_path / "one"
    rc = main(
        [
            "bag",
            str(dataroot),
            "--version",
            VERSION,
            "--out",
            str(out),
            "--scenes",
            scene_names[0],
            "--quiet",
        ]
    )
    assert rc == 0
    assert "msg/s" in capsys.readouterr().out
    assert (out / "metadata.yaml").is_file()
    # A second run refuses to overwrite, with a message that says what to do.
    rc = main(["bag", str(dataroot), "--version", VERSION, "--out", str(out), "--quiet"])
    assert rc == 1
    assert "exists; remove it" in capsys.readouterr().err


def test_unknown_scene_is_a_config_error(dataroot: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scene-9999"):
        bw.write_bag(dataroot, VERSION, tmp_path / "x", scenes=["scene-9999"], progress=False)
    assert not (tmp_path / "x").exists()


def test_corrupt_sensor_file_aborts_with_its_name(
    dataroot: Path, tmp_path: Path, nusc: Any
) -> None:
    shadow = tmp_path / "shadow"
    for src in dataroot.rglob("*"):
        target = shadow / src.relative_to(dataroot)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif src.suffix == ".json":
            target.write_bytes(src.read_bytes())
        else:
            target.symlink_to(src)
    sd = next(sd for sd in nusc.sample_data if sd["filename"].endswith(".bin"))
    victim = shadow / sd["filename"]
    victim.unlink()
    victim.write_bytes((dataroot / sd["filename"]).read_bytes()[:-7])
    scene = nusc.get("scene", nusc.get("sample", sd["sample_token"])["scene_token"])["name"]
    with pytest.raises(nr.TruncatedFileError, match=victim.name):
        bw.write_bag(shadow, VERSION, tmp_path / "bag", scenes=[scene], progress=False)


def test_outages_leave_gaps_but_keep_every_mount(
    synth_outage_dataroot: Path, tmp_path: Path
) -> None:
    summary = bw.write_bag(synth_outage_dataroot, VERSION, tmp_path / "bag", progress=False)
    assert summary.topics["/radar/front/points"] < summary.topics["/radar/front_left/points"]
    assert "/imu/data" not in summary.topics
    store = typestore()
    with Reader(summary.path) as reader:
        (conn,) = [c for c in reader.connections if c.topic == "/tf_static"]
        (message,) = list(reader.messages(connections=[conn]))
        tf_static = store.deserialize_cdr(message[2], conn.msgtype)
    # RADAR_FRONT is out when the scene starts; its mount is still published.
    assert {t.child_frame_id for t in tf_static.transforms} == {
        ch.lower() for ch in nr.KNOWN_CHANNELS
    }
