"""The seeded procedural world: a road, the ego's drive along it, actors and static structures.

Everything moves on a flat ground plane (z = 0) in a global frame whose origin is the lower-left
corner of the scene's map image. Actors follow the road: an actor is at arc length
s(t) = s0 + v_s * t along the road's center line and at lateral offset d(t) = d0 + v_d * t
(left positive), with its yaw = road heading at s(t) + a constant offset. That one form gives
parked and moving vehicles, walking and crossing pedestrians and static cones and barriers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftdml_ros.data.synth.geometry import F64

LANE_WIDTH_M = 3.5
ROAD_HALF_WIDTH_M = 3.5  # one lane each way
CURB_M = 6.0  # parking strip from 3.5 m to 6 m, then the sidewalk
SIDEWALK_OUTER_M = 9.0
BUILDING_SETBACK_M = 12.0
MAP_MARGIN_M = 60.0
ROAD_STEP_M = 0.5
ANNOTATION_RANGE_M = 80.0


@dataclass(frozen=True)
class ClassSpec:
    """What a detection class looks like and how it behaves."""

    name: str  # detection class
    category: str  # nuScenes category
    size_wlh_m: tuple[float, float, float]
    color_bgr: tuple[int, int, int]
    reflectivity: float  # LiDAR, 0..1
    rcs_dbsm: float  # radar cross section


CLASS_SPECS: dict[str, ClassSpec] = {
    spec.name: spec
    for spec in (
        ClassSpec("car", "vehicle.car", (1.95, 4.6, 1.6), (160, 60, 40), 0.45, 10.0),
        ClassSpec("truck", "vehicle.truck", (2.5, 6.9, 2.9), (40, 120, 200), 0.5, 20.0),
        ClassSpec("bus", "vehicle.bus.rigid", (2.95, 11.2, 3.4), (40, 40, 210), 0.5, 22.0),
        ClassSpec("trailer", "vehicle.trailer", (2.6, 9.5, 3.6), (190, 190, 190), 0.55, 20.0),
        ClassSpec(
            "construction_vehicle",
            "vehicle.construction",
            (2.8, 6.4, 3.2),
            (20, 200, 240),
            0.5,
            18.0,
        ),
        ClassSpec(
            "pedestrian", "human.pedestrian.adult", (0.67, 0.73, 1.77), (60, 150, 60), 0.3, -5.0
        ),
        ClassSpec("motorcycle", "vehicle.motorcycle", (0.8, 2.1, 1.45), (120, 30, 140), 0.4, 3.0),
        ClassSpec("bicycle", "vehicle.bicycle", (0.6, 1.7, 1.3), (180, 160, 30), 0.35, -2.0),
        ClassSpec(
            "traffic_cone",
            "movable_object.trafficcone",
            (0.41, 0.41, 0.9),
            (20, 110, 255),
            0.9,
            -8.0,
        ),
        # nuScenes barriers have their long side across the heading (w ~ 2.5 m, l ~ 0.5 m).
        ClassSpec("barrier", "movable_object.barrier", (2.4, 0.5, 1.0), (230, 230, 235), 0.7, 2.0),
    )
}


@dataclass(frozen=True)
class Road:
    """A center line sampled every ROAD_STEP_M: s [K], xy [K, 2] (global m), heading [K] (rad).

    `drive_sign` is +1 for right-hand traffic (the ego's lane is at d = -1.75 m), -1 for left.
    """

    s_m: F64
    xy_m: F64
    heading_rad: F64
    drive_sign: float

    @property
    def length_m(self) -> float:
        return float(self.s_m[-1])

    def pose_at(self, s_m: F64, d_m: F64) -> tuple[F64, F64, F64]:
        """Global x, y and road heading at arc lengths s and lateral offsets d (same shapes)."""
        x = np.interp(s_m, self.s_m, self.xy_m[:, 0])
        y = np.interp(s_m, self.s_m, self.xy_m[:, 1])
        heading = np.interp(s_m, self.s_m, self.heading_rad)
        return x - d_m * np.sin(heading), y + d_m * np.cos(heading), heading

    def edge_polyline(self, d_m: float, s_from_m: float = 0.0, s_to_m: float = -1.0) -> F64:
        """[K, 2] global points of the line at lateral offset d between two arc lengths."""
        s_to_m = self.length_m if s_to_m < 0 else s_to_m
        mask = (self.s_m >= s_from_m) & (self.s_m <= s_to_m)
        x, y, _ = self.pose_at(self.s_m[mask], np.full(int(mask.sum()), d_m))
        return np.stack([x, y], axis=1)


def make_road(rng: np.random.Generator, length_m: float, drive_sign: float) -> Road:
    """A smooth road of straight stretches and arcs (radius 60..250 m), in global coordinates."""
    steps = int(np.ceil(length_m / ROAD_STEP_M)) + 1
    curvature = np.zeros(steps)
    i = 0
    while i < steps:
        run = int(rng.uniform(40.0, 120.0) / ROAD_STEP_M)
        if rng.random() < 0.55:
            curvature[i : i + run] = rng.choice([-1.0, 1.0]) / rng.uniform(60.0, 250.0)
        i += run
    # Smooth curvature changes over ~10 m so headings (and the ego's yaw rate) stay continuous.
    kernel = np.ones(21) / 21.0
    curvature = np.convolve(curvature, kernel, mode="same")
    heading = rng.uniform(-np.pi, np.pi) + np.concatenate([[0.0], np.cumsum(curvature[:-1])]) * (
        ROAD_STEP_M
    )
    x = np.concatenate([[0.0], np.cumsum(np.cos(heading[:-1]) * ROAD_STEP_M)])
    y = np.concatenate([[0.0], np.cumsum(np.sin(heading[:-1]) * ROAD_STEP_M)])
    margin = MAP_MARGIN_M
    x = x - x.min() + margin
    y = y - y.min() + margin
    s = np.arange(steps) * ROAD_STEP_M
    return Road(s_m=s, xy_m=np.stack([x, y], axis=1), heading_rad=heading, drive_sign=drive_sign)


@dataclass(frozen=True)
class EgoMotion:
    """The ego drives its lane with a smooth speed change from v0 to v1 over the scene."""

    s0_m: float
    v0_mps: float
    v1_mps: float
    duration_s: float
    lane_offset_m: float

    def s_at(self, t_s: F64) -> F64:
        """Arc length at scene times; constant speed v0 before 0 and v1 after the scene."""
        t = np.asarray(t_s, dtype=np.float64)
        dur = self.duration_s
        ds = (self.v1_mps - self.v0_mps) / 2.0
        inside = np.clip(t, 0.0, dur)
        s = self.v0_mps * inside + ds * (inside - dur / np.pi * np.sin(np.pi * inside / dur))
        before = np.minimum(t, 0.0)
        after = np.maximum(t - dur, 0.0)
        out: F64 = self.s0_m + s + self.v0_mps * before + self.v1_mps * after
        return out

    @property
    def max_speed_mps(self) -> float:
        return max(self.v0_mps, self.v1_mps)

    @property
    def min_speed_mps(self) -> float:
        return min(self.v0_mps, self.v1_mps)


@dataclass(frozen=True)
class Actors:
    """N annotated objects, as parallel arrays (see the module docstring for the motion form)."""

    name: tuple[str, ...]  # detection class
    attribute: tuple[str, ...]  # nuScenes attribute ("" for cones and barriers)
    size_wlh_m: F64  # [N, 3]
    s0_m: F64
    d0_m: F64
    v_s_mps: F64
    v_d_mps: F64
    yaw_offset_rad: F64
    color_bgr: F64  # [N, 3]
    rider: tuple[bool, ...]  # cycles: drawn with a rider

    def __len__(self) -> int:
        return len(self.name)


@dataclass(frozen=True)
class Statics:
    """Unannotated structures (buildings, poles): boxes fixed in the global frame."""

    center_m: F64  # [M, 3]
    size_wlh_m: F64  # [M, 3]
    yaw_rad: F64  # [M]
    color_bgr: F64  # [M, 3]
    reflectivity: F64  # [M]


@dataclass(frozen=True)
class BoxStates:
    """Boxes at one instant: center [N, 3] (global m), size_wlh [N, 3], yaw [N], velocity
    [N, 2] (m/s)."""

    center_m: F64
    size_wlh_m: F64
    yaw_rad: F64
    velocity_mps: F64


@dataclass(frozen=True)
class World:
    road: Road
    ego: EgoMotion
    actors: Actors
    statics: Statics

    def ego_pose(self, t_s: float) -> tuple[F64, float]:
        """Ego position [x, y, 0] (global m) and yaw (rad) at scene time t (s)."""
        s = np.array([float(self.ego.s_at(np.array(t_s)))])
        x, y, heading = self.road.pose_at(s, np.array([self.ego.lane_offset_m]))
        return np.array([x[0], y[0], 0.0]), float(heading[0])

    def ego_velocity(self, t_s: float, dt_s: float = 1e-3) -> tuple[F64, float]:
        """Ego velocity [vx, vy, 0] (global m/s) and yaw rate (rad/s) at scene time t."""
        p1, yaw1 = self.ego_pose(t_s + dt_s)
        p0, yaw0 = self.ego_pose(t_s - dt_s)
        dyaw = float(np.angle(np.exp(1j * (yaw1 - yaw0))))
        return (p1 - p0) / (2 * dt_s), dyaw / (2 * dt_s)

    def actor_states(self, t_s: float) -> BoxStates:
        """All actors at scene time t (s)."""
        center, yaw = self._actor_pose(t_s)
        dt_s = 1e-3
        center_next, _ = self._actor_pose(t_s + dt_s)
        center_prev, _ = self._actor_pose(t_s - dt_s)
        velocity = (center_next[:, :2] - center_prev[:, :2]) / (2 * dt_s)
        return BoxStates(center, self.actors.size_wlh_m, yaw, velocity)

    def _actor_pose(self, t_s: float) -> tuple[F64, F64]:
        a = self.actors
        s = a.s0_m + a.v_s_mps * t_s
        d = a.d0_m + a.v_d_mps * t_s
        x, y, heading = self.road.pose_at(s, d)
        center = np.stack([x, y, a.size_wlh_m[:, 2] / 2.0], axis=1)
        return center, heading + a.yaw_offset_rad


class _ActorList:
    """Collects actors while a scenario is built."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[
            tuple[
                str,
                str,
                tuple[float, float, float],
                float,
                float,
                float,
                float,
                float,
                tuple[int, int, int],
                bool,
            ]
        ] = []

    def add(
        self,
        name: str,
        attribute: str,
        s0_m: float,
        d0_m: float,
        *,
        v_s_mps: float = 0.0,
        v_d_mps: float = 0.0,
        yaw_offset_rad: float = 0.0,
        rider: bool = False,
    ) -> None:
        spec = CLASS_SPECS[name]
        scale = self.rng.uniform(0.9, 1.1, 3)
        size = tuple(float(v) for v in np.array(spec.size_wlh_m) * scale)
        color = spec.color_bgr
        if name == "car":  # cars come in many colours; other classes keep one look
            palette = [
                (160, 60, 40),
                (30, 30, 30),
                (200, 200, 205),
                (40, 40, 170),
                (90, 90, 95),
                (30, 90, 30),
                (20, 160, 210),
            ]
            color = palette[int(self.rng.integers(len(palette)))]
        self.rows.append(
            (
                name,
                attribute,
                (size[0], size[1], size[2]),
                s0_m,
                d0_m,
                v_s_mps,
                v_d_mps,
                yaw_offset_rad,
                color,
                rider,
            )
        )

    def is_free(
        self,
        s0_m: float,
        d0_m: float,
        v_s_mps: float,
        v_d_mps: float,
        radius_m: float,
        times_s: F64,
        ego: EgoMotion | None = None,
    ) -> bool:
        """Whether a candidate mover keeps clear of every actor (and the ego) at `times_s`.

        Distances are taken in road coordinates (s, d), which is exact enough for clearance.
        """
        s_c = s0_m + v_s_mps * times_s
        d_c = d0_m + v_d_mps * times_s
        for row in self.rows:
            size, s0, d0, vs, vd = row[2], row[3], row[4], row[5], row[6]
            gap = radius_m + max(size[0], size[1]) / 2.0 + 0.5
            ds = s_c - (s0 + vs * times_s)
            dd = d_c - (d0 + vd * times_s)
            if np.any(np.hypot(ds, dd) < gap):
                return False
        if ego is not None:
            ds = s_c - (ego.s_at(times_s) + 1.4)  # the ego's middle is 1.4 m ahead of its axle
            dd = d_c - ego.lane_offset_m
            if np.any(np.hypot(ds, dd) < radius_m + 3.5):
                return False
        return True

    def build(self) -> Actors:
        cols = list(zip(*self.rows, strict=True)) if self.rows else [()] * 10
        return Actors(
            name=tuple(cols[0]),
            attribute=tuple(cols[1]),
            size_wlh_m=np.array(cols[2], dtype=np.float64).reshape(-1, 3),
            s0_m=np.array(cols[3], dtype=np.float64),
            d0_m=np.array(cols[4], dtype=np.float64),
            v_s_mps=np.array(cols[5], dtype=np.float64),
            v_d_mps=np.array(cols[6], dtype=np.float64),
            yaw_offset_rad=np.array(cols[7], dtype=np.float64),
            color_bgr=np.array(cols[8], dtype=np.float64).reshape(-1, 3),
            rider=tuple(bool(v) for v in cols[9]),
        )


