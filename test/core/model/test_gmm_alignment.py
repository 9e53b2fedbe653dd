"""The GMM alignment loss: zero before a fit, non-negative, growing with the distance from the
clean features, with a gradient that stays bounded where the raw -log p's explodes."""

from __future__ import annotations

import math

import numpy as np
import torch
from model_testlib import random_boxes

from peftdml_ros.core.model import build_model, build_targets, compute_losses, tiny_config
from peftdml_ros.core.model.gmm import FeatureGmm

DIM = 16


def _fitted(variance_scale: float = 0.01) -> tuple[FeatureGmm, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, DIM, generator=gen)
    labels = torch.randint(0, 3, (300,), generator=gen)
    clean = centers[labels] + torch.randn(300, DIM, generator=gen) * variance_scale
    gmm = FeatureGmm(components=3, dim=DIM)
    gmm.fit(clean, generator=gen)
    return gmm, clean


def test_alignment_loss_is_zero_before_a_fit() -> None:
    gmm = FeatureGmm(components=2, dim=DIM)
    assert float(gmm.alignment_loss(torch.randn(5, DIM)).abs().max()) == 0.0


def test_alignment_loss_is_non_negative_and_grows_with_the_distance() -> None:
    gmm, clean = _fitted()
    # The raw -log p of such a tight mixture is far below 0; the bound is below every value.
    nll = gmm.nll(clean)
    assert float(nll.max()) < 0.0
    assert float(gmm.nll_lower_bound()) <= float(nll.min())
    assert float(gmm.nll_lower_bound()) <= float(gmm.nll(gmm.means).min())
    losses = [
        float(gmm.alignment_loss(clean[:20] + shift).mean()) for shift in (0.0, 0.1, 1.0, 10.0)
    ]
    assert losses[0] >= 0.0
    assert all(math.isfinite(v) for v in losses)
    assert losses == sorted(losses) and losses[-1] > losses[0] + 1.0


def test_alignment_gradient_stays_bounded_where_the_raw_nll_explodes() -> None:
    gmm, clean = _fitted()
    sigma_min = float(torch.exp(0.5 * gmm.log_vars).min())
    bound = 1.0 / (sigma_min * math.sqrt(2.0 * DIM))
    for shift in (0.05, 1.0, 100.0):
        x = (clean[:1] + shift).requires_grad_(True)
        (aligned,) = torch.autograd.grad(gmm.alignment_loss(x).sum(), x)
        (raw,) = torch.autograd.grad(gmm.nll(x).sum(), x)
        assert float(aligned.norm()) <= 1.05 * bound, shift
        if shift >= 1.0:
            assert float(raw.norm()) > 100.0 * float(aligned.norm()), shift


def test_the_gmm_loss_term_is_the_alignment_loss() -> None:
    from peftdml_ros.core.model.detector_net import example_inputs

    config = tiny_config()
    model = build_model(config)
    inputs = example_inputs(config, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = model.forward_with_embeddings(inputs)[1].pooled
    model.gmm.fit(pooled.repeat(4, 1) + 0.01 * torch.randn(8, config.embed_dim))
    model.train()
    outputs, embeddings = model.forward_with_embeddings(inputs)
    rng = np.random.default_rng(0)
    targets = build_targets([random_boxes(rng, 3, 20.0), random_boxes(rng, 2, 20.0)], config)
    terms = compute_losses(outputs, embeddings, targets, config, model.gmm)
    expected = model.gmm.alignment_loss(embeddings.pooled).mean()
    assert torch.allclose(terms["gmm"], expected)
    assert math.isfinite(float(terms["total"].detach())) and float(terms["gmm"].detach()) > 0.0
