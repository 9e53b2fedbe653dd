"""Normalization helpers that keep every activation O(1), in fp32 and in fp16.

- `group_norm(channels)`: the 2D feature-map normalization of every backbone, the neck and the
  head. GroupNorm, not BatchNorm (docs/model.md, "Bounded features"): it is per sample, so a
  modality dropped for one sample of a batch (zero inputs) cannot shift the statistics of the
  others and the exact-masking property holds in training as in inference; it has no running
  statistics, so frozen backbones stay frozen in PEFT mode and batch size ~8 costs nothing; it
  exports at opset 17 (InstanceNormalization + Reshape) with ONNX Runtime parity.
- `stable_normalize(x, dim)`: L2 normalization that cannot overflow in fp16 (the vector is
  divided by its largest component first; the result is the same unit vector).
"""

from __future__ import annotations

import torch
from torch import nn

# Channels per group at least this many (and at most 32 groups, as in Wu & He's GroupNorm).
_MIN_CHANNELS_PER_GROUP = 4
_MAX_GROUPS = 32
_GROUP_NORM_EPS = 1e-5
_NORMALIZE_EPS = 1e-6


def norm_groups(channels: int) -> int:
    """The number of GroupNorm groups for `channels`: the largest divisor of `channels` that is
    at most 32 and leaves at least 4 channels per group (1 for fewer than 8 channels)."""
    best = 1
    for groups in range(1, _MAX_GROUPS + 1):
        if channels % groups == 0 and channels // groups >= _MIN_CHANNELS_PER_GROUP:
            best = groups
    return best


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=_GROUP_NORM_EPS)


def stable_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / ||x|| along `dim` (0 where x is 0), overflow-free in fp16.

    Squaring 64 components of magnitude ~40 already exceeds fp16's 65504; after dividing by
    the largest |component| every square is at most 1, and normalize(x / c) = normalize(x).
    """
    # Detached: the result does not depend on the scale, so no gradient flows through it.
    scale = x.detach().abs().amax(dim=dim, keepdim=True).clamp(min=_NORMALIZE_EPS)
    scaled = x / scale
    norm = scaled.pow(2).sum(dim=dim, keepdim=True).sqrt().clamp(min=_NORMALIZE_EPS)
    return scaled / norm
