"""Lint (ruff) and static types (mypy, strict on core/data/tools) are part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
LINTED = ["peftdml_ros", "test", "scripts", "launch", "setup.py"]


def test_ruff_check_is_clean(repo_root: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", *LINTED],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_ruff_format_is_clean(repo_root: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", *LINTED],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"run `ruff format` on:\n{result.stdout[-5000:]}"


def test_mypy_strict_on_core_data_and_tools_is_clean(repo_root: Path) -> None:
    result = subprocess.run(
        [str(BIN / "mypy")], cwd=repo_root, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
