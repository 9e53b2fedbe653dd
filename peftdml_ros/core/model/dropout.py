"""Modality dropout for training: teach the fusion to work with any subset of sensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from peftdml_ros.core.errors import ConfigError


def sample_modality_dropout(
    mask: torch.Tensor,
    p: float | Sequence[float],
    generator: torch.Generator | None = None,
    keep_at_least_one: bool = True,
) -> torch.Tensor:
    """A copy of `mask` [B, M] (0/1) with each present modality dropped with probability p.

    p: one probability, or one per modality (MODALITIES order). With keep_at_least_one (default)
    a sample that would lose every present modality keeps one of them, chosen at random; absent
    modalities stay absent. Samples are independent; `generator` makes the draw reproducible.
    """
    if mask.dim() != 2:
        raise ConfigError(f"mask must be [B, M], got shape {tuple(mask.shape)}")
    probs = torch.as_tensor(p, dtype=torch.float32).reshape(-1)
    if probs.numel() not in (1, mask.shape[1]):
        raise ConfigError(f"p must be one probability or {mask.shape[1]}, got {probs.numel()}")
    if bool(((probs < 0) | (probs > 1)).any()):
        raise ConfigError(f"dropout probabilities must be in [0, 1], got {probs.tolist()}")
    present = mask > 0.5
    draw = torch.rand(mask.shape, generator=generator)
    kept = present & (draw >= probs.to(draw.dtype))
    if keep_at_least_one:
        emptied = present.any(dim=1) & ~kept.any(dim=1)
        # Restore one random present modality: the present one with the highest random score.
        scores = torch.where(present, torch.rand(mask.shape, generator=generator), -1.0)
        restore = torch.zeros_like(kept).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
        kept = kept | (restore & emptied.unsqueeze(1))
    return kept.to(mask.dtype)
