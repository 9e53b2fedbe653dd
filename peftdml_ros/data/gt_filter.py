"""Which ground-truth boxes count: the nuScenes detection evaluation's own filter, in one place.

The devkit's evaluation (nuscenes.eval.common.loaders.filter_eval_boxes, config
detection_cvpr_2019) ignores a ground-truth box when
  - its center is not closer to the ego than its class range (`class_range`, 30-50 m): the
    distance is measured in the xy plane from the ego pose of the sample's LIDAR_TOP keyframe,
    in global coordinates (add_center_dist), and must be strictly below the range;
  - it has no LiDAR or radar point (num_lidar_pts + num_radar_pts == 0);
  - it is a bicycle or motorcycle whose center lies inside a bicycle rack annotation.
It applies the class range and the bike racks to the predictions as well, so a detection
beyond its class range or in a rack neither scores nor costs.

Three filters:
  - `VISIBLE_GT` (training targets, `NuScenesReader`'s default): only boxes without a LiDAR or
    radar point are dropped: the model cannot see them, and the metric never asks for them.
    Boxes beyond their class range stay: a pedestrian at 45 m or a cone at 35 m has points
    inside the model's BEV range (+-51.2 m) and the node reports it; dropping it would teach the
    heatmap that it is background. Racked bicycles stay for the same reason (the devkit removes
    predictions in racks too, so learning them costs nothing in the metric).
  - `DEVKIT_GT_FILTER`: the evaluation's rule above, for comparing a record's ground truth with
    what the metric scores. The evaluation itself (data.evaluation) does not use it: it loads and
    filters the ground truth with the devkit's own loaders.
  - `KEEP_ALL_GT`: every box of the 10 detection classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from peftdml_ros.core.errors import ConfigError

DEVKIT_DETECTION_CONFIG = "detection_cvpr_2019"
BIKE_RACK_CATEGORY = "static_object.bicycle_rack"
RACKED_CLASSES: frozenset[str] = frozenset({"bicycle", "motorcycle"})


@cache
def devkit_class_range() -> dict[str, float]:
    """Detection class -> evaluation range (m) of the devkit's detection_cvpr_2019 config."""
    from nuscenes.eval.common.config import config_factory

    return {
        str(k): float(v) for k, v in config_factory(DEVKIT_DETECTION_CONFIG).class_range.items()
    }


@dataclass(frozen=True)
class GtFilter:
    """Which ground-truth boxes a record keeps.

    min_points: LiDAR + radar points a box needs (the evaluation ignores boxes with 0: 1).
    class_range_m: detection class -> largest xy distance (m, exclusive) from the ego; None
        keeps boxes at any distance. Default: the devkit's detection_cvpr_2019 class_range.
    bike_racks: drop bicycles and motorcycles whose center is inside a bicycle rack.
    """

    min_points: int = 1
    class_range_m: Mapping[str, float] | None = field(default_factory=devkit_class_range)
    bike_racks: bool = True

    def __post_init__(self) -> None:
        if self.min_points < 0:
            raise ConfigError(f"gt min_points {self.min_points} must be >= 0")


DEVKIT_GT_FILTER = GtFilter()
VISIBLE_GT = GtFilter(min_points=1, class_range_m=None, bike_racks=False)
KEEP_ALL_GT = GtFilter(min_points=0, class_range_m=None, bike_racks=False)
# The filters a reader takes by name.
NAMED_GT_FILTERS: dict[str, GtFilter] = {
    "visible": VISIBLE_GT,
    "devkit": DEVKIT_GT_FILTER,
    "keep_all": KEEP_ALL_GT,
}


def ego_distance_m(annotation: Mapping[str, Any], ego_pose: Mapping[str, Any]) -> float:
    """xy distance of an annotation's center from the ego, computed as the devkit computes it
    (DetectionBox.ego_dist over add_center_dist's global-frame difference)."""
    dx = annotation["translation"][0] - ego_pose["translation"][0]
    dy = annotation["translation"][1] - ego_pose["translation"][1]
    return float(np.sqrt(np.sum(np.array((dx, dy)) ** 2)))


def keep_annotations(
    nusc: Any,
    sample: Mapping[str, Any],
    annotations: Sequence[tuple[Mapping[str, Any], str]],
    gt_filter: GtFilter,
) -> list[bool]:
    """For each (sample_annotation, detection class name) of `sample`: does the filter keep it."""
    ego_pose = None
    if gt_filter.class_range_m is not None:
        lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego_pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    racks = _bike_racks(nusc, sample) if gt_filter.bike_racks else []
    keep: list[bool] = []
    for ann, name in annotations:
        points = int(ann["num_lidar_pts"]) + int(ann["num_radar_pts"])
        kept = points >= gt_filter.min_points
        if kept and ego_pose is not None and gt_filter.class_range_m is not None:
            kept = ego_distance_m(ann, ego_pose) < gt_filter.class_range_m[name]
        if kept and racks and name in RACKED_CLASSES:
            kept = not _in_a_rack(ann, racks)
        keep.append(kept)
    return keep


def _bike_racks(nusc: Any, sample: Mapping[str, Any]) -> list[Any]:
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    racks = []
    for token in sample["anns"]:
        ann = nusc.get("sample_annotation", token)
        if ann["category_name"] == BIKE_RACK_CATEGORY:
            racks.append(Box(ann["translation"], ann["size"], Quaternion(ann["rotation"])))
    return racks


def _in_a_rack(annotation: Mapping[str, Any], racks: list[Any]) -> bool:
    from nuscenes.utils.geometry_utils import points_in_box

    center = np.asarray(annotation["translation"], dtype=np.float64)[:, None]
    return any(bool(points_in_box(rack, center).any()) for rack in racks)
