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
    perturbed_model,
    random_boxes,
    random_inputs,
    small_config,
    synthetic_inputs,
)

from peftdml_ros.core.model import Embeddings, build_targets
from peftdml_ros.core.model.losses import (
    aligned_giou_3d,
    background_cells,
    cross_modal_loss,
    detection_losses,
    focal_heatmap_loss,
    spread_penalty,
    supervised_contrastive_loss,
    temporal_loss,
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


def test_contrastive_loss_of_a_collapse_is_log_of_the_candidates() -> None:
    # Every embedding equal: each anchor spreads its softmax evenly over the N - 1 other anchors
    # and Q negatives, so the loss is log(N - 1 + Q), the worst the loss gets for spread data.
    z = torch.nn.functional.normalize(torch.ones(1, 4), dim=1)
    anchors, negatives = z.expand(6, 4), z.expand(10, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = supervised_contrastive_loss(anchors, labels, 0.3, negatives)
    assert float(loss) == pytest.approx(math.log(5 + 10), rel=1e-5)
    separated = torch.eye(4)[labels % 4]  # classes on orthogonal axes, background on axis 3
    spread = supervised_contrastive_loss(separated, labels, 0.3, torch.eye(4)[[3] * 10])
    assert float(spread) < float(loss) - 1.0


def test_contrastive_loss_without_positives_is_zero_and_differentiable() -> None:
    anchors = torch.nn.functional.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    loss = supervised_contrastive_loss(anchors, torch.tensor([0, 1, 2]), 0.3)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph
    assert anchors.grad is not None and bool(torch.isfinite(anchors.grad).all())
    empty = supervised_contrastive_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0.3)
    assert float(empty) == 0.0


def test_spread_penalty_is_one_for_a_collapse_and_zero_for_spread_embeddings() -> None:
    collapsed = torch.nn.functional.normalize(torch.ones(8, 4), dim=1)
    assert float(spread_penalty(collapsed, 0.2)) == pytest.approx(1.0)
    assert float(spread_penalty(torch.eye(4), 0.2)) == 0.0  # total variance 0.75
    assert float(spread_penalty(collapsed, 0.0)) == 0.0  # switched off


def test_background_cells_avoid_every_object() -> None:
    config = small_config()
    targets = build_targets([random_boxes(np.random.default_rng(2), 6, 20.0)], config)
    torch.manual_seed(0)
    cells = background_cells(targets, 64)
    occupied = torch.nn.functional.max_pool2d(targets.heatmap.amax(1, keepdim=True), 2)
    assert float(occupied.flatten(1).gather(1, cells).max()) == 0.0
    assert len(set(cells[0].tolist())) == 64  # distinct cells


def test_temporal_instance_discrimination_picks_the_same_object() -> None:
    config = small_config()
    boxes = random_boxes(np.random.default_rng(3), 4, 20.0)
    ids = [np.arange(4, dtype=np.int64)]
    targets = build_targets([boxes], config, instance_ids=ids)
    h_f, w_f = config.fusion_hw
    d = config.embed_dim

    def embeddings(codes: torch.Tensor) -> Embeddings:
        """Object i's cell holds unit vector codes[i] in every modality; background axis d-1."""
        spatial = torch.zeros(1, 3, d, h_f * w_f)
        spatial[:, :, d - 1] = 1.0
        cells = (targets.indices[0] // config.grid_hw[1] // 2) * w_f + (
            targets.indices[0] % config.grid_hw[1] // 2
        )
        for slot in range(4):
            spatial[0, :, :, cells[slot]] = codes[slot]
        spatial = spatial.reshape(1, 3, d, h_f, w_f)
        return Embeddings(
            spatial=spatial,
            ego=torch.zeros(1, 2, d),
            fused=torch.zeros(1, d, h_f, w_f),
            pooled=torch.zeros(1, d),
            mask=torch.ones(1, 5),
            metric=spatial,
            predicted=spatial[:, 1:],
        )

    codes = torch.eye(d)[:4]
    same = temporal_loss(embeddings(codes), targets, embeddings(codes), targets, config)
    swapped = temporal_loss(embeddings(codes), targets, embeddings(codes[[1, 0, 3, 2]]), targets,
                            config)  # fmt: skip
    # Identical codes at t and t+1: each object picks itself (logit 1 / T) out of 3 other objects
    # and the background cells (logit 0): log(1 + 35 exp(-1 / 0.2)) = 0.21.
    n_other = 3 + config.metric_background_cells
    expected = math.log(1.0 + n_other * math.exp(-1.0 / config.temporal_temperature))
    assert float(same) == pytest.approx(expected, rel=1e-4)
    assert float(swapped) > float(same) + 4.0  # each picks its partner: 1 / T worse


def _old_batch_hard_triplet(e: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The metric loss this project used before: batch-hard triplet, Euclidean, on unit vectors."""
    dist = torch.sqrt((e.unsqueeze(1) - e.unsqueeze(0)).pow(2).sum(-1) + 1e-12)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool)
    hardest_pos = torch.where(positive, dist, torch.full_like(dist, -1.0)).amax(dim=1)
    hardest_neg = torch.where(~same, dist, torch.full_like(dist, 1e9)).amin(dim=1)
    return torch.relu(hardest_pos - hardest_neg + margin).mean()


def _class_distances(e: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean Euclidean distance within classes and between classes."""
    dist = torch.cdist(e, e)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    within = same & ~torch.eye(len(labels), dtype=torch.bool)
    return float(dist[within].mean()), float(dist[~same].mean())


def _train_linear_embedding(loss_fn, class_signal: float) -> tuple[tuple[float, float], ...]:  # type: ignore[no-untyped-def]
    """A linear layer + L2 normalization trained for 300 steps on 4 classes whose inputs differ by
    `class_signal` (noise 1): (within, between) distances at the start and at the end."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    means = torch.randn(4, 32, generator=gen) * class_signal
    labels = torch.arange(4).repeat_interleave(16)
    layer = torch.nn.Linear(32, 16)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)

    def embed() -> torch.Tensor:
        x = means[labels] + torch.randn(len(labels), 32, generator=gen)
        return torch.nn.functional.normalize(layer(x), dim=1)

    with torch.no_grad():
        start = _class_distances(embed(), labels)
    for _ in range(300):
        e = embed()
        background = torch.nn.functional.normalize(layer(torch.randn(32, 32, generator=gen)), 1)
        loss = loss_fn(e, labels, background)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return start, _class_distances(embed(), labels)


def test_old_triplet_collapses_the_embedding_and_the_new_metric_loss_does_not() -> None:
    # Classes that overlap at the start, as object features of a fresh detector do.
    config = small_config()

    def new_loss(e: torch.Tensor, labels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        contrast = supervised_contrastive_loss(e, labels, config.metric_temperature, background)
        return contrast + spread_penalty(e, config.metric_min_spread)

    start, old_end = _train_linear_embedding(lambda e, y, _: _old_batch_hard_triplet(e, y, 0.2),
                                             class_signal=0.4)  # fmt: skip
    assert start[1] > 1.3  # between-class distance at the start
    assert old_end[1] < 0.15  # the old loss: everything in one point, classes included
    _, new_end = _train_linear_embedding(new_loss, class_signal=0.4)
    assert new_end[1] > 1.1  # classes stay apart (measured 1.32)
    assert new_end[0] < 0.7 * start[0]  # and each class gathers (1.28 -> 0.73)
    assert new_end[1] > 1.5 * new_end[0]
    # Without any class signal nothing can separate the classes, but the spread term keeps the
    # embedding from collapsing (the old loss went to 0.05 here too).
    _, blind_end = _train_linear_embedding(new_loss, class_signal=0.0)
    assert blind_end[1] > 0.5  # measured 0.65


def test_cross_modal_distillation_moves_the_students_only() -> None:
    config = small_config()
    model = perturbed_model(config, seed=5)
    rng = np.random.default_rng(4)
    scenes = [random_boxes(rng, 5, 20.0)]
    _, embeddings = model.forward_with_embeddings(synthetic_inputs(config, scenes, rng))
    spatial = embeddings.spatial.detach().requires_grad_()
    predicted = embeddings.predicted.detach().requires_grad_()
    probe = dataclasses.replace(embeddings, spatial=spatial, predicted=predicted)
    outputs = {"heatmap": torch.full((1, 10, *config.grid_hw), 0.3)}
    loss = cross_modal_loss(outputs, probe, build_targets(scenes, config), config)
    loss.backward()
    assert float(loss.detach()) > 0.0
    # The LiDAR teacher (and every z) gets no gradient at all; the predictions do.
    assert spatial.grad is None or float(spatial.grad.abs().max()) == 0.0
    assert predicted.grad is not None and float(predicted.grad.abs().max()) > 0.0


def test_embedding_heads_are_not_on_the_inference_path() -> None:
    config = small_config()
    model = perturbed_model(config, seed=6)
    inputs = random_inputs(config, batch=1, seed=2)
    with torch.no_grad():
        before = model(**inputs)
        for parameter in model.embedding_heads.parameters():
            parameter.normal_(0.0, 10.0)
        after, embeddings = model.forward_with_embeddings(inputs)
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    norms = embeddings.metric.norm(dim=2)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)  # unit vectors per cell
