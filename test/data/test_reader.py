"""NuScenesReader and nuscenes_results on generated nuScenes-format data (small preset).

Expected values are computed independently with the devkit (LidarPointCloud, RadarPointCloud,
Box, box_velocity) and cv2, not with the reader's own helpers.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from nuscenes.utils.data_classes import LidarPointCloud, RadarPointCloud
from pyquaternion import Quaternion

from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    NUSCENES_CLASSES,
    RADAR_POINT_FIELDS,
    Modality,
)
from peftdml_ros.data import nuscenes_reader as nr
from peftdml_ros.data.nuscenes_results import (
    SubmissionBuilder,
    SubmissionError,
    SubmissionMeta,
    detections_to_boxes,
)

VERSION = "v1.0-synth"


@pytest.fixture(scope="module")
def dataroot(synth3_dataroot: Path) -> Path:
    return synth3_dataroot


@pytest.fixture(scope="module")
def reader(dataroot: Path) -> nr.NuScenesReader:
    return nr.NuScenesReader(
        dataroot, VERSION, None, lidar_sweeps=3, radar_sweeps=2, camera_downscale=8
    )


def _matrix(record: dict[str, Any]) -> npt.NDArray[np.float64]:
    """[4, 4] child -> parent of a (translation, rotation) record, built with pyquaternion."""
    out = np.asarray(Quaternion(record["rotation"]).transformation_matrix, dtype=np.float64)
    out[:3, 3] = record["translation"]
    return out


def _sd(reader: nr.NuScenesReader, sample_token: str, channel: str) -> dict[str, Any]:
    sample = reader.nusc.get("sample", sample_token)
    return dict(reader.nusc.get("sample_data", sample["data"][channel]))


def _late_index(reader: nr.NuScenesReader) -> int:
    """A keyframe with enough sweeps before it (not the first of its scene)."""
    for i, token in enumerate(reader.sample_tokens):
        if reader.nusc.get("sample", token)["prev"]:
            return i
    raise AssertionError("no keyframe with a predecessor")


def test_one_record_per_sample(reader: nr.NuScenesReader) -> None:
    assert len(reader) == len(reader.nusc.sample)
    record = reader[0]
    assert record.sample_token == reader.sample_tokens[0]
    assert record.scene_name.startswith("scene-")
    assert (
        record.timestamp_ns == reader.nusc.get("sample", record.sample_token)["timestamp"] * 1000
    )
    assert record.frame.stamp_ns == record.timestamp_ns
    with pytest.raises(IndexError):
        reader[len(reader)]


def test_without_ego_motion_compensation_sensors_sit_where_the_node_puts_them(
    reader: nr.NuScenesReader, dataroot: Path
) -> None:
    static = nr.NuScenesReader(
        dataroot,
        VERSION,
        None,
        lidar_sweeps=1,
        radar_sweeps=1,
        camera_downscale=8,
        compensate_ego_motion=False,
        nusc=reader.nusc,
    )
    index = _late_index(reader)
    record, aligned = static[index], reader[index]
    token = record.sample_token
    front = _sd(reader, token, "CAM_FRONT")
    calibration = reader.nusc.get("calibrated_sensor", front["calibrated_sensor_token"])
    camera = next(c for c in record.frame.cameras if c.sensor == "CAM_FRONT")
    # /tf_static alone: the camera's extrinsics, nothing from the ego poses.
    np.testing.assert_allclose(camera.camera_to_ego, _matrix(calibration), atol=1e-5)
    moved = next(c for c in aligned.frame.cameras if c.sensor == "CAM_FRONT")
    assert not np.allclose(moved.camera_to_ego, camera.camera_to_ego, atol=1e-4)  # ego moved


def test_record_shapes_and_sensors(reader: nr.NuScenesReader) -> None:
    rec = reader[_late_index(reader)]
    frame = rec.frame
    assert len(frame.lidar) == 1
    assert frame.lidar[0].fields == LIDAR_POINT_FIELDS
    assert frame.lidar[0].points.dtype == np.float32
    assert frame.lidar[0].points.shape[1] == len(LIDAR_POINT_FIELDS)
    assert [c.sensor for c in frame.radar] == list(nr.RADAR_CHANNELS)
    assert all(c.fields == RADAR_POINT_FIELDS for c in frame.radar)
    assert [c.sensor for c in frame.cameras] == list(nr.CAMERA_CHANNELS)
    for cam in frame.cameras:
        sd = _sd(reader, rec.sample_token, cam.sensor)
        assert cam.image.dtype == np.uint8 and cam.image.shape[2] == 3
        assert cam.image.shape[:2] == (math.ceil(sd["height"] / 8), math.ceil(sd["width"] / 8))
        assert cam.intrinsics.shape == (3, 3) and cam.camera_to_ego.shape == (4, 4)
    assert frame.imu and all(
        rec.timestamp_ns - 500_000_000 < s.stamp_ns <= rec.timestamp_ns for s in frame.imu
    )
    assert frame.gnss is not None and frame.gnss.velocity_en_mps is not None
    assert all(frame.modality_present.values())
    assert frame.modality_mask().all()
    assert rec.ego_to_global.shape == (4, 4)
    ref_pose = reader.nusc.get(
        "ego_pose", _sd(reader, rec.sample_token, "LIDAR_TOP")["ego_pose_token"]
    )
    np.testing.assert_allclose(rec.ego_to_global, _matrix(ref_pose), atol=1e-9)


def test_multisweep_lidar_in_keyframe_ego_frame(reader: nr.NuScenesReader) -> None:
    rec = reader[_late_index(reader)]
    points = rec.frame.lidar[0].points
    nusc = reader.nusc
    sd = _sd(reader, rec.sample_token, "LIDAR_TOP")
    ref_global_from_ego = _matrix(nusc.get("ego_pose", sd["ego_pose_token"]))
    start = 0
    for k in range(3):  # lidar_sweeps=3: the keyframe and two earlier sweeps
        cloud = LidarPointCloud.from_file(str(reader.dataroot / sd["filename"]))
        n = cloud.nbr_points()
        cloud.transform(_matrix(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])))
        cloud.transform(_matrix(nusc.get("ego_pose", sd["ego_pose_token"])))
        cloud.transform(np.linalg.inv(ref_global_from_ego))
        chunk = points[start : start + n]
        np.testing.assert_allclose(chunk[:, :3], cloud.points[:3].T, atol=2e-3)
        np.testing.assert_allclose(chunk[:, 3], cloud.points[3], atol=1e-6)
        expected_dt = (rec.timestamp_ns / 1000 - sd["timestamp"]) * 1e-6
        np.testing.assert_allclose(chunk[:, 4], expected_dt, atol=1e-6)
        assert (expected_dt == 0) == (k == 0) and expected_dt >= 0
        start += n
        sd = nusc.get("sample_data", sd["prev"])
    assert start == points.shape[0]


def test_radar_points_and_velocities_in_ego_frame(reader: nr.NuScenesReader) -> None:
    rec = reader[_late_index(reader)]
    nusc = reader.nusc
    lidar_sd = _sd(reader, rec.sample_token, "LIDAR_TOP")
    ref_from_global = np.linalg.inv(_matrix(nusc.get("ego_pose", lidar_sd["ego_pose_token"])))
    radar = rec.frame.radar[0]
    sd = _sd(reader, rec.sample_token, radar.sensor)
    RadarPointCloud.default_filters()
    cloud = RadarPointCloud.from_file(str(reader.dataroot / sd["filename"]))
    chain = (
        ref_from_global
        @ _matrix(nusc.get("ego_pose", sd["ego_pose_token"]))
        @ _matrix(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
    )
    n = cloud.nbr_points()
    assert n > 0, "the generated radar keyframe should keep some clusters after filtering"
    key = radar.points[:n]
    xyz = (chain[:3, :3] @ cloud.points[:3] + chain[:3, 3:4]).T
    np.testing.assert_allclose(key[:, :3], xyz, atol=2e-3)
    np.testing.assert_allclose(key[:, 3], cloud.points[5], atol=1e-5)  # rcs
    vel = chain[:3, :3] @ np.vstack([cloud.points[8:10], np.zeros((1, n))])
    np.testing.assert_allclose(key[:, 4:6], vel[:2].T, atol=1e-4)
    np.testing.assert_allclose(key[:, 6], (lidar_sd["timestamp"] - sd["timestamp"]) * 1e-6)
    # radar_sweeps=2: a second, older sweep follows with a larger dt.
    assert len(np.unique(radar.points[:, 6])) == 2


def test_cameras_decode_reduced_with_scaled_intrinsics(reader: nr.NuScenesReader) -> None:
    rec = reader[0]
    cam = rec.frame.cameras[0]
    sd = _sd(reader, rec.sample_token, cam.sensor)
    expected = cv2.imread(str(reader.dataroot / sd["filename"]), cv2.IMREAD_REDUCED_COLOR_8)
    np.testing.assert_array_equal(cam.image, expected[:, :, ::-1])
    k = np.asarray(
        reader.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"]
    )
    sx = cam.image.shape[1] / sd["width"]
    np.testing.assert_allclose(cam.intrinsics[0, 0], k[0, 0] * sx, rtol=1e-5)
    np.testing.assert_allclose(cam.intrinsics[0, 2], (k[0, 2] + 0.5) * sx - 0.5, rtol=1e-5)


def test_ground_truth_is_in_ego_frame(reader: nr.NuScenesReader, dataroot: Path) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    nusc = reader.nusc
    every_box = nr.NuScenesReader(
        dataroot, VERSION, None, lidar_sweeps=1, radar_sweeps=1, camera_downscale=8,
        gt_filter="keep_all", nusc=nusc,
    )  # fmt: skip
    checked = 0
    for index in range(min(len(reader), 4)):
        rec = every_box[index]
        gt = rec.ground_truth
        assert (gt.score == 1).all()
        anns = {}
        for token in nusc.get("sample", rec.sample_token)["anns"]:
            ann = nusc.get("sample_annotation", token)
            if category_to_detection_name(ann["category_name"]) is not None:
                anns[ann["instance_token"]] = ann
        assert sorted(anns) == sorted(rec.gt_instance_tokens)
        ego_yaw = math.atan2(rec.ego_to_global[1, 0], rec.ego_to_global[0, 0])
        for j, instance in enumerate(rec.gt_instance_tokens):
            ann = anns[instance]
            center_global = rec.ego_to_global[:3, :3] @ gt.center_m[j] + rec.ego_to_global[:3, 3]
            np.testing.assert_allclose(center_global, ann["translation"], atol=1e-3)
            np.testing.assert_allclose(gt.size_wlh_m[j], ann["size"], rtol=1e-6)
            yaw_global = Quaternion(ann["rotation"]).yaw_pitch_roll[0]
            diff = (float(gt.yaw_rad[j]) + ego_yaw - yaw_global + math.pi) % (2 * math.pi)
            assert abs(diff - math.pi) < 1e-5
            v_global = nusc.box_velocity(ann["token"])[:2]
            v_back = rec.ego_to_global[:2, :2] @ gt.velocity_mps[j].astype(np.float64)
            np.testing.assert_allclose(v_back, v_global, atol=1e-4)
            assert NUSCENES_CLASSES[int(gt.label[j])] == category_to_detection_name(
                ann["category_name"]
            )
            assert rec.gt_num_points[j] == ann["num_lidar_pts"] + ann["num_radar_pts"]
            checked += 1
    assert checked > 0


def test_gnss_is_near_the_map_origin(reader: nr.NuScenesReader) -> None:
    rec = reader[0]
    lat0, lon0 = nr.MAP_ORIGINS_LATLON_DEG[rec.location]
    fix = rec.frame.gnss
    assert fix is not None
    east, north = rec.ego_to_global[0, 3], rec.ego_to_global[1, 3]
    assert fix.latitude_deg == pytest.approx(lat0 + math.degrees(north / nr.EARTH_RADIUS_M))
    lon_scale = math.cos(math.radians(lat0))
    expected_lon = lon0 + math.degrees(east / (nr.EARTH_RADIUS_M * lon_scale))
    assert fix.longitude_deg == pytest.approx(expected_lon)
    # Like a NavSatFix, no heading; the course from the velocity follows the ego's yaw.
    assert fix.heading_rad is None
    assert fix.velocity_en_mps is not None
    v_east, v_north = fix.velocity_en_mps
    assert math.hypot(v_east, v_north) > 1.0  # the generated ego drives
    yaw = math.atan2(rec.ego_to_global[1, 0], rec.ego_to_global[0, 0])
    course = math.atan2(v_north, v_east)
    assert abs(math.remainder(course - yaw, math.tau)) < 0.1


def test_custom_split_and_bad_split(dataroot: Path, reader: nr.NuScenesReader) -> None:
    names = reader.scene_names
    split = nr.split_scene_names(reader.nusc, None)
    assert split == names
    with pytest.raises(ConfigError, match="neither"):
        nr.split_scene_names(reader.nusc, "no_such_split")


def test_bad_options_are_config_errors(dataroot: Path, reader: nr.NuScenesReader) -> None:
    with pytest.raises(ConfigError, match="camera_downscale"):
        nr.NuScenesReader(dataroot, VERSION, camera_downscale=3, nusc=reader.nusc)
    with pytest.raises(ConfigError, match="lidar_sweeps"):
        nr.NuScenesReader(dataroot, VERSION, lidar_sweeps=0, nusc=reader.nusc)


# ------------------------------------------------------------------------------ bad input


def _shadow(dataroot: Path, dst: Path) -> Path:
    """A copy of the dataset whose tables are real files and whose sensor files are symlinks."""
    for src in dataroot.rglob("*"):
        target = dst / src.relative_to(dataroot)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif src.suffix == ".json":
            shutil.copyfile(src, target)
        else:
            target.symlink_to(src)
    return dst


def _real_copy(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


@pytest.fixture
def shadow(dataroot: Path, tmp_path: Path) -> Path:
    return _shadow(dataroot, tmp_path / "shadow")


def test_the_rule_reads_the_whole_timeline_not_the_samples_own_data(shadow: Path) -> None:
    """A sample whose RADAR_FRONT keyframe record is a sweep far from the LiDAR: the frame still
    takes the nearest sweep of the channel's timeline, whatever the sample lists."""
    table = shadow / VERSION / "sample_data.json"
    records = json.loads(table.read_text())
    reader = nr.NuScenesReader(shadow, VERSION, lidar_sweeps=1, radar_sweeps=1)
    token = reader.sample_tokens[_late_index(reader)]
    key = reader.nusc.get("sample_data", reader.nusc.get("sample", token)["data"]["RADAR_FRONT"])
    by_token = {r["token"]: r for r in records}
    by_token[key["token"]]["is_key_frame"] = False
    by_token[key["prev"]]["is_key_frame"] = True  # the sweep before it, same sample
    table.write_text(json.dumps(records))
    moved = nr.NuScenesReader(shadow, VERSION, lidar_sweeps=1, radar_sweeps=1)
    assert moved.nusc.get("sample", token)["data"]["RADAR_FRONT"] == key["prev"]
    record = moved.record(token)
    (radar,) = [c for c in record.frame.radar if c.sensor == "RADAR_FRONT"]
    assert radar.stamp_ns == key["timestamp"] * 1000
    assert moved.chosen_sample_data(token)["RADAR_FRONT"]["token"] == key["token"]


