"""`ModelConfig`: every size, width, rank and loss weight of the PEFT-DML detector in one place.

A checkpoint stores `asdict(config)`, so evaluation and export rebuild exactly the trained model.
Field names shared with preprocessing (`point_cloud_range_m`, `max_lidar_points`,
`max_radar_points`, `camera_names`, `image_size_hw`) mean the same there
(`PreprocessConfig.from_model_config`).

Grids:
  - the BEV output grid (heatmap and regression maps) has `grid_hw` = (H_B, W_B) cells of
    `cell_m` meters; row i follows +y, column j follows +x (see model_io);
  - LiDAR and radar are pillarized on the same grid; the fusion (attention, gating) runs on the
    2x coarser `fusion_hw` grid, and the head upsamples back to `grid_hw`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import NUSCENES_CAMERAS

# The BEV backbones downsample the pillar grid 8x; the fusion grid is 2x coarser.
_GRID_MULTIPLE = 8


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and hyper-parameters of `PeftDmlNet`, its losses and decoding.

    point_cloud_range_m: (x_min, y_min, z_min, x_max, y_max, z_max), ego frame, m.
    cell_m: BEV cell edge, m; the ranges in x and y must be whole multiples of 8 cells.
    camera_lift_heights_m: ego-frame heights at which each BEV cell is projected into the images.
    lora_rank_*: LoRA rank of the frozen backbone layers of each modality.
    weight_*: loss weights (L = det + metric + cross-modal + temporal [+ gmm]).
    metric_*, temporal_temperature: the contrastive terms (see losses.py and docs/model.md).

    Geometry is in the ego frame (base_link: origin on the road under the rear axle, z up).
    """

    # Geometry of inputs and BEV grid.
    point_cloud_range_m: tuple[float, float, float, float, float, float] = (
        model_io.DEFAULT_POINT_CLOUD_RANGE_M
    )
    cell_m: float = 0.8
    max_lidar_points: int = model_io.DEFAULT_MAX_LIDAR_POINTS
    max_radar_points: int = model_io.DEFAULT_MAX_RADAR_POINTS
    camera_names: tuple[str, ...] = NUSCENES_CAMERAS
    image_size_hw: tuple[int, int] = model_io.DEFAULT_IMAGE_SIZE_HW
    # Above the road: wheels/bumpers, car and pedestrian centers, roofs, truck and bus bodies.
    camera_lift_heights_m: tuple[float, ...] = (0.3, 0.9, 1.6, 2.8)

    # Widths of the (frozen) backbones.
    lidar_point_channels: int = 32
    lidar_bev_channels: tuple[int, int, int] = (64, 128, 256)
    radar_point_channels: int = 16
    radar_bev_channels: tuple[int, int, int] = (32, 64, 128)
    camera_channels: tuple[int, int, int, int, int] = (16, 32, 64, 128, 256)
    camera_lift_channels: int = 32  # image features lifted to BEV
    ego_hidden: int = 64
    bev_channels: int = 64  # every spatial modality's BEV feature on the fusion grid

    # The trainable part: shared embedding, fusion and head.
    embed_dim: int = 64
    attention_heads: int = 4
    head_channels: int = 32

    # Parameter-efficient fine-tuning.
    lora_rank_lidar: int = 8
    lora_rank_camera: int = 8
    lora_rank_radar: int = 4
    lora_rank_imu: int = 4
    lora_rank_gnss: int = 4
    lora_alpha: float = 8.0  # LoRA update scale = lora_alpha / rank
    adapter_bottleneck: int = 16

    # Loss weights (PEFT-DML: det 1, metric 0.5, cross-modal 0.2, temporal 0.1).
    weight_det: float = 1.0
    weight_metric: float = 0.5
    weight_cross_modal: float = 0.2
    weight_temporal: float = 0.1
    weight_gmm: float = 0.05
    # Terms inside L_det.
    weight_heatmap: float = 1.0
    weight_box_iou: float = 1.0
    weight_l1: float = 0.25
    weight_attribute: float = 0.1
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    # Supervised contrastive metric loss over object-center embeddings of every present modality
    # (anchors, at most max_metric_samples), with background cells as extra negatives.
    metric_temperature: float = 0.3
    metric_background_cells: int = 32  # per frame and modality
    metric_min_spread: float = 0.2  # total variance of object embeddings kept above this
    max_metric_samples: int = 256
    # Temporal instance discrimination (same object at t and t+1 against every other one).
    temporal_temperature: float = 0.2

    # Targets.
    max_objects: int = 256
    gaussian_overlap: float = 0.1
    min_gaussian_radius_cells: int = 2

    # Modalities the network reads (MODALITIES names). The others are masked absent inside the
    # network, so a baseline trained on a subset ignores them the same way in training, in
    # `peftdml eval`, in the node and in an ONNX export.
    input_modalities: tuple[str, ...] = ("lidar", "radar", "camera", "imu", "gnss")

    # Clean-feature GMM (distribution alignment and the normality score).
    gmm_enabled: bool = True
    gmm_components: int = 8

    # Decoding.
    score_threshold: float = 0.1
    pre_nms_top_k: int = 500
    nms_iou_threshold: float = 0.2
    max_detections: int = 300

    def __post_init__(self) -> None:
        self._check_geometry()
        self._check_widths()
        self._check_weights()
        self._check_modalities()

    def _check_modalities(self) -> None:
        unknown = sorted(set(self.input_modalities) - set(_LORA_MODALITIES))
        if unknown or not self.input_modalities:
            raise ConfigError(
                f"input_modalities {list(self.input_modalities)} must be a non-empty subset of "
                f"{list(_LORA_MODALITIES)}"
            )

    @property
    def input_modality_mask(self) -> tuple[float, ...]:
        """1.0 for each modality (MODALITIES order) the network reads, else 0.0."""
        return tuple(1.0 if m in self.input_modalities else 0.0 for m in _LORA_MODALITIES)

    def _check_geometry(self) -> None:
        x0, y0, z0, x1, y1, z1 = self.point_cloud_range_m
        if not (x0 < x1 and y0 < y1 and z0 < z1):
            raise ConfigError(
                f"point_cloud_range_m {self.point_cloud_range_m} must be (x_min, y_min, z_min, "
                "x_max, y_max, z_max) with each min below its max"
            )
        if self.cell_m <= 0:
            raise ConfigError(f"cell_m {self.cell_m} must be positive")
        for span_m in (x1 - x0, y1 - y0):
            cells = span_m / self.cell_m
            if abs(cells - round(cells)) > 1e-6 or round(cells) % _GRID_MULTIPLE:
                raise ConfigError(
                    f"the BEV range {span_m} m is {cells:g} cells of {self.cell_m} m: choose "
                    f"cell_m and point_cloud_range_m so it is a whole multiple of {_GRID_MULTIPLE}"
                )
        if self.max_lidar_points < 1 or self.max_radar_points < 1:
            raise ConfigError("max_lidar_points and max_radar_points must be at least 1")
        if len(self.camera_names) < 1 or len(set(self.camera_names)) != len(self.camera_names):
            raise ConfigError(f"camera_names {self.camera_names} must be non-empty and unique")
        h, w = self.image_size_hw
        if h % 32 or w % 32 or h < 32 or w < 32:
            # The image backbone downsamples 32x.
            raise ConfigError(f"image_size_hw {self.image_size_hw} must be multiples of 32 px")
        if not self.camera_lift_heights_m:
            raise ConfigError("camera_lift_heights_m needs at least one height")

    def _check_widths(self) -> None:
        sizes = {
            "lidar_point_channels": self.lidar_point_channels,
            "radar_point_channels": self.radar_point_channels,
            "ego_hidden": self.ego_hidden,
            "camera_lift_channels": self.camera_lift_channels,
            "bev_channels": self.bev_channels,
            "embed_dim": self.embed_dim,
            "head_channels": self.head_channels,
            "adapter_bottleneck": self.adapter_bottleneck,
            "max_objects": self.max_objects,
            "max_metric_samples": self.max_metric_samples,
            "metric_background_cells": self.metric_background_cells,
            "gmm_components": self.gmm_components,
            "pre_nms_top_k": self.pre_nms_top_k,
            "max_detections": self.max_detections,
            **{f"lora_rank_{m}": self.lora_rank(m) for m in _LORA_MODALITIES},
            **{f"lidar_bev_channels[{i}]": c for i, c in enumerate(self.lidar_bev_channels)},
            **{f"radar_bev_channels[{i}]": c for i, c in enumerate(self.radar_bev_channels)},
            **{f"camera_channels[{i}]": c for i, c in enumerate(self.camera_channels)},
        }
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"{name} is {value}; it must be at least 1")
        if self.embed_dim % self.attention_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} must be divisible by attention_heads "
                f"{self.attention_heads}"
            )

    def _check_weights(self) -> None:
        for f in fields(self):
            if f.name.startswith("weight_") and getattr(self, f.name) < 0:
                raise ConfigError(f"{f.name} is {getattr(self, f.name)}; loss weights are >= 0")
        for name in ("metric_temperature", "temporal_temperature"):
            if not getattr(self, name) > 0.0:
                raise ConfigError(f"{name} is {getattr(self, name)}; temperatures are > 0")
        if not 0.0 <= self.metric_min_spread < 1.0:
            raise ConfigError(
                f"metric_min_spread {self.metric_min_spread} must be in [0, 1): it is a total "
                "variance of unit vectors"
            )
        if not 0.0 < self.gaussian_overlap < 1.0:
            raise ConfigError(f"gaussian_overlap {self.gaussian_overlap} must be in (0, 1)")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ConfigError(f"score_threshold {self.score_threshold} must be in [0, 1)")
        if not 0.0 < self.nms_iou_threshold <= 1.0:
            raise ConfigError(f"nms_iou_threshold {self.nms_iou_threshold} must be in (0, 1]")

    # Derived sizes.
    @property
    def grid_hw(self) -> tuple[int, int]:
        """(H_B, W_B): rows along y, columns along x."""
        x0, y0, _, x1, y1, _ = self.point_cloud_range_m
        return round((y1 - y0) / self.cell_m), round((x1 - x0) / self.cell_m)

    @property
    def fusion_hw(self) -> tuple[int, int]:
        h, w = self.grid_hw
        return h // 2, w // 2

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    def lora_rank(self, modality: str) -> int:
        """LoRA rank of a modality's backbone ("lidar", "radar", "camera", "imu", "gnss")."""
        if modality not in _LORA_MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; use one of {_LORA_MODALITIES}")
        return int(getattr(self, f"lora_rank_{modality}"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (tuples as lists), as stored in checkpoints and ONNX metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys raise ConfigError (a newer or foreign config)."""
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"model config has unknown fields {unknown}: it was written by another version "
                "of peftdml_ros; use that version or re-train"
            )
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return ModelConfig(**kwargs)


_LORA_MODALITIES: tuple[str, ...] = ("lidar", "radar", "camera", "imu", "gnss")


def tiny_config(**overrides: Any) -> ModelConfig:
    """A small config for tests and smoke runs: 32 x 32 grid of 1.6 m, 2 cameras of 32 x 64 px."""
    base: dict[str, Any] = {
        "point_cloud_range_m": (-25.6, -25.6, -2.0, 25.6, 25.6, 6.0),
        "cell_m": 1.6,
        "max_lidar_points": 512,
        "max_radar_points": 64,
        "camera_names": ("CAM_FRONT", "CAM_BACK"),
        "image_size_hw": (32, 64),
        "camera_lift_heights_m": (0.5, 1.5),
        "lidar_point_channels": 8,
        "lidar_bev_channels": (8, 16, 16),
        "radar_point_channels": 8,
        "radar_bev_channels": (8, 8, 16),
        "camera_channels": (4, 8, 8, 16, 16),
        "camera_lift_channels": 8,
        "ego_hidden": 8,
        "bev_channels": 8,
        "embed_dim": 16,
        "attention_heads": 2,
        "head_channels": 8,
        "adapter_bottleneck": 4,
        "max_objects": 16,
        "gmm_components": 2,
        "pre_nms_top_k": 64,
        "max_detections": 32,
    }
    base.update(overrides)
    return ModelConfig(**base)


def grid_cell_center_m(config: ModelConfig, row: float, col: float) -> tuple[float, float]:
    """(x, y) in m of the center of BEV cell (row, col) of the output grid."""
    x0, y0 = config.point_cloud_range_m[0], config.point_cloud_range_m[1]
    return x0 + (col + 0.5) * config.cell_m, y0 + (row + 0.5) * config.cell_m
