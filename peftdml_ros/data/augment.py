"""Training augmentation on preprocessed inputs: one ego-frame transform for every modality, and
per-sensor and per-modality dropout.

Both work on cached engine inputs (peftdml_ros.data.cache), so a step pays a few array
operations instead of a JPEG decode.

Geometry. A global transform of the ego frame, p' = A p with A = s * Rz(theta) * F, where F
mirrors y (y -> -y, across the x axis) and/or x (x -> -x, across the y axis) and s is a scale,
is applied consistently:
  - LiDAR / radar: xyz -> A xyz; radar (vx_comp, vy_comp) -> A[:2, :2] v. Points that leave the
    BEV range are cropped and the remaining rows move up, exactly as the Preprocessor crops a
    frame; a modality left without a point in range is masked absent and zeroed.
  - cameras: camera_to_ego M -> A4 M diag(1/s, 1/s, 1/s, 1). The camera ray of an ego point
    is unchanged (its pixel stays where it was; images and intrinsics stay), and the rotation
    block of the new M is the orthogonal Q R (Q = Rz F), so the model's rigid inverse
    [R^T, -R^T t] (CameraEncoder) stays exact. A mirror makes det(Q R) = -1: the camera frame is
    then left-handed, which the projection p -> K R^T (p - t) does not care about.
  - IMU (ego-frame vectors): gyro mean -> det(Q) Q w (angular velocity is a pseudo-vector),
    accel mean -> Q a; the standard deviations go through the same map per component as if the
    components were uncorrelated (exact for mirrors and multiples of 90 degrees). The scale is
    not applied to the IMU: gravity dominates the accelerometer and the scale stands for object
    size and distance variety, not different physics. GNSS features are in the global (east,
    north) frame, which the ego-frame transform does not touch.
  - ground truth: center -> A c, size -> s * size, yaw -> heading of Q (cos, sin), velocity ->
    A[:2, :2] v. Boxes whose center was outside the BEV range before the transform are dropped:
    the cache holds no point of them, so a rotation must not bring an empty labelled box in.
  - ego_to_global -> ego_to_global A4^-1 (no longer rigid when s != 1 or mirrored).

Dropout (per sample): each present modality is removed with its probability (keeping at least
one modality when asked to), then each present camera and radar of a kept modality with the
per-sensor probability; per-sensor dropout never removes a modality's last sensor (removing a
modality is the per-modality draw's job). Removal is core.preprocess.remove_sensors /
remove_modalities: the inputs equal the Preprocessor's for the frame without those sensors.

Randomness: one numpy Generator per process, seeded from `seed` and, inside a DataLoader worker,
the worker's seed (which torch draws from the loader's generator every epoch): runs with the same
seeds and loader settings draw the same augmentations, and workers never repeat each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import Dataset, get_worker_info

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.preprocess import (
    Inputs,
    PreprocessConfig,
    in_range_mask,
    kept_radar_index,
    remove_modalities,
    remove_sensors,
    zero_absent,
)
from peftdml_ros.core.types import MODALITIES, NUSCENES_RADARS, Detections, Modality
from peftdml_ros.data.training import KeyframeSource, TrainingItem

F64Array = npt.NDArray[np.float64]
_LIDAR = MODALITIES.index(Modality.LIDAR)
_RADAR = MODALITIES.index(Modality.RADAR)
_CAMERA = MODALITIES.index(Modality.CAMERA)
_IMU = MODALITIES.index(Modality.IMU)


# ------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random ego-frame transform.

    rotation_max_rad: rotation about z drawn uniformly in [-max, max] (pi / 8 = 22.5 degrees).
    flip_y_p: probability of mirroring y (y -> -y); flip_x_p: of mirroring x (x -> -x).
    scale_range: (low, high) of the uniformly drawn global scale.
    """

    rotation_max_rad: float = math.pi / 8
    flip_y_p: float = 0.5
    flip_x_p: float = 0.0
    scale_range: tuple[float, float] = (0.95, 1.05)

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not (0.0 <= self.rotation_max_rad <= math.pi):
            raise ConfigError(f"rotation_max_rad {self.rotation_max_rad} must be in [0, pi]")
        if not (0.0 <= self.flip_y_p <= 1.0 and 0.0 <= self.flip_x_p <= 1.0):
            raise ConfigError(
                f"flip probabilities ({self.flip_y_p}, {self.flip_x_p}) must be in [0, 1]"
            )
        if not (0.0 < low <= high):
            raise ConfigError(f"scale_range {self.scale_range} must be 0 < low <= high")


