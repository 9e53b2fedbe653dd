"""Masked modalities contribute exactly nothing, for every subset of the 5 modalities."""

from __future__ import annotations

import itertools

import pytest
import torch
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perturbed_model,
    random_inputs,
    small_config,
)

from peftdml_ros.core.model import decode_detections
from peftdml_ros.core.model_io import OUTPUT_NAMES

# Inputs that belong to each modality, in MODALITIES order.
_MODALITY_INPUTS: tuple[tuple[str, ...], ...] = (
    ("lidar_points", "lidar_valid"),
    ("radar_points", "radar_valid"),
    ("camera_images", "camera_intrinsics", "camera_to_ego", "camera_valid"),
    ("imu_features",),
    ("gnss_features",),
)
_SUBSETS = [
    s for r in range(1, 6) for s in itertools.combinations(range(5), r)
]  # the 31 non-empty subsets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_config():  # type: ignore[no-untyped-def]
    config = small_config()
    model = perturbed_model(config, seed=1)
    # A fitted GMM so the normality score is live too.
    model.gmm.fit(torch.randn(64, config.embed_dim), generator=torch.Generator().manual_seed(0))
    return model, config


def _scramble(inputs: dict[str, torch.Tensor], modality: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name in _MODALITY_INPUTS[modality]:
        inputs[name] = torch.randn(inputs[name].shape, generator=gen) * 30.0


@pytest.mark.parametrize("present", _SUBSETS, ids=lambda s: "+".join(map(str, s)))
def test_masked_modality_inputs_change_no_output_bit(model_and_config, present) -> None:  # type: ignore[no-untyped-def]
    model, config = model_and_config
    inputs = random_inputs(config, batch=1, seed=11)
    mask = torch.zeros(1, 5)
    mask[0, list(present)] = 1.0
    inputs["modality_mask"] = mask
    changed = {k: v.clone() for k, v in inputs.items()}
    for modality in set(range(5)) - set(present):
        _scramble(changed, modality, seed=100 + modality)
    with torch.no_grad():
        ref, out = model(**inputs), model(**changed)
    for name in OUTPUT_NAMES:
        assert torch.equal(ref[name], out[name]), name
        assert bool(torch.isfinite(out[name]).all()), name


def test_present_modality_inputs_do_change_outputs(model_and_config) -> None:  # type: ignore[no-untyped-def]
    model, config = model_and_config
    for modality in range(5):
        inputs = random_inputs(config, batch=1, seed=12)
        mask = torch.zeros(1, 5)
        mask[0, modality] = 1.0
        inputs["modality_mask"] = mask
        changed = {k: v.clone() for k, v in inputs.items()}
        _scramble(changed, modality, seed=7)
        with torch.no_grad():
            ref, out = model(**inputs), model(**changed)
        assert not torch.equal(ref["heatmap"], out["heatmap"]), modality
        assert float(ref["heatmap"].max()) > 0.0


def test_no_modality_gives_no_detections_and_no_nan(model_and_config) -> None:  # type: ignore[no-untyped-def]
    model, config = model_and_config
    inputs = random_inputs(config, batch=2, seed=13)
    inputs["modality_mask"] = torch.zeros(2, 5)
    inputs["lidar_points"][0, 0, 0] = float("nan")  # even garbage in a masked input is dropped
    with torch.no_grad():
        outputs = model(**inputs)
    for name in OUTPUT_NAMES:
        assert bool(torch.isfinite(outputs[name]).all()), name
    assert float(outputs["heatmap"].abs().max()) == 0.0
    detections = decode_detections(outputs, config, score_threshold=0.0)
    assert [len(d) for d in detections] == [0, 0]


def test_batch_items_with_different_masks_are_independent(model_and_config) -> None:  # type: ignore[no-untyped-def]
    model, config = model_and_config
    inputs = random_inputs(config, batch=2, seed=14)
    inputs["modality_mask"] = torch.tensor([[1.0, 0, 1, 0, 1], [0, 1, 0, 1, 0]])
    with torch.no_grad():
        both = model(**inputs)
        first = model(**{k: v[:1] for k, v in inputs.items()})
    for name in OUTPUT_NAMES:
        assert torch.allclose(both[name][:1], first[name], atol=1e-6), name


def test_modalities_outside_input_modalities_are_ignored_even_when_flagged_present() -> None:
    config = small_config(input_modalities=("lidar",))
    model = perturbed_model(config, seed=2)
    inputs = random_inputs(config, batch=1, seed=12)
    inputs["modality_mask"] = torch.ones(1, 5)
    changed = {k: v.clone() for k, v in inputs.items()}
    for modality in range(1, 5):
        _scramble(changed, modality, seed=200 + modality)
    with torch.no_grad():
        ref, out = model(**inputs), model(**changed)
        lidar_only = model(**{**inputs, "modality_mask": torch.tensor([[1.0, 0, 0, 0, 0]])})
    for name in OUTPUT_NAMES:
        assert torch.equal(ref[name], out[name]), name
        assert torch.equal(ref[name], lidar_only[name]), name


def test_input_modalities_must_be_known_and_non_empty() -> None:
    from peftdml_ros.core.errors import ConfigError

    with pytest.raises(ConfigError, match="input_modalities"):
        small_config(input_modalities=("sonar",))
    with pytest.raises(ConfigError, match="input_modalities"):
        small_config(input_modalities=())
