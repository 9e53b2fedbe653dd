"""Ego-frame geometry: every class's box fits the BEV range and survives targets -> decode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perfect_outputs,
)

from peftdml_ros.core.model import ModelConfig, build_model, build_targets, decode_detections
from peftdml_ros.core.model.encoders import PillarScatter
from peftdml_ros.core.model.head import CENTER_Z_PRIOR_M, HEAD_CHANNELS
from peftdml_ros.core.model_io import ATTRIBUTES_BY_CLASS
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections

pytestmark = pytest.mark.usefixtures("one_thread")

# nuScenes mean box sizes (w, l, h) in m per detection class (train split statistics).
TYPICAL_WLH_M: dict[str, tuple[float, float, float]] = {
    "car": (1.95, 4.60, 1.73),
    "truck": (2.51, 6.93, 2.84),
    "bus": (2.94, 10.50, 3.47),
    "trailer": (2.90, 12.29, 3.87),
    "construction_vehicle": (2.85, 6.37, 3.19),
    "pedestrian": (0.67, 0.73, 1.77),
    "motorcycle": (0.77, 2.11, 1.47),
    "bicycle": (0.60, 1.70, 1.28),
    "traffic_cone": (0.41, 0.41, 1.07),
    "barrier": (2.53, 0.50, 0.98),
}
TALLEST_BUS_M = 5.0  # double-deckers and high trailers reach 4-5 m


def test_typical_sizes_cover_every_class() -> None:
    assert tuple(TYPICAL_WLH_M) == NUSCENES_CLASSES


def _spots(config: ModelConfig) -> np.ndarray:
    """The 4 corners of the BEV range (just inside) and its center, (x, y) in m."""
    x0, y0, _, x1, y1, _ = config.point_cloud_range_m
    inset = 0.01
    return np.array(
        [[x0 + inset, y0 + inset], [x1 - inset, y0 + inset], [x0 + inset, y1 - inset],
         [x1 - inset, y1 - inset], [0.5 * (x0 + x1) + 0.3, 0.5 * (y0 + y1) - 0.2]],
    )  # fmt: skip


def _class_frame(label: int, config: ModelConfig, rng: np.random.Generator) -> Detections:
    """One frame: the class's typical box at each spot, standing on the road (ego frame)."""
    spots = _spots(config)
    n = len(spots)
    w, length, h = TYPICAL_WLH_M[NUSCENES_CLASSES[label]]
    centers = np.concatenate([spots, np.full((n, 1), h / 2.0)], axis=1).astype(np.float32)
    attribute = (ATTRIBUTES_BY_CLASS[NUSCENES_CLASSES[label]] or ("",))[0]
    return Detections(
        center_m=centers,
        size_wlh_m=np.tile(np.array([[w, length, h]], np.float32), (n, 1)),
        yaw_rad=rng.uniform(-math.pi, math.pi, n).astype(np.float32),
        velocity_mps=rng.uniform(-15.0, 15.0, (n, 2)).astype(np.float32),
        score=np.ones(n, np.float32),
        label=np.full(n, label, np.int64),
        attribute=(attribute,) * n,
    )


@pytest.mark.parametrize("config", [ModelConfig()], ids=["default"])
def test_every_class_at_the_corners_and_center_comes_back_through_targets_and_decode(
    config: ModelConfig,
) -> None:
    rng = np.random.default_rng(0)
    frames = [_class_frame(label, config, rng) for label in range(len(NUSCENES_CLASSES))]
    targets = build_targets(frames, config)
    assert targets.mask.sum(dim=1).tolist() == [5.0] * len(frames)  # every box kept
    decoded = decode_detections(perfect_outputs(targets, config), config, score_threshold=0.5)
    for truth, found in zip(frames, decoded, strict=True):
        name = NUSCENES_CLASSES[int(truth.label[0])]
        order = [
            int(np.argmin(np.linalg.norm(found.center_m - c, axis=1))) for c in truth.center_m
        ]
        assert len(found) == len(truth) and sorted(order) == list(range(len(truth))), name
        np.testing.assert_array_equal(found.label[order], truth.label, err_msg=name)
        np.testing.assert_allclose(found.center_m[order], truth.center_m, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(found.size_wlh_m[order], truth.size_wlh_m, rtol=1e-5)
        yaw_error = np.angle(np.exp(1j * (found.yaw_rad[order] - truth.yaw_rad)))
        np.testing.assert_allclose(yaw_error, 0.0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(found.velocity_mps[order], truth.velocity_mps, atol=1e-5)
        assert tuple(found.attribute[i] for i in order) == truth.attribute


def test_the_z_range_holds_every_box_from_the_road_to_the_top_of_a_bus() -> None:
    config = ModelConfig()
    _, _, z_min, _, _, z_max = config.point_cloud_range_m
    tallest = max(max(h for _, _, h in TYPICAL_WLH_M.values()), TALLEST_BUS_M)
    # Room below the road (downhill, curbs) and above the tallest box (uphill).
    assert z_min <= -1.0 and z_max >= tallest + 0.5
    # The camera lift samples heights between the road and the top of a tall vehicle.
    heights = config.camera_lift_heights_m
    assert min(heights) >= 0.0 and max(heights) <= TYPICAL_WLH_M["bus"][2]
    assert min(heights) <= 0.5 and max(heights) >= 2.5  # ground contact and truck bodies


def test_the_pillar_encoder_keeps_points_from_the_road_to_a_bus_roof() -> None:
    config = ModelConfig()
    pillars = PillarScatter(config, (1.0,) * 5, channels=4, rank=2)
    heights = [0.0, 1.0, 3.0, TALLEST_BUS_M - 0.01]  # road, car, truck, bus roof
    points = torch.tensor([[[5.0 + 3.0 * i, 2.0, z, 10.0, 0.0] for i, z in enumerate(heights)]])
    with torch.no_grad():
        counts = pillars(points, torch.ones(1, len(heights)))[0, -1]  # log(1 + count) per cell
    assert float(torch.expm1(counts).sum()) == pytest.approx(len(heights))


def test_the_initial_center_z_lies_inside_every_class_box_on_the_road() -> None:
    model = build_model(ModelConfig())
    out_bias = model.head.out.bias.detach()
    bias = dict(zip(HEAD_CHANNELS, out_bias.split(list(HEAD_CHANNELS.values())), strict=True))
    z_prior = float(bias["center_z"])
    assert z_prior == pytest.approx(CENTER_Z_PRIOR_M)
    for name, (_, _, h) in TYPICAL_WLH_M.items():
        assert 0.0 < z_prior < h, name  # above the road, below the top of the box
        assert abs(z_prior - h / 2.0) <= 1.0, name
