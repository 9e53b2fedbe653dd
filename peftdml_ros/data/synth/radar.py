"""Continental ARS-408-like radars: sparse returns with RCS and Doppler, plus clutter.

Each radar sees objects within +-60 deg up to 70 m (near scan) and +-9 deg up to 200 m (far
scan). A visible object gives a few returns on its faces that face the radar (more for big
objects, fewer far away); returns occluded by a nearer box are dropped. The measured velocity is
the radial (Doppler) component: `vx, vy` relative to the moving sensor, `vx_comp, vy_comp` with
the ego motion removed, both as vectors along the line of sight in the radar frame, as nuScenes
stores them. Buildings and poles give stationary returns; random clutter adds false alarms, some
flagged invalid or ambiguous so that the devkit's default filters remove them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from peftdml_ros.data.synth.geometry import F64, box_corners, rot_z
from peftdml_ros.data.synth.rig import SensorSpec
from peftdml_ros.data.synth.world import SceneBoxes, World, scene_boxes

NEAR_FOV_RAD = np.deg2rad(60.0)
NEAR_RANGE_M = 70.0
FAR_FOV_RAD = np.deg2rad(9.0)
FAR_RANGE_M = 200.0

PCD_FIELDS = (
    "x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp",
    "is_quality_valid", "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms",
    "vy_rms",
)  # fmt: skip
PCD_DTYPE = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("dyn_prop", "i1"),
        ("id", "<i2"),
        ("rcs", "<f4"),
        ("vx", "<f4"),
        ("vy", "<f4"),
        ("vx_comp", "<f4"),
        ("vy_comp", "<f4"),
        ("is_quality_valid", "i1"),
        ("ambig_state", "i1"),
        ("x_rms", "i1"),
        ("y_rms", "i1"),
        ("invalid_state", "i1"),
        ("pdh0", "i1"),
        ("vx_rms", "i1"),
        ("vy_rms", "i1"),
    ]
)
_PCD_SIZE = "4 4 4 1 2 4 4 4 4 4 1 1 1 1 1 1 1 1"
_PCD_TYPE = "F F F I I F F F F F I I I I I I I I"


@dataclass(frozen=True)
class RadarSweep:
    """points: structured array (PCD_DTYPE) in the radar frame; source [N] int64: the box index
    of each return (actors first), -1 for clutter."""

    points: npt.NDArray[np.void]
    source: npt.NDArray[np.int64]

    def passes_default_filters(self) -> npt.NDArray[np.bool_]:
        """The returns the devkit keeps by default (invalid_state 0, dyn_prop 0..6, ambig 3)."""
        p = self.points
        keep: npt.NDArray[np.bool_] = (
            (p["invalid_state"] == 0) & (p["dyn_prop"] <= 6) & (p["ambig_state"] == 3)
        )
        return keep


def _sample_faces(rng: np.random.Generator, corners: F64, sensor_xy: F64, count: int) -> F64:
    """[count, 2] points on the footprint edges of one box that face the sensor."""
    edges = [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    center = corners.mean(axis=0)
    facing = []
    for a, b in edges:
        mid = (a + b) / 2.0
        normal = mid - center
        if np.dot(normal, sensor_xy - mid) > 0.0:
            facing.append((a, b))
    if not facing:
        facing = edges
    pick = rng.integers(0, len(facing), count)
    frac = rng.uniform(0.1, 0.9, count)
    starts = np.array([facing[i][0] for i in pick])
    ends = np.array([facing[i][1] for i in pick])
    out: F64 = starts + (ends - starts) * frac[:, None]
    return out


def _occluded(
    points_xy: F64, sensor_xy: F64, boxes: SceneBoxes, source: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """[N] bool: the segment sensor -> point crosses another box's footprint first (2D slabs)."""
    n = points_xy.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    seg = points_xy - sensor_xy[None, :]  # [N, 2]
    c, s = np.cos(boxes.yaw_rad), np.sin(boxes.yaw_rad)  # [B]
    rel = sensor_xy[None, :] - boxes.center_m[:, :2]  # [B, 2]
    o_x = c * rel[:, 0] + s * rel[:, 1]
    o_y = -s * rel[:, 0] + c * rel[:, 1]
    d_x = c[:, None] * seg[None, :, 0] + s[:, None] * seg[None, :, 1]  # [B, N]
    d_y = -s[:, None] * seg[None, :, 0] + c[:, None] * seg[None, :, 1]
    hl, hw = boxes.size_wlh_m[:, 1:2] / 2.0, boxes.size_wlh_m[:, 0:1] / 2.0
    dx = np.where(np.abs(d_x) < 1e-9, 1e-9, d_x)
    dy = np.where(np.abs(d_y) < 1e-9, 1e-9, d_y)
    tx1, tx2 = (-hl - o_x[:, None]) / dx, (hl - o_x[:, None]) / dx
    ty1, ty2 = (-hw - o_y[:, None]) / dy, (hw - o_y[:, None]) / dy
    t_near = np.maximum(np.minimum(tx1, tx2), np.minimum(ty1, ty2))
    t_far = np.minimum(np.maximum(tx1, tx2), np.maximum(ty1, ty2))
    blocked = (t_far >= t_near) & (t_near > 0.0) & (t_near < 0.97)  # segment param: 1 = point
    blocked[source[source >= 0], np.nonzero(source >= 0)[0]] = False  # not by its own box
    out: npt.NDArray[np.bool_] = blocked.any(axis=0)
    return out


