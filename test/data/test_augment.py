"""Augmentation on preprocessed inputs equals preprocessing the transformed frame; dropout."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch.utils.data import DataLoader

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model import tiny_config
from peftdml_ros.core.model.encoders import CameraEncoder
from peftdml_ros.core.preprocess import (
    PreprocessConfig,
    Preprocessor,
    radar_sensor_index,
)
from peftdml_ros.core.types import (
    LIDAR_POINT_FIELDS,
    NUSCENES_CAMERAS,
    NUSCENES_RADARS,
    RADAR_POINT_FIELDS,
    CameraImage,
    Detections,
    Frame,
    GnssFix,
    ImuSample,
    Modality,
    PointCloud,
)
from peftdml_ros.data.augment import (
    Augmentation,
    AugmentConfig,
    AugmentedKeyframes,
    AugmentedPairs,
    EgoTransform,
    SensorDrop,
    SensorDropoutConfig,
    apply_sensor_drop,
    augment_pair,
    drop_sensors_at_random,
    sample_sensor_drop,
    sample_transform,
    transform_detections,
    transform_inputs,
    transform_item,
)
from peftdml_ros.data.training import TrainingItem

F64 = npt.NDArray[np.float64]
CONFIG = PreprocessConfig(
    point_cloud_range_m=(-30.0, -30.0, -4.0, 30.0, 30.0, 4.0),
    max_lidar_points=4096,
    max_radar_points=512,
    image_size_hw=(32, 48),
)
K_SRC = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 44.5], [0.0, 0.0, 1.0]], np.float32)
# Optical frame (z forward, x right, y down) of a camera looking along ego +x.
OPTICAL_TO_FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
CAMERA_YAWS_RAD = (0.0, -0.96, 0.96, math.pi, 1.9, -1.9)  # nuScenes-like, NUSCENES_CAMERAS order
TRANSFORMS = (
    EgoTransform(rotation_rad=0.3, flip_y=True, scale=1.04),
    EgoTransform(rotation_rad=-0.39, flip_x=True, scale=0.95),
    EgoTransform(rotation_rad=0.2, flip_x=True, flip_y=True, scale=1.0),
    EgoTransform(),
)


def _rz(yaw: float) -> F64:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_to_ego(yaw: float) -> npt.NDArray[np.float32]:
    m = np.eye(4)
    m[:3, :3] = _rz(yaw) @ OPTICAL_TO_FORWARD
    m[:3, 3] = (1.2 * math.cos(yaw), 0.6 * math.sin(yaw), 1.6)
    return m.astype(np.float32)


def make_frame(seed: int = 0, cameras: Sequence[str] = NUSCENES_CAMERAS) -> Frame:
    """Every point inside CONFIG's range and fewer than its maxima (nothing is subsampled)."""
    rng = np.random.default_rng(seed)
    lidar = rng.uniform(-29.9, 29.9, (1500, 5)).astype(np.float32)
    lidar[:, 2] = rng.uniform(-3.0, 3.0, 1500)
    lidar[:, 3:] = rng.uniform(0.0, 1.0, (1500, 2))
    radars = []
    for name in NUSCENES_RADARS:
        points = rng.uniform(-29.0, 29.0, (30, 7)).astype(np.float32)
        points[:, 2] = rng.uniform(-1.0, 2.0, 30)
        radars.append(PointCloud(name, 0, points, RADAR_POINT_FIELDS))
    cams = tuple(
        CameraImage(
            name,
            0,
            rng.integers(0, 256, (90, 160, 3), dtype=np.uint8),
            K_SRC.copy(),
            camera_to_ego(CAMERA_YAWS_RAD[NUSCENES_CAMERAS.index(name)]),
        )
        for name in cameras
    )
    # IMU: one varying component per vector, so the std rule of the transform is exact.
    imu = tuple(ImuSample(i, (0.01, -0.02, 0.1 * i), (0.5 * i, 0.3, 9.81)) for i in range(5))
    return Frame(
        stamp_ns=1_000_000_000,
        trigger_sensor="LIDAR_TOP",
        lidar=(PointCloud("LIDAR_TOP", 0, lidar, LIDAR_POINT_FIELDS),),
        radar=tuple(radars),
        cameras=cams,
        imu=imu,
        gnss=GnssFix(900_000_000, 42.0, -71.0, 10.0, (3.0, 4.0)),
        modality_present={
            Modality.LIDAR: True,
            Modality.RADAR: True,
            Modality.CAMERA: bool(cams),
            Modality.IMU: True,
            Modality.GNSS: True,
        },
    )


