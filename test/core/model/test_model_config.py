"""ModelConfig validation and its plain-data round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest
from model_testlib import one_thread  # noqa: F401  (pytest fixture, used by pytestmark)

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model import ModelConfig, tiny_config
from peftdml_ros.core.preprocess import PreprocessConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_grid_and_preprocessing_sizes() -> None:
    config = ModelConfig()
    assert config.grid_hw == (128, 128) and config.fusion_hw == (64, 64)
    assert config.num_cameras == 6
    assert (config.lora_rank("lidar"), config.lora_rank("camera")) == (8, 8)
    assert (config.lora_rank("radar"), config.lora_rank("imu"), config.lora_rank("gnss")) == (
        4,
        4,
        4,
    )
    weights = (
        config.weight_det,
        config.weight_metric,
        config.weight_cross_modal,
        config.weight_temporal,
    )
    assert weights == (1.0, 0.5, 0.2, 0.1)
    pre = PreprocessConfig.from_model_config(config)
    assert pre.max_lidar_points == config.max_lidar_points
    assert pre.image_size_hw == config.image_size_hw
    assert pre.point_cloud_range_m == config.point_cloud_range_m


def test_dict_round_trip_through_json() -> None:
    config = tiny_config()
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"cell_m": 0.7}, "whole multiple of 8"),
        ({"image_size_hw": (100, 224)}, "multiples of 32"),
        ({"embed_dim": 30, "attention_heads": 4}, "divisible by attention_heads"),
        ({"lora_rank_radar": 0}, "lora_rank_radar is 0"),
        ({"weight_metric": -1.0}, "loss weights are >= 0"),
        ({"camera_names": ("A", "A")}, "unique"),
        ({"point_cloud_range_m": (1.0, -51.2, -5.0, -1.0, 51.2, 3.0)}, "min below its max"),
    ],
)
def test_invalid_values_raise_config_error(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(ModelConfig(), **overrides)  # type: ignore[arg-type]


def test_unknown_fields_are_rejected() -> None:
    data = ModelConfig().to_dict() | {"future_field": 1}
    with pytest.raises(ConfigError, match="future_field"):
        ModelConfig.from_dict(data)
