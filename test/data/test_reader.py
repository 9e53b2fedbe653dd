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


def test_ground_truth_is_in_ego_frame(reader: nr.NuScenesReader) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    nusc = reader.nusc
    checked = 0
    for index in range(min(len(reader), 4)):
        rec = reader[index]
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


def test_sensor_outages_mark_sensors_absent(synth_outage_dataroot: Path) -> None:
    reader = nr.NuScenesReader(
        synth_outage_dataroot, VERSION, lidar_sweeps=3, radar_sweeps=2, camera_downscale=8
    )
    radar_outs = lidar_outs = 0
    for record in reader:
        frame = record.frame
        data = reader.nusc.get("sample", record.sample_token)["data"]
        radar_out = "RADAR_FRONT" not in data
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
