"""Shapes, PEFT freezing, gradients and LoRA merge of PeftDmlNet."""

from __future__ import annotations

import pytest
import torch
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perturbed_model,
    random_inputs,
    small_config,
)

from peftdml_ros.core.model import (
    ModelConfig,
    build_model,
    freeze_backbones,
    merge_lora,
    parameter_report,
)
from peftdml_ros.core.model.lora import Adapter1d, Adapter2d, LoRAConv2d, LoRALinear
from peftdml_ros.core.model_io import ATTRIBUTES, INPUT_NAMES, OUTPUT_NAMES
from peftdml_ros.core.types import NUSCENES_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_output_has_its_contract_shape() -> None:
    config = small_config()
    model = build_model(config).eval()
    with torch.no_grad():
        outputs = model(**random_inputs(config, batch=3))
    h, w = config.grid_hw
    expected = {
        "heatmap": (3, len(NUSCENES_CLASSES), h, w),
        "center_offset": (3, 2, h, w),
        "center_z": (3, 1, h, w),
        "log_size": (3, 3, h, w),
        "yaw_sin_cos": (3, 2, h, w),
        "velocity": (3, 2, h, w),
        "attribute_logits": (3, len(ATTRIBUTES), h, w),
        "normality_score": (3,),
    }
    assert tuple(outputs) == OUTPUT_NAMES
    assert {k: tuple(v.shape) for k, v in outputs.items()} == expected
    assert all(bool(torch.isfinite(v).all()) for v in outputs.values())
    assert float(outputs["heatmap"].min()) >= 0.0 and float(outputs["heatmap"].max()) <= 1.0


def test_embeddings_are_normalized_per_cell() -> None:
    config = small_config()
    model = build_model(config).eval()
    with torch.no_grad():
        _, emb = model.forward_with_embeddings(random_inputs(config, batch=2))
    h_f, w_f = config.fusion_hw
    assert tuple(emb.spatial.shape) == (2, 3, config.embed_dim, h_f, w_f)
    assert tuple(emb.ego.shape) == (2, 2, config.embed_dim)
    norms = emb.spatial.norm(dim=2)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def _is_peft_trainable(name: str, module: torch.nn.Module) -> bool:
    return name.split(".")[0] in ("projections", "fusion", "head", "embedding_heads")


def test_freeze_backbones_leaves_only_peft_parts_trainable() -> None:
    model = build_model(small_config())
    freeze_backbones(model)
    peft_params: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (LoRAConv2d, LoRALinear)):
            peft_params |= {
                id(p) for p in (*module.lora_down.parameters(), *module.lora_up.parameters())
            }
        elif isinstance(module, (Adapter1d, Adapter2d)) or (
            name and _is_peft_trainable(name, module)
        ):
            peft_params |= {id(p) for p in module.parameters()}
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (id(parameter) in peft_params), name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("lidar.") and n.endswith("base.weight") for n in frozen)
    assert any(n.startswith("camera.") for n in frozen)


def test_default_config_trains_under_ten_percent_of_parameters() -> None:
    model = build_model(ModelConfig())
    freeze_backbones(model)
    report = parameter_report(model)
    assert report.total_params > 3_000_000  # honest frozen backbones
    assert 0.0 < report.trainable_percent < 10.0
    assert report.per_module["head"][0] == report.per_module["head"][1]
    assert report.per_module["lidar"][1] < report.per_module["lidar"][0] * 0.1


def test_backward_after_freezing_reaches_only_trainable_parameters() -> None:
    config = small_config()
    model = perturbed_model(config)
    freeze_backbones(model)
    outputs = model(**random_inputs(config, batch=2))
    loss = sum(v.float().pow(2).mean() for v in outputs.values())
    loss.backward()  # type: ignore[union-attr]
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    # Gradients reach the LoRA factors of every modality's backbone.
    for prefix in ("lidar.", "radar.", "camera.", "imu.", "gnss.", "fusion.", "head."):
        assert any(n.startswith(prefix) for n in with_grad), prefix


def test_merged_lora_model_matches_unmerged() -> None:
    config = small_config()
    model = perturbed_model(config, seed=3)
    merged = merge_lora(model).eval()
    assert not any(isinstance(m, (LoRAConv2d, LoRALinear)) for m in merged.modules())
    assert any(isinstance(m, (LoRAConv2d, LoRALinear)) for m in model.modules())
    inputs = random_inputs(config, batch=2, seed=5)
    with torch.no_grad():
        ref, out = model(**inputs), merged(**inputs)
    for name in OUTPUT_NAMES:
        assert torch.allclose(ref[name], out[name], atol=1e-5, rtol=0), name


def test_forward_takes_exactly_the_contract_inputs_in_order() -> None:
    import inspect

    params = list(inspect.signature(build_model(small_config()).forward).parameters)
    assert tuple(params) == INPUT_NAMES
