"""`peftdml synth` writes a dataset the official nuscenes-devkit loads, reads back and scores.

One small dataset (3 scenes of 2 s) is generated per module through the CLI, with degradations
confined to the two train scenes so the val scene stays clean for the evaluation.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from peftdml_ros.tools import cli

VERSION = "v1.0-synth"
SEED = 3
DEGRADATIONS = (
    "outage:RADAR_FRONT@scene-0001/0.5-1.5",
    "outage:IMU@scene-0001/0.5-1.0",
    "beam_loss=0.5@scene-0002",
)
CHANNELS = (
    "LIDAR_TOP",
    "RADAR_FRONT",
    "RADAR_FRONT_LEFT",
    "RADAR_FRONT_RIGHT",
    "RADAR_BACK_LEFT",
    "RADAR_BACK_RIGHT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
CLASSES = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)


def _generate(
    root: Path, scenes: int, degradations: tuple[str, ...] = DEGRADATIONS, workers: int = 1
) -> None:
    args = ["synth", "--out", str(root), "--scenes", str(scenes), "--seed", str(SEED), "--quiet"]
    args += ["--workers", str(workers)]
    for spec in degradations:
        args += ["--degrade", spec]
    assert cli.main(args) == 0


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    _generate(root, scenes=3)
    return root


@pytest.fixture(scope="module")
def nusc(dataroot: Path) -> Any:
    from nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(dataroot), verbose=False)


def _scene(nusc: Any, name: str) -> dict[str, Any]:
    return next(s for s in nusc.scene if s["name"] == name)


def _scene_samples(nusc: Any, name: str) -> list[dict[str, Any]]:
    token, out = _scene(nusc, name)["first_sample_token"], []
    while token:
        out.append(nusc.get("sample", token))
        token = out[-1]["next"]
    return out


def _channel_records(nusc: Any, scene_name: str, channel: str) -> list[dict[str, Any]]:
    """The channel's sample_data of one scene, following prev/next from the first sample."""
    first = _scene_samples(nusc, scene_name)[0]
    token = first["data"][channel]
    record = nusc.get("sample_data", token)
    while record["prev"]:
        record = nusc.get("sample_data", record["prev"])
    out = [record]
    while out[-1]["next"]:
        out.append(nusc.get("sample_data", out[-1]["next"]))
    return out


def test_devkit_loads_all_tables_and_splits(dataroot: Path, nusc: Any) -> None:
    for table in TABLES:
        assert (dataroot / VERSION / f"{table}.json").is_file()
    assert [s["name"] for s in nusc.scene] == ["scene-0001", "scene-0002", "scene-0003"]
    assert sorted(s["channel"] for s in nusc.sensor) == sorted(CHANNELS)
    splits = json.loads((dataroot / VERSION / "splits.json").read_text())
    assert splits == {"synth_train": ["scene-0001", "scene-0002"], "synth_val": ["scene-0003"],
                      "synth_all": ["scene-0001", "scene-0002", "scene-0003"]}  # fmt: skip
    for scene in nusc.scene:
        samples = _scene_samples(nusc, scene["name"])
        assert len(samples) == scene["nbr_samples"] == 5  # 2 s at 2 Hz
        stamps = [s["timestamp"] for s in samples]
        assert np.all(np.diff(stamps) == 500_000)
    for sample in _scene_samples(nusc, "scene-0003"):
        assert sorted(sample["data"]) == sorted(CHANNELS)
    assert (dataroot / nusc.map[0]["filename"]).is_file()
    mask = nusc.map[0]["mask"].mask()
    assert mask.dtype == np.uint8 and 0.01 < (mask == 255).mean() < 0.9


