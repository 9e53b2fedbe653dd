"""The sensor-health score: a frame's normality score as a percentile of clean frames.

The model outputs `normality_score` = -log p_normal(pooled fused features) under its clean-data
GMM (core/model/gmm.py), in nats: higher means farther from normal, but the scale depends on
the model and its fit, so a raw value cannot be thresholded. Calibration (`peftdml calibrate`,
and `peftdml train` with validation data) scores clean frames the model was not trained on and
stores their empirical distribution with the model (`HealthCalibration`: QUANTILE_COUNT
quantiles, the frame count and where the frames came from) under CALIBRATION_KEY, in the
manifest beside an exported model and in a checkpoint's extra.

    percentile(score) = 100 * P_clean(S >= score)

the share (in %) of clean frames at least as far from normal as this one: a typical clean frame
gets about 50, a frame farther than every calibration frame 0, one closer than all of them 100.
Higher score = less normal = lower percentile. Between stored quantiles the distribution is
interpolated linearly, so percentiles finer than 100 / frames are interpolation, not data.

Levels: OK when percentile >= warn, WARN when error <= percentile < warn, ERROR below error.
A threshold of w flags w % of clean frames of the calibration distribution: it is the false-alarm
rate the user accepts. A model without calibration gets OK and a message saying so.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import ConfigError, ModelArtifactError

CALIBRATION_KEY = "health_calibration"
CALIBRATION_FORMAT = 1
QUANTILE_COUNT = 101  # probabilities 0, 0.01, ..., 1
SCORE_NAME = "normality_score"


class HealthLevel(enum.IntEnum):
    """Severity, with the byte values of diagnostic_msgs/DiagnosticStatus."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class HealthCalibration:
    """The clean distribution of a model's normality score.

    quantiles: scores at probabilities 0, 1/(n-1), ..., 1 (n >= 2, non-decreasing, finite).
    frames: how many clean frames were scored. dataset: where they came from (name, version,
    split, digest of the sample tokens, generator seed when generated).
    """

    quantiles: tuple[float, ...]
    frames: int
    dataset: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.asarray(self.quantiles, dtype=np.float64)
        if len(values) < 2 or not np.all(np.isfinite(values)) or np.any(np.diff(values) < 0):
            raise ModelArtifactError(
                f"a health calibration needs at least 2 finite, non-decreasing quantiles, got "
                f"{list(self.quantiles)[:5]}...: calibrate the model again (`peftdml calibrate`)"
            )
        if self.frames < 1:
            raise ModelArtifactError(
                f"a health calibration of {self.frames} frames is empty: calibrate again"
            )

    def percentile(self, score: float) -> float:
        """100 * P_clean(S >= score), in [0, 100] (see the module docstring)."""
        return clean_percentile(score, self.quantiles)

    def score_at(self, percentile: float) -> float:
        """The raw score whose percentile is `percentile` (a threshold on the raw score)."""
        probabilities = np.linspace(0.0, 1.0, len(self.quantiles))
        cdf = 1.0 - min(100.0, max(0.0, percentile)) / 100.0
        return float(np.interp(cdf, probabilities, np.asarray(self.quantiles)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "score": SCORE_NAME,
            "definition": "percentile = 100 * share of clean frames with a score >= this one",
            "quantile_probabilities": "j / (len(quantiles) - 1)",
            "quantiles": [float(v) for v in self.quantiles],
            "frames": int(self.frames),
            "dataset": dict(self.dataset),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCalibration:
        """ModelArtifactError for any other layout."""
        try:
            if int(data["format"]) != CALIBRATION_FORMAT:
                raise ModelArtifactError(
                    f"health calibration format {data['format']} is not {CALIBRATION_FORMAT}: "
                    "calibrate the model again with this version (`peftdml calibrate`)"
                )
            return cls(
                quantiles=tuple(float(v) for v in data["quantiles"]),
                frames=int(data["frames"]),
                dataset=dict(data.get("dataset") or {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelArtifactError(
                f"unreadable health calibration ({type(error).__name__}: {error}): calibrate "
                "the model again (`peftdml calibrate`)"
            ) from error


def calibration_from_scores(
    scores: Sequence[float] | npt.NDArray[Any],
    dataset: Mapping[str, Any] | None = None,
    quantile_count: int = QUANTILE_COUNT,
) -> HealthCalibration:
    """The calibration of clean frames' scores (ConfigError for no or non-finite scores)."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ConfigError("no clean frame was scored: calibrate on a split with keyframes")
    if not np.all(np.isfinite(values)):
        raise ConfigError(
            f"{int(np.sum(~np.isfinite(values)))} clean frames have a non-finite normality "
            "score: the model's GMM or inputs are broken (check the model with `peftdml info`)"
        )
    if quantile_count < 2:
        raise ConfigError(f"quantile_count {quantile_count} must be at least 2")
    probabilities = np.linspace(0.0, 1.0, quantile_count)
    quantiles = np.quantile(values, probabilities)  # linear interpolation between order stats
    # Rounding may leave a quantile a hair below its predecessor; the distribution cannot.
    quantiles = np.maximum.accumulate(quantiles)
    return HealthCalibration(
        tuple(float(q) for q in quantiles), int(values.size), dict(dataset or {})
    )


def clean_percentile(score: float, quantiles: Sequence[float]) -> float:
    """100 * (1 - F(score)) with F the clean CDF, linear between the quantiles (at
    probabilities j / (n - 1)); a score equal to a run of tied quantiles gets the middle of
    their probabilities. NaN scores get 0 (nothing about them is normal)."""
    if math.isnan(score):
        return 0.0
    q = np.asarray(quantiles, dtype=np.float64)
    n = len(q)
    probabilities = np.linspace(0.0, 1.0, n)
    lo = int(np.searchsorted(q, score, side="left"))
    hi = int(np.searchsorted(q, score, side="right"))
    if hi > lo:  # equal to q[lo:hi]
        cdf = 0.5 * (probabilities[lo] + probabilities[hi - 1])
    elif lo == 0:
        cdf = 0.0
    elif lo == n:
        cdf = 1.0
    else:
        fraction = (score - q[lo - 1]) / (q[lo] - q[lo - 1])
        cdf = probabilities[lo - 1] + fraction * (probabilities[lo] - probabilities[lo - 1])
    return float(100.0 * (1.0 - cdf))


def check_thresholds(warn_percentile: float, error_percentile: float) -> None:
    """ConfigError unless 0 <= error <= warn <= 100."""
    if not 0.0 <= error_percentile <= warn_percentile <= 100.0:
        raise ConfigError(
            f"health thresholds must satisfy 0 <= error ({error_percentile}) <= warn "
            f"({warn_percentile}) <= 100 (percentiles of clean frames)"
        )


def health_level(
    percentile: float, warn_percentile: float, error_percentile: float
) -> HealthLevel:
    """OK at or above warn, WARN below warn, ERROR below error."""
    if percentile < error_percentile:
        return HealthLevel.ERROR
    if percentile < warn_percentile:
        return HealthLevel.WARN
    return HealthLevel.OK


@dataclass(frozen=True)
class HealthAssessment:
    """One frame's health: level, raw score, percentile (None without calibration), message."""

    level: HealthLevel
    score: float
    percentile: float | None
    message: str


def assess(
    score: float,
    calibration: HealthCalibration | None,
    warn_percentile: float,
    error_percentile: float,
) -> HealthAssessment:
    """The level of a frame's raw normality score under the model's calibration."""
    if calibration is None:
        return HealthAssessment(
            HealthLevel.OK, score, None,
            "no calibration: the model carries no clean-score distribution (run `peftdml "
            "calibrate`); raw score only",
        )  # fmt: skip
    percentile = calibration.percentile(score)
    level = health_level(percentile, warn_percentile, error_percentile)
    if not math.isfinite(score):
        return HealthAssessment(HealthLevel.ERROR, score, percentile, "normality score not finite")
    text = {
        HealthLevel.OK: "features look like clean data",
        HealthLevel.WARN: f"features unusual: percentile below {warn_percentile:g}",
        HealthLevel.ERROR: f"features far from clean data: percentile below {error_percentile:g}",
    }[level]
    return HealthAssessment(level, score, percentile, text)


# ----------------------------------------------------------------------- reading the model's


def load_calibration(model_path: str | Path) -> HealthCalibration | None:
    """The calibration stored with a model: CALIBRATION_KEY of the manifest beside an exported
    model (.onnx, .engine, .plan; also under its "checkpoint_extra", which `peftdml export`
    copies from the checkpoint), or of a checkpoint's extra (.pt). None when the model has
    none (or no model path is given); ModelArtifactError when it is there but unreadable."""
    if not str(model_path):
        return None
    path = Path(model_path)
    if path.suffix.lower() in (".pt", ".pth"):
        return _from_mapping(_checkpoint_extra(path), str(path))
    from peftdml_ros.core.detector import manifest_path  # torch: import on use

    manifest = manifest_path(path)
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelArtifactError(f"cannot read manifest {manifest}: {error}; re-export") from error
    found = _from_mapping(data, str(manifest))
    if found is None:
        found = _from_mapping(data.get("checkpoint_extra") or {}, str(manifest))
    return found


def _from_mapping(data: Mapping[str, Any], where: str) -> HealthCalibration | None:
    entry = data.get(CALIBRATION_KEY)
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise ModelArtifactError(f"{where}: {CALIBRATION_KEY} is not a mapping; calibrate again")
    return HealthCalibration.from_dict(entry)


def _checkpoint_extra(path: Path) -> Mapping[str, Any]:
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelArtifactError(f"cannot read checkpoint {path} ({error})") from error
    extra = payload.get("extra") if isinstance(payload, dict) else None
    return extra if isinstance(extra, Mapping) else {}


# -------------------------------------------------------------------------------- evaluation


def roc_auc(negatives: Sequence[float] | npt.NDArray[Any],
            positives: Sequence[float] | npt.NDArray[Any]) -> float:  # fmt: skip
    """Area under the ROC curve of a score that should be higher for positives: the
    Mann-Whitney U statistic / (n_pos * n_neg), ties counted half (average ranks), which is
    P(score_pos > score_neg) + 0.5 P(score_pos == score_neg). ConfigError for an empty side or
    NaN scores."""
    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives, dtype=np.float64).reshape(-1)
    if neg.size == 0 or pos.size == 0:
        raise ConfigError("ROC AUC needs at least one negative and one positive score")
    values = np.concatenate([neg, pos])
    if np.any(np.isnan(values)):
        raise ConfigError("ROC AUC got NaN scores: they have no rank")
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2.0  # 1-based mean rank of each tie group
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(average_rank, counts)
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def flagged_share(
    scores: Sequence[float] | npt.NDArray[Any],
    calibration: HealthCalibration,
    percentile_threshold: float,
) -> float:
    """The share of frames whose percentile is below the threshold (what WARN or ERROR at
    that threshold would flag)."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return math.nan
    flagged = [calibration.percentile(float(s)) < percentile_threshold for s in values]
    return float(np.mean(flagged))
