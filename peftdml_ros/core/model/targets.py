"""Ground-truth boxes -> CenterPoint training targets on the BEV output grid.

For each box whose center falls in the grid: a Gaussian peak (value exactly 1 at the center cell)
on its class's heatmap, radius from `gaussian_radius` (the CenterNet rule: the largest radius at
which a box shifted by it still overlaps the true one by `gaussian_overlap`), at least
`min_gaussian_radius_cells`; and at the center cell the regression targets that the head's maps
must hold there (see model_io): sub-cell offset (x then y, in cells), center z (m), log(w, l, h),
(sin, cos) of yaw, (vx, vy) and the attribute index. Objects beyond `max_objects` per frame are
dropped (closest to the ego vehicle kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from peftdml_ros.core.errors import InputDataError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model_io import ATTRIBUTES
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections


@dataclass(frozen=True)
class BevTargets:
    """Targets of a batch. B frames, M = config.max_objects slots, K classes.

    heatmap [B, K, H_B, W_B]; indices [B, M] flattened output cell (row * W_B + col);
    mask [B, M] 1.0 for real objects; labels [B, M]; offset [B, M, 2] (cells); z [B, M, 1] (m);
    log_size [B, M, 3]; yaw_sin_cos [B, M, 2]; velocity [B, M, 2] (m/s);
    velocity_valid [B, M] 1.0 where the ground truth has a velocity (the devkit gives NaN for
    objects annotated once: those are not taught "0 m/s");
    attribute [B, M] index into ATTRIBUTES or -1; instance [B, M] track id or -1.
    """

    heatmap: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    offset: torch.Tensor
    z: torch.Tensor
    log_size: torch.Tensor
    yaw_sin_cos: torch.Tensor
    velocity: torch.Tensor
    velocity_valid: torch.Tensor
    attribute: torch.Tensor
    instance: torch.Tensor

    def to(self, device: torch.device | str) -> BevTargets:
        return BevTargets(**{k: v.to(device) for k, v in self.__dict__.items()})


def gaussian_radius(height: float, width: float, min_overlap: float) -> float:
    """CenterNet's radius (cells) for a box of height x width cells and the overlap bound."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1.0 - min_overlap) / (1.0 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4.0 * a1 * c1, 0.0))) / 2.0
    a2, b2 = 4.0, 2.0 * (height + width)
    c2 = (1.0 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(max(b2 * b2 - 4.0 * a2 * c2, 0.0))) / 2.0
    a3, b3 = 4.0 * min_overlap, -2.0 * min_overlap * (height + width)
    c3 = (min_overlap - 1.0) * width * height
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4.0 * a3 * c3, 0.0))) / 2.0
    return min(r1, r2, r3)