def transform_frame(frame: Frame, t: EgoTransform) -> Frame:
    """The frame the sensors would have given in the transformed ego frame."""
    a, q = t.linear(), t.orthogonal()

    def move(cloud: PointCloud, velocity: bool) -> PointCloud:
        points = cloud.points.astype(np.float64)
        points[:, 0:3] = points[:, 0:3] @ a.T
        if velocity:
            points[:, 4:6] = points[:, 4:6] @ a[:2, :2].T
        return PointCloud(cloud.sensor, cloud.stamp_ns, points.astype(np.float32), cloud.fields)

    def move_camera(camera: CameraImage) -> CameraImage:
        m = t.matrix() @ camera.camera_to_ego.astype(np.float64)
        m[:3, :3] /= t.scale  # the camera frame keeps unit length: same rays, rigid transform
        return CameraImage(
            camera.sensor, camera.stamp_ns, camera.image, camera.intrinsics, m.astype(np.float32)
        )

    det = np.linalg.det(q)
    imu = tuple(
        ImuSample(
            s.stamp_ns,
            tuple(det * q @ np.asarray(s.angular_velocity_rps)),  # type: ignore[arg-type]
            tuple(q @ np.asarray(s.linear_acceleration_mps2)),  # type: ignore[arg-type]
        )
        for s in frame.imu
    )
    return Frame(
        **{
            **frame.__dict__,
            "lidar": tuple(move(c, False) for c in frame.lidar),
            "radar": tuple(move(c, True) for c in frame.radar),
            "cameras": tuple(move_camera(c) for c in frame.cameras),
            "imu": imu,
        }
    )


def item_of(frame: Frame, boxes: Detections | None = None) -> TrainingItem:
    boxes = boxes if boxes is not None else Detections.empty()
    return TrainingItem(
        inputs=Preprocessor(CONFIG)(frame),
        ground_truth=boxes,
        instance_ids=np.arange(len(boxes), dtype=np.int64),
        scene_name="scene-0001",
        sample_token="token",
        radar_sensor_index=radar_sensor_index(frame, CONFIG),
        ego_to_global=np.eye(4),
    )


# ------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("t", TRANSFORMS)
def test_augmented_inputs_equal_preprocessing_the_transformed_frame(t: EgoTransform) -> None:
    frame = make_frame()
    inputs = Preprocessor(CONFIG)(frame)
    for array in inputs.values():  # as memory-mapped cache files are: never written to
        array.setflags(write=False)
    index = radar_sensor_index(frame, CONFIG)
    moved, moved_index = transform_inputs(inputs, CONFIG, t, index)
    transformed = transform_frame(frame, t)
    expected = Preprocessor(CONFIG)(transformed)
    for name in model_io.INPUT_NAMES:
        np.testing.assert_allclose(moved[name], expected[name], atol=2e-5, err_msg=name)
    np.testing.assert_array_equal(moved_index, radar_sensor_index(transformed, CONFIG))
    if t.rotation_rad != 0.0:  # corners rotate out of the square range: cropped like preprocessing
        assert moved["lidar_valid"].sum() < inputs["lidar_valid"].sum()


@pytest.mark.parametrize("t", TRANSFORMS)
def test_a_point_keeps_its_pixel_through_the_augmented_calibration(t: EgoTransform) -> None:
    frame = make_frame()
    inputs = Preprocessor(CONFIG)(frame)
    moved, _ = transform_inputs(inputs, CONFIG, t)
    for slot in range(len(NUSCENES_CAMERAS)):
        k = inputs["camera_intrinsics"][0, slot].astype(np.float64)
        before = inputs["camera_to_ego"][0, slot].astype(np.float64)
        after = moved["camera_to_ego"][0, slot].astype(np.float64)
        # The model inverts camera_to_ego as a rigid transform [R^T, -R^T t]: it must stay one.
        np.testing.assert_allclose(after[:3, :3].T @ after[:3, :3], np.eye(3), atol=1e-6)
        center = before[:3, :3] @ np.array([1.5, -0.8, 12.0]) + before[:3, 3]  # in view
        np.testing.assert_allclose(
            _pixel(k, after, t.linear() @ center), _pixel(k, before, center), atol=1e-3
        )


def _pixel(k: F64, camera_to_ego: F64, point: F64) -> F64:
    rotation, translation = camera_to_ego[:3, :3], camera_to_ego[:3, 3]
    uvw = k @ (rotation.T @ (point - translation))
    return np.asarray(uvw[:2] / uvw[2])


