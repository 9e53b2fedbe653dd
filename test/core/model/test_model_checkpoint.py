"""Checkpoint round trip and the errors of mismatched checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from model_testlib import (
    one_thread,  # noqa: F401  (pytest fixture, used by pytestmark)
    perturbed_model,
    random_inputs,
    small_config,
)

from peftdml_ros.core.errors import ModelArtifactError
from peftdml_ros.core.model import load_checkpoint, save_checkpoint
from peftdml_ros.core.model_io import OUTPUT_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_trip_restores_config_weights_gmm_and_extra(tmp_path: Path) -> None:
    config = small_config()
    model = perturbed_model(config, seed=4)
    model.gmm.fit(torch.randn(32, config.embed_dim), generator=torch.Generator().manual_seed(0))
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, extra={"step": 7})
    loaded = load_checkpoint(path, expected_config=config)
    assert loaded.config == config and loaded.extra == {"step": 7}
    assert loaded.model.gmm.is_fitted
    inputs = random_inputs(config, batch=2)
    with torch.no_grad():
        ref, out = model(**inputs), loaded.model(**inputs)
    for name in OUTPUT_NAMES:
        assert torch.equal(ref[name], out[name]), name


def test_mismatched_config_raises_with_the_differing_field(tmp_path: Path) -> None:
    config = small_config()
    path = save_checkpoint(tmp_path / "m.pt", perturbed_model(config))
    other = dataclasses.replace(config, embed_dim=32)
    with pytest.raises(ModelArtifactError, match="embed_dim: expected 32"):
        load_checkpoint(path, expected_config=other)


def test_other_format_version_raises(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", perturbed_model(small_config()))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ModelArtifactError, match="format version 99"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_raise(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", perturbed_model(small_config()))
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["embed_dim"] = 32
    torch.save(payload, path)
    with pytest.raises(ModelArtifactError, match="do not fit"):
        load_checkpoint(path)


def test_missing_and_garbage_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelArtifactError, match="cannot read"):
        load_checkpoint(garbage)
