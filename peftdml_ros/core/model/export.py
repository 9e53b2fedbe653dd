"""ONNX export of the merged model with the exact model_io tensor names.

LoRA branches are folded into the frozen weights first (`merge_lora`), so the graph has the
plain backbone cost. The file carries a manifest in its metadata_props: `peftdml_format_version`,
`peftdml_model_config` (JSON of ModelConfig.to_dict()), `peftdml_classes`, `peftdml_inputs`,
`peftdml_outputs`. `read_onnx_config` rebuilds the ModelConfig (decode needs the grid).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.detector_net import PeftDmlNet, example_inputs
from peftdml_ros.core.model.lora import merge_lora
from peftdml_ros.core.model_io import INPUT_NAMES, OUTPUT_NAMES
from peftdml_ros.core.types import NUSCENES_CLASSES

ONNX_FORMAT_VERSION = 1
MIN_OPSET = 17  # GridSample needs 16, ScatterElements(add) 16; 17 is what TensorRT 10 favours


class _TupleOutputs(nn.Module):
    """Positional inputs in INPUT_NAMES order -> tuple of outputs in OUTPUT_NAMES order."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.net(**dict(zip(INPUT_NAMES, inputs, strict=True)))
        return tuple(outputs[name] for name in OUTPUT_NAMES)


def export_onnx(
    model: PeftDmlNet,
    path: str | Path,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = False,
) -> Path:
    """Write the LoRA-merged `model` as ONNX to `path` and check it with onnx.checker.

    dynamic_batch: make dimension 0 of every input and output symbolic ("batch").
    Uses the TorchScript exporter (dynamo=False): the graph is traced with example inputs of the
    model's config, and the scatter/grid_sample ops map one-to-one to ONNX ops.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old: the graph needs opset >= {MIN_OPSET}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    merged = merge_lora(model).eval()
    wrapper = _TupleOutputs(merged).eval()
    inputs = example_inputs(model.config, batch_size=1, generator=torch.Generator().manual_seed(0))
    args = tuple(inputs[name] for name in INPUT_NAMES)
    dynamic_axes = (
        {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)} if dynamic_batch else None
    )
    # The TorchScript exporter is deprecated upstream (warned on every call) but exports this
    # graph in ~1 s at opset 17; the dynamo exporter also works (opset 18, ~15x slower).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # GroupNorm's eager-mode size check (more than one value per group) becomes a constant
        # in the trace; the sizes are fixed by the config, so the warning says nothing here.
        warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean")
        torch.onnx.export(
            wrapper,
            args,
            str(target),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=False,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    graph = onnx.load(str(target))
    manifest = {
        "peftdml_format_version": str(ONNX_FORMAT_VERSION),
        "peftdml_model_config": json.dumps(model.config.to_dict()),
        "peftdml_classes": json.dumps(list(NUSCENES_CLASSES)),
        "peftdml_inputs": json.dumps(list(INPUT_NAMES)),
        "peftdml_outputs": json.dumps(list(OUTPUT_NAMES)),
    }
    for key, value in manifest.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(target))
    return target


def read_onnx_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in an exported graph's metadata (ModelArtifactError if absent)."""
    import onnx

    source = Path(path)
    if not source.is_file():
        raise ModelArtifactError(f"ONNX file {source} does not exist: export one first")
    graph = onnx.load(str(source), load_external_data=False)
    props = {p.key: p.value for p in graph.metadata_props}
    version = props.get("peftdml_format_version")
    if version != str(ONNX_FORMAT_VERSION):
        raise ModelArtifactError(
            f"{source} has peftdml format version {version!r}, this code reads "
            f"{ONNX_FORMAT_VERSION}: re-export it with `peftdml export`"
        )
    try:
        return ModelConfig.from_dict(json.loads(props["peftdml_model_config"]))
    except (KeyError, ValueError, ConfigError) as error:
        raise ModelArtifactError(
            f"{source} holds no usable model config ({error}): re-export it with `peftdml export`"
        ) from error
