"""Per-modality backbones (frozen in PEFT mode, with LoRA and adapters): inputs -> BEV features.

Every encoder is export-friendly: fixed tensor sizes, validity carried as float masks, scatter
over flattened cell indices (ScatterElements with add), no data-dependent Python control flow.

- LiDAR / radar: per-point MLP (PointNet-style, on the point's features plus its offset from its
  pillar's center) -> mean over the points of each pillar (scatter_add of features and counts)
  plus log(1 + count) -> 3-stage 2D CNN (strides 2, 4, 8 of the pillar grid) -> neck summing the
  stages on the fusion grid (stride 2).
- Camera: 2D CNN per image (stride 32, features taken at stride 8 with a top-down sum) -> lifted
  to BEV: every fusion-grid cell center, at a few heights, is projected through the inverse of
  camera_to_ego and the intrinsics and bilinearly sampled (grid_sample); samples behind the
  camera, outside the image or of an invalid camera are dropped; the rest are averaged.
- IMU / GNSS: MLP of the fixed-size feature vector.

Bounded magnitudes: every conv is followed by a GroupNorm (the necks' sums too) and every
per-point / per-frame linear layer by a LayerNorm, before its ReLU. LoRA wraps the conv or linear
layer only (the norm reads its output), so `merge_lora` stays exact. Without these the
normalization of the shared embedding made every layer before it scale-free and training let
the feature scale drift (1e6 after 1500 steps: non-finite in fp16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.lora import Adapter1d, Adapter2d, lora_conv, lora_linear
from peftdml_ros.core.model.norm import group_norm

# Fixed per-column scales bringing raw features to O(1) (rows of LIDAR/RADAR_POINT_FIELDS).
_INTENSITY_SCALE = 1.0 / 255.0  # nuScenes intensity is 0..255
_RCS_SCALE = 0.1  # dBsm
_SPEED_SCALE = 0.1  # m/s
_ACCEL_SCALE = 0.1  # m/s^2 (gravity ~ 9.8)
_OUTSIDE_GRID = -4.0  # grid_sample coordinate of dropped samples


class PillarScatter(nn.Module):
    """Points [B, P, F] -> per-pillar mean of point features on the BEV grid.

    The MLP sees the point's scaled features and its offset from the pillar center (in cells).
    Output [B, C + 1, H_B, W_B]: C mean features, then log(1 + points in the pillar).
    """

    feature_scale: torch.Tensor

    def __init__(
        self,
        config: ModelConfig,
        feature_scale: tuple[float, ...],
        channels: int,
        rank: int,
    ) -> None:
        super().__init__()
        x0, y0, z0, _, _, z1 = config.point_cloud_range_m
        self.x0, self.y0, self.z0, self.z1 = x0, y0, z0, z1
        self.cell_m = config.cell_m
        self.grid_hw = config.grid_hw
        self.register_buffer(
            "feature_scale", torch.tensor(feature_scale, dtype=torch.float32), persistent=False
        )
        in_features = len(feature_scale) + 2
        # LayerNorm is per point: padding rows (dropped below) cannot reach other points.
        self.point_mlp = nn.Sequential(
            lora_linear(in_features, channels, rank, config.lora_alpha),
            nn.LayerNorm(channels),
            nn.ReLU(),
            lora_linear(channels, channels, rank, config.lora_alpha),
            nn.LayerNorm(channels),
            nn.ReLU(),
        )
        self.channels = channels

    def forward(self, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """points [B, P, F], valid [B, P] (float32, as model_io) -> [B, C + 1, H_B, W_B] in the
        dtype of the weights. Cells and offsets are computed in float32 whatever that dtype: in
        fp16 a coordinate of 50 m moves by up to 3 cm, enough to put points near a cell border
        into the neighbouring pillar."""
        dtype = self.feature_scale.dtype
        points = points.to(torch.float32)
        height, width = self.grid_hw
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        col_f = torch.floor((x - self.x0) / self.cell_m)
        row_f = torch.floor((y - self.y0) / self.cell_m)
        inside = (
            (valid > 0.5)
            & (col_f >= 0)
            & (col_f < width)
            & (row_f >= 0)
            & (row_f < height)
            & (z >= self.z0)
            & (z < self.z1)
        )
        col_f = col_f.clamp(0, width - 1)
        row_f = row_f.clamp(0, height - 1)
        dx_cells = (x - self.x0) / self.cell_m - (col_f + 0.5)
        dy_cells = (y - self.y0) / self.cell_m - (row_f + 0.5)
        scaled = points * self.feature_scale.to(torch.float32)
        point_in = torch.cat([scaled, dx_cells.unsqueeze(-1), dy_cells.unsqueeze(-1)], dim=-1)
        point_in = point_in.to(dtype)
        weight = inside.to(dtype)  # [B, P]
        features = self.point_mlp(point_in)  # [B, P, C]
        # where, not multiply: padding rows must contribute 0 even if they hold inf/NaN.
        features = torch.where(inside.unsqueeze(-1), features, torch.zeros_like(features))
        cell = (row_f * width + col_f).to(torch.int64)
        cell = torch.where(inside, cell, torch.zeros_like(cell))  # [B, P]
        batch = points.shape[0]
        sums = features.new_zeros((batch, self.channels, height * width))
        sums = sums.scatter_add(
            2, cell.unsqueeze(1).expand(-1, self.channels, -1), features.transpose(1, 2)
        )
        counts = weight.new_zeros((batch, 1, height * width))
        counts = counts.scatter_add(2, cell.unsqueeze(1), weight.unsqueeze(1))
        pillars = torch.cat([sums / counts.clamp(min=1.0), torch.log1p(counts)], dim=1)
        return pillars.reshape(batch, self.channels + 1, height, width)


def _conv_block(
    in_ch: int, out_ch: int, rank: int, alpha: float, kernel_size: int = 3, stride: int = 1
) -> list[nn.Module]:
    """LoRA-wrapped conv -> GroupNorm -> ReLU."""
    conv = lora_conv(in_ch, out_ch, rank, alpha, kernel_size=kernel_size, stride=stride)
    return [conv, group_norm(out_ch), nn.ReLU()]


def _stage(in_ch: int, out_ch: int, blocks: int, rank: int, alpha: float) -> nn.Sequential:
    """A stride-2 block then `blocks - 1` stride-1 blocks (3 x 3 conv, GroupNorm, ReLU)."""
    layers = _conv_block(in_ch, out_ch, rank, alpha, stride=2)
    for _ in range(blocks - 1):
        layers += _conv_block(out_ch, out_ch, rank, alpha)
    return nn.Sequential(*layers)


class BevBackbone(nn.Module):
    """[B, C_in, H, W] -> [B, C_out, H / 2, W / 2]: three stages (strides 2, 4, 8), summed neck."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int],
        out_channels: int,
        rank: int,
        config: ModelConfig,
    ) -> None:
        super().__init__()
        alpha = config.lora_alpha
        c1, c2, c3 = widths
        self.stage1 = _stage(in_channels, c1, 2, rank, alpha)
        self.stage2 = _stage(c1, c2, 2, rank, alpha)
        self.stage3 = _stage(c2, c3, 3, rank, alpha)
        self.adapters = nn.ModuleList(
            Adapter2d(c, config.adapter_bottleneck) for c in (c1, c2, c3)
        )
        self.lateral = nn.ModuleList(
            lora_conv(c, out_channels, rank, alpha, kernel_size=1) for c in (c1, c2, c3)
        )
        self.neck_norm = group_norm(out_channels)
        self.out_adapter = Adapter2d(out_channels, config.adapter_bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.adapters[0](self.stage1(x))
        f2 = self.adapters[1](self.stage2(f1))
        f3 = self.adapters[2](self.stage3(f2))
        out = self.lateral[0](f1)
        out = out + F.interpolate(self.lateral[1](f2), scale_factor=2.0, mode="nearest")
        out = out + F.interpolate(self.lateral[2](f3), scale_factor=4.0, mode="nearest")
        result: torch.Tensor = self.out_adapter(torch.relu(self.neck_norm(out)))
        return result


class PointEncoder(nn.Module):
    """LiDAR or radar points [B, P, F] + valid [B, P] -> BEV features [B, C, H_f, W_f]."""

    def __init__(
        self,
        config: ModelConfig,
        feature_scale: tuple[float, ...],
        point_channels: int,
        widths: tuple[int, int, int],
        rank: int,
    ) -> None:
        super().__init__()
        self.pillars = PillarScatter(config, feature_scale, point_channels, rank)
        self.backbone = BevBackbone(point_channels + 1, widths, config.bev_channels, rank, config)

    def forward(self, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.backbone(self.pillars(points, valid))
        return result


def lidar_encoder(config: ModelConfig) -> PointEncoder:
    x0, y0, z0, x1, y1, z1 = config.point_cloud_range_m
    xy_scale = 1.0 / max(abs(x0), abs(x1), abs(y0), abs(y1))
    z_scale = 1.0 / max(abs(z0), abs(z1))
    # x, y, z, intensity, dt_s
    scale = (xy_scale, xy_scale, z_scale, _INTENSITY_SCALE, 1.0)
    return PointEncoder(
        config,
        scale,
        config.lidar_point_channels,
        config.lidar_bev_channels,
        config.lora_rank("lidar"),
    )


def radar_encoder(config: ModelConfig) -> PointEncoder:
    x0, y0, z0, x1, y1, z1 = config.point_cloud_range_m
    xy_scale = 1.0 / max(abs(x0), abs(x1), abs(y0), abs(y1))
    z_scale = 1.0 / max(abs(z0), abs(z1))
    # x, y, z, rcs, vx_comp, vy_comp, dt_s
    scale = (xy_scale, xy_scale, z_scale, _RCS_SCALE, _SPEED_SCALE, _SPEED_SCALE, 1.0)
    return PointEncoder(
        config,
        scale,
        config.radar_point_channels,
        config.radar_bev_channels,
        config.lora_rank("radar"),
    )


class ImageBackbone(nn.Module):
    """[N, 3, H, W] -> [N, C_out, H / 8, W / 8]: stride-32 CNN with a top-down sum at stride 8."""

    def __init__(self, config: ModelConfig, out_channels: int) -> None:
        super().__init__()
        rank, alpha = config.lora_rank("camera"), config.lora_alpha
        c0, c1, c2, c3, c4 = config.camera_channels
        self.stem = nn.Sequential(
            *_conv_block(3, c0, rank, alpha, stride=2), *_conv_block(c0, c1, rank, alpha, stride=2)
        )
        self.stage8 = _stage(c1, c2, 2, rank, alpha)
        self.stage16 = _stage(c2, c3, 2, rank, alpha)
        self.stage32 = _stage(c3, c4, 2, rank, alpha)
        self.lateral = nn.ModuleList(
            lora_conv(c, out_channels, rank, alpha, kernel_size=1) for c in (c2, c3, c4)
        )
        self.neck_norm = group_norm(out_channels)
        self.adapter = Adapter2d(out_channels, config.adapter_bottleneck)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f8 = self.stage8(self.stem(images))
        f16 = self.stage16(f8)
        f32 = self.stage32(f16)
        out = self.lateral[0](f8)
        out = out + F.interpolate(self.lateral[1](f16), scale_factor=2.0, mode="nearest")
        out = out + F.interpolate(self.lateral[2](f32), scale_factor=4.0, mode="nearest")
        result: torch.Tensor = self.adapter(torch.relu(self.neck_norm(out)))
        return result


class CameraEncoder(nn.Module):
    """Images [B, N, 3, H, W] + calibration -> BEV features [B, C, H_f, W_f] (see module doc)."""

    bev_points: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # Image features are lifted with fewer channels than the BEV maps: grid_sample and the
        # sums over cameras and heights dominate the camera branch's CPU time.
        lift, channels = config.camera_lift_channels, config.bev_channels
        self.image_size_hw = config.image_size_hw
        self.image_backbone = ImageBackbone(config, lift)
        rank, alpha = config.lora_rank("camera"), config.lora_alpha
        self.bev_conv = nn.Sequential(*_conv_block(lift, channels, rank, alpha))
        self.bev_adapter = Adapter2d(channels, config.adapter_bottleneck)
        self.register_buffer("bev_points", _bev_points(config), persistent=False)
        self.fusion_hw = config.fusion_hw
        self.num_heights = len(config.camera_lift_heights_m)

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        camera_to_ego: torch.Tensor,
        camera_valid: torch.Tensor,
    ) -> torch.Tensor:
        batch, cams = images.shape[0], images.shape[1]
        height, width = self.image_size_hw
        dtype = self.bev_points.dtype  # the weights' dtype
        feats = self.image_backbone(images.reshape(batch * cams, 3, height, width).to(dtype))
        grid, sample_valid = self._project(intrinsics, camera_to_ego, camera_valid)
        grid, sample_valid = grid.to(dtype), sample_valid.to(dtype)
        h_f, w_f = self.fusion_hw
        sampled = F.grid_sample(
            feats,
            grid.reshape(batch * cams, h_f, w_f * self.num_heights, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # [B * N, C, H_f, W_f * Z]
        channels = sampled.shape[1]
        sampled = sampled.reshape(batch, cams, channels, h_f * w_f * self.num_heights)
        # Invalid samples read 0 already (their grid points lie outside the image).
        summed = sampled.sum(dim=1)  # [B, C, Q]
        summed = summed.reshape(batch, channels, h_f, w_f, self.num_heights).sum(dim=-1)
        count = sample_valid.sum(dim=1).reshape(batch, 1, h_f, w_f, self.num_heights).sum(-1)
        bev = summed / count.clamp(min=1.0)
        result: torch.Tensor = self.bev_adapter(self.bev_conv(bev))
        return result

    def _project(
        self, intrinsics: torch.Tensor, camera_to_ego: torch.Tensor, camera_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """grid_sample coordinates [B, N, Q, 2] and validity [B, N, Q] of the BEV points.

        camera_to_ego is a rigid transform, so its inverse is [R^T, -R^T t] (no matrix inverse
        in the graph); a point p in the ego frame is (p - t) R in the camera frame (row vectors).
        Computed in float32 (pixel coordinates of a few hundred px lose 0.1-0.25 px in fp16).
        """
        intrinsics = intrinsics.to(torch.float32)
        camera_to_ego = camera_to_ego.to(torch.float32)
        rotation = camera_to_ego[:, :, :3, :3]  # [B, N, 3, 3]
        translation = camera_to_ego[:, :, :3, 3]  # [B, N, 3]
        points = self.bev_points.to(torch.float32).reshape(1, 1, -1, 3)  # [1, 1, Q, 3]
        in_camera = torch.matmul(points - translation.unsqueeze(2), rotation)  # [B, N, Q, 3]
        pixels = torch.matmul(in_camera, intrinsics.transpose(2, 3))  # [B, N, Q, 3]
        depth = in_camera[..., 2]
        safe_depth = torch.where(depth > 0.1, depth, torch.ones_like(depth))
        u = pixels[..., 0] / safe_depth
        v = pixels[..., 1] / safe_depth
        height, width = self.image_size_hw
        # Pixel centers are at integer coordinates (OpenCV); the image spans [-0.5, size - 0.5).
        valid = (
            (depth > 0.1)
            & (u >= -0.5)
            & (u < width - 0.5)
            & (v >= -0.5)
            & (v < height - 0.5)
            & (camera_valid.to(torch.float32).unsqueeze(-1) > 0.5)
        )
        grid = torch.stack([(u + 0.5) / width * 2.0 - 1.0, (v + 0.5) / height * 2.0 - 1.0], -1)
        # Far outside [-1, 1]: every bilinear tap is padding, so the sample is exactly 0.
        grid = torch.where(valid.unsqueeze(-1), grid, torch.full_like(grid, _OUTSIDE_GRID))
        return grid, valid.to(grid.dtype)


def _bev_points(config: ModelConfig) -> torch.Tensor:
    """Ego-frame points [H_f, W_f, Z, 3] at the fusion cells' centers and the lift heights."""
    h_f, w_f = config.fusion_hw
    x0, y0 = config.point_cloud_range_m[0], config.point_cloud_range_m[1]
    cell = 2.0 * config.cell_m
    ys = y0 + (torch.arange(h_f, dtype=torch.float32) + 0.5) * cell
    xs = x0 + (torch.arange(w_f, dtype=torch.float32) + 0.5) * cell
    zs = torch.tensor(config.camera_lift_heights_m, dtype=torch.float32)
    yy, xx, zz = torch.meshgrid(ys, xs, zs, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


class EgoEncoder(nn.Module):
    """IMU or GNSS feature vector [B, F] -> [B, ego_hidden] (MLP with LoRA, adapter)."""

    feature_scale: torch.Tensor

    def __init__(self, config: ModelConfig, feature_scale: tuple[float, ...], rank: int) -> None:
        super().__init__()
        hidden, alpha = config.ego_hidden, config.lora_alpha
        self.register_buffer(
            "feature_scale", torch.tensor(feature_scale, dtype=torch.float32), persistent=False
        )
        self.mlp = nn.Sequential(
            lora_linear(len(feature_scale), hidden, rank, alpha),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            lora_linear(hidden, hidden, rank, alpha),
            nn.LayerNorm(hidden),
            nn.ReLU(),
        )
        self.adapter = Adapter1d(hidden, config.adapter_bottleneck)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scaled = features.to(torch.float32) * self.feature_scale.to(torch.float32)
        result: torch.Tensor = self.adapter(self.mlp(scaled.to(self.feature_scale.dtype)))
        return result


def imu_encoder(config: ModelConfig) -> EgoEncoder:
    # gyro mean/std (rad/s, O(1)), accel mean/std (m/s^2)
    scale = (1.0,) * 6 + (_ACCEL_SCALE,) * 6
    return EgoEncoder(config, scale, config.lora_rank("imu"))


def gnss_encoder(config: ModelConfig) -> EgoEncoder:
    # speed, v_east, v_north (m/s), heading sin/cos, fix age (s)
    scale = (_SPEED_SCALE,) * 3 + (1.0, 1.0, 1.0)
    return EgoEncoder(config, scale, config.lora_rank("gnss"))