@dataclass(frozen=True)
class EgoTransform:
    """p' = scale * Rz(rotation_rad) * F p, F = diag(-1 if flip_x, -1 if flip_y, 1)."""

    rotation_rad: float = 0.0
    flip_x: bool = False
    flip_y: bool = False
    scale: float = 1.0

    def orthogonal(self) -> F64Array:
        """[3, 3] Q = Rz F (det -1 when exactly one mirror is on)."""
        c, s = math.cos(self.rotation_rad), math.sin(self.rotation_rad)
        rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        mirror = np.diag([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0, 1.0])
        return np.asarray(rz @ mirror)

    def linear(self) -> F64Array:
        """[3, 3] A = scale * Q."""
        return self.scale * self.orthogonal()

    def matrix(self) -> F64Array:
        """[4, 4] homogeneous A."""
        out = np.eye(4)
        out[:3, :3] = self.linear()
        return out


def sample_transform(rng: np.random.Generator, config: AugmentConfig) -> EgoTransform:
    """One random EgoTransform within `config`'s ranges."""
    return EgoTransform(
        rotation_rad=float(rng.uniform(-config.rotation_max_rad, config.rotation_max_rad)),
        flip_x=bool(rng.random() < config.flip_x_p),
        flip_y=bool(rng.random() < config.flip_y_p),
        scale=float(rng.uniform(*config.scale_range)),
    )


def transform_inputs(
    inputs: Inputs,
    config: PreprocessConfig,
    transform: EgoTransform,
    radar_index: npt.NDArray[np.integer[Any]] | None = None,
) -> tuple[Inputs, npt.NDArray[np.int8] | None]:
    """Inputs ([B, ...]) of the same frames seen in the transformed ego frame (module doc), and
    the radar_index that goes with the moved-up radar rows (None when none was given). The
    arguments are not modified; images, intrinsics and GNSS are shared with them."""
    a = transform.linear()
    out = dict(inputs)
    for name in _MOVED:
        out[name] = np.array(inputs[name], np.float32, copy=True)
    new_index = None if radar_index is None else np.full(radar_index.shape, -1, np.int8)
    for b in range(out["modality_mask"].shape[0]):
        _move_points(out["lidar_points"][b], out["lidar_valid"][b], a, config)
        keep = _move_points(
            out["radar_points"][b], out["radar_valid"][b], a, config, velocity=True
        )
        if radar_index is not None and new_index is not None:
            kept = radar_index[b][keep]
            new_index[b, : kept.shape[0]] = kept
        _move_cameras(out["camera_to_ego"][b], inputs["camera_valid"][b], transform)
        _move_imu(out["imu_features"][b], transform.orthogonal())
        mask = out["modality_mask"][b]
        # Only LiDAR and radar can lose their content here; zero_absent zeroes mask-0 groups.
        mask[_LIDAR] *= float(out["lidar_valid"][b, 0] > 0)
        mask[_RADAR] *= float(out["radar_valid"][b, 0] > 0)
        points_only = np.ones_like(mask)
        points_only[[_LIDAR, _RADAR]] = mask[[_LIDAR, _RADAR]]
        zero_absent({name: out[name][b] for name in _MOVED}, points_only)
    return out, new_index


# The inputs a transform changes (its copies); the rest is shared with the untransformed inputs.
_MOVED: tuple[str, ...] = ("lidar_points", "lidar_valid", "radar_points", "radar_valid",
                           "camera_to_ego", "imu_features", "modality_mask")  # fmt: skip