def draw_gaussian(heatmap: npt.NDArray[np.float32], row: int, col: int, radius: int) -> None:
    """heatmap [H, W] = max(heatmap, Gaussian of sigma (2r + 1) / 6 peaked at 1 at (row, col))."""
    sigma = (2 * radius + 1) / 6.0
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    gauss = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma * sigma))
    height, width = heatmap.shape
    top, bottom = min(row, radius), min(height - row, radius + 1)
    left, right = min(col, radius), min(width - col, radius + 1)
    window = heatmap[row - top : row + bottom, col - left : col + right]
    patch = gauss[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(window, patch, out=window)


def build_targets(
    boxes: Sequence[Detections],
    config: ModelConfig,
    instance_ids: Sequence[npt.NDArray[np.int64]] | None = None,
) -> BevTargets:
    """Targets of B frames from their ground-truth `Detections` (score is ignored).

    instance_ids: optional per frame [N] track ids (for the temporal consistency loss).
    """
    if instance_ids is not None and len(instance_ids) != len(boxes):
        raise InputDataError(
            f"instance_ids has {len(instance_ids)} entries for {len(boxes)} frames; give one "
            "array per frame or None"
        )
    if not boxes:
        raise InputDataError("build_targets needs at least one frame")
    frames = [
        _frame_targets(b, config, None if instance_ids is None else instance_ids[i])
        for i, b in enumerate(boxes)
    ]
    stacked = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    return BevTargets(**{k: torch.from_numpy(v) for k, v in stacked.items()})


def _frame_targets(
    boxes: Detections, config: ModelConfig, instance: npt.NDArray[np.int64] | None
) -> dict[str, npt.NDArray[np.generic]]:
    height, width = config.grid_hw
    slots = config.max_objects
    out: dict[str, npt.NDArray[np.generic]] = {
        "heatmap": np.zeros((len(NUSCENES_CLASSES), height, width), np.float32),
        "indices": np.zeros((slots,), np.int64),
        "mask": np.zeros((slots,), np.float32),
        "labels": np.zeros((slots,), np.int64),
        "offset": np.zeros((slots, 2), np.float32),
        "z": np.zeros((slots, 1), np.float32),
        "log_size": np.zeros((slots, 3), np.float32),
        "yaw_sin_cos": np.zeros((slots, 2), np.float32),
        "velocity": np.zeros((slots, 2), np.float32),
        "velocity_valid": np.zeros((slots,), np.float32),
        "attribute": np.full((slots,), -1, np.int64),
        "instance": np.full((slots,), -1, np.int64),
    }
    _check_boxes(boxes, instance)
    x0, y0 = config.point_cloud_range_m[0], config.point_cloud_range_m[1]
    cx = (boxes.center_m[:, 0] - x0) / config.cell_m
    cy = (boxes.center_m[:, 1] - y0) / config.cell_m
    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
    order = np.argsort(np.linalg.norm(boxes.center_m[:, :2], axis=1), kind="stable")
    chosen = [int(i) for i in order if inside[i]][:slots]
    for slot, i in enumerate(chosen):
        col, row = math.floor(cx[i]), math.floor(cy[i])
        w_m, l_m, _ = (float(v) for v in boxes.size_wlh_m[i])
        radius = gaussian_radius(l_m / config.cell_m, w_m / config.cell_m, config.gaussian_overlap)
        radius_cells = max(config.min_gaussian_radius_cells, int(radius))
        heatmap = out["heatmap"]
        draw_gaussian(heatmap[int(boxes.label[i])], row, col, radius_cells)  # type: ignore[arg-type]
        out["indices"][slot] = row * width + col
        out["mask"][slot] = 1.0
        out["labels"][slot] = boxes.label[i]
        out["offset"][slot] = (cx[i] - col, cy[i] - row)
        out["z"][slot, 0] = boxes.center_m[i, 2]
        out["log_size"][slot] = np.log(np.maximum(boxes.size_wlh_m[i], 1e-3))
        yaw = float(boxes.yaw_rad[i])
        out["yaw_sin_cos"][slot] = (math.sin(yaw), math.cos(yaw))
        known = bool(np.isfinite(boxes.velocity_mps[i]).all())
        out["velocity"][slot] = boxes.velocity_mps[i] if known else 0.0
        out["velocity_valid"][slot] = float(known)
        attribute = boxes.attribute[i] if boxes.attribute else ""
        out["attribute"][slot] = ATTRIBUTES.index(attribute) if attribute else -1
        if instance is not None:
            out["instance"][slot] = instance[i]
    return out


def _check_boxes(boxes: Detections, instance: npt.NDArray[np.int64] | None) -> None:
    n = len(boxes)
    if n and (boxes.label.min() < 0 or boxes.label.max() >= len(NUSCENES_CLASSES)):
        raise InputDataError(
            f"box labels must index NUSCENES_CLASSES (0..{len(NUSCENES_CLASSES) - 1}), got "
            f"{boxes.label.min()}..{boxes.label.max()}"
        )
    if boxes.attribute and len(boxes.attribute) != n:
        raise InputDataError(f"{n} boxes but {len(boxes.attribute)} attributes; give one each")
    unknown = sorted({a for a in boxes.attribute if a and a not in ATTRIBUTES})
    if unknown:
        raise InputDataError(f"unknown attributes {unknown}; use names from model_io.ATTRIBUTES")
    if instance is not None and len(instance) != n:
        raise InputDataError(f"{n} boxes but {len(instance)} instance ids; give one each")
    if n and not np.all(boxes.size_wlh_m > 0):
        raise InputDataError("box sizes (w, l, h) must be positive")