class _Slots:
    """Free stretches of the curb strip (per side) so parked things never overlap."""

    def __init__(self) -> None:
        self.taken: dict[float, list[tuple[float, float]]] = {-1.0: [], 1.0: []}

    def take(self, side: float, s_m: float, length_m: float) -> bool:
        lo, hi = s_m - length_m / 2.0 - 0.8, s_m + length_m / 2.0 + 0.8
        if any(lo < b and a < hi for a, b in self.taken[side]):
            return False
        self.taken[side].append((lo, hi))
        return True


def build_world(
    rng: np.random.Generator, duration_s: float, density: float, drive_sign: float
) -> World:
    """A scene's world. `density` scales the number of optional actors (1.0 = urban)."""
    v0, v1 = rng.uniform(4.0, 10.0), rng.uniform(4.0, 10.0)
    s_ego0 = 90.0
    travel_m = max(v0, v1) * duration_s
    road = make_road(rng, s_ego0 + travel_m + 200.0, drive_sign)
    ego = EgoMotion(s_ego0, v0, v1, duration_s, -1.75 * drive_sign)
    actors = _ActorList(rng)
    slots = _Slots()
    s_end = float(ego.s_at(np.array(duration_s)))
    _place_guaranteed(actors, slots, rng, ego, drive_sign)
    _place_traffic(actors, rng, ego, s_end, density, drive_sign)
    _place_roadside(actors, slots, rng, ego, s_end, density, drive_sign)
    _place_crossings(actors, rng, ego, density)
    statics = _place_statics(rng, road)
    return World(road=road, ego=ego, actors=actors.build(), statics=statics)


