"""What the benchmarks share: the machine they ran on, wall-clock timing, percentiles.

Every figure is wall time from `time.perf_counter` (the machine may be shared: other load only
ever adds time, so minimums and ratios measured side by side travel better than medians).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CLOCK = "wall clock (time.perf_counter)"
NUSCENES_SWEEP_POINTS = 34_720  # a nuScenes LIDAR_TOP sweep: 32 rings x 1085 azimuth steps
AnyArray = npt.NDArray[Any]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU model, cores, load, Python and numpy versions, plus the caller's own fields."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "cores_usable": usable_cores(),
        "load_average_1min": None if load is None else round(load[0], 2),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "clock": CLOCK,
    }
    info.update(extra)
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for the text renderings."""
    load = info.get("load_average_1min")
    return (
        f"{info['cpu_model']}, {info['cores_usable']} of {info['cores']} cores usable, "
        f"load average {'n/a' if load is None else load}, Python {info['python']}, "
        f"numpy {info['numpy']}; {info['clock']}"
    )


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50, p99, min and mean of wall-time samples given in seconds, in milliseconds."""
    if not samples_s:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "min_ms": float("nan")}
    values = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "min_ms": float(values.min()),
        "mean_ms": float(values.mean()),
    }


def time_interleaved(
    candidates: Mapping[str, Callable[[], object]], runs: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall-time samples (s) of each candidate, run in turns (a, b, a, b, ...) so that load
    from other processes falls on all of them alike; `warmup` untimed calls each first."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def lidar_sweep(num_points: int, seed: int, rings: int = 32) -> dict[str, AnyArray]:
    """Columns of a spinning-LiDAR sweep in its own frame (x, y, z, intensity float32, ring
    uint16): rings at HDL-32E elevations, returns off the ground plane 1.84 m below or off
    obstacles; seeded, every point a valid return (nuScenes sweeps hold only returns)."""
    rng = np.random.default_rng(seed)
    ring = np.arange(num_points) % rings
    elevation = np.deg2rad(np.linspace(-30.67, 10.67, rings))[ring]
    azimuth = rng.uniform(-np.pi, np.pi, num_points)
    ground_m = np.where(elevation < 0, 1.84 / np.tan(np.maximum(-elevation, 1e-3)), np.inf)
    obstacle_m = rng.uniform(3.0, 70.0, num_points)
    distance = np.minimum(ground_m, np.where(rng.random(num_points) < 0.3, obstacle_m, 80.0))
    flat = distance * np.cos(elevation)
    return {
        "x": (flat * np.cos(azimuth)).astype(np.float32),
        "y": (flat * np.sin(azimuth)).astype(np.float32),
        "z": (distance * np.sin(elevation)).astype(np.float32),
        "intensity": rng.uniform(0.0, 100.0, num_points).astype(np.float32),
        "ring": ring.astype(np.uint16),
    }
