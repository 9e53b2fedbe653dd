"""PyTorch backend: the model itself (LoRA folded in), on CPU or CUDA, in inference mode."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from peftdml_ros.core import model_io
from peftdml_ros.core.backends.base import Arrays, check_input_names
from peftdml_ros.core.errors import BackendUnavailableError, ConfigError
from peftdml_ros.core.model import ModelConfig, build_model, load_checkpoint
from peftdml_ros.core.model.lora import merge_lora

_LOG = logging.getLogger(__name__)

DEFAULT_SEED = 0


def resolve_torch_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU else 'cpu'; 'cuda[:N]' must exist."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"device {device!r} asked for, but torch sees no CUDA GPU (torch "
                f"{torch.__version__}); use device 'cpu' or 'auto'"
            )
        return device
    raise ConfigError(f"device {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


class TorchBackend:
    """Runs a PeftDmlNet in eval mode with LoRA merged (the graph that ONNX export traces)."""

    # Why create_backend picked this backend (set by create_backend).
    selection_reason: str = ""
    # How the checkpoint's training frames were built (train.py's "data" block), if recorded.
    training_data: dict[str, Any] | None = None

    def __init__(self, model: nn.Module, config: ModelConfig, device: str = "auto") -> None:
        self._device = resolve_torch_device(device)
        self.config = config
        self.model = merge_lora(model).eval().to(self._device)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @staticmethod
    def from_checkpoint(path: str | Path, device: str = "auto") -> TorchBackend:
        """Load a training checkpoint (it carries its ModelConfig)."""
        loaded = load_checkpoint(Path(path))
        _LOG.info("torch backend: checkpoint %s", path)
        backend = TorchBackend(loaded.model, loaded.config, device)
        data = loaded.extra.get("data")
        backend.training_data = dict(data) if isinstance(data, dict) else None
        return backend

    @staticmethod
    def from_default(
        config: ModelConfig | None = None, seed: int = DEFAULT_SEED, device: str = "auto"
    ) -> TorchBackend:
        """The default model with seeded random (untrained) weights: real outputs, no skill."""
        config = config or ModelConfig()
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left alone
            torch.manual_seed(seed)
            model = build_model(config)
        _LOG.warning(
            "NO TRAINED MODEL GIVEN: running the default PEFT-DML model with UNTRAINED weights "
            "(seed %d). Its detections are meaningless; train one with `peftdml train` and set "
            "model_path.",
            seed,
        )
        return TorchBackend(model, config, device)

    @property
    def name(self) -> str:
        return "torch"

    @property
    def device(self) -> str:
        return self._device

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, npt.NDArray[np.float32]]) -> Arrays:
        check_input_names(inputs)
        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(inputs[name], np.float32)).to(self._device)
            for name in model_io.INPUT_NAMES
        }
        outputs = self.model(*(tensors[name] for name in model_io.INPUT_NAMES))
        return {name: outputs[name].float().cpu().numpy() for name in model_io.OUTPUT_NAMES}
