"""`PeftDmlNet`: the whole fused detector, model_io inputs in, model_io outputs out.

    lidar  -> PointEncoder  --+
    radar  -> PointEncoder  --+--> projection heads -> L2-normalized embeddings z_m (per cell)
    camera -> CameraEncoder --+                          |
    imu    -> EgoEncoder    --+--> projection heads -> z_imu, z_gnss (per frame)
    gnss   -> EgoEncoder    --+                          |
                        cross-modal attention + gates + ego FiLM -> fused BEV [B, d, H_f, W_f]
                              |                                    +-> pooled -> GMM score
                        DetectionHead -> heatmap, boxes, attributes on [H_B, W_B]

Frozen in PEFT mode (`freeze_backbones`): the five encoders except their LoRA factors and
adapters. Trainable: LoRA, adapters, projection heads, fusion, head, and the embedding heads
(linear read-outs of the shared embedding that only the training losses use).

A modality whose `modality_mask` bit is 0 has every one of its input tensors replaced by zeros
(torch.where, so even NaN inputs are dropped) and its encoder output multiplied by 0, so its
inputs cannot change any output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.encoders import (
    CameraEncoder,
    EgoEncoder,
    PointEncoder,
    gnss_encoder,
    imu_encoder,
    lidar_encoder,
    radar_encoder,
)
from peftdml_ros.core.model.fusion import CrossModalFusion, EmbeddingHeads, ModalityProjections
from peftdml_ros.core.model.gmm import FeatureGmm
from peftdml_ros.core.model.head import DetectionHead
from peftdml_ros.core.model.lora import mark_trainable
from peftdml_ros.core.model_io import (
    GNSS_FEATURE_DIM,
    IMU_FEATURE_DIM,
    NUM_MODALITIES,
    OUTPUT_NAMES,
)
from peftdml_ros.core.types import LIDAR_POINT_FIELDS, RADAR_POINT_FIELDS


@dataclass(frozen=True)
class Embeddings:
    """Intermediate features for the metric, consistency and GMM losses.

    spatial: [B, 3, d, H_f, W_f] L2-normalized embeddings of lidar, radar, camera (0 if masked).
    ego: [B, 2, d] of imu, gnss. fused: [B, d, H_f, W_f]. pooled: [B, d] (mean of fused over
    cells, what the GMM models). mask: [B, 5] 0/1.
    metric: [B, 3, d, H_f, W_f] the metric head's read-out of spatial (unit vectors, 0 if
    masked); predicted: [B, 2, d, H_f, W_f] radar's and camera's prediction of the LiDAR
    embedding (unit vectors, 0 if masked). See fusion.EmbeddingHeads.
    """

    spatial: torch.Tensor
    ego: torch.Tensor
    fused: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    metric: torch.Tensor
    predicted: torch.Tensor


def _masked(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """x where present[b] else 0; present [B] bool, x [B, ...]."""
    shape = (present.shape[0],) + (1,) * (x.dim() - 1)
    return torch.where(present.reshape(shape), x, torch.zeros_like(x))


class PeftDmlNet(nn.Module):
    """The PEFT-DML detector. `forward(**inputs)` returns the OUTPUT_NAMES tensors."""

    input_modality_mask: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.lidar: PointEncoder = lidar_encoder(config)
        self.radar: PointEncoder = radar_encoder(config)
        self.camera = CameraEncoder(config)
        self.imu: EgoEncoder = imu_encoder(config)
        self.gnss: EgoEncoder = gnss_encoder(config)
        self.projections = mark_trainable(ModalityProjections(config))
        self.fusion = mark_trainable(CrossModalFusion(config))
        self.head = DetectionHead(config)
        mark_trainable(self.head)
        # Used by the training losses only: never on the path of forward() (nor in an export).
        self.embedding_heads = EmbeddingHeads(config)
        mark_trainable(self.embedding_heads)
        self.gmm = FeatureGmm(config.gmm_components, config.embed_dim)
        # Not a parameter and not saved: it follows config.input_modalities.
        self.register_buffer(
            "input_modality_mask",
            torch.tensor(config.input_modality_mask, dtype=torch.float32),
            persistent=False,
        )

    def forward(
        self,
        lidar_points: torch.Tensor,
        lidar_valid: torch.Tensor,
        radar_points: torch.Tensor,
        radar_valid: torch.Tensor,
        camera_images: torch.Tensor,
        camera_intrinsics: torch.Tensor,
        camera_to_ego: torch.Tensor,
        camera_valid: torch.Tensor,
        imu_features: torch.Tensor,
        gnss_features: torch.Tensor,
        modality_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        inputs = {
            "lidar_points": lidar_points,
            "lidar_valid": lidar_valid,
            "radar_points": radar_points,
            "radar_valid": radar_valid,
            "camera_images": camera_images,
            "camera_intrinsics": camera_intrinsics,
            "camera_to_ego": camera_to_ego,
            "camera_valid": camera_valid,
            "imu_features": imu_features,
            "gnss_features": gnss_features,
            "modality_mask": modality_mask,
        }
        outputs, _ = self._forward(inputs)
        return outputs

    def forward_with_embeddings(
        self, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], Embeddings]:
        """Outputs (OUTPUT_NAMES order) and the intermediate embeddings of one batch."""
        outputs, (spatial_z, ego_z, fused, pooled, mask) = self._forward(inputs)
        metric, predicted = self.embedding_heads(spatial_z, mask)
        embeddings = Embeddings(
            spatial=spatial_z,
            ego=ego_z,
            fused=fused,
            pooled=pooled,
            mask=mask,
            metric=metric,
            predicted=predicted,
        )
        return outputs, embeddings

    def _forward(
        self, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        """Outputs and (spatial_z, ego_z, fused, pooled, mask)."""
        # Inputs are float32 (model_io); features take the dtype of the weights (float32, or
        # float16 in a half-precision copy, which reads the same float32 inputs).
        dtype = self.head.out.weight.dtype
        # Modalities outside config.input_modalities count as absent.
        wanted = inputs["modality_mask"] * self.input_modality_mask.to(inputs["modality_mask"])
        mask = (wanted > 0.5).to(dtype)  # [B, 5]
        present = mask > 0.5
        lidar = self.lidar(
            _masked(inputs["lidar_points"], present[:, 0]),
            _masked(inputs["lidar_valid"], present[:, 0]),
        )
        radar = self.radar(
            _masked(inputs["radar_points"], present[:, 1]),
            _masked(inputs["radar_valid"], present[:, 1]),
        )
        camera = self.camera(
            _masked(inputs["camera_images"], present[:, 2]),
            _masked(inputs["camera_intrinsics"], present[:, 2]),
            _masked(inputs["camera_to_ego"], present[:, 2]),
            _masked(inputs["camera_valid"], present[:, 2]),
        )
        imu = self.imu(_masked(inputs["imu_features"], present[:, 3]))
        gnss = self.gnss(_masked(inputs["gnss_features"], present[:, 4]))
        spatial = [_masked(f, present[:, m]) for m, f in enumerate((lidar, radar, camera))]
        ego = [_masked(imu, present[:, 3]), _masked(gnss, present[:, 4])]
        spatial_z, ego_z = self.projections(spatial, ego, mask)
        fused = self.fusion(spatial_z, ego_z, mask)
        any_present = (mask.sum(dim=1) > 0.5).to(fused.dtype)
        outputs = self.head(fused, any_present)
        pooled = fused.mean(dim=(2, 3))
        outputs["normality_score"] = self.gmm.nll(pooled)
        ordered = {name: outputs[name] for name in OUTPUT_NAMES}
        return ordered, (spatial_z, ego_z, fused, pooled, mask)


def build_model(config: ModelConfig | None = None) -> PeftDmlNet:
    """A fresh `PeftDmlNet` (all parameters trainable; see `freeze_backbones` for PEFT)."""
    cfg = config or ModelConfig()
    if len(LIDAR_POINT_FIELDS) != 5 or len(RADAR_POINT_FIELDS) != 7:
        raise ConfigError("the point field layout changed; update the encoders' feature scales")
    if IMU_FEATURE_DIM != 12 or GNSS_FEATURE_DIM != 6 or NUM_MODALITIES != 5:
        raise ConfigError("model_io feature sizes changed; update the ego encoders and fusion")
    return PeftDmlNet(cfg)


def example_inputs(
    config: ModelConfig,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    fill: float = 0.7,
) -> dict[str, torch.Tensor]:
    """Random but plausible inputs (INPUT_NAMES order) for tests, export and benchmarks.

    Points are uniform in the BEV range (a `fill` fraction valid), images noise, cameras looking
    outwards around the vehicle at 1.5 m height with a pinhole K, all modalities present.
    """
    b, gen = batch_size, generator
    x0, y0, z0, x1, y1, z1 = config.point_cloud_range_m
    low = torch.tensor([x0, y0, z0])
    span = torch.tensor([x1 - x0, y1 - y0, z1 - z0])

    def points(count: int, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
        xyz = low + torch.rand(b, count, 3, generator=gen) * span
        rest = torch.rand(b, count, extra, generator=gen)
        valid = (torch.rand(b, count, generator=gen) < fill).to(torch.float32)
        return torch.cat([xyz, rest], dim=-1) * valid.unsqueeze(-1), valid

    lidar, lidar_valid = points(config.max_lidar_points, 2)
    radar, radar_valid = points(config.max_radar_points, 4)
    n, (h, w) = config.num_cameras, config.image_size_hw
    intrinsics, to_ego = camera_rig(config)
    return {
        "lidar_points": lidar,
        "lidar_valid": lidar_valid,
        "radar_points": radar,
        "radar_valid": radar_valid,
        "camera_images": torch.randn(b, n, 3, h, w, generator=gen),
        "camera_intrinsics": intrinsics.expand(b, n, 3, 3).clone(),
        "camera_to_ego": to_ego.expand(b, n, 4, 4).clone(),
        "camera_valid": torch.ones(b, n),
        "imu_features": torch.randn(b, IMU_FEATURE_DIM, generator=gen),
        "gnss_features": torch.randn(b, GNSS_FEATURE_DIM, generator=gen),
        "modality_mask": torch.ones(b, NUM_MODALITIES),
    }


def camera_rig(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """K [N, 3, 3] (70 degree horizontal field of view) and camera_to_ego [N, 4, 4] of N cameras
    at 1.5 m height, evenly spaced in azimuth, optical axis horizontal (z forward, x right,
    y down)."""
    n, (h, w) = config.num_cameras, config.image_size_hw
    focal = 0.5 * w / torch.tan(torch.tensor(35.0).deg2rad())
    k = torch.tensor([[focal, 0.0, (w - 1) / 2.0], [0.0, focal, (h - 1) / 2.0], [0.0, 0.0, 1.0]])
    poses = []
    for i in range(n):
        yaw = torch.tensor(2.0 * torch.pi * i / n)
        forward = torch.stack([torch.cos(yaw), torch.sin(yaw), torch.tensor(0.0)])
        right = torch.stack([torch.sin(yaw), -torch.cos(yaw), torch.tensor(0.0)])
        down = torch.tensor([0.0, 0.0, -1.0])
        pose = torch.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, down, forward
        pose[:3, 3] = torch.tensor([0.0, 0.0, 1.5])
        poses.append(pose)
    return k.expand(n, 3, 3).clone(), torch.stack(poses)