def simulate_sweep(
    world: World,
    spec: SensorSpec,
    t_s: float,
    rng: np.random.Generator,
    effects: dict[str, float],
) -> RadarSweep:
    """One radar measurement cycle at scene time t (s). `effects`: kind -> strength."""
    ego_xyz, ego_yaw = world.ego_pose(t_s)
    ego_vel, yaw_rate = world.ego_velocity(t_s)
    r_ego = rot_z(ego_yaw)
    mount = np.array(spec.translation_m)
    sensor_xyz = ego_xyz + r_ego @ mount
    rot = r_ego @ spec.rotation_matrix  # radar -> global
    lever = r_ego @ mount
    sensor_vel = ego_vel[:2] + yaw_rate * np.array([-lever[1], lever[0]])
    boxes = scene_boxes(world, t_s)
    rel = boxes.center_m[:, :2] - sensor_xyz[None, :2]
    dist = np.hypot(rel[:, 0], rel[:, 1])
    bearing = np.angle(
        np.exp(1j * (np.arctan2(rel[:, 1], rel[:, 0]) - np.arctan2(rot[1, 0], rot[0, 0])))
    )
    in_near = (np.abs(bearing) < NEAR_FOV_RAD) & (dist < NEAR_RANGE_M)
    in_far = (np.abs(bearing) < FAR_FOV_RAD) & (dist < FAR_RANGE_M)
    seen = np.nonzero((in_near | in_far) & (dist > 0.5))[0]
    # Returns come from just inside the faces (radar range noise is larger than LiDAR's).
    inset = np.maximum(boxes.size_wlh_m - 0.5, boxes.size_wlh_m * 0.5)
    corners = box_corners(boxes.center_m, inset, boxes.yaw_rad)[:, :4, :2]
    pts: list[F64] = []
    src: list[npt.NDArray[np.int64]] = []
    max_range = np.where(in_near, NEAR_RANGE_M, FAR_RANGE_M)
    rain = effects.get("rain", 0.0)
    for j in seen:
        rcs = boxes.rcs_dbsm[j]
        p_detect = np.clip(0.98 - 0.7 * (dist[j] / max_range[j]) ** 2 + 0.015 * rcs, 0.05, 0.98)
        p_detect *= 1.0 - 0.3 * rain
        if rng.random() > p_detect:
            continue
        expected = 0.6 + max(rcs, 0.0) / 8.0 - dist[j] / 60.0
        count = int(
            np.clip(rng.poisson(max(expected, 0.3)) + (1 if j < boxes.num_actors else 0), 0, 6)
        )
        if count == 0:
            continue
        pts.append(_sample_faces(rng, corners[j], sensor_xyz[:2], count))
        src.append(np.full(count, j, dtype=np.int64))
    if pts:
        xy = np.concatenate(pts)
        source = np.concatenate(src)
        xy = xy + rng.normal(0.0, 0.08, xy.shape)
        keep = ~_occluded(xy, sensor_xyz[:2], boxes, source)
        xy, source = xy[keep], source[keep]
    else:
        xy, source = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    return _to_sweep(rng, xy, source, boxes, sensor_xyz, sensor_vel, rot, effects)


