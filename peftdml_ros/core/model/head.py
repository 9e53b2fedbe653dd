"""CenterPoint-style detection head: fused BEV features -> dense maps on the output grid.

fused [B, d, H_f, W_f] -> 3 x 3 conv -> 2x transposed conv to [B, C_h, H_B, W_B] -> 3 x 3 conv
(each followed by GroupNorm and ReLU) -> one 1 x 1 conv whose channels split into the model_io
outputs (see `HEAD_CHANNELS`).

Initial outputs (the last conv's bias): heatmap 0.1, size of a car, yaw 0 and center z at
`CENTER_Z_PRIOR_M` in the ego frame (base_link: origin on the road under the rear axle). nuScenes
box centers sit at half the box height above the road: ~0.5 m (cones, barriers) to ~1.9 m
(trailers), ~0.9 m for cars and pedestrians, the bulk of the objects. One class-agnostic prior
of 0.95 m lies inside every class's typical box, within 1 m of its center (cars: 0.09 m); the
regression learns the rest (a per-class prior would need the class before the box).
(A prior taken from a LiDAR-frame config, -0.5 m, sat 1.4 m below a car's center, under the road.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.norm import group_norm
from peftdml_ros.core.model_io import ATTRIBUTES
from peftdml_ros.core.types import NUSCENES_CLASSES

# Output name -> channels, in the order of the head's last conv.
HEAD_CHANNELS: dict[str, int] = {
    "heatmap": len(NUSCENES_CLASSES),
    "center_offset": 2,
    "center_z": 1,
    "log_size": 3,
    "yaw_sin_cos": 2,
    "velocity": 2,
    "attribute_logits": len(ATTRIBUTES),
}
_HEATMAP_PRIOR = 0.1  # initial center probability (CenterNet's focal-loss bias init)
_SIZE_PRIOR_WLH_M = (1.9, 4.6, 1.7)  # a car: a sane start for log_size
CENTER_Z_PRIOR_M = 0.95


class DetectionHead(nn.Module):
    """Dense box maps. The heatmap is a sigmoid, multiplied by `any_present` [B] (0 or 1)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, c = config.embed_dim, config.head_channels
        self.trunk = nn.Sequential(
            nn.Conv2d(d, d, kernel_size=3, padding=1),
            group_norm(d),
            nn.ReLU(),
            nn.ConvTranspose2d(d, c, kernel_size=2, stride=2),
            group_norm(c),
            nn.ReLU(),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            group_norm(c),
            nn.ReLU(),
        )
        self.out = nn.Conv2d(c, sum(HEAD_CHANNELS.values()), kernel_size=1)
        self._init_output_bias()

    def _init_output_bias(self) -> None:
        out_bias = self.out.bias
        if out_bias is None:  # the conv is built with a bias
            return
        with torch.no_grad():
            out_bias.zero_()
            split = out_bias.split(list(HEAD_CHANNELS.values()))
            bias = dict(zip(HEAD_CHANNELS, split, strict=True))
            bias["heatmap"].fill_(-math.log((1.0 - _HEATMAP_PRIOR) / _HEATMAP_PRIOR))
            bias["log_size"].copy_(torch.log(torch.tensor(_SIZE_PRIOR_WLH_M)))
            bias["center_z"].fill_(CENTER_Z_PRIOR_M)
            bias["center_offset"].fill_(0.5)
            bias["yaw_sin_cos"].copy_(torch.tensor([0.0, 1.0]))

    def forward(self, fused: torch.Tensor, any_present: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.out(self.trunk(fused))
        split = maps.split(list(HEAD_CHANNELS.values()), dim=1)
        outputs = dict(zip(HEAD_CHANNELS, split, strict=True))
        present = any_present.reshape(-1, 1, 1, 1)
        outputs["heatmap"] = torch.sigmoid(outputs["heatmap"]) * present
        return outputs