def test_sensor_rates_key_frames_and_chains(nusc: Any) -> None:
    expected = {"LIDAR_TOP": 41, "CAM_FRONT": 25, "CAM_BACK_LEFT": 25}
    for channel in CHANNELS:
        records = _channel_records(nusc, "scene-0003", channel)
        stamps = np.array([r["timestamp"] for r in records])
        assert np.all(np.diff(stamps) > 0)
        assert sum(r["is_key_frame"] for r in records) == 5
        if channel in expected:
            assert len(records) == expected[channel]
        if channel.startswith("RADAR"):
            period_us = np.median(np.diff(stamps))
            assert abs(period_us - 1e6 / 13) < 2
        for r in records:
            assert nusc.get("ego_pose", r["ego_pose_token"])["timestamp"] == r["timestamp"]
            sample = nusc.get("sample", r["sample_token"])
            if r["is_key_frame"]:
                assert sample["data"][channel] == r["token"]
                assert abs(r["timestamp"] - sample["timestamp"]) < 40_000
            elif sample["prev"]:  # a sweep belongs to the next sample
                prev = nusc.get("sample", sample["prev"])
                assert prev["timestamp"] <= r["timestamp"] <= sample["timestamp"]


def test_lidar_sweeps_read_back(nusc: Any) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud

    sample = _scene_samples(nusc, "scene-0003")[2]
    path = nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"])
    assert path.endswith(".pcd.bin")
    raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    assert 25_000 < raw.shape[0] < 40_000
    rings = raw[:, 4]
    assert set(np.unique(rings).astype(int)) <= set(range(32))
    assert np.unique(rings).size >= 30
    cloud = LidarPointCloud.from_file(path)
    assert cloud.points.shape == (4, raw.shape[0])
    # The lowest beam hits the flat ground 1.84 m below the sensor.
    ground_z = raw[rings == 0, 2]
    assert abs(float(np.median(ground_z)) + 1.84) < 0.05
    assert raw[:, 3].min() >= 0.0 and raw[:, 3].max() <= 255.0


def test_radar_pcd_files_read_back(nusc: Any) -> None:
    from nuscenes.utils.data_classes import RadarPointCloud

    total = 0
    for sample in _scene_samples(nusc, "scene-0003"):
        for channel in CHANNELS[1:6]:
            path = Path(nusc.get_sample_data_path(sample["data"][channel]))
            data = path.read_bytes()
            header = data.split(b"DATA binary\n")[0] + b"DATA binary\n"
            assert header.count(b"\n") == 11
            width = int(header.split(b"WIDTH ")[1].split(b"\n")[0])
            assert len(data) == len(header) + 43 * width + 1
            cloud = RadarPointCloud.from_file(str(path))
            assert cloud.points.shape[0] == 18
            total += cloud.points.shape[1]
            if cloud.points.shape[1]:
                assert np.all(cloud.points[14] == 0)  # invalid_state kept by the default filter
                assert np.all(np.abs(cloud.points[2]) < 1e-6)  # radar z is 0
    assert total > 50


def test_camera_images_read_back(nusc: Any) -> None:
    sample = _scene_samples(nusc, "scene-0003")[0]
    for channel in CHANNELS[6:]:
        record = nusc.get("sample_data", sample["data"][channel])
        image = cv2.imread(nusc.get_sample_data_path(record["token"]))
        assert image.shape == (record["height"], record["width"], 3) == (900, 1600, 3)
        assert image.std() > 15.0
        calib = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        k = np.array(calib["camera_intrinsic"])
        assert k.shape == (3, 3) and 700 < k[0, 0] < 1300