def _work_zone(
    actors: _ActorList, slots: _Slots, rng: np.random.Generator, s_m: float, side: float
) -> bool:
    """A construction vehicle on the sidewalk behind a row of cones and barriers on the curb
    strip (side: -1 right, +1 left of the center line). False where the strip is taken."""
    if not slots.take(side, s_m, 16.0):
        return False
    attr = "vehicle.parked" if rng.random() < 0.6 else "vehicle.stopped"
    actors.add("construction_vehicle", attr, s_m, side * 7.6)
    for k in range(5):
        actors.add("traffic_cone", "", s_m - 7.0 + 3.5 * k, side * 3.9)
    for k in range(3):
        actors.add("barrier", "", s_m - 5.0 + 5.0 * k, side * 5.4, yaw_offset_rad=np.pi / 2)
    return True


def _place_guaranteed(
    actors: _ActorList, slots: _Slots, rng: np.random.Generator, ego: EgoMotion, r: float
) -> None:
    """One object of every class within its detection range of the ego's start.

    The curb strip on the ego's side is at d = -r * 4.75 m; the far side at +r * 4.75 m.
    """
    s0 = ego.s0_m
    own, far = -r, r
    _work_zone(actors, slots, rng, s0 + rng.uniform(12.0, 20.0), far)
    # Parked vehicles on the ego's side, close ahead.
    s = s0 + rng.uniform(4.0, 8.0)
    for name, attr in (
        ("car", "vehicle.parked"),
        ("trailer", "vehicle.parked"),
        ("truck", "vehicle.parked"),
    ):
        length = CLASS_SPECS[name].size_wlh_m[1] * 1.1
        s += length / 2.0
        if slots.take(own, s, length):
            actors.add(name, attr, s, own * 4.75, yaw_offset_rad=0.0)
        s += length / 2.0 + rng.uniform(2.0, 4.0)
    # A bus at a stop behind the ego on its side (stopped, in the curb strip).
    s_bus = s0 - rng.uniform(15.0, 22.0)
    if slots.take(own, s_bus, 12.5):
        actors.add("bus", "vehicle.stopped", s_bus, own * 4.75)
    # Beside the ego the curb strip stays empty, so nothing hides the sidewalk there: a parked
    # motorcycle and a pedestrian; a cyclist rides the lane edge just ahead.
    slots.take(own, s0 - 2.5, 9.0)
    actors.add(
        "motorcycle",
        "cycle.without_rider",
        s0 + rng.uniform(-4.0, -1.0),
        own * 6.9,
        yaw_offset_rad=np.pi / 2,
    )
    v_ped = rng.uniform(0.8, 1.3) * rng.choice([-1.0, 1.0])
    actors.add(
        "pedestrian",
        "pedestrian.moving",
        s0 + rng.uniform(0.0, 2.0),
        own * 7.6,
        v_s_mps=v_ped,
        yaw_offset_rad=0.0 if v_ped > 0 else np.pi,
    )
    v_cyc = rng.uniform(3.0, 4.5)
    actors.add(
        "bicycle", "cycle.with_rider", s0 + rng.uniform(8.0, 14.0), own * 3.05, v_s_mps=v_cyc,
        rider=True,
    )  # fmt: skip


