"""Shared fixture of the data tests: one small generated nuScenes-format dataset per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTH_VERSION = "v1.0-synth"


@pytest.fixture(scope="session")
def synth3_dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three scenes of the "small" preset, seed 0 (synth_train: 2 scenes, synth_val: 1).

    Generated once per session (about 25 s here); tests must not modify it (copy first).
    """
    from peftdml_ros.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth3")
    return Path(generate_dataset(root, scenes=3, seed=0, preset="small", progress=False))


# Sensor outages in the one-scene outage dataset (seconds from the scene start, [start, end)).
OUTAGES: tuple[str, ...] = ("outage:RADAR_FRONT@0-1.2", "outage:LIDAR_TOP@0.9-1.6", "outage:IMU")


@pytest.fixture(scope="session")
def synth_outage_dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small scene whose front radar is out at the start and LiDAR in the middle; no IMU."""
    from peftdml_ros.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth_outage")
    return Path(
        generate_dataset(
            root, scenes=1, seed=0, preset="small", degradations=OUTAGES, progress=False
        )
    )
