"""GPU pre-processing with CuPy: point packing, pillar cells and camera normalization, bit for
bit what the numpy path (core.preprocess) and the model's PillarScatter compute.

Every function takes `xp`, the array module: `cupy` on the GPU. `numpy` runs the very same code
on the CPU, which is how its equality with core.preprocess is tested on machines without a
GPU; on a CUDA machine the tests compare cupy's results with numpy's. Why the results are
identical, not merely close:
  - range comparisons happen in the points' dtype (the bounds become numpy scalars of that
    dtype, which is what numpy does with a Python float against a float32 array);
  - normalization is `x * scale` then `+ shift` as two array operations, so each is its own
    kernel and no fused multiply-add rounds once where numpy rounds twice;
  - pillar cells are `floor((x - x_min) / cell)` with float32 operands and IEEE division (CuPy
    compiles without fast math), indices and counts are integers (counts below 2**24 are exact
    in float32).
JPEG decoding and resizing stay on the CPU (OpenCV, core.image / core.preprocess): the GPU
receives uint8 pixels, a quarter of the float32 bytes, and normalizes them there.

`GpuPreprocessor(config)(frame)` returns exactly `Preprocessor(config)(frame)` (host numpy);
`device_inputs(frame)` keeps the arrays on the GPU (cupy) for a consumer that reads device
memory. `pillar_cells` mirrors the first stage of the graph's PillarScatter (cell of each point,
points per pillar): the exported graph pillarizes its own inputs, so this serves tools that
need occupancy without running the model.

Install CuPy with the package's `gpu` extra (`pip install .[gpu]`: cupy-cuda12x and
onnxruntime-gpu).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import BackendUnavailableError
from peftdml_ros.core.preprocess import (
    Inputs,
    PreprocessConfig,
    Preprocessor,
    check_clouds,
    gnss_features,
    imu_features,
    zero_absent,
)
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    MODALITIES,
    RADAR_POINT_FIELDS,
    CameraImage,
    Frame,
    Modality,
)

RangeM = tuple[float, float, float, float, float, float]

# The numpy path's constants, computed by the same expressions (core.preprocess):
# (x / 255 - mean) / std = x * _SCALE + _SHIFT, float32.
_MEAN = np.asarray(model_io.CAMERA_MEAN, np.float32)
_STD = np.asarray(model_io.CAMERA_STD, np.float32)
_SCALE = (1.0 / (255.0 * _STD)).astype(np.float32)
_SHIFT = (-_MEAN / _STD).astype(np.float32)


def cuda_device_count(cupy: Any) -> int:
    """CUDA devices CuPy can use (0 without a driver or GPU, never an exception)."""
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # CuPy raises its own CUDARuntimeError kinds when no driver is present
        return 0


def cupy_module() -> Any:
    """The `cupy` module when it imports and sees a CUDA device, else BackendUnavailableError."""
    try:
        import cupy
    except ImportError as error:
        raise BackendUnavailableError(
            f"CuPy is not installed ({error}): install the gpu extra (`pip install .[gpu]`, "
            "cupy-cuda12x) on a CUDA machine, or use the numpy Preprocessor"
        ) from error
    if cuda_device_count(cupy) < 1:
        raise BackendUnavailableError(
            "CuPy imports but sees no CUDA device: use the numpy Preprocessor on this machine"
        )
    return cupy


def asnumpy(xp: Any, array: Any) -> npt.NDArray[Any]:
    """A host copy of `array` (numpy arrays are returned as they are)."""
    return array if xp is np else xp.asnumpy(array)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------- points


def in_range_mask(xp: Any, points: Any, range_m: RangeM) -> Any:
    """[N] True where x, y, z lie in the half-open range (NaN rows: False), compared in the
    points' dtype as core.preprocess.in_range_mask compares them."""
    x0, y0, z0, x1, y1, z1 = (points.dtype.type(v) for v in range_m)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1) & (z >= z0) & (z < z1)


def subsample_indices(xp: Any, count: int, maximum: int) -> Any:
    """Evenly spaced indices choosing min(count, maximum) of `count` rows (core.preprocess)."""
    if count <= maximum:
        return xp.arange(count, dtype=xp.int64)
    return (xp.arange(maximum, dtype=xp.int64) * count) // maximum


def pack_points(
    xp: Any, clouds: Sequence[Any], width: int, range_m: RangeM, maximum: int
) -> tuple[Any, Any]:
    """Concatenate [N_i, width] point arrays (host or device), crop to the range, subsample
    evenly to `maximum` and pad: ([maximum, width] float32, [maximum] float32 valid), as
    core.preprocess.pack_points."""
    out = xp.zeros((maximum, width), dtype=xp.float32)
    valid = xp.zeros((maximum,), dtype=xp.float32)
    if not clouds:
        return out, valid
    points = xp.concatenate([xp.asarray(c) for c in clouds], axis=0)
    chosen = xp.flatnonzero(in_range_mask(xp, points, range_m))
    chosen = chosen[subsample_indices(xp, int(chosen.shape[0]), maximum)]
    count = int(chosen.shape[0])
    out[:count] = points[chosen]
    valid[:count] = 1.0
    return out, valid


