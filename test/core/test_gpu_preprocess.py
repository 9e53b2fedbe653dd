"""GPU pre-processing (core.gpu_preprocess): bit-equality with the numpy path.

With xp=numpy the module's code runs here and must equal core.preprocess and the model's
PillarScatter exactly; on a CUDA machine with CuPy the same functions run on the GPU and must
equal numpy exactly (no tolerance: the module is written so that rounding matches).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from peftdml_ros.core import gpu_preprocess as gp
from peftdml_ros.core import preprocess
from peftdml_ros.core.errors import InputDataError
from peftdml_ros.core.model import build_model, tiny_config
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor
from peftdml_ros.core.types import LIDAR_POINT_FIELDS, RADAR_POINT_FIELDS, Frame, Modality
from peftdml_ros.tools.export import random_frame

MODEL = tiny_config()
CONFIG = PreprocessConfig.from_model_config(MODEL)
RANGE = CONFIG.point_cloud_range_m


def _edge_points(rng: np.random.Generator, count: int, width: int) -> npt.NDArray[np.float32]:
    """Points on and next to every bound of the range and of the tiny model's cells (the values
    where a comparison in another precision or a rounding would flip), plus random ones."""
    x0, y0, z0, x1, y1, z1 = RANGE
    cell = MODEL.cell_m
    bounds = [x0, x1, y0, y1, x0 + cell, x1 - cell, y0 + cell, y1 - cell]
    edges_xy = np.array([*bounds, 0.0, cell, -cell, 3 * cell], np.float32)
    edges_xy = np.concatenate([edges_xy, np.nextafter(edges_xy, np.float32(-np.inf))])
    edges_xy = np.concatenate([edges_xy, np.nextafter(edges_xy, np.float32(np.inf))])
    edges_z = np.array([z0, z1, 0.0], np.float32)
    edges_z = np.concatenate([edges_z, np.nextafter(edges_z, np.float32(np.inf))])
    points = rng.uniform(-1.2 * x1, 1.2 * x1, (count, width)).astype(np.float32)
    points[:, 2] = rng.uniform(z0 - 1.0, z1 + 1.0, count)
    half = count // 2
    points[:half, 0] = rng.choice(edges_xy, half)
    points[:half, 1] = rng.choice(edges_xy, half)
    points[: half // 2, 2] = rng.choice(edges_z, half // 2)
    points[-3:, :3] = np.nan  # malformed rows are cropped like any other outside point
    return points


def _frame(seed: int, **changes: Any) -> Frame:
    frame = random_frame(MODEL, seed=seed)
    rng = np.random.default_rng(seed)
    lidar = dataclasses.replace(
        frame.lidar[0], points=_edge_points(rng, 3 * MODEL.max_lidar_points, 5)
    )
    return dataclasses.replace(frame, lidar=(lidar,), **changes)


def _frames() -> list[Frame]:
    full = _frame(0)
    absent = {m: m is not Modality.LIDAR for m in Modality}
    return [
        full,
        _frame(1),
        _frame(2, modality_present=absent),  # LiDAR flagged absent: zeroed, masked
        _frame(3, cameras=full.cameras[1:], imu=(), gnss=None),  # one camera, no IMU/GNSS
        _frame(4, radar=(), cameras=()),  # no radar, no camera
        dataclasses.replace(full, lidar=()),  # LiDAR present but no points
    ]


def _assert_inputs_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert tuple(got) == tuple(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ---------------------------------------------------------------- numpy: the mirror itself


def test_the_mirror_equals_the_preprocessor_on_every_kind_of_frame() -> None:
    numpy_path = Preprocessor(CONFIG)
    mirror = gp.GpuPreprocessor(CONFIG, xp=np)
    for frame in _frames():
        _assert_inputs_equal(mirror(frame), numpy_path(frame))


def test_packing_equals_core_preprocess_at_the_bounds() -> None:
    rng = np.random.default_rng(7)
    for count, maximum in ((40, 64), (500, 64), (2000, 512)):
        clouds = [_edge_points(rng, count, 7), _edge_points(rng, count // 3 + 1, 7)]
        as_clouds = [
            preprocess.PointCloud(f"RADAR_{i}", 0, c, RADAR_POINT_FIELDS)
            for i, c in enumerate(clouds)
        ]
        want = preprocess.pack_points(as_clouds, RADAR_POINT_FIELDS, RANGE, maximum)
        got = gp.pack_points(np, clouds, 7, RANGE, maximum)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    empty = gp.pack_points(np, [], 5, RANGE, 8)
    assert not empty[0].any() and not empty[1].any()


def test_a_cloud_with_the_wrong_fields_is_refused() -> None:
    frame = _frame(0)
    bad = dataclasses.replace(frame.lidar[0], fields=RADAR_POINT_FIELDS)
    with pytest.raises(InputDataError, match="expected \\[N, 5\\]"):
        gp.GpuPreprocessor(CONFIG, xp=np)(dataclasses.replace(frame, lidar=(bad,)))


def _torch_counts(points: npt.NDArray[np.float32], valid: npt.NDArray[np.float32]) -> Any:
    """Points per pillar as the model's own PillarScatter computes them (its last channel is
    log(1 + count)); counts are integers, so rounding expm1 recovers them exactly."""
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    with torch.no_grad():
        pillars = model.lidar.pillars(torch.from_numpy(points), torch.from_numpy(valid))
    log_counts = pillars[:, -1].reshape(points.shape[0], -1).double()
    return np.rint(torch.expm1(log_counts).numpy()).astype(np.float32)


def test_pillar_cells_equal_the_models_pillar_scatter() -> None:
    rng = np.random.default_rng(11)
    batch, count = 3, MODEL.max_lidar_points
    points = np.stack([_edge_points(rng, count, 5) for _ in range(batch)])
    points[np.isnan(points)] = 0.0  # the graph's inputs never hold NaN (padding is zeros)
    valid = (rng.uniform(size=(batch, count)) < 0.8).astype(np.float32)
    index, inside, counts = gp.pillar_cells(np, points, valid, RANGE, MODEL.cell_m, MODEL.grid_hw)
    h, w = MODEL.grid_hw
    assert index.dtype == np.int64 and counts.shape == (batch, h * w)
    assert inside.sum() > 0 and (~inside & (valid > 0)).sum() > 0  # both kinds of points occur
    np.testing.assert_array_equal(counts, _torch_counts(points, valid))
    np.testing.assert_array_equal(counts.sum(axis=1), inside.sum(axis=1))
    assert (index[~inside] == 0).all() and (index < h * w).all() and (index >= 0).all()
    # The cell of a point: row from y, column from x (model_io's BEV grid convention).
    x0, y0 = RANGE[0], RANGE[1]
    b, p = np.argwhere(inside)[0]
    col = int(np.floor((points[b, p, 0] - np.float32(x0)) / np.float32(MODEL.cell_m)))
    row = int(np.floor((points[b, p, 1] - np.float32(y0)) / np.float32(MODEL.cell_m)))
    assert index[b, p] == row * w + col


def test_normalization_equals_the_preprocessor() -> None:
    rng = np.random.default_rng(3)
    h, w = CONFIG.image_size_hw
    pixels = rng.integers(0, 256, (len(CONFIG.camera_names), h, w, 3), dtype=np.uint8)
    pixels[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [128, 64, 32]]
    valid = np.array([1.0, 0.0], np.float32)
    frame = random_frame(MODEL, seed=0, image_scale=1.0)  # images at the input size: no resize
    cameras = tuple(
        dataclasses.replace(c, image=pixels[i]) for i, c in enumerate(frame.cameras[:1])
    )
    want = Preprocessor(CONFIG)(dataclasses.replace(frame, cameras=cameras))["camera_images"][0]
    got = gp.normalize_images(np, pixels, valid)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_without_cupy_or_a_gpu_the_module_says_what_to_do() -> None:
    try:
        import cupy
    except ImportError:
        with pytest.raises(gp.BackendUnavailableError, match=r"pip install \.\[gpu\]"):
            gp.GpuPreprocessor(CONFIG)
        return
    if gp.cuda_device_count(cupy) < 1:
        with pytest.raises(gp.BackendUnavailableError, match="no CUDA device"):
            gp.GpuPreprocessor(CONFIG)
    else:
        assert gp.GpuPreprocessor(CONFIG).xp is cupy


# -------------------------------------------------------------- CuPy on a CUDA GPU vs numpy


@pytest.fixture(scope="module")
def cupy() -> Any:
    module = pytest.importorskip("cupy")
    if gp.cuda_device_count(module) < 1:
        pytest.skip("CuPy imports but no CUDA device is visible")
    return module


@pytest.mark.gpu
def test_gpu_preprocessor_equals_numpy_bit_for_bit(cupy: Any) -> None:
    numpy_path = Preprocessor(CONFIG)
    on_gpu = gp.GpuPreprocessor(CONFIG)
    assert on_gpu.xp is cupy
    for frame in _frames():
        want = numpy_path(frame)
        _assert_inputs_equal(on_gpu(frame), want)
        device = on_gpu.device_inputs(frame)
        assert all(isinstance(v, cupy.ndarray) for v in device.values())
        _assert_inputs_equal({k: cupy.asnumpy(v) for k, v in device.items()}, want)


@pytest.mark.gpu
def test_gpu_packing_pillars_and_normalization_equal_numpy(cupy: Any) -> None:
    rng = np.random.default_rng(5)
    for maximum in (64, 512, 4096):
        clouds = [_edge_points(rng, 3000, 5), _edge_points(rng, 77, 5)]
        want = gp.pack_points(np, clouds, 5, RANGE, maximum)
        got = gp.pack_points(cupy, [cupy.asarray(c) for c in clouds], 5, RANGE, maximum)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(cupy.asnumpy(g), w)
    points = np.stack([_edge_points(rng, 2048, 5) for _ in range(2)])
    valid = (rng.uniform(size=points.shape[:2]) < 0.9).astype(np.float32)
    args = (RANGE, MODEL.cell_m, MODEL.grid_hw)
    want = gp.pillar_cells(np, points, valid, *args)
    got = gp.pillar_cells(cupy, cupy.asarray(points), cupy.asarray(valid), *args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(g), w)
    pixels = rng.integers(0, 256, (6, 900 // 4, 1600 // 4, 3), dtype=np.uint8)
    valid_cams = np.array([1, 1, 0, 1, 1, 1], np.float32)
    np.testing.assert_array_equal(
        cupy.asnumpy(gp.normalize_images(cupy, cupy.asarray(pixels), valid_cams)),
        gp.normalize_images(np, pixels, valid_cams),
    )
    assert LIDAR_POINT_FIELDS[:3] == ("x", "y", "z")