def test_the_models_camera_lift_samples_the_same_pixel_after_a_mirror() -> None:
    # The encoder's own projection (grid_sample coordinates) of ego points through the
    # original and the mirrored, rotated and scaled calibration.
    encoder = CameraEncoder(tiny_config())
    t = EgoTransform(rotation_rad=0.35, flip_y=True, scale=1.05)
    k = torch.tensor([[[[30.0, 0.0, 31.5], [0.0, 30.0, 15.5], [0.0, 0.0, 1.0]]] * 2])
    cams = torch.from_numpy(np.stack([camera_to_ego(0.0), camera_to_ego(math.pi)]))[None]
    points = np.array([[10.0, 1.0, 1.0], [8.0, -2.0, 0.5], [-9.0, 1.5, 1.2]])
    moved_inputs, _ = transform_inputs(_camera_inputs(cams.numpy()), CONFIG_TWO_CAMERAS, t)
    valid = torch.ones(1, 2)
    encoder.bev_points = torch.from_numpy(points.astype(np.float32))
    grid, seen = encoder._project(k, cams, valid)
    encoder.bev_points = torch.from_numpy((points @ t.linear().T).astype(np.float32))
    moved_grid, moved_seen = encoder._project(
        k, torch.from_numpy(moved_inputs["camera_to_ego"]), valid
    )
    assert seen.sum() == 3  # two points in front of the front camera, one of the back one
    torch.testing.assert_close(moved_seen, seen)
    torch.testing.assert_close(moved_grid, grid, atol=1e-5, rtol=0)


CONFIG_TWO_CAMERAS = PreprocessConfig(
    point_cloud_range_m=CONFIG.point_cloud_range_m,
    max_lidar_points=8,
    max_radar_points=8,
    camera_names=("CAM_FRONT", "CAM_BACK"),
    image_size_hw=(32, 64),
)


