"""`peftdml calibrate`: the clean distribution of a model's normality score, stored with it.

    peftdml calibrate --model models/peftdml_synth_cpu30.onnx --dataroot data/val_s12 \
        --version v1.0-synth --split synth_all

Scores every keyframe of a clean split as the node would (the reader's frame rule with the
settings the model was trained with, the core preprocessing, the node's backend, every sensor
present) and stores the empirical distribution of the raw `normality_score` with the model
(core/health.py: quantiles, frame count, where the frames came from): in the manifest beside an
exported model (--model), in the checkpoint's extra (--checkpoint), and with --also-checkpoint in
that checkpoint too, after checking that it gives the same scores. The node then reports each
frame's score as a percentile of these clean frames.

Calibrate on clean frames the model was not trained on, and not on the evaluation set: the
percentiles are only as honest as the frames are new to the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from peftdml_ros.core.backends import BACKEND_NAMES
from peftdml_ros.core.detector import manifest_path, read_manifest_json
from peftdml_ros.core.errors import ConfigError, ModelArtifactError
from peftdml_ros.core.health import (
    CALIBRATION_KEY,
    QUANTILE_COUNT,
    HealthCalibration,
    calibration_from_scores,
)
from peftdml_ros.core.model import PeftDmlNet, load_checkpoint
from peftdml_ros.core.preprocess import Inputs
from peftdml_ros.data.cache import CACHE_DIR_NAME
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.training import TrainingItem
from peftdml_ros.tools.eval import add_model_arguments

# Engine inputs of one frame -> its raw normality score.
Score = Callable[[Inputs], float]
SYNTH_MANIFEST = "synth_manifest.json"
# --also-checkpoint: how far the checkpoint's scores may be from the model's (ONNX Runtime and
# PyTorch agree to ~1e-4 on scores of a few hundred nats).
_SAME_SCORE_ABS, _SAME_SCORE_REL = 1e-2, 1e-4
_CHECK_FRAMES = 2
_SUMMARY_PROBABILITIES = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)


class Keyframes(Protocol):
    """Preprocessed keyframes of a split (CachedKeyframes, KeyframeDataset, FirstKeyframes)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> TrainingItem: ...


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="peftdml calibrate", description=__doc__.split("\n")[0])
    add_model_arguments(p)
    p.add_argument(
        "--also-checkpoint",
        type=Path,
        default=None,
        help="with --model: also store the calibration in this checkpoint (the one the model "
        "was exported from; its scores are checked against the model's)",
    )
    p.add_argument("--backend", choices=BACKEND_NAMES, default="auto", help="as the node's")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (clean)")
    p.add_argument("--version", default="v1.0-trainval", help="e.g. v1.0-mini, v1.0-synth")
    p.add_argument("--split", default="val", help="split name (or one in splits.json)")
    p.add_argument("--limit", type=int, default=None, help="only the first N keyframes")
    p.add_argument("--quantiles", type=int, default=QUANTILE_COUNT, help="quantiles stored")
    p.add_argument("--cache-dir", type=Path, default=None, help="as `peftdml eval --cache-dir`")
    p.add_argument("--no-cache", action="store_true", help="preprocess on the fly, no cache")
    p.add_argument("--json", type=Path, default=None, help="also write the calibration here")
    p.add_argument("--dry-run", action="store_true", help="compute and print, store nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    if args.quantiles < 2:
        raise ConfigError(f"--quantiles {args.quantiles} must be at least 2")
    if args.also_checkpoint is not None and args.model is None:
        raise ConfigError("--also-checkpoint goes with --model (a checkpoint stores its own)")
    return args


# ----------------------------------------------------------------------------------- scoring


def backend_scorer(backend: Any) -> Score:
    """The raw normality score of one frame through an InferenceBackend (the node's path)."""

    def score(inputs: Inputs) -> float:
        return float(np.asarray(backend.run(inputs)["normality_score"]).reshape(-1)[0])

    return score


def torch_scorer(model: PeftDmlNet, device: torch.device | str) -> Score:
    """The raw normality score of one frame through a PyTorch model (eval mode, float32; the
    model's train/eval mode is restored after each call)."""

    @torch.no_grad()
    def score(inputs: Inputs) -> float:
        was_training = model.training
        model.eval()
        tensors = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        value = float(model(**tensors)["normality_score"].reshape(-1)[0])
        model.train(was_training)
        return value

    return score


def score_items(
    score: Score,
    items: Iterable[TrainingItem],
    transform: Callable[[TrainingItem], Inputs] | None = None,
    progress: bool = False,
    description: str = "scores",
    total: int | None = None,
) -> npt.NDArray[np.float64]:
    """Raw normality scores [N] of the items' inputs (or of transform(item))."""
    values = [
        score(item.inputs if transform is None else transform(item))
        for item in tqdm(
            items, desc=description, unit="frame", disable=not progress, total=total, leave=False
        )
    ]
    return np.asarray(values, dtype=np.float64)


def _every(keyframes: Keyframes) -> Iterable[TrainingItem]:
    return (keyframes[i] for i in range(len(keyframes)))


def calibrate_keyframes(
    score: Score,
    keyframes: Keyframes,
    dataset: Mapping[str, Any],
    quantile_count: int = QUANTILE_COUNT,
    progress: bool = True,
) -> HealthCalibration:
    """The calibration of every keyframe's score (all sensors present, as recorded)."""
    scores = score_items(score, _every(keyframes), progress=progress,
                         description="calibration", total=len(keyframes))  # fmt: skip
    return calibration_from_scores(scores, dataset, quantile_count)


def dataset_fingerprint(reader: NuScenesReader, split: str, frames: int) -> dict[str, Any]:
    """Where calibration frames came from: the dataroot's folder name (no machine path),
    version, split, frame count, a digest of their sample tokens, and the generator's seed and
    degradations for a `peftdml synth` dataset."""
    tokens = list(reader.sample_tokens[:frames])
    digest = hashlib.sha256("\n".join(tokens).encode()).hexdigest()[:16]
    out: dict[str, Any] = {
        "name": Path(reader.dataroot).resolve().name,
        "version": reader.version,
        "split": split,
        "frames": len(tokens),
        "sample_tokens_sha256": digest,
    }
    synth = Path(reader.dataroot) / SYNTH_MANIFEST
    if synth.is_file():
        try:
            recipe = json.loads(synth.read_text())
            out["synth_seed"] = int(recipe["seed"])
            out["synth_degradations"] = list(recipe.get("degradations", []))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # not a recipe we can read: the digest still identifies the frames
    return out


# ----------------------------------------------------------------------------------- storing


def write_manifest_calibration(model_path: Path, calibration: HealthCalibration) -> Path:
    """Store the calibration in the manifest beside an exported model (atomically; every
    other manifest field is kept)."""
    path = manifest_path(model_path)
    manifest = read_manifest_json(model_path)
    manifest[CALIBRATION_KEY] = calibration.to_dict()
    _write_atomic(path, (json.dumps(manifest, indent=2, default=str) + "\n").encode())
    return path


def write_checkpoint_calibration(checkpoint: Path, calibration: HealthCalibration) -> Path:
    """Store the calibration in a checkpoint's extra (weights and everything else unchanged)."""
    load_checkpoint(checkpoint)  # a readable peftdml checkpoint, or a ModelArtifactError
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["extra"] = {**dict(payload.get("extra") or {}), CALIBRATION_KEY: calibration.to_dict()}
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(checkpoint)
    return checkpoint


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def check_same_scores(checkpoint: Path, score: Score, keyframes: Keyframes) -> None:
    """ModelArtifactError unless the checkpoint scores the first frames as `score` does (the
    calibration belongs to one GMM: a checkpoint refitted after export needs its own)."""
    model = load_checkpoint(checkpoint).model
    reference = torch_scorer(model, "cpu")
    for index in range(min(_CHECK_FRAMES, len(keyframes))):
        inputs = keyframes[index].inputs
        mine, theirs = score(inputs), reference(inputs)
        if not math.isclose(mine, theirs, rel_tol=_SAME_SCORE_REL, abs_tol=_SAME_SCORE_ABS):
            raise ModelArtifactError(
                f"{checkpoint} scores keyframe {index} {theirs:.4f}, the model {mine:.4f}: it "
                "is not the checkpoint this model was exported from (or its GMM was refitted); "
                "calibrate it on its own (`peftdml calibrate --checkpoint`)"
            )


def summary_lines(calibration: HealthCalibration) -> list[str]:
    """A few quantiles of the clean distribution, for people."""
    q = np.asarray(calibration.quantiles)
    probabilities = np.linspace(0.0, 1.0, len(q))

    def at(p: float) -> float:
        return float(np.interp(p, probabilities, q))

    data = calibration.dataset
    return [
        f"clean normality score of {calibration.frames} keyframes of {data.get('name', '?')} "
        f"({data.get('version', '?')} / {data.get('split', '?')}):",
        "  " + "  ".join(f"q{round(100 * p):02d} {at(p):.2f}" for p in _SUMMARY_PROBABILITIES),
        "  percentile = 100 * share of these frames with a score >= the frame's (0: beyond all)",
    ]


# -------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    from peftdml_ros.tools.eval import load_detector, open_keyframes, reader_settings

    args = _parse(argv)
    start = time.perf_counter()
    detector = load_detector(args)
    settings, notes = reader_settings(detector.training_data)
    for note in notes:
        print(f"peftdml calibrate: {note}", file=sys.stderr)
    reader = NuScenesReader(args.dataroot, args.version, args.split, **settings)
    cache_root = None if args.no_cache else (args.cache_dir or args.dataroot / CACHE_DIR_NAME)
    keyframes = open_keyframes(
        reader, detector.model_config, args.limit, cache_root, progress=not args.quiet
    )
    score = backend_scorer(detector.backend)
    calibration = calibrate_keyframes(
        score, keyframes, dataset_fingerprint(reader, args.split, len(keyframes)), args.quantiles,
        progress=not args.quiet,
    )  # fmt: skip
    for line in summary_lines(calibration):
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    if args.dry_run:
        print("--dry-run: nothing stored")
        return 0
    if args.also_checkpoint is not None:
        check_same_scores(args.also_checkpoint, score, keyframes)
    written = (
        [write_checkpoint_calibration(args.checkpoint, calibration)]
        if args.checkpoint is not None
        else [write_manifest_calibration(args.model, calibration)]
    )
    if args.also_checkpoint is not None:
        written.append(write_checkpoint_calibration(args.also_checkpoint, calibration))
    print(f"stored in {', '.join(str(p) for p in written)} "
          f"({time.perf_counter() - start:.0f} s wall)")  # fmt: skip
    return 0
