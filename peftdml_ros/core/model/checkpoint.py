"""Checkpoints: the weights together with the config that rebuilds the exact model.

File layout (torch.save of a plain dict, read back with torch.load(weights_only=True)):
  format_version  int, CHECKPOINT_FORMAT_VERSION of the code that wrote it
  model_config    ModelConfig.to_dict()
  state_dict      the model's state dict (unmerged LoRA; GMM buffers included)
  gmm             {"fitted": bool, "components": K, "dim": d}
  extra           free-form plain data of the writer (e.g. training step, metrics)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.detector_net import PeftDmlNet, build_model

# 2: normalization layers, embedding heads and ego-frame geometry (version 1 weights do not fit).
CHECKPOINT_FORMAT_VERSION = 2


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: PeftDmlNet
    config: ModelConfig
    extra: dict[str, Any]


def save_checkpoint(
    path: str | Path, model: PeftDmlNet, extra: dict[str, Any] | None = None
) -> Path:
    """Write `model` (and its config) to `path`; parent folders are created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "gmm": {
            "fitted": model.gmm.is_fitted,
            "components": model.gmm.components,
            "dim": model.gmm.dim,
        },
        "extra": dict(extra or {}),
    }
    torch.save(payload, target)
    return target


def load_checkpoint(
    path: str | Path, expected_config: ModelConfig | None = None
) -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint (eval mode, CPU).

    expected_config: when given, the checkpoint's config must equal it field for field.
    Raises ModelArtifactError (missing/unreadable file, other format version, config mismatch,
    weights that do not fit the config).
    """
    source = Path(path)
    if not source.is_file():
        raise ModelArtifactError(
            f"checkpoint {source} does not exist: train one with `peftdml train` or pass the "
            "path of an existing .pt checkpoint"
        )
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ModelArtifactError(
            f"cannot read checkpoint {source} ({error}); it is not a peftdml checkpoint or is "
            "truncated: re-save it with save_checkpoint"
        ) from error
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ModelArtifactError(
            f"{source} is not a peftdml checkpoint (no format_version); re-save it with "
            "save_checkpoint"
        )
    version = payload["format_version"]
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ModelArtifactError(
            f"checkpoint {source} has format version {version}, this peftdml_ros reads version "
            f"{CHECKPOINT_FORMAT_VERSION}: use the peftdml_ros version that wrote it, or re-train"
        )
    config = _config_of(payload, source)
    if expected_config is not None and expected_config != config:
        raise ModelArtifactError(
            f"checkpoint {source} was trained with a different model config "
            f"({_config_diff(expected_config, config)}): use the checkpoint's own config "
            "(load_checkpoint without expected_config) or re-train with this config"
        )
    model = build_model(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise ModelArtifactError(
            f"the weights in {source} do not fit its model config ({error}); the file was "
            "edited or written by incompatible code: re-train or re-save it"
        ) from error
    return LoadedCheckpoint(model.eval(), config, dict(payload.get("extra") or {}))


def _config_of(payload: dict[str, Any], source: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(dict(payload["model_config"]))
    except (ConfigError, KeyError, TypeError) as error:
        raise ModelArtifactError(
            f"checkpoint {source} holds an unusable model config ({error}); use the "
            "peftdml_ros version that wrote it, or re-train"
        ) from error


def _config_diff(expected: ModelConfig, found: ModelConfig) -> str:
    diffs = [
        f"{f.name}: expected {getattr(expected, f.name)!r}, checkpoint has "
        f"{getattr(found, f.name)!r}"
        for f in fields(ModelConfig)
        if getattr(expected, f.name) != getattr(found, f.name)
    ]
    return "; ".join(diffs)
