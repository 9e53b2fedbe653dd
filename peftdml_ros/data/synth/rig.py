"""The nuScenes sensor rig: channels, rates, extrinsics (sensor -> ego) and camera intrinsics.

Extrinsics are close to those of the nuScenes vehicles (rounded): the ego frame has its origin
on the ground below the rear axle, x forward, y left, z up. Frames of the sensors follow
nuScenes: LIDAR_TOP has x right, y forward, z up; radars x forward, y left, z up; cameras use
the optical frame (z forward, x right, y down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftdml_ros.core.geometry import matrix_to_quaternion_wxyz
from peftdml_ros.data.synth.geometry import F64, rot_z

IMAGE_WIDTH_PX = 1600
IMAGE_HEIGHT_PX = 900

LIDAR_RATE_HZ = 20.0
CAMERA_RATE_HZ = 12.0
RADAR_RATE_HZ = 13.0
SAMPLE_RATE_HZ = 2.0
IMU_RATE_HZ = 100.0
POSE_RATE_HZ = 50.0


@dataclass(frozen=True)
class SensorSpec:
    """One sensor of the rig. `rotation_wxyz`/`translation_m` map sensor points into ego."""

    channel: str
    modality: str  # "lidar" | "radar" | "camera", as in the nuScenes sensor table
    translation_m: tuple[float, float, float]
    yaw_rad: float  # heading of the sensor's looking direction in the ego frame
    rate_hz: float
    focal_px: float = 0.0  # cameras only
    principal_px: tuple[float, float] = (0.0, 0.0)  # cameras only

    @property
    def rotation_matrix(self) -> F64:
        """[3, 3] rotation sensor frame -> ego frame."""
        heading = rot_z(self.yaw_rad)
        if self.modality == "camera":
            # Optical frame: columns are the ego-frame directions of x right, y down, z forward.
            optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
            out: F64 = heading @ optical
            return out
        if self.modality == "lidar":
            # nuScenes LIDAR_TOP: x right, y forward; looking direction = sensor +y.
            return heading @ rot_z(-np.pi / 2.0)
        return heading

    @property
    def rotation_wxyz(self) -> list[float]:
        return list(matrix_to_quaternion_wxyz(self.rotation_matrix))

    @property
    def intrinsic(self) -> list[list[float]]:
        """3x3 camera matrix K ([] for non-cameras, as nuScenes stores it)."""
        if self.modality != "camera":
            return []
        cx, cy = self.principal_px
        return [[self.focal_px, 0.0, cx], [0.0, self.focal_px, cy], [0.0, 0.0, 1.0]]

    def sensor_to_ego(self) -> F64:
        """[4, 4] homogeneous transform sensor -> ego."""
        transform = np.eye(4)
        transform[:3, :3] = self.rotation_matrix
        transform[:3, 3] = self.translation_m
        return transform


def _deg(value: float) -> float:
    return float(np.deg2rad(value))


LIDAR = SensorSpec("LIDAR_TOP", "lidar", (0.94, 0.0, 1.84), 0.0, LIDAR_RATE_HZ)

RADARS: tuple[SensorSpec, ...] = (
    SensorSpec("RADAR_FRONT", "radar", (3.41, 0.0, 0.50), 0.0, RADAR_RATE_HZ),
    SensorSpec("RADAR_FRONT_LEFT", "radar", (2.42, 0.80, 0.78), _deg(90.0), RADAR_RATE_HZ),
    SensorSpec("RADAR_FRONT_RIGHT", "radar", (2.42, -0.80, 0.77), _deg(-90.0), RADAR_RATE_HZ),
    SensorSpec("RADAR_BACK_LEFT", "radar", (-0.56, 0.63, 0.53), _deg(160.0), RADAR_RATE_HZ),
    SensorSpec("RADAR_BACK_RIGHT", "radar", (-0.56, -0.62, 0.53), _deg(-160.0), RADAR_RATE_HZ),
)

CAMERAS: tuple[SensorSpec, ...] = (
    SensorSpec(
        "CAM_FRONT", "camera", (1.70, 0.02, 1.51), 0.0, CAMERA_RATE_HZ, 1266.4, (816.3, 491.5)
    ),
    SensorSpec(
        "CAM_FRONT_RIGHT",
        "camera",
        (1.55, -0.49, 1.49),
        _deg(-55.0),
        CAMERA_RATE_HZ,
        1260.8,
        (807.9, 495.3),
    ),
    SensorSpec(
        "CAM_FRONT_LEFT",
        "camera",
        (1.52, 0.49, 1.51),
        _deg(55.0),
        CAMERA_RATE_HZ,
        1272.6,
        (826.6, 479.8),
    ),
    SensorSpec(
        "CAM_BACK", "camera", (0.03, 0.0, 1.57), _deg(180.0), CAMERA_RATE_HZ, 809.2, (829.2, 481.8)
    ),
    SensorSpec(
        "CAM_BACK_LEFT",
        "camera",
        (1.04, 0.48, 1.56),
        _deg(110.0),
        CAMERA_RATE_HZ,
        1256.7,
        (817.8, 451.9),
    ),
    SensorSpec(
        "CAM_BACK_RIGHT",
        "camera",
        (1.03, -0.48, 1.56),
        _deg(-110.0),
        CAMERA_RATE_HZ,
        1259.5,
        (807.3, 501.2),
    ),
)

RIG: tuple[SensorSpec, ...] = (LIDAR, *RADARS, *CAMERAS)
CHANNELS: tuple[str, ...] = tuple(spec.channel for spec in RIG)


def spec_of(channel: str) -> SensorSpec:
    """The SensorSpec of a nuScenes channel name (KeyError if unknown)."""
    for spec in RIG:
        if spec.channel == channel:
            return spec
    raise KeyError(channel)
