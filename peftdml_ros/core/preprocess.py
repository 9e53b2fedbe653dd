"""Frame -> engine inputs: the fixed-shape, padded, masked tensors of `model_io.INPUT_NAMES`.

Rules (each is what the exported graph expects; docs/pipeline.md repeats them for users):

- Points (LiDAR, radar): the frame's sweeps of a modality are concatenated (they are already in
  the ego frame), cropped to the BEV range ``x_min <= x < x_max``, ``y_min <= y < y_max``,
  ``z_min <= z < z_max``, and, when more than the maximum remain, subsampled to exactly the maximum
  at evenly spaced indices ``(k * N) // max`` of the concatenation. That choice is deterministic
  (same frame, same tensor: reproducible replays and backend parity checks), keeps the spatial
  spread of a scan ordered by azimuth, and keeps every sweep in proportion. Padding rows are zeros
  with ``*_valid == 0``.
- Cameras: slot k holds the camera named ``camera_names[k]``. Each image is resized to the model
  input size (bilinear; area-averaged when shrinking, see _resize), normalized with
  CAMERA_MEAN / CAMERA_STD and laid out [3, H, W]; its intrinsics are rescaled with the
  half-pixel rule of the resize (``c' = (c + 0.5) * s - 0.5``, ``f' = f * s``) so a point
  projects onto the same image content.
  A missing camera leaves a zero image, identity K and identity camera_to_ego (finite math in the
  graph) with ``camera_valid == 0``. A frame camera that is not in the list is dropped, logged
  once per name.
- IMU: mean and population std (ddof 0) of gyro and accel over the frame's IMU window.
- GNSS: ground speed and velocity (east, north) from the fix, heading from the fix or, without
  one, the course of the velocity when faster than ``min_course_speed_mps``; fix age in s.
- modality_mask: a modality counts as present only when the frame says so AND it has content the
  model can use: LiDAR/radar at least one point inside the range after cropping, cameras at least
  one configured camera image, IMU at least one sample, GNSS a fix. A present LiDAR with zero
  points in range is therefore masked absent: the gating then treats it as the dead sensor it
  behaves like, and attention never sees an all-padding token set. A modality masked absent has
  all its tensors zeroed, so "mask 0" always means "no data" to the graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    MODALITIES,
    NUSCENES_CAMERAS,
    RADAR_POINT_FIELDS,
    CameraImage,
    FloatArray,
    Frame,
    Modality,
    PointCloud,
)

_LOG = logging.getLogger(__name__)

Inputs = dict[str, FloatArray]


_MEAN = np.asarray(model_io.CAMERA_MEAN, np.float32)
_STD = np.asarray(model_io.CAMERA_STD, np.float32)
# Normalizing uint8 in one multiply-add: (x / 255 - mean) / std = x * _SCALE + _SHIFT.
_SCALE = (1.0 / (255.0 * _STD)).astype(np.float32)
_SHIFT = (-_MEAN / _STD).astype(np.float32)


@dataclass(frozen=True)
class PreprocessConfig:
    """The fixed sizes of the engine inputs. Must equal the model's (see `from_model_config`).

    point_cloud_range_m: (x_min, y_min, z_min, x_max, y_max, z_max) in the ego frame, m.
    image_size_hw: camera input (height, width) in pixels.
    """

    point_cloud_range_m: tuple[float, float, float, float, float, float] = (
        model_io.DEFAULT_POINT_CLOUD_RANGE_M
    )
    max_lidar_points: int = model_io.DEFAULT_MAX_LIDAR_POINTS
    max_radar_points: int = model_io.DEFAULT_MAX_RADAR_POINTS
    camera_names: tuple[str, ...] = NUSCENES_CAMERAS
    image_size_hw: tuple[int, int] = model_io.DEFAULT_IMAGE_SIZE_HW
    min_course_speed_mps: float = 0.5

    def __post_init__(self) -> None:
        x0, y0, z0, x1, y1, z1 = self.point_cloud_range_m
        if not (x0 < x1 and y0 < y1 and z0 < z1):
            raise ConfigError(
                f"point_cloud_range_m {self.point_cloud_range_m} must be (x_min, y_min, z_min, "
                "x_max, y_max, z_max) with each min below its max"
            )
        if self.max_lidar_points < 1 or self.max_radar_points < 1:
            raise ConfigError("max_lidar_points and max_radar_points must be at least 1")
        if len(self.camera_names) < 1 or len(set(self.camera_names)) != len(self.camera_names):
            raise ConfigError(f"camera_names {self.camera_names} must be non-empty and unique")
        if min(self.image_size_hw) < 8:
            raise ConfigError(f"image_size_hw {self.image_size_hw} must be at least 8 x 8 pixels")

    @staticmethod
    def from_model_config(model_config: object) -> PreprocessConfig:
        """The preprocessing sizes of a model config (duck-typed: any object with the fields)."""
        kwargs: dict[str, object] = {}
        for name in PreprocessConfig.__dataclass_fields__:
            if hasattr(model_config, name):
                value = getattr(model_config, name)
                kwargs[name] = tuple(value) if isinstance(value, list) else value
        return PreprocessConfig(**kwargs)  # type: ignore[arg-type]


def input_shapes(config: PreprocessConfig, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """The shape of every engine input for `batch` frames, in INPUT_NAMES order."""
    n_cam = len(config.camera_names)
    h, w = config.image_size_hw
    return {
        "lidar_points": (batch, config.max_lidar_points, len(LIDAR_POINT_FIELDS)),
        "lidar_valid": (batch, config.max_lidar_points),
        "radar_points": (batch, config.max_radar_points, len(RADAR_POINT_FIELDS)),
        "radar_valid": (batch, config.max_radar_points),
        "camera_images": (batch, n_cam, 3, h, w),
        "camera_intrinsics": (batch, n_cam, 3, 3),
        "camera_to_ego": (batch, n_cam, 4, 4),
        "camera_valid": (batch, n_cam),
        "imu_features": (batch, model_io.IMU_FEATURE_DIM),
        "gnss_features": (batch, model_io.GNSS_FEATURE_DIM),
        "modality_mask": (batch, model_io.NUM_MODALITIES),
    }


def subsample_indices(count: int, maximum: int) -> npt.NDArray[np.int64]:
    """Evenly spaced, deterministic indices choosing min(count, maximum) of `count` rows."""
    if count <= maximum:
        return np.arange(count, dtype=np.int64)
    return (np.arange(maximum, dtype=np.int64) * count) // maximum


def pack_points(
    clouds: Sequence[PointCloud],
    fields: tuple[str, ...],
    range_m: tuple[float, float, float, float, float, float],
    maximum: int,
) -> tuple[FloatArray, FloatArray]:
    """Concatenate, crop, subsample and pad clouds: ([maximum, F] points, [maximum] valid)."""
    for cloud in clouds:
        if (
            cloud.fields != fields
            or cloud.points.ndim != 2
            or cloud.points.shape[1] != len(fields)
        ):
            raise InputDataError(
                f"point cloud from {cloud.sensor!r} has fields {cloud.fields} and shape "
                f"{cloud.points.shape}; expected [N, {len(fields)}] with fields {fields} "
                "(convert it with the message conversion of peftdml_ros.ros)"
            )
    out = np.zeros((maximum, len(fields)), np.float32)
    valid = np.zeros((maximum,), np.float32)
    if not clouds:
        return out, valid
    points = np.concatenate([c.points for c in clouds], axis=0)
    x0, y0, z0, x1, y1, z1 = range_m
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    # NaN coordinates fail every comparison, so malformed points are cropped away here too.
    keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1) & (z >= z0) & (z < z1)
    kept = points[keep]
    chosen = kept[subsample_indices(kept.shape[0], maximum)]
    out[: chosen.shape[0]] = chosen
    valid[: chosen.shape[0]] = 1.0
    return out, valid


def scale_intrinsics(k: FloatArray, scale_x: float, scale_y: float) -> FloatArray:
    """K of an image resized by (scale_x, scale_y), with pixel centers at integer coordinates."""
    out = np.array(k, dtype=np.float32, copy=True)
    out[0, 0] *= scale_x
    out[0, 1] *= scale_x
    out[0, 2] = (k[0, 2] + 0.5) * scale_x - 0.5
    out[1, 1] *= scale_y
    out[1, 2] = (k[1, 2] + 0.5) * scale_y - 0.5
    return out


def _resize(image: npt.NDArray[np.uint8], size_hw: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """Resize to (h, w): bilinear, or for a shrink beyond 2x bilinear to 2x the target and then
    an exact 2:1 area average. Area filtering at any ratio costs ~4 ms for a 1600x900 image;
    this costs ~0.4 ms and both steps keep the half-pixel mapping that scale_intrinsics assumes.
    """
    h, w = size_hw
    if image.shape[0] == h and image.shape[1] == w:
        return image
    if image.shape[0] > 2 * h and image.shape[1] > 2 * w:
        double = cv2.resize(image, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(double, (w, h), interpolation=cv2.INTER_AREA)  # type: ignore[return-value]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)  # type: ignore[return-value]


def _check_camera(camera: CameraImage) -> None:
    image = camera.image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputDataError(
            f"camera {camera.sensor!r} image is {image.dtype} {image.shape}; expected uint8 "
            "[H, W, 3] RGB (decode and convert it before building the Frame)"
        )
    if camera.intrinsics.shape != (3, 3) or camera.camera_to_ego.shape != (4, 4):
        raise InputDataError(
            f"camera {camera.sensor!r} has intrinsics {camera.intrinsics.shape} and "
            f"camera_to_ego {camera.camera_to_ego.shape}; expected [3, 3] and [4, 4]"
        )


class Preprocessor:
    """Turns Frames into engine inputs for one PreprocessConfig (batch dimension 1)."""

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config or PreprocessConfig()
        self._slot = {name: k for k, name in enumerate(self.config.camera_names)}
        self._warned_cameras: set[str] = set()

    def __call__(self, frame: Frame) -> Inputs:
        """Inputs of one frame: every name of model_io.INPUT_NAMES, shapes [1, ...], float32."""
        cfg = self.config
        lidar, lidar_valid = pack_points(
            frame.lidar, LIDAR_POINT_FIELDS, cfg.point_cloud_range_m, cfg.max_lidar_points
        )
        radar, radar_valid = pack_points(
            frame.radar, RADAR_POINT_FIELDS, cfg.point_cloud_range_m, cfg.max_radar_points
        )
        images, intrinsics, cam_to_ego, cam_valid = self._cameras(frame.cameras)
        imu = imu_features(frame)
        gnss = gnss_features(frame, cfg.min_course_speed_mps)
        present = frame.modality_mask()
        has_content = {
            Modality.LIDAR: bool(lidar_valid[0] > 0),
            Modality.RADAR: bool(radar_valid[0] > 0),
            Modality.CAMERA: bool(cam_valid.any()),
            Modality.IMU: len(frame.imu) > 0,
            Modality.GNSS: frame.gnss is not None,
        }
        mask = np.array(
            [present[i] and has_content[m] for i, m in enumerate(MODALITIES)],
            dtype=np.float32,
        )
        inputs: Inputs = {
            "lidar_points": lidar,
            "lidar_valid": lidar_valid,
            "radar_points": radar,
            "radar_valid": radar_valid,
            "camera_images": images,
            "camera_intrinsics": intrinsics,
            "camera_to_ego": cam_to_ego,
            "camera_valid": cam_valid,
            "imu_features": imu,
            "gnss_features": gnss,
            "modality_mask": mask,
        }
        _zero_absent(inputs, mask)
        return {name: inputs[name][None] for name in model_io.INPUT_NAMES}

    def _cameras(
        self, cameras: Sequence[CameraImage]
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        cfg = self.config
        n_cam = len(cfg.camera_names)
        h, w = cfg.image_size_hw
        resized = np.zeros((n_cam, h, w, 3), np.uint8)
        intrinsics = np.tile(np.eye(3, dtype=np.float32), (n_cam, 1, 1))
        cam_to_ego = np.tile(np.eye(4, dtype=np.float32), (n_cam, 1, 1))
        valid = np.zeros((n_cam,), np.float32)
        for camera in cameras:
            slot = self._slot.get(camera.sensor)
            if slot is None:
                self._warn_unknown_camera(camera.sensor)
                continue
            if valid[slot]:
                raise InputDataError(
                    f"frame has camera {camera.sensor!r} twice; the synchronizer must keep one"
                )
            _check_camera(camera)
            src_h, src_w = camera.image.shape[:2]
            resized[slot] = _resize(camera.image, cfg.image_size_hw)
            intrinsics[slot] = scale_intrinsics(camera.intrinsics, w / src_w, h / src_h)
            cam_to_ego[slot] = camera.camera_to_ego
            valid[slot] = 1.0
        # One vectorized normalize for all cameras: [N, H, W, 3] uint8 -> [N, 3, H, W] float32.
        images = resized.astype(np.float32) * _SCALE + _SHIFT
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        images[valid == 0] = 0.0
        return images, intrinsics, cam_to_ego, valid

    def _warn_unknown_camera(self, name: str) -> None:
        if name not in self._warned_cameras:
            self._warned_cameras.add(name)
            _LOG.warning(
                "camera %r is not in the model's camera list %s: its images are dropped; "
                "add it to camera_names (and retrain) or stop sending it",
                name,
                list(self.config.camera_names),
            )


def _zero_absent(inputs: Inputs, mask: FloatArray) -> None:
    """Zero every tensor of a modality masked absent (identity calibration for cameras)."""
    groups = {
        Modality.LIDAR: ("lidar_points", "lidar_valid"),
        Modality.RADAR: ("radar_points", "radar_valid"),
        Modality.CAMERA: ("camera_images", "camera_valid"),
        Modality.IMU: ("imu_features",),
        Modality.GNSS: ("gnss_features",),
    }
    for i, modality in enumerate(MODALITIES):
        if mask[i] > 0:
            continue
        for name in groups[modality]:
            inputs[name][...] = 0.0
        if modality is Modality.CAMERA:
            inputs["camera_intrinsics"][...] = np.eye(3, dtype=np.float32)
            inputs["camera_to_ego"][...] = np.eye(4, dtype=np.float32)


def imu_features(frame: Frame) -> FloatArray:
    """[IMU_FEATURE_DIM] mean and std of gyro (rad/s) and accel (m/s^2); zeros without samples."""
    out = np.zeros((model_io.IMU_FEATURE_DIM,), np.float32)
    if not frame.imu:
        return out
    gyro = np.array([s.angular_velocity_rps for s in frame.imu], np.float64)
    accel = np.array([s.linear_acceleration_mps2 for s in frame.imu], np.float64)
    out[0:3] = gyro.mean(axis=0)
    out[3:6] = gyro.std(axis=0)
    out[6:9] = accel.mean(axis=0)
    out[9:12] = accel.std(axis=0)
    if not np.isfinite(out).all():
        raise InputDataError("IMU window has non-finite readings; drop such samples upstream")
    return out


def gnss_features(frame: Frame, min_course_speed_mps: float = 0.5) -> FloatArray:
    """[GNSS_FEATURE_DIM] speed, velocity east/north (m/s), heading sin/cos, fix age (s).

    Heading: the fix's heading_rad (ENU, counter-clockwise from east) when given, else the course
    atan2(v_north, v_east) when the ground speed is at least `min_course_speed_mps`, else 0, 0.
    """
    out = np.zeros((model_io.GNSS_FEATURE_DIM,), np.float32)
    fix = frame.gnss
    if fix is None:
        return out
    v_e, v_n = fix.velocity_en_mps if fix.velocity_en_mps is not None else (0.0, 0.0)
    speed = math.hypot(v_e, v_n)
    heading = fix.heading_rad
    if heading is None and fix.velocity_en_mps is not None and speed >= min_course_speed_mps:
        heading = math.atan2(v_n, v_e)
    out[0:3] = (speed, v_e, v_n)
    if heading is not None:
        out[3:5] = (math.sin(heading), math.cos(heading))
    out[5] = (frame.stamp_ns - fix.stamp_ns) * 1e-9
    if not np.isfinite(out).all():
        raise InputDataError("GNSS fix has non-finite velocity or heading; drop it upstream")
    return out


def collate(batch: Sequence[Inputs]) -> Inputs:
    """Concatenate per-frame inputs ([1, ...] each) into one batch [B, ...]."""
    if not batch:
        raise InputDataError("cannot collate an empty batch")
    return {
        name: np.concatenate([b[name] for b in batch], axis=0) for name in model_io.INPUT_NAMES
    }


def check_inputs(inputs: Inputs, config: PreprocessConfig) -> None:
    """Raise InputDataError unless `inputs` match model_io names, shapes and dtypes exactly."""
    if set(inputs) != set(model_io.INPUT_NAMES):
        raise InputDataError(
            f"inputs have names {sorted(inputs)}; the engine needs {list(model_io.INPUT_NAMES)}"
        )
    batch = inputs["modality_mask"].shape[0]
    for name, shape in input_shapes(config, batch).items():
        array = inputs[name]
        if array.shape != shape or array.dtype != np.float32:
            raise InputDataError(
                f"input {name} is {array.dtype} {array.shape}; the engine needs float32 {shape}"
            )