def test_missing_table_names_the_file(shadow: Path) -> None:
    (shadow / VERSION / "instance.json").unlink()
    with pytest.raises(nr.MissingTableError, match=r"instance\.json.*missing"):
        nr.NuScenesReader(shadow, VERSION)


def test_truncated_lidar_bin_names_the_file(shadow: Path) -> None:
    reader = nr.NuScenesReader(shadow, VERSION, lidar_sweeps=1, radar_sweeps=1)
    path = (
        shadow
        / reader.nusc.get(
            "sample_data", reader.nusc.get("sample", reader.sample_tokens[0])["data"]["LIDAR_TOP"]
        )["filename"]
    )
    _real_copy(path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(nr.TruncatedFileError, match=rf"{path.name}.*truncated"):
        reader[0]


def test_truncated_radar_pcd_names_the_file(shadow: Path) -> None:
    reader = nr.NuScenesReader(shadow, VERSION, lidar_sweeps=1, radar_sweeps=1)
    sample = reader.nusc.get("sample", reader.sample_tokens[0])
    path = shadow / reader.nusc.get("sample_data", sample["data"]["RADAR_FRONT"])["filename"]
    _real_copy(path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(nr.TruncatedFileError, match=rf"{path.name}.*truncated"):
        reader[0]


def test_corrupt_jpeg_names_the_file(shadow: Path) -> None:
    reader = nr.NuScenesReader(shadow, VERSION, lidar_sweeps=1, radar_sweeps=1)
    sample = reader.nusc.get("sample", reader.sample_tokens[0])
    path = shadow / reader.nusc.get("sample_data", sample["data"]["CAM_BACK"])["filename"]
    _real_copy(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(nr.CorruptImageError, match=rf"{path.name}.*truncated"):
        reader[0]
    path.write_bytes(b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9")
    with pytest.raises(nr.CorruptImageError, match=rf"{path.name}.*cannot be decoded"):
        reader[0]


def test_unknown_channel_names_it(shadow: Path) -> None:
    table = shadow / VERSION / "sensor.json"
    sensors = json.loads(table.read_text())
    for sensor in sensors:
        if sensor["channel"] == "CAM_FRONT":
            sensor["channel"] = "CAM_FRONT_ZOOM"
    table.write_text(json.dumps(sensors))
    reader = nr.NuScenesReader(shadow, VERSION, lidar_sweeps=1, radar_sweeps=1)
    with pytest.raises(nr.UnknownChannelError, match=r"sensor\.json.*CAM_FRONT_ZOOM.*unknown"):
        reader[0]


def test_errors_are_input_data_errors() -> None:
    for cls in (
        nr.MissingTableError,
        nr.TruncatedFileError,
        nr.CorruptImageError,
        nr.UnknownChannelError,
    ):
        assert issubclass(cls, InputDataError)


# --------------------------------------------------------------------------- submission


def test_submission_round_trips_ground_truth_to_global(reader: nr.NuScenesReader) -> None:
    rec = next(r for r in reader if len(r.ground_truth))
    boxes = detections_to_boxes(rec.ground_truth, rec.ego_to_global, rec.sample_token)
    anns = {
        reader.nusc.get("sample_annotation", t)["instance_token"]: reader.nusc.get(
            "sample_annotation", t
        )
        for t in reader.nusc.get("sample", rec.sample_token)["anns"]
    }
    for box, instance in zip(boxes, rec.gt_instance_tokens, strict=True):
        ann = anns[instance]
        np.testing.assert_allclose(box["translation"], ann["translation"], atol=1e-3)
        q = Quaternion(box["rotation"])
        assert abs(Quaternion.absolute_distance(q, Quaternion(ann["rotation"]))) < 1e-4
        assert box["detection_score"] == 1.0
        assert set(box) == {
            "sample_token",
            "translation",
            "size",
            "rotation",
            "velocity",
            "detection_name",
            "detection_score",
            "attribute_name",
        }


def test_submission_rejects_bad_detections(reader: nr.NuScenesReader) -> None:
    rec = next(r for r in reader if len(r.ground_truth))
    gt = rec.ground_truth
    bad = type(gt)(
        gt.center_m,
        gt.size_wlh_m,
        gt.yaw_rad,
        gt.velocity_mps,
        gt.score,
        np.full_like(gt.label, 10),
        gt.attribute,
    )
    with pytest.raises(SubmissionError, match="labels"):
        detections_to_boxes(bad, rec.ego_to_global, rec.sample_token)


def test_detection_eval_scores_ground_truth_perfectly(
    reader: nr.NuScenesReader, dataroot: Path, tmp_path: Path
) -> None:
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    from peftdml_ros.data.synth import VAL_SPLIT

    # gt_min_points=1: the evaluation ignores boxes without points, so a perfect detector
    # reports exactly the others.
    val = nr.NuScenesReader(
        dataroot,
        VERSION,
        VAL_SPLIT,
        lidar_sweeps=1,
        radar_sweeps=1,
        camera_downscale=8,
        gt_min_points=1,
        nusc=reader.nusc,
    )
    assert len(val) < len(reader)
    builder = SubmissionBuilder(SubmissionMeta(use_camera=False, use_radar=False))
    for record in val:
        builder.add(record.sample_token, record.ground_truth, record.ego_to_global)
    results = builder.write(tmp_path / "results.json")
    evaluator = DetectionEval(
        reader.nusc,
        config=config_factory("detection_cvpr_2019"),
        result_path=str(results),
        eval_set=VAL_SPLIT,
        output_dir=str(tmp_path / "eval"),
        verbose=False,
    )
    metrics, _ = evaluator.evaluate()
    summary = metrics.serialize()
    assert summary["mean_ap"] == pytest.approx(1.0)
    assert summary["nd_score"] == pytest.approx(1.0)


def _scene_timeline(nusc: Any, scene_token: str, channel: str) -> list[dict[str, Any]]:
    """Every sample_data of a channel in a scene (keyframes and sweeps), by the devkit's tables."""
    records = []
    for sd in nusc.sample_data:
        if nusc.get("sample", sd["sample_token"])["scene_token"] != scene_token:
            continue
        calibration = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        if nusc.get("sensor", calibration["sensor_token"])["channel"] == channel:
            records.append(sd)
    return sorted(records, key=lambda sd: sd["timestamp"])


def _nearest_by_hand(
    timeline: list[dict[str, Any]], ref_us: int, slop_us: int
) -> dict[str, Any] | None:
    """The frame rule stated directly: smallest |dt| within slop, the earlier one on a tie."""
    near = [sd for sd in timeline if abs(sd["timestamp"] - ref_us) <= slop_us]
    return min(near, key=lambda sd: (abs(sd["timestamp"] - ref_us), sd["timestamp"]), default=None)


def test_frames_take_the_nearest_sweep_of_each_channel_within_slop(
    reader: nr.NuScenesReader,
) -> None:
    nusc = reader.nusc
    scene_token = nusc.get("sample", reader.sample_tokens[0])["scene_token"]
    channels = (*nr.RADAR_CHANNELS, *nr.CAMERA_CHANNELS)
    timelines = {ch: _scene_timeline(nusc, scene_token, ch) for ch in channels}
    checked = 0
    for token in reader.sample_tokens:
        sample = nusc.get("sample", token)
        if sample["scene_token"] != scene_token:
            continue
        record = reader.record(token)
        ref_us = record.timestamp_ns // 1000
        held = {c.sensor: c for c in (*record.frame.radar, *record.frame.cameras)}
        for channel in channels:
            expected = _nearest_by_hand(timelines[channel], ref_us, 50_000)
            assert expected is not None  # a healthy generated rig: every sensor within 50 ms
            assert held[channel].stamp_ns == expected["timestamp"] * 1000, channel
            assert record.frame.sensor_present[channel]
        # radar_sweeps=2: the chosen sweep (its dt) and the one before it, from its timeline.
        for radar in record.frame.radar:
            line = timelines[radar.sensor]
            k = next(i for i, sd in enumerate(line) if sd["timestamp"] * 1000 == radar.stamp_ns)
            dts = sorted({round(float(v), 6) for v in radar.points[:, 6]})
            wanted = {
                round((ref_us - sd["timestamp"]) * 1e-6, 6) for sd in line[max(0, k - 1) : k + 1]
            }
            assert set(dts) <= wanted and len(dts) >= 1
        checked += 1
    assert checked >= 3


def test_sweeps_between_keyframes_serve_when_nearer(
    dataroot: Path, reader: nr.NuScenesReader
) -> None:
    """With the keyframe sample_data removed from the timeline's reach (a tiny slop), a
    channel is absent; with a slop covering the neighbour sweeps it takes the nearest one."""
    tiny = nr.NuScenesReader(
        dataroot, VERSION, None, lidar_sweeps=1, radar_sweeps=1, camera_downscale=8,
        slop_s={"camera": 0.0005, "radar": 0.0005}, nusc=reader.nusc,
    )  # fmt: skip
    token = reader.sample_tokens[_late_index(reader)]
    record = tiny.record(token)
    ref_us = record.timestamp_ns // 1000
    scene_token = reader.nusc.get("sample", token)["scene_token"]
    absent = 0
    for channel in (*nr.RADAR_CHANNELS, *nr.CAMERA_CHANNELS):
        line = _scene_timeline(reader.nusc, scene_token, channel)
        expected = _nearest_by_hand(line, ref_us, 500)
        present = record.frame.sensor_present[channel]
        assert present is (expected is not None), channel
        sensors = [c.sensor for c in (*record.frame.radar, *record.frame.cameras)]
        assert (channel in sensors) is present
        absent += not present
    assert absent > 0  # the generated cameras sit a few ms off the LiDAR
    assert record.frame.modality_present[Modality.RADAR] is bool(record.frame.radar)
    assert record.frame.modality_present[Modality.CAMERA] is bool(record.frame.cameras)
    with pytest.raises(ConfigError, match="slop_s names 'sonar'"):
        nr.NuScenesReader(dataroot, VERSION, slop_s={"sonar": 0.1}, nusc=reader.nusc)


def test_imu_window_follows_the_frame_rule_within_the_scene(reader: nr.NuScenesReader) -> None:
    nusc = reader.nusc
    first = reader.record(reader.sample_tokens[0])  # the scene's first keyframe
    later = reader.record(reader.sample_tokens[_late_index(reader)])
    scene_token = nusc.get("sample", first.sample_token)["scene_token"]
    scene_start_us = min(
        sd["timestamp"]
        for sd in nusc.sample_data
        if nusc.get("sample", sd["sample_token"])["scene_token"] == scene_token
    )
    assert first.frame.imu and first.frame.imu[0].stamp_ns >= scene_start_us * 1000
    lidar = nusc.get("sample_data", nusc.get("sample", later.sample_token)["data"]["LIDAR_TOP"])
    previous_ns = nusc.get("sample_data", lidar["prev"])["timestamp"] * 1000
    stamps = [s.stamp_ns for s in later.frame.imu]
    assert stamps and all(previous_ns < t <= later.timestamp_ns for t in stamps)
    assert len(stamps) == 5  # 100 Hz CAN IMU over one 50 ms LiDAR period


def test_sensor_outages_mark_sensors_absent(synth_outage_dataroot: Path) -> None:
    reader = nr.NuScenesReader(
        synth_outage_dataroot, VERSION, lidar_sweeps=3, radar_sweeps=2, camera_downscale=8
    )
    radar_outs = lidar_outs = 0
    for record in reader:
        frame = record.frame
        data = reader.nusc.get("sample", record.sample_token)["data"]
        scene_token = reader.nusc.get("sample", record.sample_token)["scene_token"]
        line = _scene_timeline(reader.nusc, scene_token, "RADAR_FRONT")
        radar_out = _nearest_by_hand(line, record.timestamp_ns // 1000, 50_000) is None
        assert frame.sensor_present["RADAR_FRONT"] is not radar_out
        assert ("RADAR_FRONT" in [c.sensor for c in frame.radar]) is not radar_out
        # A LIDAR_TOP outage keeps its records with empty sweeps.
        lidar_file = (
            reader.dataroot / reader.nusc.get("sample_data", data["LIDAR_TOP"])["filename"]
        )
        lidar_out = lidar_file.stat().st_size == 0
        assert frame.sensor_present["LIDAR_TOP"] is not lidar_out
        assert frame.modality_present[Modality.LIDAR] is not lidar_out
        assert frame.imu == () and not frame.modality_present[Modality.IMU]
        assert frame.modality_present[Modality.RADAR] and frame.modality_present[Modality.CAMERA]
        radar_outs += radar_out
        lidar_outs += lidar_out
    assert radar_outs > 0 and lidar_outs > 0  # the outages reach some keyframes


def test_scenes_are_read_on_first_use_and_only_the_last_few_are_kept(
    dataroot: Path, reader: nr.NuScenesReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scene's timelines and CAN IMU are built when a record of it is first read, not for
    the whole split at once; older scenes are dropped and rebuilt identically when needed."""
    monkeypatch.setattr(nr, "SCENES_KEPT", 1)
    lazy = nr.NuScenesReader(
        dataroot, VERSION, None, lidar_sweeps=1, radar_sweeps=1, camera_downscale=8,
        nusc=reader.nusc,
    )  # fmt: skip
    assert lazy._can is not None
    load = lazy._can.samples
    loaded: list[str] = []

    def counted(name: str) -> Any:
        loaded.append(name)
        return load(name)

    monkeypatch.setattr(lazy._can, "samples", counted)
    nusc = lazy.nusc

    def scene_of(token: str) -> str:
        return str(nusc.get("scene", nusc.get("sample", token)["scene_token"])["name"])

    assert loaded == []  # opening the reader loads no IMU
    first = lazy.record(lazy.sample_tokens[0])
    assert loaded == [scene_of(lazy.sample_tokens[0])]
    for token in lazy.sample_tokens:  # in scene order: each scene's IMU is loaded once
        lazy.chosen_sample_data(token)
    assert loaded == lazy.scene_names and len(loaded) == 3
    again = lazy.record(lazy.sample_tokens[0])  # its scene was dropped: built again
    assert loaded[-1] == scene_of(lazy.sample_tokens[0]) and len(loaded) == 4
    assert again.frame.imu == first.frame.imu and first.frame.imu
    assert _chosen_stamps(again) == _chosen_stamps(first)
    # A reader of one split still reads a keyframe of another split's scene.
    val = nr.NuScenesReader(dataroot, VERSION, "synth_val", can_bus=False, nusc=reader.nusc)
    outside = next(t for t in lazy.sample_tokens if t not in set(val.sample_tokens))
    assert set(val.chosen_sample_data(outside)) == set(lazy.chosen_sample_data(outside))


def _chosen_stamps(record: nr.KeyframeRecord) -> dict[str, int]:
    frame = record.frame
    stamps = {c.sensor: c.stamp_ns for c in (*frame.lidar, *frame.radar)}
    return stamps | {c.sensor: c.stamp_ns for c in frame.cameras}