def _move_points(
    points: npt.NDArray[np.float32],
    valid: npt.NDArray[np.float32],
    a: F64Array,
    config: PreprocessConfig,
    velocity: bool = False,
) -> npt.NDArray[np.bool_]:
    """Transform xyz (and radar vx, vy) of the valid rows in place, crop to the range, move the
    kept rows up; returns the [P] keep mask over the rows before moving."""
    rows = np.flatnonzero(valid > 0)
    moved = points[rows].astype(np.float64)
    moved[:, 0:3] = moved[:, 0:3] @ a.T
    if velocity:
        moved[:, 4:6] = moved[:, 4:6] @ a[:2, :2].T
    inside = in_range_mask(moved, config.point_cloud_range_m)
    keep = np.zeros(valid.shape, bool)
    keep[rows[inside]] = True
    count = int(inside.sum())
    points[...] = 0.0
    valid[...] = 0.0
    points[:count] = moved[inside]
    valid[:count] = 1.0
    return keep


def _move_cameras(
    camera_to_ego: npt.NDArray[np.float32], valid: npt.NDArray[np.float32], t: EgoTransform
) -> None:
    """M -> A4 M diag(1/s, 1/s, 1/s, 1) for the valid slots (absent ones keep identity)."""
    q, a = t.orthogonal(), t.linear()
    for slot in np.flatnonzero(valid > 0):
        m = camera_to_ego[slot].astype(np.float64)
        moved = np.eye(4)
        moved[:3, :3] = q @ m[:3, :3]
        moved[:3, 3] = a @ m[:3, 3]
        camera_to_ego[slot] = moved.astype(np.float32)


def _move_imu(features: npt.NDArray[np.float32], q: F64Array) -> None:
    """gyro mean/std, accel mean/std (ego frame) through the orthogonal part (module doc)."""
    f = features.astype(np.float64)
    q2 = q * q
    pseudo = float(np.linalg.det(q))
    features[0:3] = pseudo * (q @ f[0:3])
    features[3:6] = np.sqrt(q2 @ (f[3:6] ** 2))
    features[6:9] = q @ f[6:9]
    features[9:12] = np.sqrt(q2 @ (f[9:12] ** 2))


def transform_detections(boxes: Detections, transform: EgoTransform) -> Detections:
    """Boxes in the transformed ego frame (NaN velocities stay NaN)."""
    a, q = transform.linear(), transform.orthogonal()
    yaw = boxes.yaw_rad.astype(np.float64)
    heading = np.stack([np.cos(yaw), np.sin(yaw)], axis=1) @ q[:2, :2].T
    return Detections(
        center_m=(boxes.center_m.astype(np.float64) @ a.T).astype(np.float32),
        size_wlh_m=(boxes.size_wlh_m.astype(np.float64) * transform.scale).astype(np.float32),
        yaw_rad=np.arctan2(heading[:, 1], heading[:, 0]).astype(np.float32),
        velocity_mps=(boxes.velocity_mps.astype(np.float64) @ a[:2, :2].T).astype(np.float32),
        score=boxes.score.copy(),
        label=boxes.label.copy(),
        attribute=boxes.attribute,
    )


def transform_item(
    item: TrainingItem, config: PreprocessConfig, transform: EgoTransform
) -> TrainingItem:
    """A TrainingItem seen in the transformed ego frame (module doc, boxes outside the range
    before the transform dropped)."""
    inputs, index = transform_inputs(item.inputs, config, transform, item.radar_sensor_index)
    x0, y0, _, x1, y1, _ = config.point_cloud_range_m
    c = item.ground_truth.center_m
    inside = (c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)
    boxes = transform_detections(_select(item.ground_truth, inside), transform)
    ego_to_global = (
        None
        if item.ego_to_global is None
        else item.ego_to_global @ np.linalg.inv(transform.matrix())
    )
    return replace(
        item,
        inputs=inputs,
        ground_truth=boxes,
        instance_ids=item.instance_ids[inside],
        radar_sensor_index=index,
        ego_to_global=ego_to_global,
    )


def _select(boxes: Detections, keep: npt.NDArray[np.bool_]) -> Detections:
    return Detections(
        center_m=boxes.center_m[keep],
        size_wlh_m=boxes.size_wlh_m[keep],
        yaw_rad=boxes.yaw_rad[keep],
        velocity_mps=boxes.velocity_mps[keep],
        score=boxes.score[keep],
        label=boxes.label[keep],
        attribute=tuple(a for a, k in zip(boxes.attribute, keep, strict=True) if k)
        if boxes.attribute
        else (),
    )


# ------------------------------------------------------------------------------------- dropout


