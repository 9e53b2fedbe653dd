"""Test-wide set-up: every test run talks ROS only to itself, and property tests are repeatable.

The environment is set before anything imports rclpy: a domain id of this run's own (derived from
the process id), discovery limited to localhost, ROS logs and home in a temporary directory, and
the package's Fast DDS profile (large messages between processes). Child processes inherit it.

Hypothesis runs with a fixed seed per test (derandomize), no deadline (shared CI machines are
slow at random moments) and no example database (a failure saved on one machine would replay on
no other): every run draws the same examples, so a run never finds a new failing example by
chance. Set HYPOTHESIS_PROFILE=explore to draw fresh examples while developing.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parents[1]

_ROS_TMP = Path(tempfile.mkdtemp(prefix="peftdml-test-ros-"))
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 200)  # valid ids are 0..232
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOG_DIR"] = str(_ROS_TMP / "log")
os.environ["ROS_HOME"] = str(_ROS_TMP / "home")
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO_ROOT / "config" / "fastdds_profile.xml")
# The venv's Fast DDS 3 reads only the name above; given the old one too, it loads the file twice.
os.environ.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# What `source .venv/bin/activate` sets: ament_index finds the packages installed in this venv.
if sys.prefix not in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
        p for p in (sys.prefix, os.environ.get("AMENT_PREFIX_PATH", "")) if p
    )

settings.register_profile("repeatable", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
# Loaded before any test module is imported: the tests' own @settings inherit from it.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def rclpy_context():  # type: ignore[no-untyped-def]
    """A fresh rclpy context for one test, shut down afterwards."""
    import rclpy  # the venv always has it: a missing rclpy must fail, not skip

    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)
