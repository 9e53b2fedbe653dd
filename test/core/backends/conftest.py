"""A tiny exported model shared by the backend tests (export takes about a second)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peftdml_ros.core.model import build_model, export_onnx, tiny_config


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config's model (seeded random weights) exported with a dynamic batch."""
    torch.manual_seed(3)
    model = build_model(tiny_config())
    return export_onnx(model, tmp_path_factory.mktemp("tiny") / "m.onnx", dynamic_batch=True)