def _place_traffic(
    actors: _ActorList,
    rng: np.random.Generator,
    ego: EgoMotion,
    s_end: float,
    density: float,
    r: float,
) -> None:
    """Moving vehicles and cyclists. Same-lane movers share one speed, so they never collide."""
    s0 = ego.s0_m
    # Ego-lane leaders, faster than the ego (the ego never reaches them).
    v_lead = ego.max_speed_mps + rng.uniform(1.0, 4.0)
    s = s0 + rng.uniform(10.0, 18.0)
    for _ in range(int(rng.integers(1, 3 + int(2 * density)))):
        name = str(rng.choice(["car", "car", "truck", "bus", "motorcycle"]))
        length = CLASS_SPECS[name].size_wlh_m[1] * 1.1
        s += length / 2.0
        attr = "cycle.with_rider" if name == "motorcycle" else "vehicle.moving"
        actors.add(name, attr, s, -1.75 * r, v_s_mps=v_lead, rider=name == "motorcycle")
        if name == "truck" and rng.random() < 0.5:  # a truck towing a trailer
            trailer_len = CLASS_SPECS["trailer"].size_wlh_m[1] * 1.1
            s_trailer = s - length / 2.0 - trailer_len / 2.0 - 0.8
            actors.add("trailer", "vehicle.moving", s_trailer, -1.75 * r, v_s_mps=v_lead)
            s += trailer_len
        s += length / 2.0 + rng.uniform(8.0, 25.0)
    # Oncoming lane: one platoon coming towards the ego.
    v_on = rng.uniform(5.0, 12.0)
    s = s0 + rng.uniform(15.0, 40.0)
    for _ in range(int(rng.integers(2, 3 + int(6 * density)))):
        name = str(rng.choice(["car", "car", "car", "truck", "bus", "motorcycle", "trailer"]))
        length = CLASS_SPECS[name].size_wlh_m[1] * 1.1
        s += length / 2.0
        attr = "cycle.with_rider" if name == "motorcycle" else "vehicle.moving"
        actors.add(
            name,
            attr,
            s,
            1.75 * r,
            v_s_mps=-v_on,
            yaw_offset_rad=np.pi,
            rider=name == "motorcycle",
        )
        s += length / 2.0 + rng.uniform(10.0, 30.0)
    # Cyclists along the lane edge on the ego's side, ahead or behind, slower than the ego.
    times = np.linspace(0.0, ego.duration_s, int(ego.duration_s * 4) + 2)
    for _ in range(int(rng.integers(1, 2 + int(2 * density)))):
        v_cyc, s_cyc = rng.uniform(3.0, 6.0), s0 + rng.uniform(-25.0, 60.0)
        if actors.is_free(s_cyc, -3.05 * r, v_cyc, 0.0, 1.0, times):
            actors.add("bicycle", "cycle.with_rider", s_cyc, -3.05 * r, v_s_mps=v_cyc, rider=True)


