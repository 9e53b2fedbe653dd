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

`remove_sensors` / `remove_modalities` derive, from computed inputs, the inputs of the same
frame without some cameras, radars or modalities (sensor dropout in training, sensor-removal
evaluation); `radar_sensor_index` says which radar each packed radar row came from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    MODALITIES,
    NUSCENES_CAMERAS,
    NUSCENES_RADARS,
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


def check_clouds(clouds: Sequence[PointCloud], fields: tuple[str, ...]) -> None:
    """Refuse a cloud whose fields or shape are not [N, len(fields)] with `fields`."""
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


def pack_points(
    clouds: Sequence[PointCloud],
    fields: tuple[str, ...],
    range_m: tuple[float, float, float, float, float, float],
    maximum: int,
) -> tuple[FloatArray, FloatArray]:
    """Concatenate, crop, subsample and pad clouds: ([maximum, F] points, [maximum] valid)."""
    out, valid, _ = pack_points_with_sources(clouds, fields, range_m, maximum)
    return out, valid


def pack_points_with_sources(
    clouds: Sequence[PointCloud],
    fields: tuple[str, ...],
    range_m: tuple[float, float, float, float, float, float],
    maximum: int,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """`pack_points` plus, per packed row, the position in `clouds` of the cloud it came from
    ([maximum] int64, -1 on padding rows): which sensor each point belongs to."""
    check_clouds(clouds, fields)
    out = np.zeros((maximum, len(fields)), np.float32)
    valid = np.zeros((maximum,), np.float32)
    sources = np.full((maximum,), -1, np.int64)
    if not clouds:
        return out, valid, sources
    points = np.concatenate([c.points for c in clouds], axis=0)
    keep = in_range_mask(points, range_m)
    chosen = np.flatnonzero(keep)
    chosen = chosen[subsample_indices(chosen.shape[0], maximum)]
    count = chosen.shape[0]
    out[:count] = points[chosen]
    valid[:count] = 1.0
    counts = np.array([c.points.shape[0] for c in clouds], np.int64)
    sources[:count] = np.searchsorted(np.cumsum(counts), chosen, side="right")
    return out, valid, sources


def in_range_mask(
    points: npt.NDArray[np.floating[Any]],
    range_m: tuple[float, float, float, float, float, float],
) -> npt.NDArray[np.bool_]:
    """[N] True where x, y, z (columns 0..2) lie in the half-open range (NaN rows: False)."""
    x0, y0, z0, x1, y1, z1 = range_m
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    # NaN coordinates fail every comparison, so malformed points are cropped away here too.
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1) & (z >= z0) & (z < z1)  # type: ignore[no-any-return]


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
        zero_absent(inputs, mask)
        return {name: inputs[name][None] for name in model_io.INPUT_NAMES}

    def _cameras(
        self, cameras: Sequence[CameraImage]
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        resized, intrinsics, cam_to_ego, valid = self.place_cameras(cameras)
        # One vectorized normalize for all cameras: [N, H, W, 3] uint8 -> [N, 3, H, W] float32.
        images = resized.astype(np.float32) * _SCALE + _SHIFT
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        images[valid == 0] = 0.0
        return images, intrinsics, cam_to_ego, valid

    def place_cameras(
        self, cameras: Sequence[CameraImage]
    ) -> tuple[npt.NDArray[np.uint8], FloatArray, FloatArray, FloatArray]:
        """Each camera in its model slot: (images resized to the model's input [N, H, W, 3]
        uint8, K scaled to match [N, 3, 3], camera_to_ego [N, 4, 4], valid [N]); the host part
        that the GPU preprocessing shares."""
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
        return resized, intrinsics, cam_to_ego, valid

    def _warn_unknown_camera(self, name: str) -> None:
        if name not in self._warned_cameras:
            self._warned_cameras.add(name)
            _LOG.warning(
                "camera %r is not in the model's camera list %s: its images are dropped; "
                "add it to camera_names (and retrain) or stop sending it",
                name,
                list(self.config.camera_names),
            )


def zero_absent(inputs: Inputs, mask: FloatArray) -> None:
    """Zero every tensor of a modality masked absent (identity calibration for cameras), in
    place; one frame: `inputs` and the [M] `mask` without the batch dimension."""
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


# ------------------------------------------------------------------- sensor and modality removal
#
# Evaluation ("each single camera and radar removed") and training (per-sensor dropout) both need
# the inputs of a frame without some of its sensors. Re-running the Preprocessor on a reduced
# Frame gives them, but costs the JPEG decodes again; the functions below derive them from
# inputs already computed, exactly (see remove_sensors for the one exception).


def radar_sensor_index(
    frame: Frame, config: PreprocessConfig, radar_names: Sequence[str] = NUSCENES_RADARS
) -> npt.NDArray[np.int8]:
    """[1, max_radar_points] int8: for each packed radar row of Preprocessor(config)(frame), the
    index in `radar_names` of the radar it came from; -1 on padding rows (and everywhere when
    the frame's radar modality is flagged absent, as the Preprocessor then zeroes the points)."""
    if len(radar_names) > np.iinfo(np.int8).max:
        raise ConfigError(f"{len(radar_names)} radar names do not fit an int8 sensor index")
    out = np.full((1, config.max_radar_points), -1, np.int8)
    if not frame.modality_mask()[MODALITIES.index(Modality.RADAR)]:
        return out
    slots = {name: k for k, name in enumerate(radar_names)}
    unknown = sorted({c.sensor for c in frame.radar if c.sensor not in slots})
    if unknown:
        raise InputDataError(
            f"radar(s) {unknown} are not in radar_names {list(radar_names)}; pass the rig's "
            "radar names"
        )
    _, _, sources = pack_points_with_sources(
        frame.radar, RADAR_POINT_FIELDS, config.point_cloud_range_m, config.max_radar_points
    )
    by_cloud = np.array([slots[c.sensor] for c in frame.radar], np.int8)
    rows = sources >= 0
    out[0, rows] = by_cloud[sources[rows]]
    return out


def remove_sensors(
    inputs: Inputs,
    config: PreprocessConfig,
    *,
    cameras: Collection[str] = (),
    radars: Collection[str] = (),
    radar_index: npt.NDArray[np.integer[Any]] | None = None,
    radar_names: Sequence[str] = NUSCENES_RADARS,
) -> Inputs:
    """The inputs ([B, ...]) of the same frames without the named cameras and radars.

    A removed camera's slot becomes what the Preprocessor gives an absent camera (zero image,
    identity K and camera_to_ego, camera_valid 0). A removed radar's packed points go and the
    remaining rows move up in their order, zero padding after them; `radar_index` ([B, P_R],
    see radar_sensor_index) says which radar each row came from and is required when `radars`
    is not empty. A modality left without a sensor with content is masked absent and zeroed.
    The result equals the Preprocessor's inputs for the frame without those sensors, except
    when the frame had more radar points in range than max_radar_points: the Preprocessor would
    then subsample the remaining radars' points afresh, here the subsample is kept as it was.
    The arguments are not modified (read-only arrays are fine); arrays that do not change are
    shared with them.
    """
    unknown_cams = sorted(set(cameras) - set(config.camera_names))
    unknown_radars = sorted(set(radars) - set(radar_names))
    if unknown_cams or unknown_radars:
        raise ConfigError(
            f"cannot remove unknown sensors {unknown_cams + unknown_radars}; cameras are "
            f"{list(config.camera_names)}, radars {list(radar_names)}"
        )
    out = dict(inputs)
    if cameras:
        _own(out, inputs, _MODALITY_INPUTS[Modality.CAMERA])
        slots = [config.camera_names.index(name) for name in cameras]
        out["camera_images"][:, slots] = 0.0
        out["camera_intrinsics"][:, slots] = np.eye(3, dtype=np.float32)
        out["camera_to_ego"][:, slots] = np.eye(4, dtype=np.float32)
        out["camera_valid"][:, slots] = 0.0
    if radars:
        if radar_index is None or radar_index.shape != inputs["radar_valid"].shape:
            raise ConfigError(
                "removing radars needs radar_index shaped like radar_valid "
                f"{inputs['radar_valid'].shape} (radar_sensor_index of each frame)"
            )
        _own(out, inputs, _MODALITY_INPUTS[Modality.RADAR])
        removed = [radar_names.index(name) for name in radars]
        for b in range(radar_index.shape[0]):
            keep = (inputs["radar_valid"][b] > 0) & ~np.isin(radar_index[b], removed)
            out["radar_points"][b], out["radar_valid"][b] = _compact(
                inputs["radar_points"][b], keep
            )
    mask = np.array(inputs["modality_mask"], np.float32, copy=True)
    mask[:, MODALITIES.index(Modality.RADAR)] *= out["radar_valid"][:, 0] > 0
    mask[:, MODALITIES.index(Modality.CAMERA)] *= out["camera_valid"].any(axis=1)
    return _apply_mask(out, inputs, mask)


def kept_radar_index(
    radar_index: npt.NDArray[np.integer[Any]],
    radar_valid: FloatArray,
    radars: Collection[str],
    radar_names: Sequence[str] = NUSCENES_RADARS,
) -> npt.NDArray[np.int8]:
    """The radar_index ([B, P_R]) that goes with remove_sensors' output: the same removal and
    the same moving up of rows; `radar_valid` is the one before the removal."""
    removed = [radar_names.index(name) for name in radars]
    out = np.full(radar_index.shape, -1, np.int8)
    for b in range(radar_index.shape[0]):
        kept = radar_index[b][(radar_valid[b] > 0) & ~np.isin(radar_index[b], removed)]
        out[b, : kept.shape[0]] = kept
    return out


def remove_modalities(inputs: Inputs, modalities: Collection[Modality]) -> Inputs:
    """The inputs ([B, ...]) with `modalities` masked absent and their tensors zeroed, as the
    Preprocessor gives a frame without them. The arguments are not modified; arrays that do not
    change are shared with them."""
    mask = np.array(inputs["modality_mask"], np.float32, copy=True)
    for modality in modalities:
        mask[:, MODALITIES.index(modality)] = 0.0
    return _apply_mask(dict(inputs), inputs, mask)


# The inputs of each modality: what masking it absent zeroes (cameras: identity calibration).
_MODALITY_INPUTS: dict[Modality, tuple[str, ...]] = {
    Modality.LIDAR: ("lidar_points", "lidar_valid"),
    Modality.RADAR: ("radar_points", "radar_valid"),
    Modality.CAMERA: ("camera_images", "camera_intrinsics", "camera_to_ego", "camera_valid"),
    Modality.IMU: ("imu_features",),
    Modality.GNSS: ("gnss_features",),
}


def _own(out: Inputs, inputs: Inputs, names: Sequence[str]) -> None:
    """Give `out` its own writable copies of `names` where it still shares them with `inputs`."""
    for name in names:
        if out[name] is inputs[name]:
            out[name] = np.array(inputs[name], np.float32, copy=True)


def _apply_mask(out: Inputs, inputs: Inputs, mask: FloatArray) -> Inputs:
    """`out` with modality_mask = mask ([B, M]) and every modality that mask turns off (present
    in inputs' mask) zeroed as zero_absent does; copies only the arrays that change."""
    turned_off = (inputs["modality_mask"] > 0) & (mask == 0)
    out["modality_mask"] = mask
    for b, m in zip(*np.nonzero(turned_off), strict=True):
        names = _MODALITY_INPUTS[MODALITIES[m]]
        _own(out, inputs, names)
        only_m = np.ones((len(MODALITIES),), np.float32)
        only_m[m] = 0.0
        zero_absent({name: out[name][b] for name in names}, only_m)
    return out


def _compact(rows: FloatArray, keep: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
    """([P, F] the kept rows first, in order, then zeros; [P] valid) for a [P] keep mask."""
    points = np.zeros_like(rows)
    valid = np.zeros((rows.shape[0],), np.float32)
    count = int(keep.sum())
    points[:count] = rows[keep]
    valid[:count] = 1.0
    return points, valid


# ---------------------------------------------------------------------- compact camera storage


def encode_camera_images(
    images: FloatArray, camera_valid: FloatArray
) -> npt.NDArray[np.uint8] | None:
    """The uint8 pixels ([..., N, 3, H, W]) that decode_camera_images turns back into exactly
    `images` (normalized camera_images), or None when no such pixels exist (not Preprocessor
    output). A quarter of the float32 size: what an on-disk cache stores."""
    shape = (3, 1, 1)
    pixels = np.rint((images - _SHIFT.reshape(shape)) / _SCALE.reshape(shape))
    encoded = np.clip(pixels, 0, 255).astype(np.uint8)
    if not np.array_equal(decode_camera_images(encoded, camera_valid), images):
        return None
    return encoded  # type: ignore[no-any-return]


def decode_camera_images(pixels: npt.NDArray[np.uint8], camera_valid: FloatArray) -> FloatArray:
    """Normalized camera_images from uint8 pixels [..., N, 3, H, W], zero where the camera is
    not valid: the Preprocessor's own arithmetic, so the result is bit-identical to it."""
    shape = (3, 1, 1)
    images = pixels.astype(np.float32) * _SCALE.reshape(shape) + _SHIFT.reshape(shape)
    images[camera_valid == 0] = 0.0
    return images  # type: ignore[no-any-return]
