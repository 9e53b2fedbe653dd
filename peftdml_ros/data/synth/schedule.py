"""When each sensor fires: nuScenes rates and key-frame rules, and sensor outages.

Samples (key frames) are 2 Hz and hang on LIDAR_TOP sweeps (20 Hz, every 10th is a key frame).
Cameras (12 Hz) fire as the spinning LiDAR passes their optical axis, so a camera's key frame
is a few ms off its sample; radars (13 Hz) run free and their key frame is the sweep nearest to
each sample. A non-key sweep belongs to the next sample (the devkit interpolates its boxes
between the previous and that sample). Sweeps after the last sample are not written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftdml_ros.data.synth.degrade import Degradation
from peftdml_ros.data.synth.rig import CAMERAS, RADARS

SAMPLE_PERIOD_US = 500_000
LIDAR_PERIOD_US = 50_000
LIDAR_SWEEP_US = 50_000


@dataclass(frozen=True)
class SensorFrame:
    """One sample_data to generate. `t_us` absolute; `sample` index of its sample;
    `empty`: the sensor is out but the record must exist (LIDAR_TOP outage)."""

    channel: str
    t_us: int
    is_key: bool
    sample: int
    empty: bool = False


def sample_times_us(t0_us: int, num_samples: int) -> list[int]:
    return [t0_us + k * SAMPLE_PERIOD_US for k in range(num_samples)]


def camera_offset_us(yaw_rad: float) -> int:
    """When the LiDAR beam passes a camera's axis, relative to the sweep's mid time.

    Sector k of lidar.py fires at (k + 0.5) / 16 of the sweep and looks at LiDAR-frame azimuth
    (k + 0.5) * 22.5 deg; the LiDAR frame's azimuth is the ego yaw + 90 deg.
    """
    fraction = ((np.rad2deg(yaw_rad) + 90.0) % 360.0) / 360.0
    return round(float(fraction - 0.5) * LIDAR_SWEEP_US)


def _next_sample(t_us: int, samples: list[int]) -> int:
    return min(int(np.searchsorted(samples, t_us, side="left")), len(samples) - 1)


def build_schedule(
    scene: str,
    t0_us: int,
    num_samples: int,
    radar_phase_us: dict[str, int],
    degradations: tuple[Degradation, ...],
) -> dict[str, list[SensorFrame]]:
    """Per channel, its frames in time order (outages applied)."""
    samples = sample_times_us(t0_us, num_samples)
    t_last = samples[-1]
    out: dict[str, list[SensorFrame]] = {}
    lidar = []
    for i in range((num_samples - 1) * 10 + 1):
        t = t0_us + i * LIDAR_PERIOD_US
        key = i % 10 == 0
        lidar.append(
            SensorFrame("LIDAR_TOP", t, key, i // 10 if key else _next_sample(t, samples))
        )
    out["LIDAR_TOP"] = lidar
    for cam in CAMERAS:
        offset = camera_offset_us(cam.yaw_rad)
        frames = []
        for j in range((num_samples - 1) * 6 + 1):
            t = t0_us + offset + round(j * 1e6 / 12.0)
            key = j % 6 == 0
            frames.append(
                SensorFrame(cam.channel, t, key, j // 6 if key else _next_sample(t, samples))
            )
        out[cam.channel] = frames
    for radar in RADARS:
        times = []
        t, j = t0_us - 40_000 + radar_phase_us[radar.channel], 0
        while t <= t_last + 40_000:
            times.append(t)
            j += 1
            t = t0_us - 40_000 + radar_phase_us[radar.channel] + round(j * 1e6 / 13.0)
        arr = np.array(times)
        keys = {int(np.argmin(np.abs(arr - s))): k for k, s in enumerate(samples)}
        frames = []
        for idx, t in enumerate(times):
            if idx in keys:
                frames.append(SensorFrame(radar.channel, t, True, keys[idx]))
            elif t <= t_last:
                frames.append(SensorFrame(radar.channel, t, False, _next_sample(t, samples)))
        out[radar.channel] = frames
    return {ch: _apply_outages(scene, t0_us, frames, degradations) for ch, frames in out.items()}


def _apply_outages(
    scene: str, t0_us: int, frames: list[SensorFrame], degradations: tuple[Degradation, ...]
) -> list[SensorFrame]:
    kept = []
    for f in frames:
        t_rel = (f.t_us - t0_us) / 1e6
        out = any(d.kind == "outage" and d.applies(scene, f.channel, t_rel) for d in degradations)
        if not out:
            kept.append(f)
        elif f.channel == "LIDAR_TOP":
            kept.append(SensorFrame(f.channel, f.t_us, f.is_key, f.sample, empty=True))
    return kept
