"""A 32-beam spinning LiDAR (HDL-32E-like, as on the nuScenes car) by vectorized ray casting.

One sweep is 32 beams x 1084 azimuth steps (about 34.7k rays) in 50 ms. The sweep is cast in
16 azimuth sectors, each at its own firing time: the sensor pose and every moving object are
taken at that time, so moving objects smear as on a real spinning sensor. The points are then
expressed in the sensor frame at the sweep's timestamp (the middle of the rotation), i.e. ego
motion is compensated ("deskewed"); object motion is not. Rays hit the ground plane (surface
class from the raster sets the reflectivity) and boxes (actors and buildings), nearest first, so
occlusion is real. Returns fade with range and reflectivity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from peftdml_ros.data.synth.geometry import F64, box_corners, rot_z
from peftdml_ros.data.synth.ground import SURFACE_REFLECTIVITY, Ground
from peftdml_ros.data.synth.rig import LIDAR
from peftdml_ros.data.synth.world import SceneBoxes, World, ray_box_hits, scene_boxes

NUM_BEAMS = 32
BEAM_ELEVATION_RAD = np.deg2rad(np.linspace(-30.67, 10.67, NUM_BEAMS))  # ring 0 = lowest beam
AZIMUTH_STEPS = 1084
SECTORS = 16
SWEEP_S = 0.05
MAX_RANGE_M = 100.0
GROUND_ID = -1
NOISE_ID = -2
# Surfaces sit this far inside the annotated boxes, so that range noise keeps the returns of an
# object inside its box (the devkit counts points geometrically; annotators fit boxes snugly).
SURFACE_INSET_M = 0.06


@dataclass(frozen=True)
class LidarSweep:
    """points [N, 5] float32 (x, y, z, intensity, ring) in the LIDAR_TOP frame at the sweep's
    timestamp; hit [N] int64: actor index, >= num_actors for statics, -1 ground, -2 noise."""

    points: npt.NDArray[np.float32]
    hit: npt.NDArray[np.int64]


def _sector_rays() -> list[tuple[F64, F64, npt.NDArray[np.int64]]]:
    """Per sector: column azimuths relative to the sector's middle [A], unit directions
    [A, 32, 3] in the sensor frame (azimuth-major) and their ring [A, 32]."""
    azimuth = np.linspace(0.0, 2.0 * np.pi, AZIMUTH_STEPS, endpoint=False)
    out = []
    for k in range(SECTORS):
        az = azimuth[k * AZIMUTH_STEPS // SECTORS : (k + 1) * AZIMUTH_STEPS // SECTORS]
        a, el = np.meshgrid(az, BEAM_ELEVATION_RAD, indexing="ij")
        dirs = np.stack([np.cos(el) * np.cos(a), np.cos(el) * np.sin(a), np.sin(el)], axis=-1)
        ring = np.broadcast_to(np.arange(NUM_BEAMS)[None, :], el.shape).astype(np.int64)
        out.append((az - (k + 0.5) * 2.0 * np.pi / SECTORS, dirs, ring))
    return out


_SECTOR_RAYS = _sector_rays()


def sensor_pose(world: World, t_s: float) -> tuple[F64, F64]:
    """LIDAR_TOP rotation [3, 3] (sensor -> global) and origin [3] (global m) at scene time t."""
    ego_xyz, ego_yaw = world.ego_pose(t_s)
    r_ego = rot_z(ego_yaw)
    return r_ego @ LIDAR.rotation_matrix, ego_xyz + r_ego @ np.array(LIDAR.translation_m)


def _azimuth_spans(
    boxes: SceneBoxes, origin: F64, rot: F64, az_mid_rad: float
) -> tuple[F64, F64, F64]:
    """Per box: the sensor-frame azimuth interval it covers, relative to `az_mid_rad`, and its
    distance. A box around the sensor covers everything (-pi, pi)."""
    corners = box_corners(boxes.center_m, boxes.size_wlh_m, boxes.yaw_rad)[:, :4, :2]  # [B, 4, 2]
    rel = corners - origin[None, None, :2]
    # Horizontal directions in the sensor frame (the sensor is level: only its yaw matters).
    x_s = rel[..., 0] * rot[0, 0] + rel[..., 1] * rot[1, 0]
    y_s = rel[..., 0] * rot[0, 1] + rel[..., 1] * rot[1, 1]
    delta = np.angle(np.exp(1j * (np.arctan2(y_s, x_s) - az_mid_rad)))  # [B, 4]
    lo, hi = delta.min(axis=1), delta.max(axis=1)
    center_rel = boxes.center_m[:, :2] - origin[None, :2]
    dist = np.hypot(center_rel[:, 0], center_rel[:, 1])
    radius = np.hypot(boxes.size_wlh_m[:, 0], boxes.size_wlh_m[:, 1]) / 2.0
    wraps = (hi - lo > np.pi) | (dist <= radius)
    lo = np.where(wraps, -np.pi, lo)
    hi = np.where(wraps, np.pi, hi)
    return lo, hi, dist - radius


def _beam_spans(
    boxes: SceneBoxes, origin_z_m: float, near_m: F64
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per box: the slice [lo, hi) of rings (sorted by elevation) that can reach it: a beam
    must still be above the ground and below the box's top at the box's nearest distance."""
    near = np.maximum(near_m, 0.1)
    far = near + np.hypot(boxes.size_wlh_m[:, 0], boxes.size_wlh_m[:, 1])
    top = boxes.center_m[:, 2] + boxes.size_wlh_m[:, 2] / 2.0
    tan_lo = -origin_z_m / near
    tan_hi = np.where(top >= origin_z_m, (top - origin_z_m) / near, (top - origin_z_m) / far)
    tan_beam = np.tan(BEAM_ELEVATION_RAD)
    lo = np.searchsorted(tan_beam, tan_lo - 1e-3, side="left")
    hi = np.searchsorted(tan_beam, tan_hi + 1e-3, side="right")
    return lo.astype(np.int64), hi.astype(np.int64)