def test_can_bus_reads_imu_and_pose(nusc: Any, dataroot: Path) -> None:
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    can = NuScenesCanBus(dataroot=str(dataroot))
    imu = can.get_messages("scene-0003", "ms_imu")
    pose = can.get_messages("scene-0003", "pose")
    assert len(imu) == 301 and len(pose) == 151  # 3 s (scene + margins) at 100 Hz and 50 Hz
    assert np.allclose(np.diff([m["utime"] for m in imu]), 10_000, atol=1)
    assert abs(np.mean([m["linear_accel"][2] for m in imu]) - 9.81) < 0.05
    # Pose speed agrees with the ego poses of the samples.
    samples = _scene_samples(nusc, "scene-0003")
    p0 = np.array(nusc.get("ego_pose", samples[1]["data"]["LIDAR_TOP"])["translation"])
    p1 = np.array(nusc.get("ego_pose", samples[2]["data"]["LIDAR_TOP"])["translation"])
    speed_from_poses = np.linalg.norm(p1 - p0) / 0.5
    t_mid = (samples[1]["timestamp"] + samples[2]["timestamp"]) // 2
    nearest = min(pose, key=lambda m: abs(m["utime"] - t_mid))
    assert abs(nearest["vel"][0] - speed_from_poses) < 0.3
    assert abs(nearest["vel"][1]) < 0.5


def _perfect_results(nusc: Any, split_scenes: set[str]) -> dict[str, list[dict[str, Any]]]:
    from nuscenes.eval.detection.utils import category_to_detection_name

    results: dict[str, list[dict[str, Any]]] = {}
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in split_scenes:
            continue
        boxes = []
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            name = category_to_detection_name(ann["category_name"])
            # The evaluation drops GT boxes without points; a perfect detector skips them too.
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            attrs = ann["attribute_tokens"]
            boxes.append(
                {
                    "sample_token": sample["token"],
                    "translation": ann["translation"],
                    "size": ann["size"],
                    "rotation": ann["rotation"],
                    "velocity": [float(v) for v in nusc.box_velocity(token)[:2]],
                    "detection_name": name,
                    "detection_score": 1.0,
                    "attribute_name": nusc.get("attribute", attrs[0])["name"] if attrs else "",
                }
            )
        results[sample["token"]] = boxes
    return results


def test_detection_eval_scores_ground_truth_perfectly(
    nusc: Any, dataroot: Path, tmp_path: Path
) -> None:
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    val = set(json.loads((dataroot / VERSION / "splits.json").read_text())["synth_val"])
    meta = {
        "use_camera": True,
        "use_lidar": True,
        "use_radar": True,
        "use_map": False,
        "use_external": False,
    }
    result_path = tmp_path / "results.json"
    result_path.write_text(json.dumps({"meta": meta, "results": _perfect_results(nusc, val)}))
    evaluation = DetectionEval(
        nusc,
        config_factory("detection_cvpr_2019"),
        str(result_path),
        "synth_val",
        str(tmp_path / "eval"),
        verbose=False,
    )
    metrics, _ = evaluation.evaluate()
    summary = metrics.serialize()
    assert summary["mean_ap"] == pytest.approx(1.0)
    assert summary["nd_score"] == pytest.approx(1.0)


def test_val_split_has_every_class_within_range_and_with_points(nusc: Any) -> None:
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.utils import category_to_detection_name

    class_range = config_factory("detection_cvpr_2019").class_range
    seen: Counter[str] = Counter()
    for sample in _scene_samples(nusc, "scene-0003"):
        ego = nusc.get("ego_pose", sample["data"]["LIDAR_TOP"])["translation"]
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            name = category_to_detection_name(ann["category_name"])
            dist = np.hypot(ann["translation"][0] - ego[0], ann["translation"][1] - ego[1])
            if name and dist < class_range[name] and ann["num_lidar_pts"] + ann["num_radar_pts"]:
                seen[name] += 1
    assert set(seen) == set(CLASSES)