def _to_sweep(
    rng: np.random.Generator,
    xy: F64,
    source: npt.NDArray[np.int64],
    boxes: SceneBoxes,
    sensor_xyz: F64,
    sensor_vel: F64,
    rot: F64,
    effects: dict[str, float],
) -> RadarSweep:
    """Fill the PCD fields for object returns and add clutter."""
    n_clutter = int(rng.poisson(25.0 + 20.0 * effects.get("rain", 0.0)))
    ang = rng.uniform(-NEAR_FOV_RAD, NEAR_FOV_RAD, n_clutter)
    rng_m = rng.uniform(2.0, NEAR_RANGE_M, n_clutter)
    local_clutter = np.stack([rng_m * np.cos(ang), rng_m * np.sin(ang)], axis=1)
    clutter_xy = local_clutter @ rot[:2, :2].T + sensor_xyz[None, :2]
    all_xy = np.concatenate([xy, clutter_xy])
    all_src = np.concatenate([source, np.full(n_clutter, -1, dtype=np.int64)])
    n = all_xy.shape[0]
    los = all_xy - sensor_xyz[None, :2]
    unit = los / np.maximum(np.linalg.norm(los, axis=1, keepdims=True), 1e-6)
    v_obj = np.where(all_src[:, None] >= 0, boxes.velocity_mps[np.maximum(all_src, 0)], 0.0)
    radial_comp = np.sum(v_obj * unit, axis=1) + rng.normal(0.0, 0.1, n)
    radial_rel = radial_comp - np.sum(sensor_vel[None, :] * unit, axis=1)
    to_local = rot[:2, :2].T  # global -> radar (yaw only)
    local = los @ to_local.T
    unit_local = unit @ to_local.T
    if n == 0:
        return empty_sweep()
    out = np.zeros(n, dtype=PCD_DTYPE)
    rcs = np.where(
        all_src >= 0, boxes.rcs_dbsm[np.maximum(all_src, 0)], rng.uniform(-10.0, 0.0, n)
    )
    out["x"], out["y"], out["z"] = local[:, 0], local[:, 1], 0.0
    out["rcs"] = np.round((rcs + rng.normal(0.0, 2.0, n)) * 2.0) / 2.0  # ARS-408 reports 0.5 dBsm
    out["vx"], out["vy"] = radial_rel * unit_local[:, 0], radial_rel * unit_local[:, 1]
    out["vx_comp"], out["vy_comp"] = radial_comp * unit_local[:, 0], radial_comp * unit_local[:, 1]
    moving = np.abs(radial_comp) > 0.5
    out["dyn_prop"] = np.where(moving, np.where(radial_comp < 0.0, 2, 0), 1)
    out["id"] = np.arange(n)
    out["is_quality_valid"] = 1
    clutter = all_src < 0
    out["ambig_state"] = np.where(clutter & (rng.random(n) < 0.3), 1, 3)
    out["invalid_state"] = np.where(clutter & (rng.random(n) < 0.5), rng.integers(1, 4, n), 0)
    out["dyn_prop"] = np.where(clutter & (rng.random(n) < 0.5), 3, out["dyn_prop"])
    out["pdh0"] = np.where(clutter, rng.integers(1, 5, n), 1)
    out["x_rms"], out["y_rms"] = rng.integers(3, 10, n), rng.integers(3, 10, n)
    out["vx_rms"], out["vy_rms"] = rng.integers(3, 8, n), rng.integers(3, 8, n)
    return RadarSweep(points=out, source=all_src)


def empty_sweep() -> RadarSweep:
    """A measurement without returns: nuScenes writes it as one NaN point (the devkit reads 0)."""
    points = np.zeros(1, dtype=PCD_DTYPE)
    for name in ("x", "y", "z"):
        points[name] = np.nan
    return RadarSweep(points=points, source=np.zeros(0, dtype=np.int64))


def write_pcd(path: Path, sweep: RadarSweep) -> None:
    """Binary PCD v0.7 as nuScenes radar files: 11 header lines, 43 bytes a point, and one
    trailing byte (the devkit's reader needs at least one byte after the last point)."""
    n = int(sweep.points.shape[0])
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\n"
        "VERSION 0.7\n"
        f"FIELDS {' '.join(PCD_FIELDS)}\n"
        f"SIZE {_PCD_SIZE}\n"
        f"TYPE {_PCD_TYPE}\n"
        f"COUNT {' '.join(['1'] * len(PCD_FIELDS))}\n"
        f"WIDTH {n}\n"
        "HEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\n"
        "DATA binary\n"
    )
    path.write_bytes(header.encode("ascii") + sweep.points.tobytes() + b"\n")