def cast_sweep(
    world: World,
    ground: Ground,
    t_s: float,
    rng: np.random.Generator,
    effects: dict[str, float],
) -> LidarSweep:
    """One sweep centred on scene time t (s). `effects`: kind -> strength (see degrade.py)."""
    lost = np.zeros(NUM_BEAMS, dtype=bool)
    if "beam_loss" in effects:
        count = round(effects["beam_loss"] * NUM_BEAMS)
        lost[rng.permutation(NUM_BEAMS)[:count]] = True
    rot_c, origin_c = sensor_pose(world, t_s)
    parts: list[tuple[F64, F64, F64, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
    for k, (col_delta, dirs_s, ring) in enumerate(_SECTOR_RAYS):
        t_k = t_s + ((k + 0.5) / SECTORS - 0.5) * SWEEP_S
        rot, origin = sensor_pose(world, t_k)
        dirs = dirs_s @ rot.T  # [A, 32, 3] global
        num_cols = dirs.shape[0]
        dist = np.full((num_cols, NUM_BEAMS), np.inf)
        hit = np.full((num_cols, NUM_BEAMS), -1, dtype=np.int64)
        cosine = np.ones((num_cols, NUM_BEAMS))
        boxes = scene_boxes(world, t_k)
        lo, hi, near = _azimuth_spans(boxes, origin, rot, (k + 0.5) * 2.0 * np.pi / SECTORS)
        candidates = np.nonzero(
            (hi >= col_delta[0]) & (lo <= col_delta[-1]) & (near < MAX_RANGE_M)
        )
        r_lo, r_hi = _beam_spans(boxes, origin[2], near)
        # Nearest boxes first, so a box wholly behind earlier hits is skipped without a test.
        for j in candidates[0][np.argsort(near[candidates[0]])]:
            c0, c1 = np.searchsorted(col_delta, [lo[j], hi[j]], side="left")
            c1, r0, r1 = min(int(c1) + 1, num_cols), int(r_lo[j]), int(r_hi[j])
            if c1 <= c0 or r1 <= r0:
                continue
            block = (slice(c0, c1), slice(r0, r1))
            if dist[block].max() < near[j]:
                continue
            d_j, cos_j = ray_box_hits(
                origin, dirs[block].reshape(-1, 3), boxes, j, SURFACE_INSET_M
            )
            d_j = d_j.reshape(c1 - c0, r1 - r0)
            closer = d_j < dist[block]
            dist[block][closer] = d_j[closer]
            hit[block][closer] = j
            cosine[block][closer] = cos_j.reshape(c1 - c0, r1 - r0)[closer]
        dirs, dist, hit, cosine = dirs.reshape(-1, 3), dist.ravel(), hit.ravel(), cosine.ravel()
        ring_k = ring.ravel()
        with np.errstate(divide="ignore"):
            t_ground = np.where(dirs[:, 2] < -1e-6, -origin[2] / dirs[:, 2], np.inf)
        on_ground = t_ground < dist
        dist = np.where(on_ground, t_ground, dist)
        hit = np.where(on_ground, GROUND_ID, hit)
        cosine = np.where(on_ground, np.abs(dirs[:, 2]), cosine)
        valid = (dist < MAX_RANGE_M) & ~lost[ring_k]
        points_w = origin[None, :] + dirs[valid] * dist[valid, None]
        hit = hit[valid]
        refl = np.where(
            hit == GROUND_ID,
            SURFACE_REFLECTIVITY[ground.lookup(points_w[:, 0], points_w[:, 1])],
            boxes.reflectivity[np.maximum(hit, 0)],
        )
        strength = refl * (0.35 + 0.65 * cosine[valid])
        parts.append((points_w, strength, dist[valid], ring_k[valid], hit))
    points_w = np.concatenate([p[0] for p in parts])
    strength = np.concatenate([p[1] for p in parts])
    dist = np.concatenate([p[2] for p in parts])
    ring = np.concatenate([p[3] for p in parts])
    hit = np.concatenate([p[4] for p in parts])
    return _finish(points_w, strength, dist, ring, hit, rot_c, origin_c, rng, effects)


def _finish(
    points_w: F64,
    strength: F64,
    dist: F64,
    ring: npt.NDArray[np.int64],
    hit: npt.NDArray[np.int64],
    rot_c: F64,
    origin_c: F64,
    rng: np.random.Generator,
    effects: dict[str, float],
) -> LidarSweep:
    """Drop weak returns, add noise and weather, and express the points in the sensor frame."""
    # Detection range grows with the return strength: dark asphalt fades beyond ~40 m.
    reach_m = 30.0 + 90.0 * np.clip(strength, 0.0, 1.0)
    p_return = np.clip(1.5 - dist / reach_m, 0.0, 1.0)
    fog, rain = effects.get("fog", 0.0), effects.get("rain", 0.0)
    if fog > 0.0:
        visibility_m = 150.0 - 130.0 * fog  # meteorological visibility
        p_return = p_return * np.exp(-2.0 * (3.0 / visibility_m) * dist)
    if rain > 0.0:
        p_return = p_return * (1.0 - 0.25 * rain)
    keep = rng.random(dist.shape[0]) < p_return
    points_w, strength, dist, ring, hit = (
        points_w[keep],
        strength[keep],
        dist[keep],
        ring[keep],
        hit[keep],
    )
    points_s = (points_w - origin_c[None, :]) @ rot_c  # global -> sensor at the sweep time
    noise_m = 0.02 + 0.03 * rain
    norm = np.maximum(np.linalg.norm(points_s, axis=1, keepdims=True), 1e-6)
    points_s = points_s + points_s / norm * rng.normal(0.0, noise_m, (points_s.shape[0], 1))
    intensity = np.clip(255.0 * strength / (1.0 + (dist / 60.0) ** 2), 0.0, 255.0)
    intensity = np.round(np.clip(intensity + rng.normal(0.0, 1.5, intensity.shape), 0.0, 255.0))
    cloud = np.concatenate(
        [points_s, intensity[:, None], ring[:, None].astype(np.float64)], axis=1
    )
    if fog > 0.0 or rain > 0.0:  # backscatter from droplets: weak returns close to the sensor
        count = int(rng.poisson(3000.0 * fog + 800.0 * rain))
        cloud = np.concatenate([cloud, _clutter(rng, count)])
        hit = np.concatenate([hit, np.full(count, NOISE_ID)])
    return LidarSweep(points=cloud.astype(np.float32), hit=hit.astype(np.int64))


def _clutter(rng: np.random.Generator, count: int) -> F64:
    """[count, 5] weak returns 1.5..10 m from the sensor on random beams."""
    ring = rng.integers(0, NUM_BEAMS, count)
    az = rng.uniform(0.0, 2.0 * np.pi, count)
    rho = rng.uniform(1.5, 10.0, count)
    el = BEAM_ELEVATION_RAD[ring]
    xyz = (
        np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1) * rho[:, None]
    )
    return np.concatenate(
        [xyz, rng.uniform(0.0, 4.0, (count, 1)).round(), ring[:, None].astype(np.float64)], axis=1
    )
