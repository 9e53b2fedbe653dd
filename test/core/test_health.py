"""core.health: the clean-score calibration, the percentile and level of a frame, reading the
calibration stored with a model, and the ROC AUC of the score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.health import (
    CALIBRATION_KEY,
    HealthCalibration,
    HealthLevel,
    assess,
    calibration_from_scores,
    check_thresholds,
    clean_percentile,
    flagged_share,
    health_level,
    load_calibration,
    roc_auc,
)


def test_roc_auc_matches_a_hand_computed_example_with_a_tie() -> None:
    # Pairs (positive, negative): 2>1, 2=2 (half), 2<3, and 4 beats 1, 2, 3: U = 1 + 0.5 + 3.
    assert roc_auc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(4.5 / 6.0)
    assert roc_auc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert roc_auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    assert roc_auc([5.0, 5.0], [5.0]) == 0.5  # all tied: no separation


def test_roc_auc_equals_the_pairwise_count_on_random_scores_with_ties() -> None:
    rng = np.random.default_rng(3)
    neg = rng.integers(0, 6, 40).astype(float)
    pos = rng.integers(2, 9, 25).astype(float)
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert roc_auc(neg, pos) == pytest.approx(float(np.mean(pairs)), abs=1e-12)


def test_roc_auc_refuses_empty_sides_and_nan() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        roc_auc([], [1.0])
    with pytest.raises(ConfigError, match="NaN"):
        roc_auc([1.0, math.nan], [2.0])


def test_calibration_quantiles_and_percentiles_of_clean_scores() -> None:
    scores = np.arange(1.0, 102.0)  # 1 .. 101
    calibration = calibration_from_scores(scores, {"name": "val"})
    assert len(calibration.quantiles) == 101 and calibration.frames == 101
    assert calibration.quantiles[0] == 1.0 and calibration.quantiles[-1] == 101.0
    # Higher score = less normal = lower percentile; the share of clean frames at or above it.
    assert calibration.percentile(0.0) == 100.0
    assert calibration.percentile(51.0) == pytest.approx(50.0)
    assert calibration.percentile(100.0) == pytest.approx(1.0)
    assert calibration.percentile(1000.0) == 0.0
    assert calibration.percentile(math.nan) == 0.0
    grid = np.linspace(-10.0, 120.0, 400)
    values = [calibration.percentile(float(s)) for s in grid]
    assert np.all(np.diff(values) <= 0.0)
    # score_at is the inverse: the raw threshold of a percentile.
    for percentile in (0.1, 1.0, 5.0, 50.0):
        assert calibration.percentile(calibration.score_at(percentile)) == pytest.approx(
            percentile
        )


def test_a_run_of_tied_quantiles_gets_the_middle_probability() -> None:
    quantiles = [0.0, 1.0, 1.0, 1.0, 2.0]  # probabilities 0, .25, .5, .75, 1
    assert clean_percentile(1.0, quantiles) == pytest.approx(50.0)
    assert clean_percentile(0.5, quantiles) == pytest.approx(87.5)
    assert clean_percentile(1.5, quantiles) == pytest.approx(12.5)
    constant = calibration_from_scores([3.0] * 10)
    assert constant.percentile(3.0) == 50.0 and constant.percentile(3.1) == 0.0


def test_calibration_needs_finite_scores_and_round_trips() -> None:
    with pytest.raises(ConfigError, match="no clean frame"):
        calibration_from_scores([])
    with pytest.raises(ConfigError, match="non-finite"):
        calibration_from_scores([1.0, math.inf])
    calibration = calibration_from_scores([1.0, 5.0, 2.0], {"name": "val"}, quantile_count=11)
    data = json.loads(json.dumps(calibration.to_dict()))
    assert HealthCalibration.from_dict(data) == calibration
    with pytest.raises(ModelArtifactError, match="non-decreasing"):
        HealthCalibration((2.0, 1.0), 2)
    with pytest.raises(ModelArtifactError, match="calibrate"):
        HealthCalibration.from_dict({"format": 1, "frames": 3})
    with pytest.raises(ModelArtifactError, match="format 7"):
        HealthCalibration.from_dict({**data, "format": 7})


def test_levels_and_assessment() -> None:
    assert health_level(50.0, 1.0, 0.1) is HealthLevel.OK
    assert health_level(1.0, 1.0, 0.1) is HealthLevel.OK  # at the threshold: not below it
    assert health_level(0.5, 1.0, 0.1) is HealthLevel.WARN
    assert health_level(0.05, 1.0, 0.1) is HealthLevel.ERROR
    check_thresholds(1.0, 0.1)
    with pytest.raises(ConfigError, match="error"):
        check_thresholds(0.1, 1.0)

    uncalibrated = assess(123.0, None, 1.0, 0.1)
    assert uncalibrated.level is HealthLevel.OK and uncalibrated.percentile is None
    assert "no calibration" in uncalibrated.message and uncalibrated.score == 123.0
    calibration = calibration_from_scores(np.arange(1000.0))
    assert assess(500.0, calibration, 1.0, 0.1).level is HealthLevel.OK
    warn = assess(995.0, calibration, 1.0, 0.1)
    assert warn.level is HealthLevel.WARN and 0.1 <= (warn.percentile or 0.0) < 1.0
    assert assess(5000.0, calibration, 1.0, 0.1).level is HealthLevel.ERROR
    assert assess(math.nan, calibration, 1.0, 0.1).level is HealthLevel.ERROR
    assert flagged_share([0.0, 995.0, 5000.0, 10.0], calibration, 1.0) == 0.5


def test_load_calibration_from_a_manifest_and_its_checkpoint_extra(tmp_path: Path) -> None:
    calibration = calibration_from_scores([1.0, 2.0, 3.0, 4.0], {"name": "val"})
    model = tmp_path / "m.onnx"
    manifest = tmp_path / "m.manifest.json"
    assert load_calibration(model) is None  # no manifest
    assert load_calibration("") is None  # the untrained default model
    manifest.write_text(json.dumps({"format": 1}))
    assert load_calibration(model) is None
    manifest.write_text(json.dumps({"checkpoint_extra": {CALIBRATION_KEY: calibration.to_dict()}}))
    assert load_calibration(model) == calibration  # exported from a calibrated checkpoint
    engine = tmp_path / "m.fp16.engine"  # an engine built from it shares its manifest
    assert load_calibration(engine) == calibration
    newer = calibration_from_scores([5.0, 6.0], {"name": "other"})
    manifest.write_text(
        json.dumps(
            {
                CALIBRATION_KEY: newer.to_dict(),
                "checkpoint_extra": {CALIBRATION_KEY: calibration.to_dict()},
            }
        )
    )
    assert load_calibration(model) == newer  # the manifest's own comes first
    manifest.write_text(json.dumps({CALIBRATION_KEY: {"format": 1, "quantiles": [2.0, 1.0]}}))
    with pytest.raises(ModelArtifactError):
        load_calibration(model)


def test_load_calibration_from_a_checkpoint(tmp_path: Path) -> None:
    from peftdml_ros.core.model import build_model, save_checkpoint, tiny_config

    calibration = calibration_from_scores([1.0, 2.0, 3.0])
    model = build_model(tiny_config())
    plain = save_checkpoint(tmp_path / "plain.pt", model, {"step": 1})
    calibrated = save_checkpoint(
        tmp_path / "cal.pt", model, {"step": 1, CALIBRATION_KEY: calibration.to_dict()}
    )
    assert load_calibration(plain) is None
    assert load_calibration(calibrated) == calibration
