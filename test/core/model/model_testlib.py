"""Shared helpers of the model tests: a tiny config, perturbed weights, synthetic scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peftdml_ros.core.model import (
    BevTargets,
    ModelConfig,
    PeftDmlNet,
    build_model,
    example_inputs,
    tiny_config,
)
from peftdml_ros.core.model.lora import Adapter1d, Adapter2d, LoRAConv2d, LoRALinear
from peftdml_ros.core.model_io import ATTRIBUTES_BY_CLASS
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections

# (class index, (w, l, h) m) of the synthetic objects.
SYNTH_CLASSES: tuple[tuple[int, tuple[float, float, float]], ...] = (
    (0, (1.9, 4.5, 1.6)),  # car
    (5, (0.7, 0.7, 1.8)),  # pedestrian
    (9, (0.5, 2.5, 1.0)),  # barrier
)


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """Run a test module on one torch thread and restore the count after.

    The tiny test convs gain nothing from a second thread, and on a loaded 2-core machine the
    OpenMP spin-waits of a second thread cost more than the work (measured: a 20-step training
    loop took 43 s with 2 threads and 2.4 s with 1 under load average 7).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**overrides: object) -> ModelConfig:
    return tiny_config(**overrides)  # type: ignore[arg-type]


def perturbed_model(config: ModelConfig, seed: int = 0) -> PeftDmlNet:
    """A model whose LoRA up-factors and adapters are non-zero (as after training)."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (LoRAConv2d, LoRALinear)):
                module.lora_up.weight.normal_(0.0, 0.05)
            elif isinstance(module, (Adapter1d, Adapter2d)):
                module.up.weight.normal_(0.0, 0.05)
            if hasattr(module, "film"):
                module.film.weight.normal_(0.0, 0.05)
    return model


def random_inputs(config: ModelConfig, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    return example_inputs(config, batch, torch.Generator().manual_seed(seed))


def random_boxes(rng: np.random.Generator, count: int, half_range_m: float) -> Detections:
    kinds = [SYNTH_CLASSES[i % len(SYNTH_CLASSES)] for i in range(count)]
    # Spread centers on a coarse lattice so no two objects share a cell or overlap.
    slots = rng.choice(36, size=count, replace=False)
    step = 2.0 * half_range_m / 6.0
    centers = np.stack(
        [
            -half_range_m + (slots % 6 + 0.5) * step + rng.uniform(-0.2, 0.2, count) * step,
            -half_range_m + (slots // 6 + 0.5) * step + rng.uniform(-0.2, 0.2, count) * step,
            np.zeros(count),  # z: set below, the box standing on the road (ego frame)
        ],
        axis=1,
    ).astype(np.float32)
    sizes = np.array([s for _, s in kinds], np.float32)
    centers[:, 2] = sizes[:, 2] / 2.0 + rng.uniform(-0.2, 0.2, count)
    labels = np.array([k for k, _ in kinds], np.int64)
    attributes = tuple(
        (ATTRIBUTES_BY_CLASS[NUSCENES_CLASSES[k]] or ("",))[0] for k in labels.tolist()
    )
    return Detections(
        center_m=centers,
        size_wlh_m=sizes,
        yaw_rad=rng.uniform(-math.pi, math.pi, count).astype(np.float32),
        velocity_mps=rng.uniform(-3, 3, (count, 2)).astype(np.float32),
        score=np.ones(count, np.float32),
        label=labels,
        attribute=attributes,
    )


def moved(boxes: Detections, dt_s: float) -> Detections:
    """The same objects dt_s later (constant velocity)."""
    center = boxes.center_m.copy()
    center[:, :2] += boxes.velocity_mps * dt_s
    return Detections(
        center_m=center,
        size_wlh_m=boxes.size_wlh_m,
        yaw_rad=boxes.yaw_rad,
        velocity_mps=boxes.velocity_mps,
        score=boxes.score,
        label=boxes.label,
        attribute=boxes.attribute,
    )


def synthetic_inputs(
    config: ModelConfig, scenes: list[Detections], rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Inputs in which every box is visible: LiDAR points inside it (intensity by class), radar
    points at its center with its velocity, a bright patch where a camera sees its center."""
    inputs = example_inputs(
        config, len(scenes), torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    )
    for key in ("lidar_points", "lidar_valid", "radar_points", "radar_valid"):
        inputs[key].zero_()
    inputs["camera_images"].mul_(0.1)
    for b, boxes in enumerate(scenes):
        _fill_lidar(config, boxes, rng, inputs["lidar_points"][b], inputs["lidar_valid"][b])
        _fill_radar(boxes, rng, inputs["radar_points"][b], inputs["radar_valid"][b])
    return inputs


