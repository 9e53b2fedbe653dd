"""Preprocessing: exact model_io shapes and dtypes, masks, determinism, calibration."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import ConfigError, InputDataError
from peftdml_ros.core.preprocess import (
    NUSCENES_CAMERAS,
    PreprocessConfig,
    Preprocessor,
    check_inputs,
    collate,
    decode_camera_images,
    encode_camera_images,
    input_shapes,
    kept_radar_index,
    pack_points,
    pack_points_with_sources,
    radar_sensor_index,
    remove_modalities,
    remove_sensors,
    scale_intrinsics,
    subsample_indices,
)
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    RADAR_POINT_FIELDS,
    CameraImage,
    Frame,
    GnssFix,
    ImuSample,
    Modality,
    PointCloud,
)

CONFIG = PreprocessConfig(max_lidar_points=512, max_radar_points=64, image_size_hw=(32, 48))
RANGE = CONFIG.point_cloud_range_m
K_SRC = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 44.5], [0.0, 0.0, 1.0]], np.float32)
# Optical frame (z forward, x right, y down) -> ego (x forward, y left, z up), 1.5 m up.
CAM_TO_EGO = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]], np.float32)


def _cloud(rng: np.random.Generator, n: int, fields: tuple[str, ...], name: str) -> PointCloud:
    points = rng.uniform(-40.0, 40.0, (n, len(fields))).astype(np.float32)
    points[:, 2] = rng.uniform(-3.0, 2.0, n)
    return PointCloud(sensor=name, stamp_ns=0, points=points, fields=fields)


def _camera(name: str, rng: np.random.Generator) -> CameraImage:
    image = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    return CameraImage(name, 0, image, K_SRC.copy(), CAM_TO_EGO.copy())


def make_frame(
    cameras: tuple[str, ...] = NUSCENES_CAMERAS,
    lidar_points: int = 2000,
    radar: bool = True,
    imu: bool = True,
    gnss: bool = True,
    seed: int = 0,
) -> Frame:
    rng = np.random.default_rng(seed)
    lidar = (_cloud(rng, lidar_points, LIDAR_POINT_FIELDS, "LIDAR_TOP"),) if lidar_points else ()
    radars = tuple(_cloud(rng, 40, RADAR_POINT_FIELDS, f"RADAR_{i}") for i in range(5))
    frame = Frame(
        stamp_ns=1_000_000_000,
        trigger_sensor="LIDAR_TOP",
        lidar=lidar,
        radar=radars if radar else (),
        cameras=tuple(_camera(name, rng) for name in cameras),
        imu=tuple(ImuSample(i, (0.1 * i, 0.0, 0.2), (1.0, 0.0, 9.81)) for i in range(4))
        if imu
        else (),
        gnss=GnssFix(900_000_000, 42.0, -71.0, 10.0, (3.0, 4.0)) if gnss else None,
        modality_present={
            Modality.LIDAR: bool(lidar_points),
            Modality.RADAR: radar,
            Modality.CAMERA: bool(cameras),
            Modality.IMU: imu,
            Modality.GNSS: gnss,
        },
    )
    return frame


def _assert_contract(inputs: dict[str, npt.NDArray[np.float32]], batch: int = 1) -> None:
    assert tuple(inputs) == model_io.INPUT_NAMES
    for name, shape in input_shapes(CONFIG, batch).items():
        assert inputs[name].shape == shape, name
        assert inputs[name].dtype == np.float32, name
        assert np.isfinite(inputs[name]).all(), name
    check_inputs(inputs, CONFIG)


def test_full_frame_matches_model_io_exactly() -> None:
    inputs = Preprocessor(CONFIG)(make_frame())
    _assert_contract(inputs)
    np.testing.assert_array_equal(inputs["modality_mask"], np.ones((1, 5), np.float32))
    np.testing.assert_array_equal(inputs["camera_valid"], np.ones((1, 6), np.float32))
    assert inputs["lidar_valid"].sum() == CONFIG.max_lidar_points  # 2000 in range > 512
    assert 0 < inputs["radar_valid"].sum() <= CONFIG.max_radar_points
    # Valid rows come first, padding rows are exact zeros.
    n_radar = int(inputs["radar_valid"].sum())
    assert (inputs["radar_valid"][0, :n_radar] == 1).all()
    assert not inputs["radar_points"][0, n_radar:].any()


@pytest.mark.parametrize(
    ("kwargs", "absent"),
    [
        ({"lidar_points": 0}, Modality.LIDAR),
        ({"radar": False}, Modality.RADAR),
        ({"cameras": ()}, Modality.CAMERA),
        ({"imu": False}, Modality.IMU),
        ({"gnss": False}, Modality.GNSS),
    ],
)
def test_missing_modality_is_masked_and_zeroed(
    kwargs: dict[str, object], absent: Modality
) -> None:
    inputs = Preprocessor(CONFIG)(make_frame(**kwargs))  # type: ignore[arg-type]
    _assert_contract(inputs)
    expected = np.array([[m is not absent for m in Modality]], np.float32)
    np.testing.assert_array_equal(inputs["modality_mask"], expected)
    names = {
        Modality.LIDAR: ("lidar_points", "lidar_valid"),
        Modality.RADAR: ("radar_points", "radar_valid"),
        Modality.CAMERA: ("camera_images", "camera_valid"),
        Modality.IMU: ("imu_features",),
        Modality.GNSS: ("gnss_features",),
    }[absent]
    for name in names:
        assert not inputs[name].any(), name


def test_missing_cameras_keep_their_slot_invalid() -> None:
    present = ("CAM_BACK", "CAM_FRONT")  # out of order on purpose
    inputs = Preprocessor(CONFIG)(make_frame(cameras=present))
    _assert_contract(inputs)
    valid = [name in present for name in NUSCENES_CAMERAS]
    np.testing.assert_array_equal(inputs["camera_valid"][0], np.array(valid, np.float32))
    for slot, ok in enumerate(valid):
        assert bool(inputs["camera_images"][0, slot].any()) == ok
        if not ok:
            np.testing.assert_array_equal(inputs["camera_intrinsics"][0, slot], np.eye(3))
            np.testing.assert_array_equal(inputs["camera_to_ego"][0, slot], np.eye(4))
    assert inputs["modality_mask"][0, 2] == 1.0


def test_present_lidar_without_points_in_range_counts_as_absent() -> None:
    frame = make_frame()
    far = frame.lidar[0].points.copy()
    far[:, 0] = 500.0
    frame = Frame(
        stamp_ns=frame.stamp_ns,
        trigger_sensor="LIDAR_TOP",
        lidar=(PointCloud("LIDAR_TOP", 0, far, LIDAR_POINT_FIELDS),),
        radar=frame.radar,
        modality_present={Modality.LIDAR: True, Modality.RADAR: True},
    )
    inputs = Preprocessor(CONFIG)(frame)
    np.testing.assert_array_equal(inputs["modality_mask"][0], [0, 1, 0, 0, 0])


def test_data_of_a_modality_flagged_absent_is_zeroed() -> None:
    frame = make_frame()
    flags = dict(frame.modality_present)
    flags[Modality.RADAR] = False
    frame = Frame(**{**frame.__dict__, "modality_present": flags})
    inputs = Preprocessor(CONFIG)(frame)
    assert inputs["modality_mask"][0, 1] == 0.0
    assert not inputs["radar_points"].any() and not inputs["radar_valid"].any()


def test_crop_bounds_are_half_open_and_drop_nan() -> None:
    x0, _, z0, x1, y1, z1 = RANGE
    points = np.array(
        [
            [x0, 0, 0, 1, 0],  # on the lower bound: kept
            [x1, 0, 0, 2, 0],  # on the upper bound: dropped
            [0, y1 - 1e-3, z1 - 1e-3, 3, 0],  # just inside: kept
            [0, 0, z0 - 1e-3, 4, 0],  # below: dropped
            [np.nan, 0, 0, 5, 0],  # malformed: dropped
        ],
        np.float32,
    )
    cloud = PointCloud("L", 0, points, LIDAR_POINT_FIELDS)
    packed, valid = pack_points([cloud], LIDAR_POINT_FIELDS, RANGE, 8)
    np.testing.assert_array_equal(valid, [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(packed[:2, 3], [1, 3])


def test_subsampling_is_deterministic_and_even() -> None:
    frame = make_frame(lidar_points=5000)
    a = Preprocessor(CONFIG)(frame)
    b = Preprocessor(CONFIG)(frame)
    for name in model_io.INPUT_NAMES:
        np.testing.assert_array_equal(a[name], b[name])
    idx = subsample_indices(1000, 400)
    assert idx.shape == (400,) and idx[0] == 0 and idx[-1] < 1000
    assert np.all(np.diff(idx) >= 2) and np.all(np.diff(idx) <= 3)
    np.testing.assert_array_equal(subsample_indices(5, 400), np.arange(5))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 300), maximum=st.integers(1, 100), seed=st.integers(0, 1000))
def test_pack_points_keeps_min_of_in_range_and_maximum(n: int, maximum: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-80, 80, (n, 7)).astype(np.float32)
    points[:, 2] = rng.uniform(-6, 4, n)
    packed, valid = pack_points(
        [PointCloud("R", 0, points, RADAR_POINT_FIELDS)], RADAR_POINT_FIELDS, RANGE, maximum
    )
    x0, y0, z0, x1, y1, z1 = RANGE
    inside = points[
        (points[:, 0] >= x0)
        & (points[:, 0] < x1)
        & (points[:, 1] >= y0)
        & (points[:, 1] < y1)
        & (points[:, 2] >= z0)
        & (points[:, 2] < z1)
    ]
    count = min(len(inside), maximum)
    assert valid.sum() == count
    np.testing.assert_array_equal(packed[:count], inside[subsample_indices(len(inside), maximum)])


def _project(
    k: npt.NDArray[np.float32], point_ego: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    ego_to_cam = np.linalg.inv(CAM_TO_EGO.astype(np.float64))
    p = ego_to_cam @ np.append(point_ego, 1.0)
    uvw = k.astype(np.float64) @ p[:3]
    return np.asarray(uvw[:2] / uvw[2], np.float64)


def test_scaled_intrinsics_project_onto_the_same_image_content() -> None:
    # A bright 9x9 blob where a known ego point projects in the 160x90 source image; after the
    # resize to 48x32 its intensity centroid must sit where the scaled K projects the point.
    point_ego = np.array([10.0, -1.2, 1.0])
    u, v = _project(K_SRC, point_ego)
    image = np.zeros((90, 160, 3), np.uint8)
    cv2.circle(image, (round(u), round(v)), 4, (255, 255, 255), -1)
    # Use the exact projection for the reference: centroid of the source blob.
    ys, xs = np.nonzero(image[:, :, 0])
    u_src, v_src = xs.mean(), ys.mean()
    frame = Frame(
        0,
        "CAM_FRONT",
        cameras=(CameraImage("CAM_FRONT", 0, image, K_SRC, CAM_TO_EGO),),
        modality_present={Modality.CAMERA: True},
    )
    inputs = Preprocessor(CONFIG)(frame)
    k_new = inputs["camera_intrinsics"][0, 0]
    gray = inputs["camera_images"][0, 0, 0] * model_io.CAMERA_STD[0] + model_io.CAMERA_MEAN[0]
    weights = np.clip(gray, 0, None)
    rows, cols = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    u_new, v_new = (weights * cols).sum() / weights.sum(), (weights * rows).sum() / weights.sum()
    # Project the blob's source centroid through the same camera with the new K.
    ray = np.linalg.inv(K_SRC.astype(np.float64)) @ np.array([u_src, v_src, 1.0])
    expected = k_new.astype(np.float64) @ ray
    assert abs(u_new - expected[0] / expected[2]) < 0.1
    assert abs(v_new - expected[1] / expected[2]) < 0.1
    # And the known ego point: the same pixel mapping as the resize (half-pixel centers).
    sx, sy = 48 / 160, 32 / 90
    np.testing.assert_allclose(
        _project(k_new, point_ego), [(u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5], atol=1e-4
    )


def test_scale_intrinsics_identity_at_scale_one() -> None:
    np.testing.assert_allclose(scale_intrinsics(K_SRC, 1.0, 1.0), K_SRC)


def test_imu_and_gnss_features() -> None:
    inputs = Preprocessor(CONFIG)(make_frame())
    imu = inputs["imu_features"][0]
    gyro_x = np.array([0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(imu[[0, 3]], [gyro_x.mean(), gyro_x.std()], rtol=1e-6)
    np.testing.assert_allclose(imu[[2, 5, 6, 8, 9]], [0.2, 0.0, 1.0, 9.81, 0.0], atol=1e-6)
    gnss = inputs["gnss_features"][0]
    course = math.atan2(4.0, 3.0)  # no heading in the fix: course of the velocity
    np.testing.assert_allclose(
        gnss, [5.0, 3.0, 4.0, math.sin(course), math.cos(course), 0.1], rtol=1e-6
    )


def test_gnss_heading_from_fix_and_no_course_when_slow() -> None:
    frame = make_frame()
    fixed = Frame(**{**frame.__dict__, "gnss": GnssFix(frame.stamp_ns, 0, 0, 0, (0.1, 0.0), 1.0)})
    gnss = Preprocessor(CONFIG)(fixed)["gnss_features"][0]
    np.testing.assert_allclose(gnss[3:], [math.sin(1.0), math.cos(1.0), 0.0], rtol=1e-6)
    slow = Frame(**{**frame.__dict__, "gnss": GnssFix(frame.stamp_ns, 0, 0, 0, (0.1, 0.0))})
    np.testing.assert_array_equal(Preprocessor(CONFIG)(slow)["gnss_features"][0, 3:5], [0, 0])


def test_unknown_camera_dropped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    pre = Preprocessor(CONFIG)
    frame = make_frame(cameras=("CAM_FRONT", "CAM_ROOF"))
    with caplog.at_level(logging.WARNING):
        pre(frame)
        inputs = pre(frame)
    assert sum("CAM_ROOF" in r.getMessage() for r in caplog.records) == 1
    assert inputs["camera_valid"].sum() == 1


def test_bad_inputs_raise_named_errors() -> None:
    rng = np.random.default_rng(0)
    bad = PointCloud("L", 0, np.zeros((3, 4), np.float32), LIDAR_POINT_FIELDS)
    with pytest.raises(InputDataError, match="expected \\[N, 5\\]"):
        Preprocessor(CONFIG)(Frame(0, "L", lidar=(bad,)))
    twice = (_camera("CAM_FRONT", rng), _camera("CAM_FRONT", rng))
    with pytest.raises(InputDataError, match="twice"):
        Preprocessor(CONFIG)(Frame(0, "C", cameras=twice))
    gray = CameraImage("CAM_FRONT", 0, np.zeros((9, 9), np.uint8), K_SRC, CAM_TO_EGO)
    with pytest.raises(InputDataError, match="uint8"):
        Preprocessor(CONFIG)(Frame(0, "C", cameras=(gray,)))
    with pytest.raises(ConfigError, match="min below its max"):
        PreprocessConfig(point_cloud_range_m=(1, 0, 0, 0, 1, 1))
    with pytest.raises(InputDataError, match="empty batch"):
        collate([])


def test_collate_stacks_frames() -> None:
    pre = Preprocessor(CONFIG)
    batch = collate([pre(make_frame(seed=1)), pre(make_frame(lidar_points=0, seed=2))])
    _assert_contract(batch, batch=2)
    np.testing.assert_array_equal(batch["modality_mask"][:, 0], [1, 0])
    with pytest.raises(InputDataError, match="engine needs float32"):
        check_inputs({**batch, "imu_features": batch["imu_features"][:1]}, CONFIG)


def test_preprocessing_imports_neither_torch_nor_ros() -> None:
    # The ROS node's callbacks and light tools use it; it must stay numpy + OpenCV only.
    code = (
        "import sys, peftdml_ros.core.preprocess; "
        "bad = [m for m in ('torch', 'rclpy', 'onnxruntime') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------- sensor and modality removal

RADARS = tuple(f"RADAR_{i}" for i in range(5))  # make_frame's radar names
# Room for every radar point of make_frame: removal equals re-preprocessing exactly only where
# the Preprocessor did not subsample the radar points (see remove_sensors).
ROOMY = PreprocessConfig(max_lidar_points=512, max_radar_points=256, image_size_hw=(32, 48))


def _without(frame: Frame, cameras: tuple[str, ...] = (), radars: tuple[str, ...] = ()) -> Frame:
    """The frame as a rig without those sensors would have produced it."""
    kept_cams = tuple(c for c in frame.cameras if c.sensor not in cameras)
    kept_radars = tuple(r for r in frame.radar if r.sensor not in radars)
    present = dict(frame.modality_present)
    present[Modality.CAMERA] = bool(kept_cams)
    present[Modality.RADAR] = bool(kept_radars)
    changes = {"cameras": kept_cams, "radar": kept_radars, "modality_present": present}
    return Frame(**{**frame.__dict__, **changes})


def _assert_same_inputs(
    a: dict[str, npt.NDArray[np.float32]], b: dict[str, npt.NDArray[np.float32]]
) -> None:
    assert tuple(a) == tuple(b) == model_io.INPUT_NAMES
    for name in model_io.INPUT_NAMES:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_pack_points_with_sources_names_the_cloud_of_every_row() -> None:
    frame = make_frame()
    packed, valid, sources = pack_points_with_sources(
        frame.radar, RADAR_POINT_FIELDS, RANGE, CONFIG.max_radar_points
    )
    plain, plain_valid = pack_points(
        frame.radar, RADAR_POINT_FIELDS, RANGE, CONFIG.max_radar_points
    )
    np.testing.assert_array_equal(packed, plain)
    np.testing.assert_array_equal(valid, plain_valid)
    count = int(valid.sum())
    assert (sources[:count] >= 0).all() and (sources[count:] == -1).all()
    assert len(set(sources[:count].tolist())) == 5  # every radar contributes
    for row, source in zip(packed[:count], sources[:count], strict=True):
        assert (frame.radar[source].points == row).all(axis=1).any()


def test_radar_sensor_index_follows_the_packed_rows_and_names() -> None:
    frame = make_frame()
    inputs = Preprocessor(CONFIG)(frame)
    index = radar_sensor_index(frame, CONFIG, RADARS)
    assert index.dtype == np.int8 and index.shape == inputs["radar_valid"].shape
    np.testing.assert_array_equal(index >= 0, inputs["radar_valid"] > 0)
    # Reversed names give the reversed indices: the index is into radar_names, not frame order.
    reverse = radar_sensor_index(frame, CONFIG, RADARS[::-1])
    valid = index >= 0
    np.testing.assert_array_equal(reverse[valid], 4 - index[valid])
    flagged_absent = Frame(
        **{**frame.__dict__, "modality_present": {**frame.modality_present, Modality.RADAR: False}}
    )
    assert (radar_sensor_index(flagged_absent, CONFIG, RADARS) == -1).all()
    with pytest.raises(InputDataError, match="not in radar_names"):
        radar_sensor_index(frame, CONFIG)  # the nuScenes names do not include RADAR_0


@pytest.mark.parametrize(
    ("cameras", "radars"),
    [
        (("CAM_FRONT",), ()),
        ((), ("RADAR_2",)),
        (("CAM_BACK", "CAM_FRONT_LEFT"), ("RADAR_0", "RADAR_4")),
        (NUSCENES_CAMERAS, ()),  # the last camera goes: camera masked absent
        ((), RADARS),  # the last radar goes: radar masked absent
    ],
)
def test_remove_sensors_equals_preprocessing_the_frame_without_them(
    cameras: tuple[str, ...], radars: tuple[str, ...]
) -> None:
    frame = make_frame(seed=3)
    pre = Preprocessor(ROOMY)
    inputs = pre(frame)
    assert 0 < inputs["radar_valid"].sum() < ROOMY.max_radar_points  # nothing subsampled
    for array in inputs.values():  # as memory-mapped cache files are: never written to
        array.setflags(write=False)
    index = radar_sensor_index(frame, ROOMY, RADARS)
    removed = remove_sensors(
        inputs, ROOMY, cameras=cameras, radars=radars, radar_index=index, radar_names=RADARS
    )
    reduced = _without(frame, cameras, radars)
    _assert_same_inputs(removed, pre(reduced))
    np.testing.assert_array_equal(
        kept_radar_index(index, inputs["radar_valid"], radars, RADARS),
        radar_sensor_index(reduced, ROOMY, RADARS),
    )
    _assert_same_inputs(inputs, pre(frame))  # the argument is left as it was


def test_remove_sensors_works_on_batches_and_checks_its_arguments() -> None:
    pre = Preprocessor(ROOMY)
    frames = [make_frame(seed=4), make_frame(seed=5, cameras=("CAM_FRONT",))]
    batch = collate([pre(f) for f in frames])
    index = np.concatenate([radar_sensor_index(f, ROOMY, RADARS) for f in frames])
    removed = remove_sensors(
        batch, ROOMY, cameras=("CAM_FRONT",), radars=("RADAR_1",), radar_index=index,
        radar_names=RADARS,
    )  # fmt: skip
    expected = collate([pre(_without(f, ("CAM_FRONT",), ("RADAR_1",))) for f in frames])
    _assert_same_inputs(removed, expected)
    assert removed["modality_mask"][1, 2] == 0.0  # the second frame had CAM_FRONT only
    with pytest.raises(ConfigError, match="radar_index"):
        remove_sensors(batch, ROOMY, radars=("RADAR_1",), radar_names=RADARS)
    with pytest.raises(ConfigError, match="unknown sensors"):
        remove_sensors(batch, ROOMY, cameras=("CAM_ROOF",))


@pytest.mark.parametrize("absent", list(Modality))
def test_remove_modalities_equals_preprocessing_without_the_modality(absent: Modality) -> None:
    frame = make_frame(seed=6)
    flags = {**frame.modality_present, absent: False}
    expected = Preprocessor(ROOMY)(Frame(**{**frame.__dict__, "modality_present": flags}))
    _assert_same_inputs(remove_modalities(Preprocessor(ROOMY)(frame), (absent,)), expected)


def test_camera_images_round_trip_through_uint8_exactly() -> None:
    inputs = Preprocessor(CONFIG)(make_frame(cameras=("CAM_FRONT", "CAM_BACK"), seed=7))
    images, valid = inputs["camera_images"], inputs["camera_valid"]
    pixels = encode_camera_images(images, valid)
    assert pixels is not None and pixels.dtype == np.uint8
    np.testing.assert_array_equal(decode_camera_images(pixels, valid), images)
    assert encode_camera_images(images + 1e-3 * valid[..., None, None, None], valid) is None
