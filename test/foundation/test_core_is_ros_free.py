"""The core, data and tools packages import and work with rclpy and ROS messages unavailable."""

from __future__ import annotations

import ast
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


# Packages the core must never import, not even lazily inside a function or by name through
# importlib: the core is the library that tools and the ROS layer are built on.
_NOT_FOR_CORE = ("peftdml_ros.tools", "peftdml_ros.ros")


def _imported_names(source: str) -> list[str]:
    """Every module an `import`, a `from ... import` or a module-name string literal names."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.append(node.value)  # importlib.import_module("peftdml_ros.tools.x")
    return names


def _forbidden(source: str) -> list[str]:
    return [
        name
        for name in _imported_names(source)
        if any(name == p or name.startswith(p + ".") for p in _NOT_FOR_CORE)
    ]


def test_core_never_imports_tools_or_ros() -> None:
    core = Path(peftdml_ros.__file__).parent / "core"
    files = sorted(core.rglob("*.py"))
    assert len(files) > 20
    offenders = {
        str(path.relative_to(core)): bad
        for path in files
        if (bad := _forbidden(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"core modules import tools or ros: {offenders}"


def test_the_import_scan_sees_lazy_and_by_name_imports() -> None:
    lazy = "def main():\n    from peftdml_ros.tools.bench import main\n"
    by_name = "import importlib\nimportlib.import_module('peftdml_ros.ros.node')\n"
    plain = "import peftdml_ros.tools\nfrom peftdml_ros import tools\n"
    assert _forbidden(lazy) == ["peftdml_ros.tools.bench", "peftdml_ros.tools.bench.main"]
    assert _forbidden(by_name) == ["peftdml_ros.ros.node"]
    assert _forbidden(plain) == ["peftdml_ros.tools", "peftdml_ros.tools"]
    assert not _forbidden("from peftdml_ros.core import sync\nx = 'peftdml_ros.toolsy'\n")