def _place_crossings(
    actors: _ActorList, rng: np.random.Generator, ego: EgoMotion, density: float
) -> None:
    """Pedestrians crossing the road where nothing (nor the ego) is in their way at any time."""
    times = np.linspace(0.0, ego.duration_s, int(ego.duration_s * 4) + 2)
    for _ in range(int(rng.integers(1, 2 + int(4 * density)))):
        v_cross = rng.uniform(1.0, 1.6) * rng.choice([-1.0, 1.0])
        s_x, d_x = ego.s0_m + rng.uniform(-30.0, 60.0), rng.uniform(-8.0, 8.0)
        if actors.is_free(s_x, d_x, 0.0, v_cross, 0.5, times, ego):
            actors.add(
                "pedestrian",
                "pedestrian.moving",
                s_x,
                d_x,
                v_d_mps=v_cross,
                yaw_offset_rad=np.pi / 2 if v_cross > 0 else -np.pi / 2,
            )


def _place_roadside(
    actors: _ActorList,
    slots: _Slots,
    rng: np.random.Generator,
    ego: EgoMotion,
    s_end: float,
    density: float,
    r: float,
) -> None:
    """Parked vehicles, pedestrians on sidewalks, cones and barrier rows along the ego's drive."""
    lo, hi = ego.s0_m - 40.0, s_end + 60.0
    times = np.linspace(0.0, ego.duration_s, int(ego.duration_s * 4) + 2)
    for s in np.arange(ego.s0_m + 60.0, hi, 90.0):  # more work zones along longer drives
        if rng.random() < 0.6 * density:
            _work_zone(
                actors, slots, rng, s + rng.uniform(-20.0, 20.0), float(rng.choice([-r, r]))
            )
    for _ in range(int((hi - lo) / 25.0 * density)):  # cycles parked across the sidewalk
        name = "bicycle" if rng.random() < 0.6 else "motorcycle"
        side, s = float(rng.choice([-1.0, 1.0])), rng.uniform(lo, hi)
        if actors.is_free(s, side * 6.7, 0.0, 0.0, 1.0, times):
            actors.add(name, "cycle.without_rider", s, side * 6.7, yaw_offset_rad=np.pi / 2)
    parked = ["car"] * 6 + ["truck", "trailer", "motorcycle", "bus"]
    for _ in range(int((hi - lo) / 4.5 * density)):
        name = str(rng.choice(parked))
        side = float(rng.choice([-1.0, 1.0]))
        length = CLASS_SPECS[name].size_wlh_m[1] * 1.1
        s = rng.uniform(lo, hi)
        if not slots.take(side, s, length):
            continue
        attr = "cycle.without_rider" if name == "motorcycle" else "vehicle.parked"
        yaw = 0.0 if side == -r else np.pi  # parked in the direction of its side's traffic
        actors.add(name, attr, s, side * 4.75, yaw_offset_rad=yaw)
    for _ in range(int((hi - lo) / 5.0 * density)):
        side = float(rng.choice([-1.0, 1.0]))
        s = rng.uniform(lo, hi)
        if rng.random() < 0.3:
            actors.add(
                "pedestrian",
                "pedestrian.standing",
                s,
                side * rng.uniform(6.5, 8.5),
                yaw_offset_rad=rng.uniform(-np.pi, np.pi),
            )
        else:
            v, d = rng.uniform(0.8, 1.7) * rng.choice([-1.0, 1.0]), side * rng.uniform(6.5, 8.5)
            if actors.is_free(s, d, v, 0.0, 0.4, times):
                actors.add(
                    "pedestrian",
                    "pedestrian.moving",
                    s,
                    d,
                    v_s_mps=v,
                    yaw_offset_rad=0.0 if v > 0 else np.pi,
                )
    for _ in range(int(rng.integers(0, 2 + int(2 * density)))):
        side = float(rng.choice([-1.0, 1.0]))
        s = rng.uniform(lo, hi)
        count = int(rng.integers(3, 7))
        if not slots.take(side, s, count * 2.6):
            continue
        kind = str(rng.choice(["barrier", "traffic_cone"]))
        for k in range(count):
            pos = s - count * 1.3 + 2.6 * k + 1.3
            if kind == "barrier":
                actors.add("barrier", "", pos, side * 4.2, yaw_offset_rad=np.pi / 2)
            else:
                actors.add("traffic_cone", "", pos, side * 3.9)


