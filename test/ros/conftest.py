"""Shared fixtures of the ROS-layer tests: one small generated dataset and its bag per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTH_VERSION = "v1.0-synth"


@pytest.fixture(scope="session")
def synth_dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2 s scene of the "small" preset in nuScenes format (about 15 s to generate)."""
    from peftdml_ros.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth_dataset")
    return Path(generate_dataset(root, scenes=1, seed=0, preset="small", progress=False))


@pytest.fixture(scope="session")
def synth_bag(synth_dataroot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That scene as a rosbag2 (MCAP) bag with every sensor topic, /tf, /tf_static and GT."""
    from peftdml_ros.data.bag_writer import write_bag

    out = tmp_path_factory.mktemp("synth_bags") / "scene"
    write_bag(synth_dataroot, SYNTH_VERSION, out, progress=False)
    return out
