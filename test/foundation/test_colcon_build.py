"""`colcon build` gives the layout that `ros2 run` and `ros2 launch` use on a ROS 2 install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# What a checkout holds besides the package sources: never part of a colcon build.
NOT_SOURCES = (".git", ".venv", "build", "install", "log", "data", "__pycache__", "*.egg-info",
               ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")  # fmt: skip


def test_colcon_build_installs_executables_shared_files_and_index(
    repo_root: Path, tmp_path: Path
) -> None:
    source = tmp_path / "ws" / "src" / "peftdml_ros"
    shutil.copytree(repo_root, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    workspace = source.parents[1]
    colcon = Path(sys.executable).parent / "colcon"
    env = dict(os.environ, COLCON_HOME=str(tmp_path / "colcon_home"))
    # A plain `colcon build`, as in any workspace: the repository is one package, whatever it
    # holds (interfaces/ has COLCON_IGNORE: a ROS install provides vision_msgs and tf2_msgs).
    result = subprocess.run(
        [str(colcon), "build", "--event-handlers", "console_direct-"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (workspace / "install").iterdir() if p.is_dir()) == [
        "peftdml_ros"
    ], "colcon built more than peftdml_ros"

    prefix = workspace / "install" / "peftdml_ros"
    for executable in ("peftdml_node", "peftdml"):
        path = prefix / "lib" / "peftdml_ros" / executable
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing or not executable"
    share = prefix / "share" / "peftdml_ros"
    for name in ("package.xml", "launch/peftdml.launch.py", "config/peftdml.yaml",
                 "config/peftdml.schema.json", "config/peftdml.rviz",
                 "config/fastdds_profile.xml", "models/README.md"):  # fmt: skip
        assert (share / name).is_file(), f"colcon did not install {name}"
    assert (prefix / "share/ament_index/resource_index/packages/peftdml_ros").is_file()


def test_the_interface_packages_are_invisible_to_colcon(repo_root: Path, tmp_path: Path) -> None:
    """Even searched for directly, interfaces/ yields no package: a workspace never builds a
    second vision_msgs or tf2_msgs over the distribution's."""
    colcon = Path(sys.executable).parent / "colcon"
    env = dict(os.environ, COLCON_HOME=str(tmp_path / "colcon_home"))
    result = subprocess.run(
        [str(colcon), "list", "--names-only", "--base-paths", str(repo_root / "interfaces")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
    for package in ("vision_msgs", "tf2_msgs"):
        assert (repo_root / "interfaces" / package / "COLCON_IGNORE").is_file()
        assert (repo_root / "interfaces" / package / "package.xml").is_file()  # setup builds it
