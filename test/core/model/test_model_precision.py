"""Bounded feature magnitudes: fp16 matches fp32 after training, and weight scale cannot grow the
features (every conv / linear layer of the backbones is followed by a normalization)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perturbed_model,
    random_boxes,
    random_inputs,
    small_config,
    synthetic_inputs,
)

from peftdml_ros.core.model import (
    PeftDmlNet,
    build_model,
    build_targets,
    compute_losses,
    freeze_backbones,
)
from peftdml_ros.core.model.lora import LoRAConv2d, LoRALinear
from peftdml_ros.core.model_io import OUTPUT_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")

# fp16 keeps 11 significant bits (relative step 1e-3); after ~25 layers the O(1) output maps of
# the trained tiny model differ from fp32 by at most 3e-3 (measured), the heatmap by 3e-4.
FP16_ATOL = {"heatmap": 2e-3, "normality_score": 1e-2}
FP16_ATOL_DEFAULT = 2e-2
BACKBONES = ("lidar", "radar", "camera", "imu", "gnss")


@pytest.fixture(scope="module")
def trained() -> PeftDmlNet:
    """The tiny model after 30 PEFT steps on synthetic scenes (lr 3e-3, every loss term)."""
    torch.manual_seed(0)
    config = small_config()
    model = build_model(config)
    freeze_backbones(model)
    rng = np.random.default_rng(0)
    scenes = [random_boxes(rng, 6, 20.0) for _ in range(4)]
    inputs = synthetic_inputs(config, scenes, rng)
    targets = build_targets(scenes, config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(30):
        outputs, embeddings = model.forward_with_embeddings(inputs)
        loss = compute_losses(outputs, embeddings, targets, config)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.gmm.fit(torch.randn(64, config.embed_dim), generator=torch.Generator().manual_seed(0))
    return model.eval()


def test_fp16_forward_matches_fp32_and_is_finite(trained: PeftDmlNet) -> None:
    config = trained.config
    rng = np.random.default_rng(1)
    inputs = synthetic_inputs(config, [random_boxes(rng, 6, 20.0) for _ in range(2)], rng)
    inputs["modality_mask"][1] = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])  # LiDAR, IMU dropped
    half = copy.deepcopy(trained).half()
    with torch.no_grad():
        reference = trained(**inputs)
        low = half(**inputs)  # the same float32 inputs (model_io), fp16 weights and features
    for name in OUTPUT_NAMES:
        assert bool(torch.isfinite(low[name]).all()), name
        if name != "normality_score":
            assert low[name].dtype == torch.float16, name
        error = float((low[name].float() - reference[name]).abs().max())
        scale = 1.0 if name != "normality_score" else max(1.0, float(reference[name].abs().max()))
        assert error <= FP16_ATOL.get(name, FP16_ATOL_DEFAULT) * scale, (name, error)


def _scale_backbone_layers(model: PeftDmlNet, factor: float) -> None:
    """Multiply every LoRA-wrapped layer of the backbones (base weight and bias, LoRA up
    factor) by `factor`: each such layer's output grows `factor` times."""
    with torch.no_grad():
        for name in BACKBONES:
            for module in getattr(model, name).modules():
                if isinstance(module, (LoRAConv2d, LoRALinear)):
                    module.base.weight.mul_(factor)
                    if module.base.bias is not None:
                        module.base.bias.mul_(factor)
                    module.lora_up.weight.mul_(factor)


def test_growing_layer_weights_cannot_grow_the_features() -> None:
    # Training drifts weight scales (the shared embedding is normalized, so nothing pins them);
    # without normalization layers 1000x per layer compounds to 1e30 through ~10 layers.
    config = small_config()
    model = perturbed_model(config, seed=4)
    inputs = random_inputs(config, batch=2, seed=3)
    grown = copy.deepcopy(model)
    _scale_backbone_layers(grown, 1000.0)
    with torch.no_grad():
        reference = model(**inputs)
        scaled = grown(**inputs)
        low = copy.deepcopy(grown).half()(**inputs)
        features = _backbone_features(grown, inputs)
    for name in OUTPUT_NAMES:
        torch.testing.assert_close(scaled[name], reference[name], atol=1e-3, rtol=0)
        assert bool(torch.isfinite(low[name]).all()), name
    for name, value in features.items():
        assert float(value.abs().max()) < 100.0, name


def _backbone_features(
    model: PeftDmlNet, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The encoders' outputs (what the projection heads read) of one forward."""
    features: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: features.__setitem__(name, out)
        )
        for name in BACKBONES
    ]
    try:
        model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return features
