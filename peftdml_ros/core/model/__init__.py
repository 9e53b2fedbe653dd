"""The PEFT-DML fused detector: nn modules, losses, targets, decoding, checkpoints and export.

Public API (everything else is an implementation detail):
  ModelConfig, tiny_config        sizes and hyper-parameters (frozen dataclass)
  PeftDmlNet, build_model         the network: forward(**inputs) -> dict of OUTPUT_NAMES tensors;
                                  forward_with_embeddings(inputs) -> (outputs, Embeddings)
  example_inputs                  random plausible model_io inputs (tests, export, benchmarks)
  freeze_backbones, merge_lora    PEFT mode; LoRA folded into the weights
  sample_modality_dropout         training-time modality dropout of a [B, 5] mask
  build_targets, BevTargets       GT Detections -> heatmap/regression targets
  compute_losses                  every loss term and the weighted total
  decode_detections               outputs -> list[Detections]
  rotated_iou_bev, rotated_nms_bev
  save_checkpoint, load_checkpoint, LoadedCheckpoint
  export_onnx, read_onnx_config
  parameter_report, ParameterReport
  FeatureGmm, fit_feature_gmm     clean-feature GMM (normality score, alignment loss)
"""

from __future__ import annotations

from peftdml_ros.core.model.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from peftdml_ros.core.model.config import ModelConfig, tiny_config
from peftdml_ros.core.model.decode import decode_detections, rotated_iou_bev, rotated_nms_bev
from peftdml_ros.core.model.detector_net import Embeddings, PeftDmlNet, build_model, example_inputs
from peftdml_ros.core.model.dropout import sample_modality_dropout
from peftdml_ros.core.model.export import export_onnx, read_onnx_config
from peftdml_ros.core.model.gmm import FeatureGmm, fit_feature_gmm
from peftdml_ros.core.model.lora import freeze_backbones, merge_lora, unfreeze_all
from peftdml_ros.core.model.losses import compute_losses
from peftdml_ros.core.model.report import ParameterReport, parameter_report
from peftdml_ros.core.model.targets import BevTargets, build_targets

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "BevTargets",
    "Embeddings",
    "FeatureGmm",
    "LoadedCheckpoint",
    "ModelConfig",
    "ParameterReport",
    "PeftDmlNet",
    "build_model",
    "build_targets",
    "compute_losses",
    "decode_detections",
    "example_inputs",
    "export_onnx",
    "fit_feature_gmm",
    "freeze_backbones",
    "load_checkpoint",
    "merge_lora",
    "parameter_report",
    "read_onnx_config",
    "rotated_iou_bev",
    "rotated_nms_bev",
    "sample_modality_dropout",
    "save_checkpoint",
    "tiny_config",
    "unfreeze_all",
]
