"""Modality dropout sampling and the clean-feature GMM."""

from __future__ import annotations

import pytest
import torch
from model_testlib import one_thread  # noqa: F401  (pytest fixture, used by pytestmark)

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model import (
    build_model,
    example_inputs,
    fit_feature_gmm,
    sample_modality_dropout,
    tiny_config,
)
from peftdml_ros.core.model.gmm import FeatureGmm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dropout_never_adds_modalities_and_keeps_one() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(2000, 5, generator=gen) < 0.7).float()
    mask[0] = 0.0
    dropped = sample_modality_dropout(mask, 0.3, gen)
    assert bool((dropped <= mask).all())
    had_any = mask.sum(1) > 0
    assert bool((dropped.sum(1)[had_any] >= 1).all())
    assert float(dropped[0].sum()) == 0.0  # nothing present stays nothing
    rate = 1.0 - float(dropped.sum() / mask.sum())
    assert 0.26 < rate < 0.31  # 0.3, less the few restored ones


def test_dropout_is_reproducible_and_per_modality() -> None:
    mask = torch.ones(500, 5)
    a = sample_modality_dropout(mask, [0.0, 1.0, 0.5, 0.0, 0.0], torch.Generator().manual_seed(3))
    b = sample_modality_dropout(mask, [0.0, 1.0, 0.5, 0.0, 0.0], torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert bool((a[:, 0] == 1).all()) and bool((a[:, 1] == 0).all())
    assert 0.35 < float(a[:, 2].mean()) < 0.65


def test_dropout_may_drop_everything_when_asked() -> None:
    mask = torch.ones(10, 5)
    assert float(sample_modality_dropout(mask, 1.0, keep_at_least_one=False).sum()) == 0.0
    assert bool((sample_modality_dropout(mask, 1.0).sum(1) == 1).all())


def test_dropout_rejects_bad_probabilities() -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        sample_modality_dropout(torch.ones(2, 5), 1.5)
    with pytest.raises(ConfigError, match="one probability or 5"):
        sample_modality_dropout(torch.ones(2, 5), [0.1, 0.2])


def test_gmm_fit_scores_clean_features_lower_than_shifted_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=gen) * 4
    clean = (
        centers[torch.randint(0, 3, (600,), generator=gen)]
        + torch.randn(600, 8, generator=gen) * 0.3
    )
    gmm = FeatureGmm(components=4, dim=8)
    assert not gmm.is_fitted and float(gmm.nll(clean).abs().max()) == 0.0
    mean_ll = gmm.fit(clean, generator=gen)
    assert gmm.is_fitted and mean_ll > -10.0
    shifted = clean[:100] + 3.0
    assert float(gmm.nll(shifted).mean()) > float(gmm.nll(clean[:100]).mean()) + 20.0


def test_gmm_needs_enough_samples() -> None:
    with pytest.raises(ConfigError, match="at least 8"):
        FeatureGmm(components=8, dim=4).fit(torch.randn(5, 4))


def test_fit_feature_gmm_makes_the_normality_score_live() -> None:
    config = tiny_config()
    model = build_model(config)
    batches = [example_inputs(config, 4, torch.Generator().manual_seed(s)) for s in range(3)]
    with torch.no_grad():
        assert float(model(**batches[0])["normality_score"].abs().max()) == 0.0
    fit_feature_gmm(model, batches, generator=torch.Generator().manual_seed(0))
    assert model.gmm.is_fitted
    clean = batches[0]
    degraded = {k: v.clone() for k, v in clean.items()}
    degraded["modality_mask"][:, 0] = 0.0  # LiDAR lost: features move away from normal
    with torch.no_grad():
        clean_score = model(**clean)["normality_score"]
        degraded_score = model(**degraded)["normality_score"]
    assert bool(torch.isfinite(clean_score).all()) and float(clean_score.abs().max()) > 0.0
    assert float(degraded_score.mean()) > float(clean_score.mean())
