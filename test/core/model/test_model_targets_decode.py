"""Targets -> perfect outputs -> decode round trip; rotated IoU and NMS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perfect_outputs,
    random_boxes,
    small_config,
)

from peftdml_ros.core.errors import InputDataError
from peftdml_ros.core.model import (
    build_targets,
    decode_detections,
    rotated_iou_bev,
    rotated_nms_bev,
)
from peftdml_ros.core.model.targets import gaussian_radius
from peftdml_ros.core.types import Detections

pytestmark = pytest.mark.usefixtures("one_thread")


def _sorted(d: Detections) -> Detections:
    order = np.lexsort((d.center_m[:, 1], d.center_m[:, 0]))
    return Detections(
        center_m=d.center_m[order],
        size_wlh_m=d.size_wlh_m[order],
        yaw_rad=d.yaw_rad[order],
        velocity_mps=d.velocity_mps[order],
        score=d.score[order],
        label=d.label[order],
        attribute=tuple(d.attribute[i] for i in order),
    )


def test_targets_fed_as_outputs_decode_to_the_same_boxes() -> None:
    config = small_config()
    rng = np.random.default_rng(42)
    scenes = [random_boxes(rng, 6, 22.0), random_boxes(rng, 4, 22.0)]
    targets = build_targets(scenes, config)
    decoded = decode_detections(perfect_outputs(targets, config), config, score_threshold=0.5)
    for truth, found in zip(scenes, decoded, strict=True):
        truth, found = _sorted(truth), _sorted(found)
        assert len(found) == len(truth)
        np.testing.assert_allclose(found.center_m, truth.center_m, atol=1e-4)
        np.testing.assert_allclose(found.size_wlh_m, truth.size_wlh_m, rtol=1e-5)
        yaw_err = np.angle(np.exp(1j * (found.yaw_rad - truth.yaw_rad)))
        np.testing.assert_allclose(yaw_err, 0.0, atol=1e-5)
        np.testing.assert_allclose(found.velocity_mps, truth.velocity_mps, atol=1e-5)
        np.testing.assert_array_equal(found.label, truth.label)
        assert found.attribute == truth.attribute
        np.testing.assert_allclose(found.score, 1.0)


def test_targets_place_a_unit_peak_per_box_and_drop_boxes_outside() -> None:
    config = small_config()
    boxes = random_boxes(np.random.default_rng(3), 3, 20.0)
    outside = Detections(
        center_m=np.array([[100.0, 0.0, 0.0]], np.float32),
        size_wlh_m=np.ones((1, 3), np.float32),
        yaw_rad=np.zeros(1, np.float32),
        velocity_mps=np.zeros((1, 2), np.float32),
        score=np.ones(1, np.float32),
        label=np.zeros(1, np.int64),
        attribute=("vehicle.parked",),
    )
    targets = build_targets([boxes, outside], config)
    assert float(targets.mask[0].sum()) == 3.0 and float(targets.mask[1].sum()) == 0.0
    assert int((targets.heatmap[0] == 1.0).sum()) == 3
    assert float(targets.heatmap[1].max()) == 0.0


def test_targets_reject_bad_labels() -> None:
    boxes = random_boxes(np.random.default_rng(4), 2, 20.0)
    bad = Detections(**{**boxes.__dict__, "label": np.array([0, 12], np.int64)})
    with pytest.raises(InputDataError, match="NUSCENES_CLASSES"):
        build_targets([bad], small_config())


def test_gaussian_radius_grows_with_size() -> None:
    assert gaussian_radius(2, 2, 0.1) < gaussian_radius(6, 3, 0.1) < gaussian_radius(12, 4, 0.1)


def test_rotated_iou_known_values() -> None:
    square = [0.0, 0.0, 2.0, 2.0, 0.0]
    others = np.array(
        [
            square,
            [1.0, 0.0, 2.0, 2.0, 0.0],  # half overlap: 2 / 6
            [0.0, 0.0, 2.0, 2.0, math.pi / 2],  # same square
            [0.0, 0.0, 2.0, 2.0, math.pi / 4],  # octagon: 8 (sqrt 2 - 1)
            [5.0, 0.0, 2.0, 2.0, 0.3],  # disjoint
            [0.0, 0.0, 1.0, 4.0, 0.0],  # cross: 2 / 6
        ]
    )
    octagon = 8.0 * (math.sqrt(2.0) - 1.0)
    expected = [1.0, 1 / 3, 1.0, octagon / (8.0 - octagon), 0.0, 2.0 / 6.0]
    np.testing.assert_allclose(rotated_iou_bev(square, others), expected, atol=1e-9)


def test_rotated_iou_is_symmetric_on_random_boxes() -> None:
    rng = np.random.default_rng(5)
    boxes = np.concatenate(
        [rng.uniform(-2, 2, (50, 2)), rng.uniform(0.5, 4, (50, 2)), rng.uniform(-4, 4, (50, 1))],
        axis=1,
    )
    forward = np.array([rotated_iou_bev(boxes[i], boxes[i + 1 : i + 2])[0] for i in range(49)])
    backward = np.array([rotated_iou_bev(boxes[i + 1], boxes[i : i + 1])[0] for i in range(49)])
    np.testing.assert_allclose(forward, backward, atol=1e-9)
    assert np.all((forward >= 0) & (forward <= 1))


def test_rotated_nms_suppresses_overlaps_and_keeps_separate_boxes() -> None:
    boxes = np.array(
        [
            [0.0, 0.0, 2.0, 4.5, 0.3],
            [0.2, 0.1, 2.0, 4.5, 0.35],  # overlaps the first, lower score
            [10.0, 0.0, 2.0, 4.5, 0.3],  # separate
            [0.0, 3.0, 2.0, 4.5, math.pi / 2],  # crosses the first's end, small IoU
        ]
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    kept = rotated_nms_bev(boxes, scores, iou_threshold=0.2)
    assert kept.tolist() == [0, 2, 3]
    assert rotated_nms_bev(np.zeros((0, 5)), np.zeros(0), 0.2).tolist() == []


def test_decode_keeps_different_classes_at_one_place() -> None:
    config = small_config()
    boxes = random_boxes(np.random.default_rng(6), 1, 10.0)
    twin = Detections(**{**boxes.__dict__, "label": np.array([9]), "attribute": ("",)})
    targets = build_targets([boxes], config)
    outputs = perfect_outputs(targets, config)
    outputs["heatmap"] = outputs["heatmap"] + build_targets([twin], config).heatmap * 0.9
    found = decode_detections(outputs, config, score_threshold=0.5)[0]
    assert sorted(found.label.tolist()) == sorted([int(boxes.label[0]), 9])


def _greedy_reference(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order, kept = list(np.argsort(-scores, kind="stable")), []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        order = [
            j for j in order if rotated_iou_bev(boxes[best], boxes[j : j + 1])[0] <= threshold
        ]
    return kept


def test_rotated_nms_matches_plain_greedy_nms_on_clustered_boxes() -> None:
    rng = np.random.default_rng(8)
    for _ in range(5):
        centers = rng.uniform(-6, 6, (60, 2))
        boxes = np.concatenate(
            [
                centers,
                rng.uniform(0.5, 3, (60, 1)),
                rng.uniform(1, 6, (60, 1)),
                rng.uniform(-3, 3, (60, 1)),
            ],
            axis=1,
        )
        scores = rng.uniform(0, 1, 60)
        assert rotated_nms_bev(boxes, scores, 0.2).tolist() == _greedy_reference(
            boxes, scores, 0.2
        )
