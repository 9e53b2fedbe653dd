"""evaluate_submission: the official DetectionEval on a generated val split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from peftdml_ros.core.types import NUSCENES_CLASSES, Detections
from peftdml_ros.data.evaluation import evaluate_submission
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.nuscenes_results import SubmissionBuilder
from peftdml_ros.data.synth import VAL_SPLIT

VERSION = "v1.0-synth"


@pytest.fixture(scope="module")
def val_reader(synth3_dataroot: Path) -> NuScenesReader:
    return NuScenesReader(synth3_dataroot, VERSION, VAL_SPLIT, lidar_sweeps=1, radar_sweeps=1,
                          camera_downscale=8, gt_min_points=1)  # fmt: skip


def _submit(reader: NuScenesReader, path: Path, keep_label: int | None = None,
            empty: bool = False) -> Path:  # fmt: skip
    builder = SubmissionBuilder()
    for record in reader:
        gt = record.ground_truth
        if empty:
            gt = Detections.empty()
        elif keep_label is not None:
            keep = gt.label != keep_label
            gt = dataclasses.replace(
                gt, center_m=gt.center_m[keep], size_wlh_m=gt.size_wlh_m[keep],
                yaw_rad=gt.yaw_rad[keep], velocity_mps=gt.velocity_mps[keep],
                score=gt.score[keep], label=gt.label[keep],
                attribute=tuple(a for a, k in zip(gt.attribute, keep, strict=True) if k),
            )  # fmt: skip
        builder.add(record.sample_token, gt, record.ego_to_global)
    return builder.write(path)


def test_ground_truth_as_predictions_scores_one(
    val_reader: NuScenesReader, tmp_path: Path
) -> None:
    submission = _submit(val_reader, tmp_path / "perfect.json")
    metrics = evaluate_submission(val_reader.dataroot, VERSION, VAL_SPLIT, submission,
                                  tmp_path / "eval", nusc=val_reader.nusc)  # fmt: skip
    assert metrics.mean_ap == pytest.approx(1.0)
    assert metrics.nd_score == pytest.approx(1.0)
    assert set(metrics.class_aps) == set(NUSCENES_CLASSES)
    assert "mAP 1.0000" in metrics.summary_lines()[0]


def test_a_missing_class_costs_exactly_its_ap(val_reader: NuScenesReader, tmp_path: Path) -> None:
    pedestrian = NUSCENES_CLASSES.index("pedestrian")
    submission = _submit(val_reader, tmp_path / "no_ped.json", keep_label=pedestrian)
    metrics = evaluate_submission(val_reader.dataroot, VERSION, VAL_SPLIT, submission,
                                  tmp_path / "eval", nusc=val_reader.nusc)  # fmt: skip
    assert metrics.class_aps["pedestrian"] == pytest.approx(0.0)
    assert metrics.mean_ap == pytest.approx(0.9)


def test_an_empty_submission_scores_zero_without_crashing(
    val_reader: NuScenesReader, tmp_path: Path
) -> None:
    submission = _submit(val_reader, tmp_path / "empty.json", empty=True)
    metrics = evaluate_submission(val_reader.dataroot, VERSION, VAL_SPLIT, submission,
                                  tmp_path / "eval", nusc=val_reader.nusc)  # fmt: skip
    assert metrics.mean_ap == 0.0 and metrics.nd_score == 0.0
    assert np.allclose(list(metrics.tp_errors.values()), 1.0)