@dataclass(frozen=True)
class SensorDropoutConfig:
    """Dropout probabilities, drawn independently per sample.

    modality_p: one probability for every modality, or one per modality in MODALITIES order.
    camera_p / radar_p: each present camera / radar of a kept modality.
    keep_at_least_one: a sample never loses every present modality (one is kept at random).
    radar_names: the rig's radars, in the order of the cache's radar_sensor_index.
    """

    modality_p: float | tuple[float, ...] = 0.0
    camera_p: float = 0.0
    radar_p: float = 0.0
    keep_at_least_one: bool = True
    radar_names: tuple[str, ...] = NUSCENES_RADARS

    def __post_init__(self) -> None:
        probs = self.modality_probs()
        if len(probs) != len(MODALITIES):
            raise ConfigError(
                f"modality_p must be one probability or {len(MODALITIES)}, got {len(probs)}"
            )
        if not all(0.0 <= p <= 1.0 for p in (*probs, self.camera_p, self.radar_p)):
            raise ConfigError(
                f"dropout probabilities must be in [0, 1]: modality_p {self.modality_p}, "
                f"camera_p {self.camera_p}, radar_p {self.radar_p}"
            )

    def modality_probs(self) -> tuple[float, ...]:
        if isinstance(self.modality_p, int | float):
            return (float(self.modality_p),) * len(MODALITIES)
        return tuple(float(p) for p in self.modality_p)


@dataclass(frozen=True)
class SensorDrop:
    """What one sample loses: whole modalities, single cameras (names), single radars (names)."""

    modalities: tuple[Modality, ...] = ()
    cameras: tuple[str, ...] = ()
    radars: tuple[str, ...] = ()


def sample_sensor_drop(
    item: TrainingItem,
    config: PreprocessConfig,
    dropout: SensorDropoutConfig,
    rng: np.random.Generator,
) -> SensorDrop:
    """Draw what one item ([1, ...] inputs) loses under `dropout`."""
    mask = item.inputs["modality_mask"][0] > 0.5
    drop = mask & (rng.random(len(MODALITIES)) < np.asarray(dropout.modality_probs()))
    if dropout.keep_at_least_one and mask.any() and (drop == mask).all():
        drop[rng.choice(np.flatnonzero(mask))] = False
    cameras: tuple[str, ...] = ()
    if mask[_CAMERA] and not drop[_CAMERA]:
        present = np.flatnonzero(item.inputs["camera_valid"][0] > 0)
        chosen = _drop_some(present, dropout.camera_p, rng)
        cameras = tuple(config.camera_names[int(k)] for k in chosen)
    radars: tuple[str, ...] = ()
    if mask[_RADAR] and not drop[_RADAR] and dropout.radar_p > 0:
        if item.radar_sensor_index is None:
            raise ConfigError(
                "radar dropout needs the items' radar_sensor_index (CachedKeyframes and "
                "KeyframeDataset items carry it)"
            )
        index = item.radar_sensor_index[0]
        present = np.unique(index[(index >= 0) & (item.inputs["radar_valid"][0] > 0)])
        chosen = _drop_some(present, dropout.radar_p, rng)
        radars = tuple(dropout.radar_names[int(k)] for k in chosen)
    return SensorDrop(
        modalities=tuple(m for m, d in zip(MODALITIES, drop, strict=True) if d),
        cameras=cameras,
        radars=radars,
    )


