"""Shared embedding, cross-modal attention, gating and ego FiLM (the trainable fusion).

Masking rules (what makes any subset of sensors work and lets a dead sensor change nothing):
  - every modality's embedding is multiplied by its mask bit before anything else reads it;
  - attention scores of masked tokens are replaced (torch.where) by -1e4 before the softmax and
    the weights multiplied by the mask after it, so a masked token gets exactly weight 0 and its
    score never reaches the softmax;
  - gates are multiplied by the mask; FiLM reads the (zeroed) ego embeddings and the mask bits;
  - with no modality present the fused features are multiplied by 0 (and the head's heatmap too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.norm import stable_normalize
from peftdml_ros.core.model_io import NUM_MODALITIES

NUM_SPATIAL = 3  # lidar, radar, camera: BEV maps; imu and gnss: one vector per frame
_MASKED_SCORE = -1e4


class ModalityProjections(nn.Module):
    """Projection heads into the shared, L2-normalized d-dim embedding (per BEV cell).

    spatial [B, C, H_f, W_f] x 3 -> [B, 3, d, H_f, W_f]; ego [B, C_e] x 2 -> [B, 2, d].
    Masked modalities give zeros.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.embed_dim
        self.spatial = nn.ModuleList(
            nn.Conv2d(config.bev_channels, d, kernel_size=1) for _ in range(NUM_SPATIAL)
        )
        self.ego = nn.ModuleList(nn.Linear(config.ego_hidden, d) for _ in range(2))

    def forward(
        self, spatial: list[torch.Tensor], ego: list[torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spatial_z = [
            stable_normalize(proj(x), dim=1) * mask[:, m, None, None, None]
            for m, (proj, x) in enumerate(zip(self.spatial, spatial, strict=True))
        ]
        ego_z = [
            stable_normalize(proj(x), dim=1) * mask[:, NUM_SPATIAL + k, None]
            for k, (proj, x) in enumerate(zip(self.ego, ego, strict=True))
        ]
        return torch.stack(spatial_z, dim=1), torch.stack(ego_z, dim=1)


class EmbeddingHeads(nn.Module):
    """Linear read-outs of the shared embedding that only the training losses use.

    - metric: one 1 x 1 conv shared by the spatial modalities, then L2 normalization: the space
      of the class-contrastive metric loss (SupCon's projection head). The loss makes classes
      linearly separable in z without asking z itself to forget what tells two cars apart
      (size, heading, speed), which the box regression needs;
    - predict: one 1 x 1 conv per student modality (radar, camera), then L2 normalization: the
      prediction of LiDAR's embedding that cross-modal distillation compares with the (detached)
      LiDAR embedding (BYOL's predictor): the student must carry LiDAR's information, but keeps
      its own features (pulling z_camera itself onto z_lidar slowed detection in training).

    spatial_z [B, 3, d, H_f, W_f], mask [B, 5] -> metric [B, 3, d, H_f, W_f] (lidar, radar,
    camera) and predicted [B, 2, d, H_f, W_f] (radar, camera); 0 for masked modalities.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.embed_dim
        self.metric = nn.Conv2d(d, d, kernel_size=1)
        self.predict = nn.ModuleList(nn.Conv2d(d, d, kernel_size=1) for _ in range(2))

    def forward(
        self, spatial_z: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, spatial, d, h_f, w_f = spatial_z.shape
        flat = spatial_z.reshape(batch * spatial, d, h_f, w_f)
        metric = stable_normalize(self.metric(flat), dim=1).reshape(spatial_z.shape)
        metric = metric * mask[:, :spatial].reshape(batch, spatial, 1, 1, 1)
        predicted = [
            stable_normalize(head(spatial_z[:, m]), dim=1) * mask[:, m, None, None, None]
            for m, head in zip((1, 2), self.predict, strict=True)
        ]
        return metric, torch.stack(predicted, dim=1)


class CrossModalFusion(nn.Module):
    """Per-cell attention over the 5 modality tokens, mask-aware gates, then ego FiLM.

    Inputs spatial_z [B, 3, d, H_f, W_f], ego_z [B, 2, d], mask [B, 5] (0/1); output
    fused [B, d, H_f, W_f]. The query of a cell is the mean of its present tokens.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, heads = config.embed_dim, config.attention_heads
        self.heads, self.head_dim = heads, d // heads
        self.modality_embed = nn.Parameter(torch.zeros(NUM_MODALITIES, d))
        nn.init.normal_(self.modality_embed, std=0.02)
        self.query = nn.Conv2d(d, d, kernel_size=1)
        self.key = nn.Conv2d(d, d, kernel_size=1)
        self.value = nn.Conv2d(d, d, kernel_size=1)
        self.out = nn.Conv2d(d, d, kernel_size=1)
        hidden = max(d // 2, 8)
        self.gate = nn.Sequential(
            nn.Linear(NUM_MODALITIES * d + NUM_MODALITIES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_MODALITIES),
        )
        self.film = nn.Linear(2 * d + 2, 2 * d)
        nn.init.zeros_(self.film.weight)  # FiLM starts as the identity
        nn.init.zeros_(self.film.bias)

    def forward(
        self, spatial_z: torch.Tensor, ego_z: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        batch, spatial, d, h_f, w_f = spatial_z.shape
        heads, head_dim = self.heads, self.head_dim
        m_sp = mask[:, :spatial].reshape(batch, spatial, 1, 1, 1)
        m_ego = mask[:, spatial:].reshape(batch, 2, 1)
        # Ego tokens are the same in every cell: they stay [B, 2, d] vectors throughout.
        present = mask.sum(dim=1).reshape(batch, 1, 1, 1)
        ego_sum = (ego_z * m_ego).sum(dim=1).reshape(batch, d, 1, 1)
        query_in = ((spatial_z * m_sp).sum(dim=1) + ego_sum) / present.clamp(min=1.0)
        embed = self.modality_embed
        keyed_sp = (spatial_z + embed[:spatial].reshape(1, spatial, d, 1, 1)) * m_sp
        keyed_ego = (ego_z + embed[spatial:].reshape(1, 2, d)) * m_ego  # [B, 2, d]
        flat = keyed_sp.reshape(batch * spatial, d, h_f, w_f)
        sp_shape = (batch, spatial, heads, head_dim, h_f, w_f)
        ego_shape = (batch, 2, heads, head_dim, 1, 1)
        q = self.query(query_in).reshape(batch, 1, heads, head_dim, h_f, w_f)
        k_sp, v_sp = self.key(flat).reshape(sp_shape), self.value(flat).reshape(sp_shape)
        k_ego = _pointwise(self.key, keyed_ego).reshape(ego_shape)
        v_ego = _pointwise(self.value, keyed_ego).reshape(ego_shape)
        scores = torch.cat([(q * k_sp).sum(dim=3), (q * k_ego).sum(dim=3)], dim=1)
        scores = scores / math.sqrt(head_dim)  # [B, 5, heads, H_f, W_f]
        token_mask = mask.reshape(batch, NUM_MODALITIES, 1, 1, 1) > 0.5
        scores = torch.where(token_mask, scores, torch.full_like(scores, _MASKED_SCORE))
        weights = (torch.softmax(scores, dim=1) * token_mask.to(scores.dtype)).unsqueeze(3)
        attended = (weights[:, :spatial] * v_sp).sum(dim=1) + (weights[:, spatial:] * v_ego).sum(
            dim=1
        )
        fused = self.out(attended.reshape(batch, d, h_f, w_f))
        fused = fused + self._gated(spatial_z, ego_z, mask)
        fused = self._film(fused, ego_z, mask)
        any_present = (mask.sum(dim=1) > 0.5).to(fused.dtype).reshape(batch, 1, 1, 1)
        return fused * any_present

    def _gated(
        self, spatial_z: torch.Tensor, ego_z: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Sum of tokens weighted by gates from pooled embeddings and the mask."""
        batch, spatial = spatial_z.shape[0], spatial_z.shape[1]
        # Masked tokens are already 0, so their pooled features say nothing either.
        pooled = torch.cat([spatial_z.mean(dim=(3, 4)), ego_z], dim=1).reshape(batch, -1)
        gates = torch.sigmoid(self.gate(torch.cat([pooled, mask], dim=1))) * mask  # [B, 5]
        gated_sp = (spatial_z * gates[:, :spatial].reshape(batch, spatial, 1, 1, 1)).sum(dim=1)
        gated_ego = (ego_z * gates[:, spatial:].unsqueeze(-1)).sum(dim=1)  # [B, d]
        return gated_sp + gated_ego.reshape(batch, -1, 1, 1)

    def _film(self, fused: torch.Tensor, ego_z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, d = fused.shape[0], fused.shape[1]
        film_in = torch.cat([ego_z.reshape(batch, 2 * d), mask[:, NUM_SPATIAL:]], dim=1)
        film_out: torch.Tensor = self.film(film_in)
        gamma, beta = film_out.chunk(2, dim=1)
        out: torch.Tensor = fused * (1.0 + gamma.reshape(batch, d, 1, 1))
        return out + beta.reshape(batch, d, 1, 1)


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1 x 1 conv applied to vectors x [..., C_in] (what it computes on a constant map)."""
    return F.linear(x, conv.weight[:, :, 0, 0], conv.bias)