def test_annotations_are_consistent_with_points_and_motion(nusc: Any) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    sample = _scene_samples(nusc, "scene-0003")[2]
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    _, boxes, _ = nusc.get_sample_data(lidar["token"])  # boxes in the sensor frame
    points = LidarPointCloud.from_file(nusc.get_sample_data_path(lidar["token"])).points[:3]
    checked = 0
    for box in boxes:
        ann = nusc.get("sample_annotation", box.token)
        inside = int(points_in_box(box, points).sum())
        speed = float(np.linalg.norm(nusc.box_velocity(box.token)[:2]))
        if ann["num_lidar_pts"] >= 20 and speed < 0.1:  # static: exact geometry
            assert abs(inside - ann["num_lidar_pts"]) <= 0.1 * ann["num_lidar_pts"]
            checked += 1
        attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        if "vehicle.parked" in attrs or "pedestrian.standing" in attrs:
            assert speed < 0.05
        if "vehicle.moving" in attrs or "pedestrian.moving" in attrs:
            assert speed > 0.3
    assert checked >= 3
    visibilities = Counter(
        nusc.get("sample_annotation", b.token)["visibility_token"] for b in boxes
    )
    assert set(visibilities) <= {"1", "2", "3", "4"} and len(visibilities) >= 2


def test_radar_outage_removes_sample_data_in_its_window(nusc: Any) -> None:
    t0 = _scene_samples(nusc, "scene-0001")[0]["timestamp"]
    stamps = [r["timestamp"] - t0 for r in _channel_records(nusc, "scene-0001", "RADAR_FRONT")]
    assert not [t for t in stamps if 500_000 <= t < 1_500_000]
    assert [t for t in stamps if t < 500_000] and [t for t in stamps if t >= 1_500_000]
    # A sample's radar key frame is the sweep nearest to it (within 40 ms), so only samples
    # well inside the window lose it.
    window_samples = [
        s for s in _scene_samples(nusc, "scene-0001") if 600_000 <= s["timestamp"] - t0 < 1_400_000
    ]
    assert window_samples and all("RADAR_FRONT" not in s["data"] for s in window_samples)
    assert all("RADAR_FRONT_LEFT" in s["data"] for s in window_samples)
    # The other scenes keep the sensor.
    assert len(_channel_records(nusc, "scene-0002", "RADAR_FRONT")) >= 26


def test_imu_outage_leaves_a_gap(dataroot: Path) -> None:
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    can = NuScenesCanBus(dataroot=str(dataroot))
    utimes = np.array([m["utime"] for m in can.get_messages("scene-0001", "ms_imu")])
    assert len(utimes) == 301 - 50
    assert np.max(np.diff(utimes)) == pytest.approx(510_000, abs=2)


def test_beam_loss_halves_the_lidar_beams(nusc: Any) -> None:
    def stats(scene: str) -> tuple[int, float]:
        sample = _scene_samples(nusc, scene)[1]
        raw = np.fromfile(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]), np.float32)
        raw = raw.reshape(-1, 5)
        return int(np.unique(raw[:, 4]).size), float(raw.shape[0])

    rings_lost, points_lost = stats("scene-0002")
    rings_clean, points_clean = stats("scene-0003")
    assert rings_lost <= 16 < rings_clean
    assert points_lost < 0.7 * points_clean


def test_same_seed_same_files_in_parallel_too(dataroot: Path, tmp_path: Path) -> None:
    # Scenes 1 and 2 alone, in two processes: a scene depends on the seed and its index only.
    _generate(tmp_path, scenes=2, workers=2)
    files = sorted(
        p.relative_to(tmp_path)
        for folder in ("samples", "sweeps", "maps", "can_bus")
        for p in (tmp_path / folder).rglob("*")
        if p.is_file()
    )
    assert len(files) > 2 * (41 + 6 * 25 + 5 * 26)
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (dataroot / rel).read_bytes(), rel
    for table in ("sample", "sample_data", "sample_annotation", "instance"):
        mine = json.loads((tmp_path / VERSION / f"{table}.json").read_text())
        full = json.loads((dataroot / VERSION / f"{table}.json").read_text())
        assert mine == full[: len(mine)]


def test_existing_dataset_needs_overwrite(dataroot: Path) -> None:
    from peftdml_ros.data.synth import SynthConfigError, generate_dataset

    with pytest.raises(SynthConfigError, match="--overwrite"):
        generate_dataset(dataroot, scenes=1, seed=SEED)
