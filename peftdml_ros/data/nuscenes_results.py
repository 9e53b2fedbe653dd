"""Detections (ego frame) -> nuScenes detection submission (global frame) and its JSON file.

A submission is {"meta": {...}, "results": {sample_token: [box, ...]}}, each box a dict with
sample_token, translation (x, y, z, m, global), size (w, l, h, m), rotation (w, x, y, z
quaternion, global), velocity (vx, vy, m/s, global), detection_name, detection_score and
attribute_name — the format `nuscenes.eval.detection.evaluate.DetectionEval` reads.
Velocities the model (or the devkit, for ground truth) cannot estimate stay NaN; Python's json
writes and reads them as NaN, as the devkit does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.geometry import matrix_to_quaternion_wxyz
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections

# The devkit refuses more boxes than this per sample (detection_cvpr_2019 max_boxes_per_sample).
MAX_BOXES_PER_SAMPLE = 500
# nuScenes attribute names (nuscenes.eval.detection.constants.ATTRIBUTE_NAMES).
ATTRIBUTE_NAMES: frozenset[str] = frozenset(
    {
        "pedestrian.moving",
        "pedestrian.sitting_lying_down",
        "pedestrian.standing",
        "cycle.with_rider",
        "cycle.without_rider",
        "vehicle.moving",
        "vehicle.parked",
        "vehicle.stopped",
    }
)

SubmissionBox = dict[str, Any]


class SubmissionError(InputDataError):
    """Detections cannot be written as nuScenes results (bad shapes, labels or attributes)."""


@dataclass(frozen=True)
class SubmissionMeta:
    """The submission's "meta" block: which inputs the method used."""

    use_camera: bool = True
    use_lidar: bool = True
    use_radar: bool = True
    use_map: bool = False
    use_external: bool = False

    def as_dict(self) -> dict[str, bool]:
        return {
            "use_camera": self.use_camera,
            "use_lidar": self.use_lidar,
            "use_radar": self.use_radar,
            "use_map": self.use_map,
            "use_external": self.use_external,
        }


def detections_to_boxes(
    detections: Detections, ego_to_global: npt.ArrayLike, sample_token: str
) -> list[SubmissionBox]:
    """The boxes of one sample in the global frame.

    ego_to_global: [4, 4] pose of the ego frame the detections are in (KeyframeRecord's).
    """
    pose = np.asarray(ego_to_global, dtype=np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise SubmissionError(f"ego_to_global must be a finite 4x4 matrix, got shape {pose.shape}")
    _check_detections(detections, sample_token)
    rotation, translation = pose[:3, :3], pose[:3, 3]
    centers = detections.center_m.astype(np.float64) @ rotation.T + translation
    vel3 = np.zeros((len(detections), 3))
    vel3[:, :2] = detections.velocity_mps
    velocities = vel3 @ rotation.T
    boxes: list[SubmissionBox] = []
    for i in range(len(detections)):
        yaw = float(detections.yaw_rad[i])
        box_rotation = rotation @ _rot_z(yaw)
        attribute = detections.attribute[i] if detections.attribute else ""
        boxes.append(
            {
                "sample_token": sample_token,
                "translation": [float(v) for v in centers[i]],
                "size": [float(v) for v in detections.size_wlh_m[i]],
                "rotation": list(matrix_to_quaternion_wxyz(box_rotation)),
                "velocity": [float(velocities[i, 0]), float(velocities[i, 1])],
                "detection_name": NUSCENES_CLASSES[int(detections.label[i])],
                "detection_score": float(detections.score[i]),
                "attribute_name": attribute,
            }
        )
    return boxes


def _check_detections(det: Detections, sample_token: str) -> None:
    n = len(det)
    shapes = {
        "center_m": (det.center_m.shape, (n, 3)),
        "size_wlh_m": (det.size_wlh_m.shape, (n, 3)),
        "yaw_rad": (det.yaw_rad.shape, (n,)),
        "velocity_mps": (det.velocity_mps.shape, (n, 2)),
        "score": (det.score.shape, (n,)),
    }
    for name, (got, want) in shapes.items():
        if got != want:
            raise SubmissionError(
                f"sample {sample_token}: {name} has shape {got}, expected {want}"
            )
    if n > MAX_BOXES_PER_SAMPLE:
        raise SubmissionError(
            f"sample {sample_token}: {n} boxes, the nuScenes evaluation accepts at most "
            f"{MAX_BOXES_PER_SAMPLE}; keep the top-scoring ones"
        )
    if n and (det.label.min() < 0 or det.label.max() >= len(NUSCENES_CLASSES)):
        raise SubmissionError(
            f"sample {sample_token}: labels must be indices into the {len(NUSCENES_CLASSES)} "
            f"nuScenes classes, got range [{det.label.min()}, {det.label.max()}]"
        )
    if det.attribute and len(det.attribute) != n:
        raise SubmissionError(
            f"sample {sample_token}: {len(det.attribute)} attributes for {n} boxes"
        )
    unknown = sorted({a for a in det.attribute if a and a not in ATTRIBUTE_NAMES})
    if unknown:
        raise SubmissionError(
            f"sample {sample_token}: unknown attribute name(s) {unknown}; use one of "
            f"{sorted(ATTRIBUTE_NAMES)} or ''"
        )
    finite = [det.center_m, det.size_wlh_m, det.yaw_rad, det.score]
    if not all(np.isfinite(a).all() for a in finite):
        raise SubmissionError(
            f"sample {sample_token}: centers, sizes, yaws and scores must be finite "
            "(only velocity may be NaN)"
        )


def _rot_z(yaw_rad: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class SubmissionBuilder:
    """Collects per-sample boxes; `write` produces the submission JSON.

    Every sample of the evaluated split needs a key (an empty list is fine): `add` with empty
    Detections for samples without output.
    """

    def __init__(self, meta: SubmissionMeta | None = None) -> None:
        self.meta = meta or SubmissionMeta()
        self.results: dict[str, list[SubmissionBox]] = {}

    def add(self, sample_token: str, detections: Detections, ego_to_global: npt.ArrayLike) -> None:
        if not sample_token:
            raise SubmissionError("sample_token is empty; results are keyed by sample token")
        boxes = detections_to_boxes(detections, ego_to_global, sample_token)
        self.results.setdefault(sample_token, []).extend(boxes)
        if len(self.results[sample_token]) > MAX_BOXES_PER_SAMPLE:
            raise SubmissionError(
                f"sample {sample_token}: more than {MAX_BOXES_PER_SAMPLE} boxes after adding"
            )

    def as_dict(self) -> dict[str, Any]:
        return submission_dict(self.results, self.meta)

    def write(self, path: Path | str) -> Path:
        return write_submission(path, self.results, self.meta)


def submission_dict(
    results: Mapping[str, Iterable[SubmissionBox]], meta: SubmissionMeta | None = None
) -> dict[str, Any]:
    """{"meta": ..., "results": {token: [box, ...]}} as the devkit reads it."""
    return {
        "meta": (meta or SubmissionMeta()).as_dict(),
        "results": {token: list(boxes) for token, boxes in results.items()},
    }


def write_submission(
    path: Path | str,
    results: Mapping[str, Iterable[SubmissionBox]],
    meta: SubmissionMeta | None = None,
) -> Path:
    """Write the submission JSON (atomically: a reader never sees half a file)."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; give a file name such as results_nusc.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w") as stream:
        json.dump(submission_dict(results, meta), stream)
    tmp.replace(out)
    return out