def _camera_inputs(camera_to_ego_: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
    cam_frame = Frame(
        0,
        "CAM_FRONT",
        cameras=tuple(
            CameraImage(name, 0, np.zeros((32, 64, 3), np.uint8), K_SRC, camera_to_ego_[0, i])
            for i, name in enumerate(("CAM_FRONT", "CAM_BACK"))
        ),
        modality_present={Modality.CAMERA: True},
    )
    return Preprocessor(CONFIG_TWO_CAMERAS)(cam_frame)


def _corners(boxes: Detections) -> F64:
    """[N, 8, 3] box corners."""
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
    out = []
    for c, wlh, yaw in zip(boxes.center_m, boxes.size_wlh_m, boxes.yaw_rad, strict=True):
        local = signs * wlh[[1, 0, 2]] / 2.0  # (l, w, h) along the box's (x, y, z)
        out.append(local @ _rz(float(yaw)).T + c)
    return np.asarray(out)


def _boxes() -> Detections:
    return Detections(
        center_m=np.array([[10.0, 5.0, 0.8], [-20.0, -3.0, 1.0], [45.0, 0.0, 1.0]], np.float32),
        size_wlh_m=np.array([[1.9, 4.5, 1.6], [0.7, 0.7, 1.8], [2.5, 10.0, 3.0]], np.float32),
        yaw_rad=np.array([0.4, -2.9, 1.0], np.float32),
        velocity_mps=np.array([[3.0, 1.0], [np.nan, np.nan], [0.0, 5.0]], np.float32),
        score=np.ones(3, np.float32),
        label=np.array([0, 5, 2], np.int64),
        attribute=("vehicle.moving", "pedestrian.standing", "vehicle.parked"),
    )


@pytest.mark.parametrize("t", TRANSFORMS)
def test_boxes_move_with_the_points(t: EgoTransform) -> None:
    boxes = _boxes()
    moved = transform_detections(boxes, t)
    expected = _corners(boxes) @ t.linear().T
    got = _corners(moved)
    for e, g in zip(expected, got, strict=True):  # the same corners, in some order
        np.testing.assert_allclose(g[np.lexsort(g.T)], e[np.lexsort(e.T)], atol=1e-4)
    np.testing.assert_allclose(moved.velocity_mps[0], t.linear()[:2, :2] @ [3.0, 1.0], atol=1e-5)
    assert np.isnan(moved.velocity_mps[1]).all()
    assert np.all(np.abs(moved.yaw_rad) <= math.pi)
    assert moved.attribute == boxes.attribute
    np.testing.assert_array_equal(moved.label, boxes.label)


def test_transform_item_drops_boxes_from_outside_the_range_and_keeps_global_positions() -> None:
    t = EgoTransform(rotation_rad=0.3, flip_y=True, scale=1.04)
    item = item_of(make_frame(), _boxes())
    moved = transform_item(item, CONFIG, t)
    # Box 2 (x = 45 m) had no points in the cache: a transform must not bring it in empty.
    np.testing.assert_array_equal(moved.instance_ids, [0, 1])
    assert len(moved.ground_truth) == 2
    assert moved.ego_to_global is not None
    point = np.array([3.0, -4.0, 1.0, 1.0])
    np.testing.assert_allclose(moved.ego_to_global @ (t.matrix() @ point), point, atol=1e-12)
    assert item.inputs["lidar_valid"].sum() > moved.inputs["lidar_valid"].sum()


def test_points_leaving_the_range_are_cropped_and_an_empty_modality_masked() -> None:
    frame = make_frame()
    edge = frame.lidar[0].points.copy()
    edge[:, 0] = np.linspace(29.0, 29.9, edge.shape[0])  # x * 1.05 >= 30.45: all leave
    frame = Frame(
        **{**frame.__dict__, "lidar": (PointCloud("LIDAR_TOP", 0, edge, LIDAR_POINT_FIELDS),)}
    )
    inputs = Preprocessor(CONFIG)(frame)
    moved, _ = transform_inputs(inputs, CONFIG, EgoTransform(scale=1.05))
    assert inputs["modality_mask"][0, 0] == 1.0 and moved["modality_mask"][0, 0] == 0.0
    assert not moved["lidar_points"].any() and not moved["lidar_valid"].any()


def test_sampled_transforms_stay_in_their_ranges_and_are_seeded() -> None:
    config = AugmentConfig(
        rotation_max_rad=0.4, flip_y_p=0.5, flip_x_p=0.0, scale_range=(0.9, 1.1)
    )
    draws = [sample_transform(np.random.default_rng([1, i]), config) for i in range(200)]
    assert all(abs(d.rotation_rad) <= 0.4 and 0.9 <= d.scale <= 1.1 for d in draws)
    assert not any(d.flip_x for d in draws)
    assert 70 < sum(d.flip_y for d in draws) < 130
    assert sample_transform(np.random.default_rng(5), config) == sample_transform(
        np.random.default_rng(5), config
    )
    with pytest.raises(ConfigError, match="scale_range"):
        AugmentConfig(scale_range=(1.1, 0.9))


# ------------------------------------------------------------------------------------- dropout


def _without(frame: Frame, drop: SensorDrop) -> Frame:
    cameras = tuple(c for c in frame.cameras if c.sensor not in drop.cameras)
    radars = tuple(r for r in frame.radar if r.sensor not in drop.radars)
    present = dict(frame.modality_present)
    present[Modality.CAMERA] = bool(cameras)
    present[Modality.RADAR] = bool(radars)
    for modality in drop.modalities:
        present[modality] = False
    return Frame(
        **{**frame.__dict__, "cameras": cameras, "radar": radars, "modality_present": present}
    )


@pytest.mark.parametrize(
    "drop",
    [
        SensorDrop(cameras=("CAM_FRONT", "CAM_BACK_LEFT")),
        SensorDrop(radars=("RADAR_FRONT",)),
        SensorDrop(modalities=(Modality.LIDAR,), cameras=("CAM_BACK",), radars=NUSCENES_RADARS),
        SensorDrop(cameras=NUSCENES_CAMERAS),
    ],
)
def test_dropped_sensors_give_the_preprocessors_inputs_without_them(drop: SensorDrop) -> None:
    frame = make_frame(seed=2)
    dropped = apply_sensor_drop(item_of(frame), CONFIG, drop)
    expected = item_of(_without(frame, drop))
    for name in model_io.INPUT_NAMES:
        np.testing.assert_array_equal(dropped.inputs[name], expected.inputs[name], err_msg=name)
    np.testing.assert_array_equal(dropped.radar_sensor_index, expected.radar_sensor_index)


def test_sensor_dropout_draws_per_sensor_and_keeps_a_modalitys_last_sensor() -> None:
    item = item_of(make_frame())
    always = SensorDropoutConfig(camera_p=1.0, radar_p=1.0)
    drop = sample_sensor_drop(item, CONFIG, always, np.random.default_rng(0))
    assert len(drop.cameras) == 5 and len(drop.radars) == 4 and drop.modalities == ()
    rate = SensorDropoutConfig(camera_p=0.3)
    rng = np.random.default_rng(1)
    dropped = [len(sample_sensor_drop(item, CONFIG, rate, rng).cameras) for _ in range(300)]
    assert 0.25 < np.mean(dropped) / 6 < 0.35
    again = [len(sample_sensor_drop(item, CONFIG, rate, np.random.default_rng(1)).cameras)]
    assert again[0] == dropped[0]  # seeded


def test_modality_dropout_keeps_one_modality_when_asked() -> None:
    item = item_of(make_frame())
    rng = np.random.default_rng(3)
    for _ in range(20):
        drop = sample_sensor_drop(item, CONFIG, SensorDropoutConfig(modality_p=1.0), rng)
        assert len(drop.modalities) == 4
        out = apply_sensor_drop(item, CONFIG, drop)
        assert out.inputs["modality_mask"].sum() == 1.0
    every = SensorDropoutConfig(modality_p=1.0, keep_at_least_one=False)
    drop = sample_sensor_drop(item, CONFIG, every, rng)
    assert not apply_sensor_drop(item, CONFIG, drop).inputs["modality_mask"].any()
    with pytest.raises(ConfigError, match="modality_p"):
        SensorDropoutConfig(modality_p=(0.1, 0.2))


class _Items:
    """A keyframe source of fixed items."""

    def __init__(self, items: list[TrainingItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> TrainingItem:
        return self.items[index]

    def scene_names(self) -> list[str]:
        return [item.scene_name for item in self.items]


def test_pairs_share_one_transform_and_draw_dropout_per_item() -> None:
    item = item_of(make_frame(), _boxes())
    pairs = [(item, item)] * 4
    geometry_only = AugmentedPairs(pairs, Augmentation(CONFIG), seed=0)  # type: ignore[arg-type]
    for index in range(4):
        now, later = geometry_only[index]
        np.testing.assert_array_equal(now.inputs["lidar_points"], later.inputs["lidar_points"])
        np.testing.assert_array_equal(now.ground_truth.center_m, later.ground_truth.center_m)
    with_dropout = AugmentedPairs(
        pairs,  # type: ignore[arg-type]
        Augmentation(CONFIG, geometry=None, dropout=SensorDropoutConfig(camera_p=0.5)),
        seed=0,
    )
    differ = [
        not np.array_equal(a.inputs["camera_valid"], b.inputs["camera_valid"])
        for a, b in (with_dropout[i] for i in range(4))
    ]
    assert any(differ)


def _first_rotation(items: list[TrainingItem]) -> list[float]:
    # The front camera's rotation angle about z reveals the drawn transform.
    return [
        float(
            np.arctan2(
                i.inputs["camera_to_ego"][0, 0, 1, 2], i.inputs["camera_to_ego"][0, 0, 0, 2]
            )
        )
        for i in items
    ]


def test_augmentation_is_reproducible_with_dataloader_workers() -> None:
    item = item_of(make_frame(cameras=("CAM_FRONT",)))
    dataset = AugmentedKeyframes(_Items([item] * 8), Augmentation(CONFIG), seed=4)

    def run() -> list[list[float]]:
        loader = DataLoader(
            dataset,
            batch_size=2,
            num_workers=2,
            collate_fn=_first_rotation,
            generator=torch.Generator().manual_seed(9),
        )
        return [angle for _ in range(2) for angle in loader]

    first, second = run(), run()
    assert first == second
    angles = [a for batch in first for a in batch]
    assert len(set(np.round(angles, 6))) == len(angles)  # workers and epochs never repeat
    assert dataset.scene_names() == ["scene-0001"] * 8


def test_pair_and_sensor_helpers_of_the_training_loop() -> None:
    item = item_of(make_frame(), _boxes())
    now, later = augment_pair(item, item, AugmentConfig(), np.random.default_rng(2), CONFIG)
    np.testing.assert_array_equal(now.inputs["camera_to_ego"], later.inputs["camera_to_ego"])
    assert not np.array_equal(now.inputs["camera_to_ego"], item.inputs["camera_to_ego"])
    dropped = drop_sensors_at_random(item, 1.0, np.random.default_rng(0), CONFIG)
    assert dropped.inputs["camera_valid"].sum() == 1
    index = dropped.radar_sensor_index
    assert index is not None and len(set(index[index >= 0].tolist())) == 1
    assert drop_sensors_at_random(item, 0.0, np.random.default_rng(0), CONFIG) is item
