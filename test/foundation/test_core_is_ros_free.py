"""The core, data and tools packages import and work with rclpy and ROS messages unavailable."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import peftdml_ros

# Runs in a fresh interpreter: a meta-path finder refuses every ROS Python module, then every
# module under peftdml_ros.core is imported.
_BLOCK_ROS_AND_IMPORT = r"""
import importlib, sys

BLOCKED = ("rclpy", "rosidl_runtime_py", "std_msgs", "geometry_msgs", "sensor_msgs",
           "vision_msgs", "visualization_msgs", "diagnostic_msgs", "tf2_msgs",
           "builtin_interfaces", "rosgraph_msgs")

class RefuseRos:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the core must not import ROS")
        return None

sys.meta_path.insert(0, RefuseRos())
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1, "modules")
"""


def _modules_under(package: str) -> list[str]:
    root = Path(peftdml_ros.__file__).parent / package.split(".", 1)[1].replace(".", "/")
    names = [package]
    for info in pkgutil.walk_packages([str(root)], prefix=f"{package}."):
        names.append(info.name)
    return names


def test_core_imports_with_rclpy_unavailable() -> None:
    modules = _modules_under("peftdml_ros.core")
    assert "peftdml_ros.core.types" in modules
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_ROS_AND_IMPORT, *modules],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"a core module needs ROS:\n{result.stderr[-3000:]}"


def test_rclpy_really_is_blocked_by_the_check() -> None:
    # The check above must be able to fail: importing the ROS layer under the same block fails.
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_ROS_AND_IMPORT, "rclpy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "blocked" in result.stderr
