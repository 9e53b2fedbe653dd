"""The engine I/O contract: tensor names, shapes and dtypes shared by preprocessing, the model,
ONNX export and every backend (PyTorch, ONNX Runtime, TensorRT).

Sizes that vary per frame (point counts, cameras present) are padded to fixed maxima and carried
with a validity mask, so one exported graph serves every frame. Calibration is an input, so one
engine serves any camera rig of the same shape.

Inputs (B = batch, P_L/P_R = max points, N_C = cameras, H x W = camera input size):
  lidar_points      float32 [B, P_L, 5]  x, y, z (m, ego frame), intensity, dt_s
  lidar_valid       float32 [B, P_L]     1.0 for real points, 0.0 for padding
  radar_points      float32 [B, P_R, 7]  x, y, z, rcs, vx_comp, vy_comp (m/s, ego), dt_s
  radar_valid       float32 [B, P_R]
  camera_images     float32 [B, N_C, 3, H, W]  RGB, normalized with CAMERA_MEAN / CAMERA_STD
  camera_intrinsics float32 [B, N_C, 3, 3]  K of the resized image
  camera_to_ego     float32 [B, N_C, 4, 4]  camera optical frame -> ego frame
  camera_valid      float32 [B, N_C]
  imu_features      float32 [B, IMU_FEATURE_DIM]   see IMU_FEATURES
  gnss_features     float32 [B, GNSS_FEATURE_DIM]  see GNSS_FEATURES
  modality_mask     float32 [B, 5]  1.0 where the modality is present, in MODALITIES order

Outputs (H_B x W_B = BEV grid, K = len(NUSCENES_CLASSES), A = len(ATTRIBUTES)):
  heatmap           float32 [B, K, H_B, W_B]  class center probabilities (after sigmoid)
  center_offset     float32 [B, 2, H_B, W_B]  sub-cell offset of the center, in cells
  center_z          float32 [B, 1, H_B, W_B]  z of the box center, m
  log_size          float32 [B, 3, H_B, W_B]  log of (w, l, h), m
  yaw_sin_cos       float32 [B, 2, H_B, W_B]
  velocity          float32 [B, 2, H_B, W_B]  vx, vy, m/s
  attribute_logits  float32 [B, A, H_B, W_B]
  normality_score   float32 [B]  -log p of the fused features under the clean-data GMM
                                 (0 where no GMM is fitted): a "distance from normal"

BEV grid: cell (row i, column j) covers x in [x_min + j*cell, x_min + (j+1)*cell) and
y in [y_min + i*cell, ...): rows follow +y, columns follow +x.
"""

from __future__ import annotations

from peftdml_ros.core.types import MODALITIES

INPUT_NAMES: tuple[str, ...] = (
    "lidar_points",
    "lidar_valid",
    "radar_points",
    "radar_valid",
    "camera_images",
    "camera_intrinsics",
    "camera_to_ego",
    "camera_valid",
    "imu_features",
    "gnss_features",
    "modality_mask",
)

OUTPUT_NAMES: tuple[str, ...] = (
    "heatmap",
    "center_offset",
    "center_z",
    "log_size",
    "yaw_sin_cos",
    "velocity",
    "attribute_logits",
    "normality_score",
)

NUM_MODALITIES = len(MODALITIES)

# Default fixed sizes of the inputs (ModelConfig and PreprocessConfig both start from these, and a
# model's own config, stored with it, is what preprocessing must use at run time).
# Ego frame (base_link: origin on the road under the rear axle). z from 2 m below the road
# (downhill roads, ditches) to 6 m above it: a 4-5 m bus or trailer and its points fit with 1 m to
# spare for an uphill road. (A LiDAR-frame range, -5..3 m, cut every box above 3 m in this frame.)
DEFAULT_POINT_CLOUD_RANGE_M: tuple[float, float, float, float, float, float] = (
    -51.2, -51.2, -2.0, 51.2, 51.2, 6.0,
)  # fmt: skip
DEFAULT_MAX_LIDAR_POINTS = 32768  # one nuScenes sweep (~34k points, fewer inside the range)
DEFAULT_MAX_RADAR_POINTS = 1024
DEFAULT_IMAGE_SIZE_HW: tuple[int, int] = (128, 224)

# IMU window statistics over the samples since the previous frame (ego frame).
IMU_FEATURES: tuple[str, ...] = (
    "gyro_mean_x",
    "gyro_mean_y",
    "gyro_mean_z",
    "gyro_std_x",
    "gyro_std_y",
    "gyro_std_z",
    "accel_mean_x",
    "accel_mean_y",
    "accel_mean_z",
    "accel_std_x",
    "accel_std_y",
    "accel_std_z",
)
IMU_FEATURE_DIM = len(IMU_FEATURES)

# GNSS-derived ego state: ground speed and course from the fix's velocity, fix quality.
GNSS_FEATURES: tuple[str, ...] = (
    "speed_mps",
    "velocity_east_mps",
    "velocity_north_mps",
    "heading_sin",
    "heading_cos",
    "fix_age_s",
)
GNSS_FEATURE_DIM = len(GNSS_FEATURES)

# nuScenes attributes; ATTRIBUTES_BY_CLASS says which apply to which class ("" where none).
ATTRIBUTES: tuple[str, ...] = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.moving",
    "pedestrian.standing",
    "pedestrian.sitting_lying_down",
)
ATTRIBUTES_BY_CLASS: dict[str, tuple[str, ...]] = {
    "car": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "truck": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "bus": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "trailer": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "construction_vehicle": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "pedestrian": ("pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"),
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "traffic_cone": (),
    "barrier": (),
}

# ImageNet statistics, RGB in [0, 1].
CAMERA_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
CAMERA_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