def _drop_some(
    present: npt.NDArray[np.int64], p: float, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """The members of `present` drawn with probability p, never all of them."""
    if p <= 0 or present.size == 0:
        return present[:0]
    chosen = rng.random(present.size) < p
    if chosen.all():
        chosen[rng.integers(present.size)] = False
    return present[chosen]


def apply_sensor_drop(
    item: TrainingItem,
    config: PreprocessConfig,
    drop: SensorDrop,
    radar_names: Sequence[str] = NUSCENES_RADARS,
) -> TrainingItem:
    """The item without the dropped sensors and modalities (core.preprocess removal)."""
    if not (drop.modalities or drop.cameras or drop.radars):
        return item
    inputs = remove_sensors(
        item.inputs,
        config,
        cameras=drop.cameras,
        radars=drop.radars,
        radar_index=item.radar_sensor_index,
        radar_names=radar_names,
    )
    index = item.radar_sensor_index
    if index is not None:
        index = kept_radar_index(index, item.inputs["radar_valid"], drop.radars, radar_names)
    inputs = remove_modalities(inputs, drop.modalities)
    if index is not None and inputs["radar_valid"][:, 0].max() <= 0:
        index = np.full_like(index, -1)
    return replace(item, inputs=inputs, radar_sensor_index=index)


def augment_pair(
    now: TrainingItem,
    later: TrainingItem,
    config: AugmentConfig,
    rng: np.random.Generator,
    preprocess: PreprocessConfig,
) -> tuple[TrainingItem, TrainingItem]:
    """Keyframes t and t+1 under one random transform (the same world seen at two times)."""
    transform = sample_transform(rng, config)
    return transform_item(now, preprocess, transform), transform_item(later, preprocess, transform)


def drop_sensors_at_random(
    item: TrainingItem,
    p: float,
    rng: np.random.Generator,
    preprocess: PreprocessConfig,
    radar_names: tuple[str, ...] = NUSCENES_RADARS,
) -> TrainingItem:
    """The item with each present camera and radar removed with probability p (never the
    last of a modality: whole modalities are sample_modality_dropout's or modality_p's job)."""
    dropout = SensorDropoutConfig(camera_p=p, radar_p=p, radar_names=radar_names)
    drop = sample_sensor_drop(item, preprocess, dropout, rng)
    return apply_sensor_drop(item, preprocess, drop, radar_names)


# ------------------------------------------------------------------------------------ datasets


class WorkerRng:
    """A numpy Generator per process: seeded from `seed` and the DataLoader worker's seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: np.random.Generator | None = None
        self._worker_seed: int | None = None

    def get(self) -> np.random.Generator:
        info = get_worker_info()
        worker_seed = None if info is None else int(info.seed)
        if self._generator is None or worker_seed != self._worker_seed:
            entropy = [self.seed] if worker_seed is None else [self.seed, worker_seed]
            self._generator = np.random.default_rng(entropy)
            self._worker_seed = worker_seed
        return self._generator


@dataclass(frozen=True)
class Augmentation:
    """What AugmentedKeyframes / AugmentedPairs apply: a transform (None: none) and dropout."""

    config: PreprocessConfig
    geometry: AugmentConfig | None = AugmentConfig()
    dropout: SensorDropoutConfig | None = None

    def items(self, items: Sequence[TrainingItem], rng: np.random.Generator) -> list[TrainingItem]:
        """One transform shared by `items` (keyframes t, t+1 of a pair see the same world),
        then dropout drawn per item."""
        out = list(items)
        if self.geometry is not None:
            transform = sample_transform(rng, self.geometry)
            out = [transform_item(item, self.config, transform) for item in out]
        if self.dropout is not None:
            names = self.dropout.radar_names
            out = [
                apply_sensor_drop(
                    item,
                    self.config,
                    sample_sensor_drop(item, self.config, self.dropout, rng),
                    names,
                )
                for item in out
            ]
        return out


class AugmentedKeyframes(Dataset[TrainingItem]):
    """Keyframes (CachedKeyframes, KeyframeDataset) with an independent draw per item."""

    def __init__(self, keyframes: KeyframeSource, augmentation: Augmentation, seed: int = 0):
        self.keyframes = keyframes
        self.augmentation = augmentation
        self.rng = WorkerRng(seed)

    def __len__(self) -> int:
        return len(self.keyframes)

    def scene_names(self) -> list[str]:
        return self.keyframes.scene_names()

    def __getitem__(self, index: int) -> TrainingItem:
        return self.augmentation.items([self.keyframes[index]], self.rng.get())[0]


class AugmentedPairs(Dataset[tuple[TrainingItem, TrainingItem]]):
    """(t, t+1) pairs (KeyframePairDataset) with one transform per pair, dropout per item."""

    def __init__(
        self,
        pairs: Dataset[tuple[TrainingItem, TrainingItem]],
        augmentation: Augmentation,
        seed: int = 0,
    ) -> None:
        self.pairs = pairs
        self.augmentation = augmentation
        self.rng = WorkerRng(seed)

    def __len__(self) -> int:
        return len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[TrainingItem, TrainingItem]:
        now, later = self.augmentation.items(self.pairs[index], self.rng.get())
        return now, later
