"""`Detector`: Frame in, Detections out (preprocess -> backend -> decode), with timings.

The detector is the library the ROS node wraps: no ROS types here. It owns the model's
configuration (from the checkpoint, from the manifest next to an ONNX/TensorRT file, or the
default config when no model is given), a Preprocessor built from it, one InferenceBackend and
the decoding thresholds, which `update_thresholds` changes at run time.

Threading: `detect` is meant for one worker thread; `update_thresholds` may be called from any
other thread (a parameter callback). A lock guards the thresholds; the backend is only touched
by `detect`, and `detect` itself is serialized by a second lock so a stray concurrent call
waits instead of corrupting backend state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftdml_ros.core import model_io
from peftdml_ros.core.backends import DEFAULT_PRECISION, InferenceBackend, create_backend
from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.decode import decode_detections
from peftdml_ros.core.model.export import read_onnx_config
from peftdml_ros.core.preprocess import PreprocessConfig, Preprocessor
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections, Frame

_LOG = logging.getLogger(__name__)

# Version of the manifest layout; bump when a field changes meaning.
MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
DEFAULT_SEED = 0


def manifest_path(model_path: str | Path) -> Path:
    """The manifest next to an exported model: model.onnx, and the engines built from it
    (model.fp16.engine, model.fp32.engine, model.int8.engine), -> model.manifest.json."""
    path = Path(model_path)
    stem = path.stem if path.suffix.lower() in (".onnx", ".engine", ".plan") else path.name
    for precision in (".fp16", ".fp32", ".int8"):
        stem = stem.removesuffix(precision)
    return path.with_name(stem + MANIFEST_SUFFIX)


def build_manifest(config: ModelConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an exported model carries beside it: classes, ranges, grid, tensor names, config."""
    from peftdml_ros import __version__ as package_version

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "package_version": package_version,
        "classes": list(NUSCENES_CLASSES),
        "attributes": list(model_io.ATTRIBUTES),
        "point_cloud_range_m": list(config.point_cloud_range_m),
        "cell_m": config.cell_m,
        "grid_hw": list(config.grid_hw),
        "camera_names": list(config.camera_names),
        "image_size_hw": list(config.image_size_hw),
        "input_names": list(model_io.INPUT_NAMES),
        "output_names": list(model_io.OUTPUT_NAMES),
        "model_config": config.to_dict(),
    }
    manifest.update(extra or {})
    return manifest


