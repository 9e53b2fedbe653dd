#!/usr/bin/env python3
"""Give a virtual environment the layout that `ros2 run` and `ros2 launch` look for.

An ament_python package installed by colcon has its executables in `<prefix>/lib/<package>/`,
its shared files in `<prefix>/share/<package>/` and a marker in the ament index. `pip install -e`
puts console scripts in `<prefix>/bin/` and does not copy data files, so this script adds:
  - `share/ament_index/resource_index/packages/peftdml_ros` (the marker),
  - `share/peftdml_ros/{package.xml,launch,config,models}` as links to the checkout (an editable
    install: edits show up without reinstalling),
  - `lib/peftdml_ros/<executable>` links to the console scripts in `bin/`.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path

PACKAGE_NAME = "peftdml_ros"
SHARED_ENTRIES = ("package.xml", "launch", "config", "models")


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def install_layout(prefix: Path, repo: Path) -> list[Path]:
    """Write the ament index marker, shared-file links and executable links; return them."""
    written: list[Path] = []
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE_NAME
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    written.append(marker)

    share_dir = prefix / "share" / PACKAGE_NAME
    for name in SHARED_ENTRIES:
        link = share_dir / name
        if link.is_dir() and not link.is_symlink():
            continue  # a real (non-editable) install copied the files; keep them
        _link(link, repo / name)
        written.append(link)

    lib_dir = prefix / "lib" / PACKAGE_NAME
    scripts = [
        ep.name
        for ep in entry_points(group="console_scripts")
        if ep.value.startswith(f"{PACKAGE_NAME}.")
    ]
    if not scripts:
        raise SystemExit(
            f"no console scripts of {PACKAGE_NAME} are installed; run pip install -e first"
        )
    for name in scripts:
        executable = prefix / "bin" / name
        if not executable.exists():
            raise SystemExit(f"{executable} is missing; reinstall the package with pip install -e")
        _link(lib_dir / name, executable)
        written.append(lib_dir / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix))
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    for path in install_layout(args.prefix.resolve(), args.repo.resolve()):
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