def _place_statics(rng: np.random.Generator, road: Road) -> Statics:
    """Buildings behind the sidewalks and poles along them, the whole length of the road."""
    centers, sizes, yaws, colors, refl = [], [], [], [], []
    for side in (-1.0, 1.0):
        s = rng.uniform(0.0, 10.0)
        while s < road.length_m - 10.0:
            length = rng.uniform(8.0, 20.0)
            depth = rng.uniform(8.0, 16.0)
            height = rng.uniform(5.0, 22.0)
            d = side * (BUILDING_SETBACK_M + rng.uniform(0.0, 4.0) + depth / 2.0)
            x, y, heading = road.pose_at(np.array([s + length / 2.0]), np.array([d]))
            centers.append((x[0], y[0], height / 2.0))
            sizes.append((depth, length, height))
            yaws.append(heading[0])
            shade = rng.uniform(90.0, 200.0)
            colors.append((shade * rng.uniform(0.8, 1.0), shade * rng.uniform(0.85, 1.0), shade))
            refl.append(rng.uniform(0.2, 0.5))
            s += length + rng.uniform(1.5, 8.0)
        s = rng.uniform(0.0, 25.0)
        while s < road.length_m:
            x, y, heading = road.pose_at(np.array([s]), np.array([side * 8.8]))
            centers.append((x[0], y[0], 3.5))
            sizes.append((0.25, 0.25, 7.0))
            yaws.append(heading[0])
            colors.append((70.0, 70.0, 75.0))
            refl.append(0.4)
            s += rng.uniform(20.0, 35.0)
    return Statics(
        center_m=np.array(centers),
        size_wlh_m=np.array(sizes),
        yaw_rad=np.array(yaws),
        color_bgr=np.array(colors),
        reflectivity=np.array(refl),
    )