def read_manifest_json(model_path: str | Path) -> dict[str, Any]:
    """The manifest beside an exported model, as stored (no compatibility check)."""
    path = manifest_path(model_path)
    if not path.is_file():
        raise ModelArtifactError(
            f"{model_path} has no manifest {path.name} beside it; export the model with "
            "`peftdml export`, which writes both"
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelArtifactError(f"cannot read manifest {path}: {error}; re-export") from error
    return manifest


def read_manifest(model_path: str | Path) -> ModelConfig:
    """The ModelConfig from the manifest of an exported model, after checking compatibility."""
    path = manifest_path(model_path)
    manifest = read_manifest_json(model_path)
    expected = {
        "format": MANIFEST_FORMAT,
        "classes": list(NUSCENES_CLASSES),
        "input_names": list(model_io.INPUT_NAMES),
        "output_names": list(model_io.OUTPUT_NAMES),
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise ModelArtifactError(
                f"manifest {path} has {key}={manifest.get(key)!r} but this peftdml_ros needs "
                f"{value!r}: re-export the checkpoint with this version (`peftdml export`)"
            )
    return ModelConfig.from_dict(manifest["model_config"])


@dataclass(frozen=True)
class DetectorConfig:
    """model_path: .pt checkpoint, .onnx or .engine; "" = untrained default model (loudly).

    backend: "auto", "torch", "onnxruntime" or "tensorrt"; device: "auto", "cpu", "cuda[:N]".
    precision: the TensorRT engine's, "fp32", "fp16" or "int8" (see core.backends).
    """

    model_path: str = ""
    backend: str = "auto"
    device: str = "auto"
    score_threshold: float = 0.3
    nms_iou_threshold: float = 0.2
    max_detections: int = 100
    seed: int = DEFAULT_SEED
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        check_thresholds(self.score_threshold, self.nms_iou_threshold, self.max_detections)


def check_thresholds(
    score_threshold: float, nms_iou_threshold: float, max_detections: int
) -> None:
    """ConfigError unless score in [0, 1), NMS IoU in (0, 1], max_detections >= 1."""
    if not 0.0 <= score_threshold < 1.0:
        raise ConfigError(f"score_threshold {score_threshold} must be in [0, 1)")
    if not 0.0 < nms_iou_threshold <= 1.0:
        raise ConfigError(f"nms_iou_threshold {nms_iou_threshold} must be in (0, 1]")
    if max_detections < 1:
        raise ConfigError(f"max_detections {max_detections} must be at least 1")


@dataclass(frozen=True)
class DetectionResult:
    """Detections of one frame, its normality score (0 without a fitted GMM), stage timings."""

    detections: Detections
    normality_score: float
    timings_ms: dict[str, float] = field(default_factory=dict)


def _load_model_config(config: DetectorConfig) -> tuple[ModelConfig | None, bool]:
    """(ModelConfig for exported models / default, untrained flag); None for checkpoints."""
    if not config.model_path:
        return ModelConfig(), True
    suffix = Path(config.model_path).suffix.lower()
    if suffix == ".onnx":  # the exported graph carries its config in its metadata
        return read_onnx_config(config.model_path), False
    if suffix in (".engine", ".plan"):  # a bare engine needs the manifest written by export
        return read_manifest(config.model_path), False
    return None, False


def training_data_settings(model_path: str, backend: object) -> dict[str, Any] | None:
    """How the model's training frames were built (`peftdml train` records it in the
    checkpoint; `peftdml export` copies it into the manifest), or None when not recorded."""
    recorded = getattr(backend, "training_data", None)
    if isinstance(recorded, dict):
        return recorded
    if not model_path or not manifest_path(model_path).is_file():
        return None
    try:
        manifest = json.loads(manifest_path(model_path).read_text())
    except (OSError, json.JSONDecodeError):
        return None  # read_manifest reports unreadable manifests where they are required
    data = manifest.get("checkpoint_extra", {}).get("data")
    return dict(data) if isinstance(data, dict) else None


def data_settings_mismatches(
    trained: Mapping[str, Any] | None, deployed: Mapping[str, Any]
) -> list[str]:
    """'name: trained X, here Y' for each setting both sides know and that differ."""
    if not trained:
        return []
    return [
        f"{name}: trained {trained[name]!r}, here {value!r}"
        for name, value in deployed.items()
        if name in trained and trained[name] != value
    ]


class Detector:
    """Runs the detector on Frames. See the module docstring for threading."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        model_config, self.untrained = _load_model_config(self.config)
        self.backend: InferenceBackend = create_backend(
            self.config.backend,
            self.config.model_path,
            self.config.device,
            seed=self.config.seed,
            precision=self.config.precision,
        )
        if model_config is None:  # a checkpoint: the torch backend loaded its config
            model_config = self.backend.config  # type: ignore[attr-defined]
        self.model_config: ModelConfig = model_config
        self.training_data = training_data_settings(self.config.model_path, self.backend)
        self.preprocessor = Preprocessor(PreprocessConfig.from_model_config(model_config))
        self._decode_config = self._with_thresholds(
            self.config.score_threshold, self.config.nms_iou_threshold, self.config.max_detections
        )
        self._threshold_lock = threading.Lock()
        self._detect_lock = threading.Lock()
        _LOG.info(
            "detector ready: backend %s on %s, model %s%s",
            self.backend.name,
            self.backend.device,
            self.config.model_path or "(default)",
            " [UNTRAINED]" if self.untrained else "",
        )

    def _with_thresholds(
        self, score_threshold: float, nms_iou_threshold: float, max_detections: int
    ) -> ModelConfig:
        check_thresholds(score_threshold, nms_iou_threshold, max_detections)
        return dataclasses.replace(
            self.model_config,
            score_threshold=score_threshold,
            nms_iou_threshold=nms_iou_threshold,
            max_detections=max_detections,
            pre_nms_top_k=max(self.model_config.pre_nms_top_k, max_detections),
        )

    def update_thresholds(
        self,
        score_threshold: float | None = None,
        nms_iou_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> None:
        """Change decoding thresholds; takes effect at the next `detect`. Raises ConfigError."""
        with self._threshold_lock:
            current = self._decode_config
            self._decode_config = self._with_thresholds(
                current.score_threshold if score_threshold is None else score_threshold,
                current.nms_iou_threshold if nms_iou_threshold is None else nms_iou_threshold,
                current.max_detections if max_detections is None else max_detections,
            )

    @property
    def thresholds(self) -> tuple[float, float, int]:
        """(score_threshold, nms_iou_threshold, max_detections) in use."""
        with self._threshold_lock:
            c = self._decode_config
        return c.score_threshold, c.nms_iou_threshold, c.max_detections

    def detect(self, frame: Frame) -> DetectionResult:
        """Detections of one frame in the ego frame of `frame`."""
        with self._detect_lock:
            with self._threshold_lock:
                decode_config = self._decode_config
            t0 = time.perf_counter()
            inputs = self.preprocessor(frame)
            t1 = time.perf_counter()
            outputs = self.backend.run(inputs)
            t2 = time.perf_counter()
            detections = decode_detections(outputs, decode_config)[0]
            t3 = time.perf_counter()
        timings = {
            "preprocess_ms": (t1 - t0) * 1e3,
            "inference_ms": (t2 - t1) * 1e3,
            "decode_ms": (t3 - t2) * 1e3,
            "total_ms": (t3 - t0) * 1e3,
        }
        score = float(outputs["normality_score"].reshape(-1)[0])
        return DetectionResult(detections=detections, normality_score=score, timings_ms=timings)