def pillar_cells(
    xp: Any,
    points: Any,
    valid: Any,
    range_m: RangeM,
    cell_m: float,
    grid_hw: tuple[int, int],
) -> tuple[Any, Any, Any]:
    """The first stage of the graph's PillarScatter on model_io points [B, P, F] and valid
    [B, P]: (cell [B, P] int64 = row * W + col, 0 where not inside; inside [B, P] bool;
    counts [B, H * W] float32 points per pillar). Row i covers y in [y_min + i * cell, ...),
    column j x in [x_min + j * cell, ...); z must lie in [z_min, z_max)."""
    height, width = grid_hw
    f32 = np.float32
    x0, y0, z0, _, _, z1 = (f32(v) for v in range_m)
    cell = f32(cell_m)
    points = xp.asarray(points, dtype=xp.float32)
    valid = xp.asarray(valid, dtype=xp.float32)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    col = xp.floor((x - x0) / cell)
    row = xp.floor((y - y0) / cell)
    inside = (
        (valid > f32(0.5))
        & (col >= 0)
        & (col < width)
        & (row >= 0)
        & (row < height)
        & (z >= z0)
        & (z < z1)
    )
    # Outside cells (NaN included) become 0 before the cast: float -> int of NaN is undefined.
    index = xp.where(inside, row * f32(width) + col, f32(0)).astype(xp.int64)
    batch = points.shape[0]
    counts = xp.zeros((batch, height * width), dtype=xp.float32)
    for b in range(batch):  # bincount is 1-D; a batch is a handful of frames
        counts[b] = xp.bincount(index[b][inside[b]], minlength=height * width).astype(xp.float32)
    return index, inside, counts


# ---------------------------------------------------------------------------------- images


def normalize_images(xp: Any, pixels: Any, valid: Any) -> Any:
    """uint8 RGB [N, H, W, 3] (host or device) -> normalized float32 [N, 3, H, W], zero where
    valid is 0: the numpy path's arithmetic (x * _SCALE, then + _SHIFT, per channel)."""
    images = xp.asarray(pixels).astype(xp.float32)
    images = images * xp.asarray(_SCALE)  # two operations, two roundings, as in numpy
    images = images + xp.asarray(_SHIFT)
    images = xp.ascontiguousarray(images.transpose(0, 3, 1, 2))
    images[xp.asarray(valid) == 0] = 0.0
    return images


# ----------------------------------------------------------------------------- the frame path


class GpuPreprocessor:
    """Frames -> engine inputs with the point and image work on the GPU; the same values as
    core.preprocess.Preprocessor for the same config (batch dimension 1).

    xp: the array module, cupy by default (BackendUnavailableError where it cannot run);
    numpy runs the same code on the CPU.
    """

    def __init__(self, config: PreprocessConfig | None = None, xp: Any = None) -> None:
        self.config = config or PreprocessConfig()
        self.xp = cupy_module() if xp is None else xp
        self._host = Preprocessor(self.config)

    def __call__(self, frame: Frame) -> Inputs:
        """Host (numpy) inputs of one frame, shapes [1, ...], float32: Preprocessor's result."""
        inputs = self._inputs(frame)
        return {name: asnumpy(self.xp, inputs[name])[None] for name in model_io.INPUT_NAMES}

    def device_inputs(self, frame: Frame) -> dict[str, Any]:
        """The same inputs as arrays of `xp` (device memory for cupy), shapes [1, ...]."""
        inputs = self._inputs(frame)
        return {name: self.xp.asarray(inputs[name])[None] for name in model_io.INPUT_NAMES}

    def _inputs(self, frame: Frame) -> dict[str, Any]:
        cfg, xp = self.config, self.xp
        check_clouds(frame.lidar, LIDAR_POINT_FIELDS)
        check_clouds(frame.radar, RADAR_POINT_FIELDS)
        lidar, lidar_valid = pack_points(
            xp,
            [c.points for c in frame.lidar],
            len(LIDAR_POINT_FIELDS),
            cfg.point_cloud_range_m,
            cfg.max_lidar_points,
        )
        radar, radar_valid = pack_points(
            xp,
            [c.points for c in frame.radar],
            len(RADAR_POINT_FIELDS),
            cfg.point_cloud_range_m,
            cfg.max_radar_points,
        )
        images, intrinsics, cam_to_ego, cam_valid = self._cameras(frame.cameras)
        present = frame.modality_mask()
        has_content = {
            Modality.LIDAR: bool(lidar_valid[0] > 0),
            Modality.RADAR: bool(radar_valid[0] > 0),
            Modality.CAMERA: bool(cam_valid.any()),
            Modality.IMU: len(frame.imu) > 0,
            Modality.GNSS: frame.gnss is not None,
        }
        mask = np.array(
            [present[i] and has_content[m] for i, m in enumerate(MODALITIES)], dtype=np.float32
        )
        inputs: dict[str, Any] = {
            "lidar_points": lidar,
            "lidar_valid": lidar_valid,
            "radar_points": radar,
            "radar_valid": radar_valid,
            "camera_images": images,
            "camera_intrinsics": intrinsics,
            "camera_to_ego": cam_to_ego,
            "camera_valid": cam_valid,
            "imu_features": imu_features(frame),
            "gnss_features": gnss_features(frame, cfg.min_course_speed_mps),
            "modality_mask": mask,
        }
        # Device arrays are zeroed with scalars, the small calibration arrays stay on the host.
        zero_absent(inputs, mask)
        return inputs

    def _cameras(self, cameras: Sequence[CameraImage]) -> tuple[Any, Any, Any, Any]:
        """(device images [N, 3, H, W], host K [N, 3, 3], camera_to_ego [N, 4, 4], valid [N])."""
        # Placing and resizing is the CPU Preprocessor's own code; only the normalize runs here.
        resized, intrinsics, cam_to_ego, valid = self._host.place_cameras(cameras)
        images = normalize_images(self.xp, resized, valid)
        return images, intrinsics, cam_to_ego, valid
