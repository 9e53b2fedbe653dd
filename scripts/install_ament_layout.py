#!/usr/bin/env python3
"""Give a virtual environment the layout that `ros2 run` and `ros2 launch` look for.

An ament_python package installed by colcon has its executables in `<prefix>/lib/<package>/`,
its shared files in `<prefix>/share/<package>/` and a marker in the ament index. `pip install -e`
puts console scripts in `<prefix>/bin/` and does not copy data files, so this script adds, for
the files setup.py lists in `data_files` (the ones colcon installs):
  - the same paths under `<prefix>`, each a link to its file in the checkout (an editable
    install: edits show up without reinstalling), in real directories: `ros2 launch PKG FILE`
    walks `share/PKG` with os.walk, which does not enter linked directories;
  - `lib/peftdml_ros/<executable>` links to the console scripts in `bin/`.
Links of an earlier run that setup.py no longer lists are removed; real files (a copy that a
non-editable install made) are left alone. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

PACKAGE_NAME = "peftdml_ros"


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def data_files(repo: Path) -> list[tuple[str, list[str]]]:
    """setup.py's data_files: (install directory, [paths relative to the repository])."""
    import setuptools

    captured: dict[str, Any] = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        with _working_directory(repo):  # setup.py globs relative to its directory
            runpy.run_path(str(repo / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return [(directory, list(files)) for directory, files in captured["data_files"]]


def _link(link: Path, target: Path) -> bool:
    """Make `link` point at `target`; False (and nothing done) where it already does."""
    if link.is_symlink() and link.readlink() == target:
        return False
    if link.is_symlink() or link.is_file():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return True


def _real_directory(path: Path, prefix: Path, repo: Path) -> None:
    """`path` as a real directory: an earlier layout linked `share/peftdml_ros/{launch,config,
    models}` to the checkout's directories; such links (and only links into the checkout)
    become directories."""
    current = prefix
    for part in path.relative_to(prefix).parts:
        current = current / part
        if current.is_symlink() and current.resolve().is_relative_to(repo.resolve()):
            current.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _prune(share_dir: Path, wanted: set[Path]) -> list[Path]:
    """Remove links under share_dir that are not wanted, and directories they leave empty."""
    removed: list[Path] = []
    if not share_dir.is_dir() or share_dir.is_symlink():
        return removed
    for root, dirs, files in os.walk(share_dir, topdown=False):
        for name in files + dirs:
            path = Path(root, name)
            if path.is_symlink() and path not in wanted:
                path.unlink()
                removed.append(path)
        if Path(root) != share_dir and not any(Path(root).iterdir()):
            Path(root).rmdir()
    return removed


def install_layout(prefix: Path, repo: Path, scripts_dir: Path | None = None) -> list[Path]:
    """Write the shared-file links, the index marker and the executable links; return what
    changed (links written or removed)."""
    changed: list[Path] = []
    wanted: set[Path] = set()
    for directory, files in data_files(repo):
        destination = prefix / directory
        for name in files:
            link = destination / Path(name).name
            wanted.add(link)
            _real_directory(destination, prefix, repo)
            if link.is_file() and not link.is_symlink():
                continue  # a real (non-editable) install copied the file; keep it
            if _link(link, repo / name):
                changed.append(link)
    changed += _prune(prefix / "share" / PACKAGE_NAME, wanted)

    scripts_dir = scripts_dir or prefix / "bin"
    scripts = sorted(
        ep.name
        for ep in entry_points(group="console_scripts")
        if ep.value.startswith(f"{PACKAGE_NAME}.")
    )
    if not scripts:
        raise SystemExit(
            f"no console scripts of {PACKAGE_NAME} are installed; run pip install -e first"
        )
    for name in scripts:
        executable = scripts_dir / name
        if not executable.exists():
            raise SystemExit(f"{executable} is missing; reinstall the package with pip install -e")
        if _link(prefix / "lib" / PACKAGE_NAME / name, executable):
            changed.append(prefix / "lib" / PACKAGE_NAME / name)
    return changed


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
