"""The package as users install it: console scripts, data files, ament layout, package.xml."""

from __future__ import annotations

import runpy
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import setuptools

from peftdml_ros.tools.cli import SUBCOMMANDS


@pytest.fixture(scope="module")
def setup_kwargs(repo_root: Path, monkeypatch_module: pytest.MonkeyPatch) -> dict[str, Any]:
    """What setup.py passes to setuptools.setup(), without building anything."""
    captured: dict[str, Any] = {}
    monkeypatch_module.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch_module.chdir(repo_root)
    runpy.run_path(str(repo_root / "setup.py"), run_name="__main__")
    return captured


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_every_data_file_named_in_setup_exists(
    setup_kwargs: dict[str, Any], repo_root: Path
) -> None:
    listed = [path for _, paths in setup_kwargs["data_files"] for path in paths]
    assert "package.xml" in listed
    assert any(path.startswith("launch/") for path in listed)
    assert any(path.startswith("config/") for path in listed)
    missing = [path for path in listed if not (repo_root / path).is_file()]
    assert not missing, f"setup.py names files that do not exist: {missing}"


def test_every_console_script_prints_help(setup_kwargs: dict[str, Any]) -> None:
    scripts = [
        spec.split("=")[0].strip() for spec in setup_kwargs["entry_points"]["console_scripts"]
    ]
    assert {"peftdml", "peftdml_node"} <= set(scripts)
    bin_dir = Path(sys.executable).parent
    for script in scripts:
        result = subprocess.run(
            [str(bin_dir / script), "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{script} --help failed:\n{result.stderr}"
        assert "usage" in result.stdout.lower(), f"{script} --help printed no usage"


@pytest.mark.parametrize("subcommand", sorted(SUBCOMMANDS))
def test_every_peftdml_subcommand_prints_help(subcommand: str) -> None:
    peftdml = Path(sys.executable).parent / "peftdml"
    result = subprocess.run(
        [str(peftdml), subcommand, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"peftdml {subcommand} --help failed:\n{result.stderr}"
    assert "usage" in result.stdout.lower()


def test_installed_entry_points_match_setup(setup_kwargs: dict[str, Any]) -> None:
    declared = {
        spec.split("=")[0].strip() for spec in setup_kwargs["entry_points"]["console_scripts"]
    }
    installed = {
        ep.name
        for ep in entry_points(group="console_scripts")
        if ep.value.startswith("peftdml_ros.")
    }
    assert declared == installed, "the venv's install is stale: run `make setup`"


def test_ament_index_and_ros2_run_layout() -> None:
    prefix = Path(sys.prefix)
    assert (prefix / "share/ament_index/resource_index/packages/peftdml_ros").is_file()
    for name in ("package.xml", "launch", "config"):
        assert (prefix / "share/peftdml_ros" / name).exists()
    for executable in ("peftdml_node", "peftdml"):
        path = prefix / "lib/peftdml_ros" / executable
        assert path.exists() and path.resolve().stat().st_mode & 0o111, f"{path} is not executable"


def test_ament_index_lists_the_package() -> None:
    from ament_index_python.packages import get_package_share_directory, get_packages_with_prefixes

    assert "peftdml_ros" in get_packages_with_prefixes()
    assert Path(get_package_share_directory("peftdml_ros"), "package.xml").exists()


def test_package_xml_is_valid_format_3_with_ros_dependencies(repo_root: Path) -> None:
    from catkin_pkg.package import parse_package

    package = parse_package(str(repo_root / "package.xml"))
    assert package.package_format == 3
    assert package.name == "peftdml_ros"
    assert package.get_build_type() == "ament_python"
    exec_deps = {dep.name for dep in package.exec_depends}
    expected = {
        "rclpy",
        "std_msgs",
        "geometry_msgs",
        "sensor_msgs",
        "vision_msgs",
        "visualization_msgs",
        "diagnostic_msgs",
        "tf2_msgs",
        "python3-numpy",
    }
    assert expected <= exec_deps
    assert {"python3-pytest", "python3-hypothesis"} <= {dep.name for dep in package.test_depends}
