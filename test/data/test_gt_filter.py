"""The ground-truth filter (data.gt_filter) against the devkit's own evaluation filter.

Expected sets come from nuscenes.eval.common.loaders (load_gt_of_sample_tokens, add_center_dist,
filter_eval_boxes with detection_cvpr_2019's class_range), run on generated data; a bicycle rack
is added to a copy of the tables to reach the devkit's bike-rack rule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peftdml_ros.data import gt_filter
from peftdml_ros.data import nuscenes_reader as nr

VERSION = "v1.0-synth"


def _devkit_kept(nusc: Any, sample_tokens: list[str]) -> dict[str, set[str]]:
    """sample token -> instance tokens of the GT boxes the devkit's evaluation keeps."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import (
        add_center_dist,
        filter_eval_boxes,
        load_gt_of_sample_tokens,
    )
    from nuscenes.eval.detection.data_classes import DetectionBox

    boxes = load_gt_of_sample_tokens(nusc, sample_tokens, DetectionBox)
    boxes = add_center_dist(nusc, boxes)
    boxes = filter_eval_boxes(nusc, boxes, config_factory("detection_cvpr_2019").class_range)
    kept: dict[str, set[str]] = {}
    for token in sample_tokens:
        # DetectionBox has no instance token: its translation is the annotation's, exactly.
        by_center = {}
        for ann_token in nusc.get("sample", token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            by_center[tuple(ann["translation"])] = ann["instance_token"]
        kept[token] = {by_center[tuple(box.translation)] for box in boxes[token]}
    return kept


def _ours(nusc: Any, token: str, chosen: gt_filter.GtFilter) -> set[str]:
    sample = nusc.get("sample", token)
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    global_to_ego = np.linalg.inv(nr.global_from_ego(nusc, lidar))
    return set(nr.ground_truth_in_ego(nusc, sample, global_to_ego, chosen).instance_tokens)


def test_reader_ground_truth_is_what_the_devkit_evaluates(synth3_dataroot: Path) -> None:
    reader = nr.NuScenesReader(
        synth3_dataroot, VERSION, None, lidar_sweeps=1, radar_sweeps=1, camera_downscale=8,
        gt_filter="devkit",
    )  # fmt: skip
    every = nr.NuScenesReader(
        synth3_dataroot, VERSION, None, lidar_sweeps=1, radar_sweeps=1, camera_downscale=8,
        gt_filter="keep_all", nusc=reader.nusc,
    )  # fmt: skip
    expected = _devkit_kept(reader.nusc, reader.sample_tokens)
    dropped_far = dropped_empty = 0
    for token in reader.sample_tokens:
        record = reader.record(token)
        assert set(record.gt_instance_tokens) == expected[token]
        assert (record.gt_num_points >= 1).all()
        all_boxes = every.record(token)
        assert set(record.gt_instance_tokens) <= set(all_boxes.gt_instance_tokens)
        for j in range(len(all_boxes.gt_instance_tokens)):
            if all_boxes.gt_instance_tokens[j] in expected[token]:
                continue
            dropped_empty += int(all_boxes.gt_num_points[j] == 0)
            center = all_boxes.ground_truth.center_m[j]
            dropped_far += int(all_boxes.gt_num_points[j] > 0 and np.hypot(*center[:2]) >= 30)
    # The generated scenes reach both rules (annotations go out to 80 m; many are occluded).
    assert dropped_far > 0 and dropped_empty > 0


def test_distance_is_the_devkits_global_xy_distance() -> None:
    ann = {"translation": [13.0, -4.0, 7.0]}
    pose = {"translation": [10.0, 0.0, 0.0]}
    assert gt_filter.ego_distance_m(ann, pose) == 5.0  # z plays no part
    assert gt_filter.devkit_class_range()["car"] == 50.0
    assert gt_filter.devkit_class_range()["traffic_cone"] == 30.0


def _tables_copy(dataroot: Path, dst: Path) -> Path:
    """Copies of the tables; the map masks the devkit checks for are linked."""
    (dst / VERSION).mkdir(parents=True)
    for table in (dataroot / VERSION).glob("*.json"):
        shutil.copyfile(table, dst / VERSION / table.name)
    (dst / "maps").symlink_to(dataroot / "maps")
    return dst


def test_bicycles_in_a_bike_rack_are_dropped_as_the_devkit_drops_them(
    synth3_dataroot: Path, tmp_path: Path
) -> None:
    reader = nr.NuScenesReader(synth3_dataroot, VERSION, None, can_bus=False)
    nusc = reader.nusc
    kept = _devkit_kept(nusc, reader.sample_tokens)
    token, rider = next(
        (token, ann)
        for token in reader.sample_tokens
        for ann in (nusc.get("sample_annotation", a) for a in nusc.get("sample", token)["anns"])
        if ann["category_name"] in ("vehicle.bicycle", "vehicle.motorcycle")
        and ann["instance_token"] in kept[token]
    )
    root = _tables_copy(synth3_dataroot, tmp_path / "racks")
    tables = {
        name: json.loads((root / VERSION / f"{name}.json").read_text())
        for name in ("category", "instance", "sample_annotation")
    }
    rack_category = next(
        c["token"] for c in tables["category"] if c["name"] == gt_filter.BIKE_RACK_CATEGORY
    )
    tables["instance"].append(
        {
            "token": "rack-instance",
            "category_token": rack_category,
            "nbr_annotations": 1,
            "first_annotation_token": "rack-annotation",
            "last_annotation_token": "rack-annotation",
        }
    )
    tables["sample_annotation"].append(
        {
            **{k: rider[k] for k in ("sample_token", "visibility_token", "rotation")},
            "token": "rack-annotation",
            "instance_token": "rack-instance",
            "attribute_tokens": [],
            "translation": [v + 0.3 for v in rider["translation"]],  # the rider inside it
            "size": [2.0, 3.0, 2.5],
            "prev": "",
            "next": "",
            "num_lidar_pts": 10,
            "num_radar_pts": 0,
        }
    )
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows))
    racked = nr.open_nuscenes(root, VERSION)
    expected = _devkit_kept(racked, [token])[token]
    assert rider["instance_token"] not in expected  # the devkit drops the racked rider
    assert _ours(racked, token, gt_filter.DEVKIT_GT_FILTER) == expected
    no_racks = gt_filter.GtFilter(bike_racks=False)
    assert _ours(racked, token, no_racks) == expected | {rider["instance_token"]}