def _fill_lidar(
    config: ModelConfig,
    boxes: Detections,
    rng: np.random.Generator,
    points: torch.Tensor,
    valid: torch.Tensor,
) -> None:
    per_box = config.max_lidar_points // max(len(boxes), 1) // 2
    rows = []
    for i in range(len(boxes)):
        w, length, h = boxes.size_wlh_m[i]
        local = rng.uniform(-0.5, 0.5, (per_box, 3)) * np.array([length, w, h])
        c, s = math.cos(float(boxes.yaw_rad[i])), math.sin(float(boxes.yaw_rad[i]))
        xy = local[:, :2] @ np.array([[c, s], [-s, c]])
        xyz = np.concatenate([xy, local[:, 2:]], axis=1) + boxes.center_m[i]
        intensity = np.full((per_box, 1), 60.0 * (1 + int(boxes.label[i]) % 4))
        rows.append(np.concatenate([xyz, intensity, np.zeros((per_box, 1))], axis=1))
    data = torch.from_numpy(np.concatenate(rows).astype(np.float32))
    points[: len(data)] = data
    valid[: len(data)] = 1.0


def _fill_radar(
    boxes: Detections, rng: np.random.Generator, points: torch.Tensor, valid: torch.Tensor
) -> None:
    for i in range(min(len(boxes), points.shape[0] // 2)):
        for k in range(2):
            jitter = rng.normal(0.0, 0.2, 2)
            x, y = boxes.center_m[i, :2] + jitter
            vx, vy = boxes.velocity_mps[i]
            rcs = 5.0 * (1 + int(boxes.label[i]) % 4)
            points[2 * i + k] = torch.tensor([x, y, 0.0, rcs, vx, vy, 0.0])
            valid[2 * i + k] = 1.0


def perfect_outputs(targets: BevTargets, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Head outputs that hold exactly the targets (heatmap and, at object cells, regressions)."""
    b = targets.heatmap.shape[0]
    h, w = config.grid_hw
    maps = {
        "heatmap": targets.heatmap.clone(),
        "center_offset": torch.zeros(b, 2, h * w),
        "center_z": torch.zeros(b, 1, h * w),
        "log_size": torch.zeros(b, 3, h * w),
        "yaw_sin_cos": torch.zeros(b, 2, h * w),
        "velocity": torch.zeros(b, 2, h * w),
        "attribute_logits": torch.zeros(b, 8, h * w),
    }
    for i in range(b):
        for slot in range(targets.mask.shape[1]):
            if targets.mask[i, slot] < 0.5:
                continue
            cell = int(targets.indices[i, slot])
            maps["center_offset"][i, :, cell] = targets.offset[i, slot]
            maps["center_z"][i, :, cell] = targets.z[i, slot]
            maps["log_size"][i, :, cell] = targets.log_size[i, slot]
            maps["yaw_sin_cos"][i, :, cell] = targets.yaw_sin_cos[i, slot]
            maps["velocity"][i, :, cell] = targets.velocity[i, slot]
            if targets.attribute[i, slot] >= 0:
                maps["attribute_logits"][i, int(targets.attribute[i, slot]), cell] = 30.0
    return {k: v.reshape(b, -1, h, w) if k != "heatmap" else v for k, v in maps.items()}
