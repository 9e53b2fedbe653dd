"""The synthetic world's sensors and degradations, tested directly (no dataset on disk)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from peftdml_ros.core.geometry import quaternion_wxyz_to_matrix
from peftdml_ros.data.synth import SynthConfigError, parse_degradation
from peftdml_ros.data.synth.camera import make_camera, render
from peftdml_ros.data.synth.degrade import active_effects
from peftdml_ros.data.synth.ground import Ground, build_ground
from peftdml_ros.data.synth.lidar import GROUND_ID, NOISE_ID, cast_sweep
from peftdml_ros.data.synth.radar import empty_sweep, simulate_sweep, write_pcd
from peftdml_ros.data.synth.rig import CAMERAS, RADARS, RIG
from peftdml_ros.data.synth.schedule import camera_offset_us
from peftdml_ros.data.synth.world import World, build_world


@pytest.fixture(scope="module")
def scene() -> tuple[World, Ground]:
    world = build_world(np.random.default_rng(11), 4.0, 1.0, 1.0)
    return world, build_ground(world.road)


def test_degradation_specs_parse() -> None:
    fog = parse_degradation("fog@scene-0002")
    assert (fog.kind, fog.scene, fog.window_s, fog.strength) == ("fog", "scene-0002", None, 0.6)
    out = parse_degradation("outage:RADAR_FRONT,CAM@2.0-6.0")
    assert out.channels[0] == "RADAR_FRONT" and len(out.channels) == 7
    assert out.window_s == (2.0, 6.0) and out.scene is None
    assert out.applies("scene-0009", "CAM_BACK", 2.0)
    assert not out.applies("scene-0009", "CAM_BACK", 6.0)
    assert not out.applies("scene-0009", "LIDAR_TOP", 3.0)
    loss = parse_degradation("beam_loss=0.75@scene-0001/0-3")
    assert loss.channels == ("LIDAR_TOP",) and loss.strength == 0.75
    assert active_effects([loss, fog], "scene-0001", "LIDAR_TOP", 1.0) == {"beam_loss": 0.75}
    assert active_effects([loss, fog], "scene-0002", "LIDAR_TOP", 1.0) == {"fog": 0.6}
    assert parse_degradation(str(out)) == out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("smoke", "KIND"),
        ("outage", "needs its sensors"),
        ("outage:RADAR_TOP", "unknown sensor"),
        ("fog=1.5", "strength"),
        ("rain@tomorrow", "scope"),
        ("night@4-2", "end must follow"),
        ("blur:IMU", "unknown sensor"),
    ],
)
def test_bad_degradation_specs_say_what_to_do(spec: str, message: str) -> None:
    with pytest.raises(SynthConfigError, match=message):
        parse_degradation(spec)


def test_rig_calibration_is_consistent() -> None:
    for spec in RIG:
        rotation = quaternion_wxyz_to_matrix(spec.rotation_wxyz)
        assert np.allclose(rotation, spec.rotation_matrix, atol=1e-9)
    front = CAMERAS[0]
    # A point 20 m straight ahead at camera height projects near the principal point.
    point_ego = np.array([front.translation_m[0] + 20.0, front.translation_m[1], 1.51])
    cam = front.rotation_matrix.T @ (point_ego - np.array(front.translation_m))
    uv = np.array(front.intrinsic) @ cam
    assert np.allclose(uv[:2] / uv[2], front.principal_px, atol=1.0)
    # Cameras fire while the LiDAR sweeps past them: within the 50 ms sweep.
    offsets = [camera_offset_us(c.yaw_rad) for c in CAMERAS]
    assert all(-25_000 <= o <= 25_000 for o in offsets) and len(set(offsets)) == 6


def test_worlds_depend_on_the_seed_only() -> None:
    a = build_world(np.random.default_rng(5), 2.0, 1.0, 1.0)
    b = build_world(np.random.default_rng(5), 2.0, 1.0, 1.0)
    c = build_world(np.random.default_rng(6), 2.0, 1.0, 1.0)
    assert a.actors.name == b.actors.name and np.array_equal(a.road.xy_m, b.road.xy_m)
    assert not np.array_equal(a.road.xy_m, c.road.xy_m)


def test_lidar_occlusion_and_weather(scene: tuple[World, Ground]) -> None:
    world, ground = scene
    clear = cast_sweep(world, ground, 1.0, np.random.default_rng(0), {})
    assert 25_000 < clear.points.shape[0] < 40_000
    assert np.any(clear.hit == GROUND_ID) and np.any(clear.hit >= 0)
    # Range fall-off: no return beyond 100 m, few beyond 60 m.
    dist = np.linalg.norm(clear.points[:, :3], axis=1)
    assert dist.max() < 100.0 and (dist > 60.0).mean() < 0.05
    # Occlusion: no return lies behind a (still) object its ray passes through.
    from peftdml_ros.data.synth.lidar import SURFACE_INSET_M, sensor_pose
    from peftdml_ros.data.synth.world import ray_box_hits, scene_boxes

    rot, origin = sensor_pose(world, 1.0)
    pts_w = clear.points[:, :3].astype(np.float64) @ rot.T + origin
    dirs = (pts_w - origin) / np.linalg.norm(pts_w - origin, axis=1, keepdims=True)
    boxes = scene_boxes(world, 1.0)
    still = np.nonzero((world.actors.v_s_mps == 0) & (world.actors.v_d_mps == 0))[0]
    blocked = 0
    for j in still:
        # Shrunk by 0.25 m more: the sensor moves up to 0.2 m during the sweep, so rays that
        # graze an edge may pass it; rays through the core of a box must stop there.
        d_j, _ = ray_box_hits(origin, dirs, boxes, int(j), SURFACE_INSET_M + 0.25)
        blocked += int(np.sum((clear.hit != j) & (dist > d_j + 0.3)))
    assert blocked == 0 and np.isin(clear.hit, still).sum() > 500
    fog = cast_sweep(world, ground, 1.0, np.random.default_rng(0), {"fog": 0.8})
    fog_dist = np.linalg.norm(fog.points[:, :3], axis=1)
    real = fog.hit != NOISE_ID
    assert (fog_dist[real] > 30.0).sum() < 0.5 * (dist > 30.0).sum()
    assert (fog.hit == NOISE_ID).sum() > 1000
    loss = cast_sweep(world, ground, 1.0, np.random.default_rng(0), {"beam_loss": 0.25})
    assert np.unique(loss.points[:, 4]).size == 24


def test_lidar_points_of_a_box_lie_on_it(scene: tuple[World, Ground]) -> None:
    world, ground = scene
    sweep = cast_sweep(world, ground, 0.0, np.random.default_rng(1), {})
    counts = np.bincount(sweep.hit[sweep.hit >= 0], minlength=len(world.actors))
    j = int(np.argmax(counts[: len(world.actors)]))
    assert counts[j] > 50
    states = world.actor_states(0.0)
    # Back to global: the sweep is in the sensor frame at t = 0.
    from peftdml_ros.data.synth.lidar import sensor_pose

    rot, origin = sensor_pose(world, 0.0)
    pts = sweep.points[sweep.hit == j, :3] @ rot.T + origin
    rel = pts - states.center_m[j]
    c, s = np.cos(states.yaw_rad[j]), np.sin(states.yaw_rad[j])
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    half = states.size_wlh_m[j][[1, 0, 2]] / 2.0
    assert np.mean(np.all(np.abs(local) <= half + 0.1, axis=1)) > 0.95


def test_radar_doppler_and_pcd(scene: tuple[World, Ground], tmp_path: Path) -> None:
    from nuscenes.utils.data_classes import RadarPointCloud

    world, _ = scene
    sweep = simulate_sweep(world, RADARS[0], 1.0, np.random.default_rng(2), {})
    p = sweep.points
    actors = world.actors
    still = (actors.v_s_mps == 0) & (actors.v_d_mps == 0)
    src = sweep.source
    static = (src >= len(actors)) | ((src >= 0) & still[np.clip(src, 0, len(actors) - 1)])
    assert static.sum() >= 3
    # Compensated Doppler of static returns is ~0; the raw one shows the ego's own motion.
    assert np.all(np.hypot(p["vx_comp"][static], p["vy_comp"][static]) < 0.6)
    ego_speed = float(np.linalg.norm(world.ego_velocity(1.0)[0]))
    assert ego_speed > 3.0
    ahead = static & (p["x"] > 5) & (np.abs(p["y"]) < 0.5 * p["x"])
    assert ahead.any()
    assert np.all(p["vx"][ahead] < -0.5 * ego_speed)
    moving = (src >= 0) & (src < len(actors)) & ~still[np.clip(src, 0, len(actors) - 1)]
    assert np.any(np.abs(p["vx_comp"][moving]) > 1.0)
    path = tmp_path / "r.pcd"
    write_pcd(path, sweep)
    cloud = RadarPointCloud.from_file(
        str(path),
        invalid_states=list(range(18)),
        dynprop_states=list(range(8)),
        ambig_states=list(range(5)),
    )
    assert cloud.points.shape == (18, p.shape[0])
    assert np.allclose(cloud.points[5], p["rcs"]) and np.allclose(cloud.points[8], p["vx_comp"])
    write_pcd(path, empty_sweep())
    assert RadarPointCloud.from_file(str(path)).points.shape == (18, 0)


def _render(scene: tuple[World, Ground], effects: dict[str, float]) -> np.ndarray:
    world, ground = scene
    cam = make_camera(CAMERAS[0])
    return render(cam, world, ground, 1.0, effects, np.random.default_rng(3), False).image


def test_camera_renders_classes_and_weather(scene: tuple[World, Ground]) -> None:
    clear = _render(scene, {})
    assert clear.shape == (900, 1600, 3) and clear.dtype == np.uint8
    # Sky on top, ground at the bottom, many colours in between.
    assert clear[:50].mean() > clear[-50:].mean()
    assert len(np.unique(clear.reshape(-1, 3)[::97], axis=0)) > 50
    night = _render(scene, {"night": 1.0})
    assert night.mean() < 0.45 * clear.mean()
    fog = _render(scene, {"fog": 0.8})
    assert fog.std() < 0.7 * clear.std()
    sharp = cv2.Laplacian(cv2.cvtColor(clear, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    blurred = _render(scene, {"blur": 0.5})
    soft = cv2.Laplacian(cv2.cvtColor(blurred, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    assert soft < 0.2 * sharp
    bright = _render(scene, {"overexposure": 0.7})
    assert (bright >= 250).mean() > 0.3 and (clear >= 250).mean() < 0.1
    rain = _render(scene, {"rain": 0.8})
    assert not np.array_equal(rain, clear) and rain.mean() < clear.mean()


def test_camera_visibility_counts_occlusion(scene: tuple[World, Ground]) -> None:
    world, ground = scene
    visible = np.zeros(len(world.actors), np.int64)
    total = np.zeros(len(world.actors), np.int64)
    for spec in CAMERAS:
        out = render(make_camera(spec), world, ground, 0.0, {}, np.random.default_rng(0), True)
        assert out.visible_px is not None and out.total_px is not None
        visible += out.visible_px
        total += out.total_px
    assert np.all(visible <= total)
    seen = total > 0
    fraction = visible[seen] / total[seen]
    assert np.any(fraction > 0.95) and np.any(fraction < 0.6)
