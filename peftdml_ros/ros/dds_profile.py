"""Which environment variable points Fast DDS at an XML profile, for the Fast DDS installed.

Fast DDS 3 (ROS 2 Kilted and later) reads FASTDDS_DEFAULT_PROFILES_FILE; Fast DDS 2 (Humble,
Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE. Setting both does not help either: Fast DDS 3's RMW
also loads the old variable's file (with a deprecation warning), and when the two paths are not
the same string it parses the profile twice and prints `XMLPARSER Error ... There is other
transport with the same id` at every process start. So exactly one of them is set.

Pure Python (no rclpy): the launch file imports it before any node starts. For a shell (a bag
player, RViz or your own nodes that exchange large messages with the node):

    eval "$(python3 -m peftdml_ros.ros.dds_profile)"
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

FASTDDS_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"  # Fast DDS 3
FASTRTPS_VARIABLE = "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2
PROFILE_VARIABLES = (FASTDDS_VARIABLE, FASTRTPS_VARIABLE)
PROFILE_FILE = "fastdds_profile.xml"

# Fast DDS 3 installs its CMake package as `fastdds`, Fast DDS 2 as `fastrtps`.
_CMAKE_PACKAGES = ("fastdds", "fastrtps")
_VERSION = re.compile(r'set\(PACKAGE_VERSION "(\d+)\.')
# Where no Fast DDS is found under the ament prefixes: the version each ROS distribution ships.
_FASTDDS_2_DISTROS = ("humble", "iron", "jazzy")


def fastdds_major_version(env: Mapping[str, str] | None = None) -> int:
    """The major version of the Fast DDS that the first ament prefix provides (2 or 3).

    The prefixes are those of AMENT_PREFIX_PATH in `env` (default: this process's environment),
    in order: the first one that holds Fast DDS's CMake package wins, as the first one wins for
    the libraries a node loads. Without any: ROS_DISTRO decides (humble, iron, jazzy: 2), else 3.
    """
    env = os.environ if env is None else env
    for prefix in filter(None, env.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        for package in _CMAKE_PACKAGES:
            version_file = Path(
                prefix, "share", package, "cmake", f"{package}-config-version.cmake"
            )
            if version_file.is_file():
                match = _VERSION.search(version_file.read_text(errors="replace"))
                if match:
                    return int(match.group(1))
    return 2 if env.get("ROS_DISTRO", "").lower() in _FASTDDS_2_DISTROS else 3


def profile_variable(env: Mapping[str, str] | None = None) -> str:
    """The one variable the installed Fast DDS reads its default profile from."""
    return FASTDDS_VARIABLE if fastdds_major_version(env) >= 3 else FASTRTPS_VARIABLE


def profile_settings(profile: Path, env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """{variable: value} that point Fast DDS at `profile` once: the variable it reads is set,
    the other one is unset (None)."""
    read = profile_variable(env)
    return {name: (str(profile) if name == read else None) for name in PROFILE_VARIABLES}


def apply(env: Mapping[str, str], profile: Path) -> dict[str, str]:
    """A copy of `env` in which Fast DDS loads `profile`, and loads it once."""
    result = dict(env)
    for name, value in profile_settings(profile, env).items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def package_profile() -> Path:
    """The package's config/fastdds_profile.xml: the source tree's, else the installed one."""
    source = Path(__file__).resolve().parents[2] / "config" / PROFILE_FILE
    if source.is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("peftdml_ros")) / "config" / PROFILE_FILE


def shell_commands(profile: Path, env: Mapping[str, str] | None = None) -> str:
    """`export` / `unset` lines (sh, bash, zsh) that make a shell's processes load `profile`."""
    return "\n".join(
        f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}"
        for name, value in profile_settings(profile, env).items()
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m peftdml_ros.ros.dds_profile",
        description="Print the shell commands that point the installed Fast DDS at a profile "
        '(once): eval "$(python3 -m peftdml_ros.ros.dds_profile)"',
    )
    parser.add_argument(
        "--profile", type=Path, help="the XML profile (default: the package's fastdds_profile.xml)"
    )
    args = parser.parse_args(argv)
    profile = (args.profile or package_profile()).resolve()
    if not profile.is_file():
        print(f"{profile} does not exist; give --profile FILE", file=sys.stderr)
        return 2
    print(shell_commands(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
