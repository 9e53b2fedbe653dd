"""Types shared by every stage: classes, modalities, sensor data, frames and detections.

Box convention (used by the dataset reader, the model, export and the ROS messages):
  - center (x, y, z) in meters in the ego/base frame (x forward, y left, z up), the box's center;
  - size (w, l, h) in meters as in nuScenes: w across the heading, l along it, h vertical;
  - yaw in radians around +z, 0 when the box's length axis points along +x;
  - velocity (vx, vy) in m/s in the same frame.
Time is integer nanoseconds everywhere in the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# WGS-84 equatorial radius, m: the sphere used wherever lat/lon and local east/north metres are
# converted (GNSS derived from nuScenes poses, GNSS velocity in the node), so both agree.
EARTH_RADIUS_M = 6_378_137.0
IntArray = npt.NDArray[np.int64]

# The 10 nuScenes detection classes, in nuScenes order; a label is an index into this tuple.
NUSCENES_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)


# The nuScenes rig's channel names, used as sensor names everywhere (dataset, bag, node, model).
NUSCENES_LIDAR = "LIDAR_TOP"
NUSCENES_RADARS: tuple[str, ...] = (
    "RADAR_FRONT",
    "RADAR_FRONT_LEFT",
    "RADAR_FRONT_RIGHT",
    "RADAR_BACK_LEFT",
    "RADAR_BACK_RIGHT",
)
# The devkit's camera order, which is also the model's camera slot order.
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)


class Modality(str, Enum):
    """A sensor modality. The member order is the column order of `modality_mask`."""

    LIDAR = "lidar"
    RADAR = "radar"
    CAMERA = "camera"
    IMU = "imu"
    GNSS = "gnss"


MODALITIES: tuple[Modality, ...] = tuple(Modality)

# Columns of point arrays inside the core (after conversion into the ego frame).
LIDAR_POINT_FIELDS: tuple[str, ...] = ("x", "y", "z", "intensity", "dt_s")
RADAR_POINT_FIELDS: tuple[str, ...] = ("x", "y", "z", "rcs", "vx_comp", "vy_comp", "dt_s")


@dataclass(frozen=True)
class PointCloud:
    """One sweep of points from one LiDAR or radar, already in the ego frame.

    points: [N, F] float32 with columns `fields` (LIDAR_POINT_FIELDS or RADAR_POINT_FIELDS).
    `dt_s` is (reference time - point time) in seconds, >= 0 for past sweeps.
    """

    sensor: str
    stamp_ns: int
    points: FloatArray
    fields: tuple[str, ...]


@dataclass(frozen=True)
class CameraImage:
    """One decoded camera image with its calibration.

    image: [H, W, 3] uint8, RGB. intrinsics: [3, 3] K for this (possibly resized) image.
    camera_to_ego: [4, 4] transform of points from the camera's optical frame to the ego frame.
    """

    sensor: str
    stamp_ns: int
    image: npt.NDArray[np.uint8]
    intrinsics: FloatArray
    camera_to_ego: FloatArray


@dataclass(frozen=True)
class ImuSample:
    """One IMU reading in the ego frame (rad/s, m/s^2; orientation as a quaternion x, y, z, w)."""

    stamp_ns: int
    angular_velocity_rps: tuple[float, float, float]
    linear_acceleration_mps2: tuple[float, float, float]
    orientation_xyzw: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class GnssFix:
    """One GNSS fix (WGS-84 degrees, meters) with optional ground velocity (east, north, m/s)."""

    stamp_ns: int
    latitude_deg: float
    longitude_deg: float
    altitude_m: float
    velocity_en_mps: tuple[float, float] | None = None
    heading_rad: float | None = None


@dataclass(frozen=True)
class Frame:
    """What the synchronizer hands to the detector: one instant, whatever sensors were alive.

    `sensor_present` has one entry per configured sensor; `modality_present` one per Modality.
    A modality is present when at least one of its sensors contributed.
    """

    stamp_ns: int
    trigger_sensor: str
    lidar: tuple[PointCloud, ...] = ()
    radar: tuple[PointCloud, ...] = ()
    cameras: tuple[CameraImage, ...] = ()
    imu: tuple[ImuSample, ...] = ()
    gnss: GnssFix | None = None
    sensor_present: dict[str, bool] = field(default_factory=dict)
    modality_present: dict[Modality, bool] = field(default_factory=dict)

    def modality_mask(self) -> npt.NDArray[np.bool_]:
        """[M] bool in MODALITIES order."""
        return np.array([self.modality_present.get(m, False) for m in MODALITIES], dtype=bool)


@dataclass(frozen=True)
class Detections:
    """N detected (or ground-truth) boxes in the shared box convention.

    center_m [N, 3], size_wlh_m [N, 3], yaw_rad [N], velocity_mps [N, 2], score [N] (float32);
    label [N] int64 indices into NUSCENES_CLASSES; attribute: N nuScenes attribute names
    ("" where the class has none).
    """

    center_m: FloatArray
    size_wlh_m: FloatArray
    yaw_rad: FloatArray
    velocity_mps: FloatArray
    score: FloatArray
    label: IntArray
    attribute: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            center_m=np.zeros((0, 3), np.float32),
            size_wlh_m=np.zeros((0, 3), np.float32),
            yaw_rad=np.zeros((0,), np.float32),
            velocity_mps=np.zeros((0, 2), np.float32),
            score=np.zeros((0,), np.float32),
            label=np.zeros((0,), np.int64),
            attribute=(),
        )
