"""A short PEFT training loop on synthetic scenes lowers every loss term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testlib import (
    moved,
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    random_boxes,
    small_config,
    synthetic_inputs,
)

from peftdml_ros.core.model import (
    BevTargets,
    Embeddings,
    build_model,
    build_targets,
    compute_losses,
    freeze_backbones,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _split(emb: Embeddings, half: int) -> tuple[Embeddings, Embeddings]:
    parts = [
        Embeddings(**{k: v[s] for k, v in emb.__dict__.items()})
        for s in (slice(0, half), slice(half, None))
    ]
    return parts[0], parts[1]


def test_twenty_peft_steps_lower_det_metric_and_consistency() -> None:
    torch.manual_seed(0)
    # A 16 x 16 grid keeps 20 steps fast on a busy 2-core machine.
    config = small_config(
        point_cloud_range_m=(-12.8, -12.8, -2.0, 12.8, 12.8, 6.0), max_lidar_points=256
    )
    model = build_model(config)
    freeze_backbones(model)
    rng = np.random.default_rng(0)
    now = [random_boxes(rng, 5, 10.0) for _ in range(2)]
    later = [moved(b, 0.3) for b in now]
    ids = [np.arange(5, dtype=np.int64) + 10 * i for i in range(2)]
    # Frames t and t+1 go through the model as one batch of 4.
    inputs = synthetic_inputs(config, now + later, rng)
    targets = build_targets(now + later, config, instance_ids=ids + ids)
    first_half = BevTargets(**{k: v[:2] for k, v in targets.__dict__.items()})
    second_half = BevTargets(**{k: v[2:] for k, v in targets.__dict__.items()})
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()

    def step() -> dict[str, float]:
        outputs, emb = model.forward_with_embeddings(inputs)
        emb_now, emb_later = _split(emb, 2)
        terms = compute_losses(
            {k: v[:2] for k, v in outputs.items()},
            emb_now,
            first_half,
            config,
            next_frame=(emb_later, second_half),
        )
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    history = [step() for _ in range(20)]
    first, last = history[0], history[-1]
    terms = ("total", "det", "heatmap", "box_iou", "metric", "cross_modal", "temporal")
    for term in (*terms, "consistency"):
        assert last[term] < first[term], (term, first[term], last[term])
    assert first["metric"] > 0 and first["cross_modal"] > 0 and first["temporal"] > 0
    assert last["metric_spread"] == 0.0  # the anti-collapse guard is idle in a healthy run