def test_visible_keeps_far_boxes_with_points_and_drops_boxes_without(
    synth3_dataroot: Path,
) -> None:
    """The training filter: every box the model can see (a LiDAR or radar point), at any
    distance; the devkit's class range plays no part."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    reader = nr.NuScenesReader(synth3_dataroot, VERSION, None, can_bus=False)
    nusc = reader.nusc
    assert reader.gt_filter == gt_filter.VISIBLE_GT  # the reader's default
    devkit = _devkit_kept(nusc, reader.sample_tokens)
    class_range = gt_filter.devkit_class_range()
    far_pedestrians = empty = 0
    for token in reader.sample_tokens:
        sample = nusc.get("sample", token)
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego_pose = nusc.get("ego_pose", lidar["ego_pose_token"])
        visible = _ours(nusc, token, gt_filter.VISIBLE_GT)
        assert devkit[token] <= visible  # all the metric counts, and more
        for ann in (nusc.get("sample_annotation", a) for a in sample["anns"]):
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            points = ann["num_lidar_pts"] + ann["num_radar_pts"]
            assert (ann["instance_token"] in visible) is (points > 0)
            far = gt_filter.ego_distance_m(ann, ego_pose) >= class_range[name]
            if name == "pedestrian" and far and points > 0:
                assert ann["instance_token"] not in devkit[token]  # beyond its 40 m
                far_pedestrians += 1
            empty += points == 0
    assert far_pedestrians > 0 and empty > 0


def test_named_filters_and_the_min_points_override(synth3_dataroot: Path) -> None:
    reader = nr.NuScenesReader(synth3_dataroot, VERSION, None, can_bus=False)
    assert reader.gt_filter == gt_filter.VISIBLE_GT and reader.gt_min_points == 1
    assert reader.gt_filter.class_range_m is None
    for name, chosen in gt_filter.NAMED_GT_FILTERS.items():
        named = nr.NuScenesReader(
            synth3_dataroot, VERSION, None, can_bus=False, gt_filter=name, nusc=reader.nusc
        )
        assert named.gt_filter == chosen
    assert gt_filter.NAMED_GT_FILTERS["devkit"] == gt_filter.DEVKIT_GT_FILTER
    assert gt_filter.NAMED_GT_FILTERS["keep_all"] == gt_filter.KEEP_ALL_GT
    override = nr.NuScenesReader(
        synth3_dataroot, VERSION, None, can_bus=False, gt_filter="devkit", gt_min_points=0,
        nusc=reader.nusc,
    )  # fmt: skip
    assert override.gt_filter.min_points == 0 and override.gt_filter.class_range_m is not None
    with pytest.raises(nr.ConfigError, match="gt_filter 'most'"):
        nr.NuScenesReader(synth3_dataroot, VERSION, gt_filter="most", nusc=reader.nusc)
    with pytest.raises(nr.ConfigError, match="min_points -1"):
        gt_filter.GtFilter(min_points=-1)