@dataclass(frozen=True)
class SceneBoxes:
    """Every box at one instant: actors first (index = actor index), then statics.

    center [B, 3], size_wlh [B, 3], yaw [B], velocity [B, 2] (global m, rad, m/s),
    reflectivity [B] (LiDAR, 0..1), rcs_dbsm [B], color_bgr [B, 3].
    """

    center_m: F64
    size_wlh_m: F64
    yaw_rad: F64
    velocity_mps: F64
    reflectivity: F64
    rcs_dbsm: F64
    color_bgr: F64
    num_actors: int


def scene_boxes(world: World, t_s: float) -> SceneBoxes:
    """Actors at scene time t plus the static structures, in one set of arrays."""
    states = world.actor_states(t_s)
    actors, statics = world.actors, world.statics
    refl = np.array([CLASS_SPECS[n].reflectivity for n in actors.name])
    rcs = np.array([CLASS_SPECS[n].rcs_dbsm for n in actors.name])
    num_static = len(statics.yaw_rad)
    # Buildings and poles: big flat walls reflect strongly for radar (dBsm per face patch).
    static_rcs = np.where(statics.size_wlh_m[:, 0] < 1.0, 5.0, 15.0)
    return SceneBoxes(
        center_m=np.concatenate([states.center_m.reshape(-1, 3), statics.center_m]),
        size_wlh_m=np.concatenate([states.size_wlh_m.reshape(-1, 3), statics.size_wlh_m]),
        yaw_rad=np.concatenate([states.yaw_rad, statics.yaw_rad]),
        velocity_mps=np.concatenate(
            [states.velocity_mps.reshape(-1, 2), np.zeros((num_static, 2))]
        ),
        reflectivity=np.concatenate([refl, statics.reflectivity]),
        rcs_dbsm=np.concatenate([rcs, static_rcs]),
        color_bgr=np.concatenate([actors.color_bgr.reshape(-1, 3), statics.color_bgr]),
        num_actors=len(actors),
    )


