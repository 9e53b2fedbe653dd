"""The rosbags typestore of the bag tools: ROS 2 Kilted's types plus vision_msgs and tf2_msgs.

rosbags ships the standard Kilted message definitions; vision_msgs (and tf2_msgs, so that both
come from the same definitions the venv's rclpy packages are built from) are registered from
the `.msg` files of this repository's `interfaces/` tree or, on a ROS install, from
`share/<package>/msg/` of an AMENT_PREFIX_PATH prefix. The definitions are field for field those
of the real packages, so the type hashes written into the bag match real ROS installs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from peftdml_ros.core.errors import ConfigError

EXTRA_PACKAGES: tuple[str, ...] = ("vision_msgs", "tf2_msgs")
# peftdml_ros/data/rosbag_types.py -> repository root (an editable or source checkout).
_REPO_INTERFACES = Path(__file__).resolve().parents[2] / "interfaces"


def msg_dirs(package: str) -> list[Path]:
    """Directories that may hold `<package>`'s .msg files, most specific first."""
    dirs = [_REPO_INTERFACES / package / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / package / "msg")
    return dirs


def _package_msg_files(package: str) -> list[Path]:
    for directory in msg_dirs(package):
        files = sorted(directory.glob("*.msg"))
        if files:
            return files
    searched = ", ".join(str(d) for d in msg_dirs(package))
    raise ConfigError(
        f"no .msg files of {package} found (searched {searched}); run from a source checkout "
        f"(interfaces/{package}) or source a ROS install that has {package}"
    )


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The shared typestore (built once per process)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for package in EXTRA_PACKAGES:
        for path in _package_msg_files(package):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store
