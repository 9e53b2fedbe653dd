"""Loss terms on hand-built cases."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perfect_outputs,
    random_boxes,
    small_config,
)

from peftdml_ros.core.model import build_targets
from peftdml_ros.core.model.losses import (
    aligned_giou_3d,
    detection_losses,
    focal_heatmap_loss,
    triplet_metric_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_perfect_box_prediction_gives_zero_box_loss() -> None:
    config = small_config()
    rng = np.random.default_rng(0)
    targets = build_targets([random_boxes(rng, 5, 20.0), random_boxes(rng, 3, 20.0)], config)
    losses = detection_losses(perfect_outputs(targets, config), targets, config)
    assert float(losses["box_iou"]) < 1e-5
    assert float(losses["l1"]) < 1e-5
    assert float(losses["attribute"]) < 1e-5


def test_unknown_ground_truth_velocity_is_not_taught_as_zero() -> None:
    config = small_config()
    boxes = random_boxes(np.random.default_rng(1), 4, 20.0)
    velocity = boxes.velocity_mps.copy()
    velocity[0] = np.nan  # the devkit's "cannot estimate" (an object annotated once)
    boxes = dataclasses.replace(boxes, velocity_mps=velocity)
    targets = build_targets([boxes], config)
    assert targets.velocity_valid.sum() == 3 and torch.isfinite(targets.velocity).all()
    outputs = perfect_outputs(targets, config)
    base = float(detection_losses(outputs, targets, config)["l1"])
    # Any velocity predicted for the unknown object costs nothing; for a known one it does.
    for slot, expect_change in ((int(torch.argmin(targets.velocity_valid[0])), False),
                                (int(torch.argmax(targets.velocity_valid[0])), True)):  # fmt: skip
        shifted = {k: v.clone() for k, v in outputs.items()}
        cell = int(targets.indices[0, slot])
        shifted["velocity"].view(1, 2, -1)[0, :, cell] += 5.0
        changed = float(detection_losses(shifted, targets, config)["l1"]) != pytest.approx(base)
        assert changed == expect_change


def test_box_loss_grows_with_the_error() -> None:
    size = torch.tensor([[2.0, 4.0, 1.5]])
    sin_cos = torch.tensor([[math.sin(0.7), math.cos(0.7)]])
    values = [
        float(1 - aligned_giou_3d(torch.tensor([[d, 0.0, 0.0]]), size, size, sin_cos))
        for d in (0.0, 0.5, 2.0, 8.0)
    ]
    assert values[0] < 1e-6
    assert values == sorted(values) and values[-1] > 1.0  # GIoU keeps a gradient when disjoint


def test_focal_loss_decreases_as_prediction_approaches_target() -> None:
    config = small_config()
    targets = build_targets([random_boxes(np.random.default_rng(1), 4, 20.0)], config)
    target = targets.heatmap
    losses = [
        float(focal_heatmap_loss(s * target + (1 - s) * torch.full_like(target, 0.5), target))
        for s in (0.0, 0.5, 0.9, 0.99)
    ]
    assert all(a > b for a, b in itertools.pairwise(losses))


def test_triplet_loss_is_zero_when_classes_are_separated_by_the_margin() -> None:
    a = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1]])
    b = torch.tensor([[-1.0, 0.0], [-0.99, 0.1]])
    embeddings = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert float(triplet_metric_loss(embeddings, labels, margin=0.5)) == 0.0
    mixed = torch.nn.functional.normalize(torch.cat([a, a[:2] + 0.01]), dim=1)
    assert float(triplet_metric_loss(mixed, labels, margin=0.5)) > 0.4


def test_triplet_loss_without_triplets_is_zero() -> None:
    embeddings = torch.randn(3, 4, requires_grad=True)
    loss = triplet_metric_loss(embeddings, torch.tensor([2, 2, 2]), margin=0.2)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph
