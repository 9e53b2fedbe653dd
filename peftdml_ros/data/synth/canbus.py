"""CAN bus messages in the nuScenes CAN bus format (what `NuScenesCanBus` reads).

`<scene>_ms_imu.json` (100 Hz): utime (us), linear_accel (m/s^2, ego frame, gravity included
as on the real IMU), rotation_rate (rad/s, ego frame), q (orientation, w x y z).
`<scene>_pose.json` (50 Hz): utime, pos (global m), orientation (w x y z), vel (m/s, ego frame),
accel (m/s^2, ego frame, without gravity), rotation_rate (rad/s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from peftdml_ros.data.synth.degrade import Degradation
from peftdml_ros.data.synth.geometry import F64, yaw_quaternion
from peftdml_ros.data.synth.rig import IMU_RATE_HZ, POSE_RATE_HZ
from peftdml_ros.data.synth.world import World

GRAVITY_MPS2 = 9.81
MARGIN_S = 0.5  # CAN data starts before the first sample and ends after the last one


def _kinematics(world: World, t_s: F64) -> tuple[F64, F64, F64, F64, F64]:
    """Position [T, 3], yaw [T], velocity and acceleration in the ego frame [T, 3] and yaw
    rate [T] at scene times t (s), by central differences of the ego's path."""
    dt = 0.01
    pos = np.array([world.ego_pose(float(t))[0] for t in t_s])
    yaw = np.array([world.ego_pose(float(t))[1] for t in t_s])
    ahead = np.array([world.ego_pose(float(t) + dt)[0] for t in t_s])
    behind = np.array([world.ego_pose(float(t) - dt)[0] for t in t_s])
    vel_g = (ahead - behind) / (2 * dt)
    acc_g = (ahead - 2 * pos + behind) / dt**2
    yaw_ahead = np.array([world.ego_pose(float(t) + dt)[1] for t in t_s])
    yaw_behind = np.array([world.ego_pose(float(t) - dt)[1] for t in t_s])
    yaw_rate = np.angle(np.exp(1j * (yaw_ahead - yaw_behind))) / (2 * dt)
    c, s = np.cos(yaw), np.sin(yaw)

    def to_ego(v: F64) -> F64:
        return np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1], v[:, 2]], axis=1)

    return pos, yaw, to_ego(vel_g), to_ego(acc_g), yaw_rate


def _times(duration_s: float, rate_hz: float) -> F64:
    count = round((duration_s + 2 * MARGIN_S) * rate_hz) + 1
    return -MARGIN_S + np.arange(count) / rate_hz


def _round(values: F64) -> list[float]:
    return [round(float(v), 6) for v in values]


def write_can_bus(
    can_dir: Path,
    scene_name: str,
    world: World,
    t0_us: int,
    duration_s: float,
    rng: np.random.Generator,
    degradations: tuple[Degradation, ...],
) -> None:
    """Write `<scene>_ms_imu.json` and `<scene>_pose.json`; `outage:IMU` leaves IMU gaps."""
    can_dir.mkdir(parents=True, exist_ok=True)
    t_imu = _times(duration_s, IMU_RATE_HZ)
    pos, yaw, vel, acc, yaw_rate = _kinematics(world, t_imu)
    imu: list[dict[str, Any]] = []
    for i, t in enumerate(t_imu):
        if any(
            d.kind == "outage" and d.applies(scene_name, "IMU", float(t)) for d in degradations
        ):
            continue
        accel = acc[i] + np.array([0.0, 0.0, GRAVITY_MPS2]) + rng.normal(0.0, 0.05, 3)
        rate = np.array([0.0, 0.0, yaw_rate[i]]) + rng.normal(0.0, 0.002, 3)
        imu.append(
            {
                "linear_accel": _round(accel),
                "q": _round(np.array(yaw_quaternion(float(yaw[i])))),
                "rotation_rate": _round(rate),
                "utime": int(t0_us + round(t * 1e6)),
            }
        )
    t_pose = _times(duration_s, POSE_RATE_HZ)
    pos, yaw, vel, acc, yaw_rate = _kinematics(world, t_pose)
    pose: list[dict[str, Any]] = []
    for i, t in enumerate(t_pose):
        pose.append(
            {
                "accel": _round(acc[i]),
                "orientation": _round(np.array(yaw_quaternion(float(yaw[i])))),
                "pos": _round(pos[i]),
                "rotation_rate": _round(np.array([0.0, 0.0, yaw_rate[i]])),
                "utime": int(t0_us + round(t * 1e6)),
                "vel": _round(vel[i]),
            }
        )
    (can_dir / f"{scene_name}_ms_imu.json").write_text(json.dumps(imu))
    (can_dir / f"{scene_name}_pose.json").write_text(json.dumps(pose))
