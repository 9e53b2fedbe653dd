"""The package as users install it: console scripts, data files, the layout `ros2 run` and
`ros2 launch` resolve, package.xml."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
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


def find_share_file(package: str, file_name: str) -> Path:
    """The file `ros2 launch PACKAGE FILE_NAME` runs.

    ros2launch's own lookup where it is installed; else the same walk: the package's share
    directory from the ament index, searched with os.walk, which does not enter linked
    directories (a `share/PACKAGE/launch` that links to a directory is not searched).
    """
    try:
        from ros2launch.api import get_share_file_path_from_package
    except ImportError:
        from ament_index_python.packages import get_package_share_directory

        share = get_package_share_directory(package)
        found = [
            Path(root, name)
            for root, _dirs, files in os.walk(share)
            for name in files
            if name == file_name
        ]
        if len(found) != 1:
            raise FileNotFoundError(f"{file_name}: {len(found)} matches under {share}") from None
        return found[0]
    return Path(get_share_file_path_from_package(package_name=package, file_name=file_name))


def executables(package: str) -> set[str]:
    """What `ros2 run PACKAGE <tab>` offers: the executable files under <prefix>/lib/PACKAGE."""
    from ament_index_python.packages import get_package_prefix

    lib_dir = Path(get_package_prefix(package), "lib", package)
    return {
        name
        for root, _dirs, files in os.walk(lib_dir)
        for name in files
        if os.access(Path(root, name), os.X_OK)
    }


def test_ros2_launch_finds_every_launch_file_of_the_package(repo_root: Path) -> None:
    launch_files = sorted((repo_root / "launch").glob("*.launch.py"))
    assert launch_files
    for source in launch_files:
        installed = find_share_file("peftdml_ros", source.name)
        assert installed.read_bytes() == source.read_bytes(), f"{installed} is stale"


def test_every_installed_data_file_is_in_the_venvs_share_directory(
    setup_kwargs: dict[str, Any], repo_root: Path
) -> None:
    stale = [
        f"{directory}/{Path(name).name}"
        for directory, names in setup_kwargs["data_files"]
        for name in names
        if not (Path(sys.prefix, directory, Path(name).name).is_file())
    ]
    assert not stale, f"not in the venv's share directory (run `make setup`): {stale}"
    assert find_share_file("peftdml_ros", "peftdml.yaml").parent.name == "config"


def test_ros2_run_finds_the_executables() -> None:
    assert {"peftdml_node", "peftdml_lifecycle_node", "peftdml"} <= executables("peftdml_ros")


@pytest.fixture(scope="module")
def install_layout(repo_root: Path) -> Callable[..., list[Path]]:
    layout: Callable[..., list[Path]] = runpy.run_path(
        str(repo_root / "scripts" / "install_ament_layout.py")
    )["install_layout"]
    return layout


def test_install_layout_in_a_new_prefix_is_what_ros2_launch_and_run_use(
    install_layout: Callable[..., list[Path]],
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = tmp_path / "prefix"
    scripts_dir = Path(sys.executable).parent
    assert install_layout(prefix, repo_root, scripts_dir)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    launch_file = find_share_file("peftdml_ros", "peftdml.launch.py")
    assert launch_file.parent == prefix / "share" / "peftdml_ros" / "launch"
    assert {"peftdml_node", "peftdml"} <= executables("peftdml_ros")
    assert install_layout(prefix, repo_root, scripts_dir) == [], "a second run changed things"


def test_install_layout_replaces_the_linked_directories_ros2_launch_cannot_search(
    install_layout: Callable[..., list[Path]],
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = tmp_path / "prefix"
    scripts_dir = Path(sys.executable).parent
    install_layout(prefix, repo_root, scripts_dir)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    # The layout of earlier versions: share/peftdml_ros/launch linked to the checkout's folder.
    launch_dir = prefix / "share" / "peftdml_ros" / "launch"
    shutil.rmtree(launch_dir)
    launch_dir.symlink_to(repo_root / "launch", target_is_directory=True)
    with pytest.raises(FileNotFoundError):
        find_share_file("peftdml_ros", "peftdml.launch.py")
    install_layout(prefix, repo_root, scripts_dir)
    assert launch_dir.is_dir() and not launch_dir.is_symlink()
    assert find_share_file("peftdml_ros", "peftdml.launch.py").parent == launch_dir


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
        "launch",
        "launch_ros",
        "python3-numpy",
    }
    assert expected <= exec_deps
    assert "rviz2" not in exec_deps, "RViz is optional (rviz:=true): no dependency"
    assert {"python3-pytest", "python3-hypothesis"} <= {dep.name for dep in package.test_depends}


def test_every_rosdep_key_is_in_the_checked_list_of_docs_ros_md(repo_root: Path) -> None:
    """docs/ros.md records, key by key, where each key was found in the rosdep database: a key
    added to package.xml must be checked (and listed) there too."""
    from catkin_pkg.package import parse_package

    package = parse_package(str(repo_root / "package.xml"))
    docs = (repo_root / "docs" / "ros.md").read_text()
    keys = {dep.name for dep in (*package.exec_depends, *package.test_depends)}
    keys |= {dep.name for dep in (*package.build_depends, *package.buildtool_depends)}
    unrecorded = sorted(key for key in keys if f"| `{key}` |" not in docs)
    assert not unrecorded, f"rosdep keys not in the table of docs/ros.md: {unrecorded}"