def ray_box_hits(
    origin_m: F64, dirs: F64, boxes: SceneBoxes, j: int, inset_m: float = 0.0
) -> tuple[F64, F64]:
    """Slab test of rays from one origin against box j, shrunk by `inset_m` on every side.

    origin [3], dirs [M, 3] unit vectors (global). Returns the distance to the box [M] (inf where
    the ray misses) and the cosine between the ray and the normal of the face it enters [M].
    """
    c, s = np.cos(boxes.yaw_rad[j]), np.sin(boxes.yaw_rad[j])
    rel = origin_m - boxes.center_m[j]
    o_x, o_y, o_z = c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]
    d_x = c * dirs[:, 0] + s * dirs[:, 1]  # ray directions in the box frame (x along length)
    d_y = -s * dirs[:, 0] + c * dirs[:, 1]
    d_z = dirs[:, 2]
    h_x, h_y, h_z = np.maximum(boxes.size_wlh_m[j][[1, 0, 2]] / 2.0 - inset_m, 0.01)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Axis-parallel rays give +-inf (or nan, which compares false): no hit on that slab.
        a_x, b_x = (-h_x - o_x) / d_x, (h_x - o_x) / d_x
        a_y, b_y = (-h_y - o_y) / d_y, (h_y - o_y) / d_y
        a_z, b_z = (-h_z - o_z) / d_z, (h_z - o_z) / d_z
        n_x, n_y, n_z = np.minimum(a_x, b_x), np.minimum(a_y, b_y), np.minimum(a_z, b_z)
        t_near = np.maximum(np.maximum(n_x, n_y), n_z)
        t_far = np.minimum(
            np.minimum(np.maximum(a_x, b_x), np.maximum(a_y, b_y)), np.maximum(a_z, b_z)
        )
        hit = (t_far >= t_near) & (t_near > 0.0)
    cosine = np.where(
        t_near == n_x, np.abs(d_x), np.where(t_near == n_y, np.abs(d_y), np.abs(d_z))
    )
    return np.where(hit, t_near, np.inf), cosine
