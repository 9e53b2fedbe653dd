"""The "<node>: normality" status of /diagnostics: the frame's sensor-health level (core/health.py)
as a DiagnosticStatus level, with the raw score, its percentile and the thresholds."""

from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus

from peftdml_ros.core.health import assess, calibration_from_scores
from peftdml_ros.ros import outputs

CALIBRATION = calibration_from_scores(np.arange(1000.0), {"name": "val"})


def _status(score: float | None, calibrated: bool = True) -> DiagnosticStatus:
    pipeline = outputs.PipelineHealth(
        backend="onnxruntime", model="m.onnx", normality_score=score,
        normality_calibration="1000 clean keyframes of val" if calibrated else "none",
        health_warn_percentile=1.0, health_error_percentile=0.1,
    )  # fmt: skip
    if score is not None:
        pipeline.normality = assess(score, CALIBRATION if calibrated else None, 1.0, 0.1)
    return outputs.normality_status(pipeline, "/front/peftdml")


def test_levels_follow_the_percentile_of_the_clean_calibration() -> None:
    for score, level, name in (
        (500.0, DiagnosticStatus.OK, "OK"),
        (995.0, DiagnosticStatus.WARN, "WARN"),
        (5000.0, DiagnosticStatus.ERROR, "ERROR"),
    ):
        status = _status(score)
        values = outputs.diagnostic_values(status)
        assert status.level == level and values["level"] == name, score
        assert status.name == "front/peftdml: normality"
        assert values["normality_score"] == f"{score:.3f}"
        assert values["calibration"] == "1000 clean keyframes of val"
        assert values["warn_percentile"] == "1.00" and values["error_percentile"] == "0.10"
    assert outputs.diagnostic_values(_status(500.0))["normality_percentile"] == "49.95"
    assert outputs.diagnostic_values(_status(5000.0))["normality_percentile"] == "0.00"


def test_no_calibration_and_no_frame_are_ok_with_a_message() -> None:
    uncalibrated = _status(5000.0, calibrated=False)
    values = outputs.diagnostic_values(uncalibrated)
    assert uncalibrated.level == DiagnosticStatus.OK
    assert "no calibration" in uncalibrated.message
    assert values["normality_percentile"] == "n/a" and values["calibration"] == "none"
    assert values["normality_score"] == "5000.000"
    waiting = _status(None)
    assert waiting.level == DiagnosticStatus.OK and waiting.message == "no frame scored yet"
