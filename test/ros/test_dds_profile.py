"""The Fast DDS profile variable: the one the installed Fast DDS reads, and only that one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftdml_ros.ros import dds_profile
from peftdml_ros.ros.dds_profile import FASTDDS_VARIABLE, FASTRTPS_VARIABLE


def _prefix_with(tmp_path: Path, name: str, package: str, version: str) -> str:
    """An install prefix holding Fast DDS's CMake version file, as ROS installs it."""
    cmake_dir = tmp_path / name / "share" / package / "cmake"
    cmake_dir.mkdir(parents=True)
    (cmake_dir / f"{package}-config-version.cmake").write_text(
        f'set(PACKAGE_VERSION "{version}")\n'
    )
    return str(tmp_path / name)


@pytest.mark.parametrize(
    ("package", "version", "variable"),
    [
        ("fastrtps", "2.6.10", FASTRTPS_VARIABLE),  # Humble
        ("fastrtps", "2.14.5", FASTRTPS_VARIABLE),  # Jazzy
        ("fastdds", "3.2.2", FASTDDS_VARIABLE),  # Kilted
    ],
)
def test_the_installed_fast_dds_decides_the_variable(
    tmp_path: Path, package: str, version: str, variable: str
) -> None:
    env = {"AMENT_PREFIX_PATH": _prefix_with(tmp_path, "ros", package, version)}
    assert dds_profile.profile_variable(env) == variable


def test_the_first_prefix_that_holds_fast_dds_wins(tmp_path: Path) -> None:
    overlay = str(tmp_path / "empty_overlay")
    venv = _prefix_with(tmp_path, "venv", "fastdds", "3.2.2")
    humble = _prefix_with(tmp_path, "humble", "fastrtps", "2.6.10")
    assert (
        dds_profile.fastdds_major_version({"AMENT_PREFIX_PATH": f"{overlay}:{venv}:{humble}"}) == 3
    )
    assert dds_profile.fastdds_major_version({"AMENT_PREFIX_PATH": f"{humble}:{venv}"}) == 2


@pytest.mark.parametrize(
    ("distro", "variable"),
    [("humble", FASTRTPS_VARIABLE), ("jazzy", FASTRTPS_VARIABLE), ("kilted", FASTDDS_VARIABLE)],
)
def test_without_fast_dds_under_the_prefixes_the_distribution_decides(
    tmp_path: Path, distro: str, variable: str
) -> None:
    env = {"AMENT_PREFIX_PATH": str(tmp_path), "ROS_DISTRO": distro}
    assert dds_profile.profile_variable(env) == variable


def test_this_environment_has_fast_dds_3() -> None:
    """The venv's ROS wheels are Kilted's: the Makefile and the suite set FASTDDS_... only."""
    assert dds_profile.fastdds_major_version() == 3
    assert FASTRTPS_VARIABLE not in os.environ


def test_apply_sets_one_variable_and_removes_the_other(tmp_path: Path) -> None:
    profile = tmp_path / "profile.xml"
    env = {
        "AMENT_PREFIX_PATH": _prefix_with(tmp_path, "ros", "fastrtps", "2.14.5"),
        FASTDDS_VARIABLE: "/elsewhere.xml",
        "OTHER": "kept",
    }
    result = dds_profile.apply(env, profile)
    assert result[FASTRTPS_VARIABLE] == str(profile)
    assert FASTDDS_VARIABLE not in result
    assert result["OTHER"] == "kept"
    assert env[FASTDDS_VARIABLE] == "/elsewhere.xml", "the input was modified"


def test_the_launch_file_takes_the_variables_from_this_module(repo_root: Path) -> None:
    """launch/launch is not in the venv: the launch file's choice is this module's (tested above),
    and it names neither variable itself."""
    tree = ast.parse((repo_root / "launch" / "peftdml.launch.py").read_text())
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "profile_settings" in calls
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert not strings & set(dds_profile.PROFILE_VARIABLES)


def test_the_shell_helper_sets_the_variable_a_shell_needs(repo_root: Path) -> None:
    """`eval "$(python3 -m peftdml_ros.ros.dds_profile)"`, as docs/ros.md tells users."""
    script = (
        f'eval "$("{sys.executable}" -m peftdml_ros.ros.dds_profile)"; '
        f'echo "${{{FASTDDS_VARIABLE}-unset}}|${{{FASTRTPS_VARIABLE}-unset}}"'
    )
    env = dict(os.environ, **{FASTRTPS_VARIABLE: "/stale/profile.xml"})
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    profile = repo_root / "config" / "fastdds_profile.xml"
    assert result.stdout.strip() == f"{profile}|unset"
