"""`peftdml bench cache`: what the on-disk keyframe cache (data/cache.py) costs and saves.

    peftdml bench cache --data DATAROOT [--version v1.0-synth] [--split NAME] [--scenes 2]
        [--workers 2] [--batch-size 4] [--batches 5]   (arguments: tools/bench.py)

On the first `--scenes` scenes of a split, with the default ModelConfig and the training data
defaults (1 LiDAR and 1 radar sweep, camera downscale 4): the build (1 process, then
`--workers` processes into a second root), the size on disk, a second call on the complete
cache, one keyframe read uncached / cached / cached with mmap (median over the keyframes), and
a batch of `--batch-size` (t, t+1) pairs read, then read and collated (median over
`--batches` batches): uncached, cached, cached with augmentation and sensor dropout. Wall
clock: on a shared machine other load adds to every figure.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.preprocess import PreprocessConfig
from peftdml_ros.data.augment import (
    Augmentation,
    AugmentConfig,
    AugmentedPairs,
    SensorDropoutConfig,
)
from peftdml_ros.data.cache import build_cache, build_or_load_cache
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.training import (
    KeyframeDataset,
    KeyframePairDataset,
    TrainingItem,
    collate_pairs,
)

Pairs = Dataset[tuple[TrainingItem, TrainingItem]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenes < 1 or args.workers < 1 or args.batch_size < 1 or args.batches < 1:
        raise ConfigError("--scenes, --workers, --batch-size and --batches must be >= 1")
    model = ModelConfig()
    preprocess = PreprocessConfig.from_model_config(model)
    reader = _first_scenes(
        NuScenesReader(
            args.data, args.version, args.split, lidar_sweeps=1, radar_sweeps=1,
            camera_downscale=4,
        ),
        args.scenes,
    )  # fmt: skip
    result: dict[str, Any] = {"target": "cache", "scenes": args.scenes, "keyframes": len(reader)}
    with tempfile.TemporaryDirectory() as tmp:
        serial = build_cache(reader, preprocess, Path(tmp) / "serial", progress=False)
        parallel = build_cache(
            reader, preprocess, Path(tmp) / "parallel", workers=args.workers, progress=False
        )
        start = time.perf_counter()
        cached = build_or_load_cache(reader, preprocess, Path(tmp) / "serial", progress=False)
        second_call_ms = (time.perf_counter() - start) * 1e3
        mapped = build_or_load_cache(
            reader, preprocess, Path(tmp) / "serial", mmap=True, progress=False
        )
        uncached = KeyframeDataset(reader, model)
        result["build"] = {
            "s_per_keyframe": serial.seconds_per_keyframe,
            "s_per_keyframe_workers": parallel.seconds_per_keyframe,
            "workers": args.workers,
            "mb_per_keyframe": serial.mb_per_keyframe,
            "second_call_ms": second_call_ms,
        }
        result["keyframe_ms"] = {
            name: _median_ms([functools.partial(data.__getitem__, i) for i in range(len(reader))])
            for name, data in (("uncached", uncached), ("cached", cached), ("mmap", mapped))
        }
        dropout = SensorDropoutConfig(modality_p=0.1, camera_p=0.1, radar_p=0.1)
        augmented = AugmentedPairs(
            KeyframePairDataset(cached), Augmentation(preprocess, AugmentConfig(), dropout)
        )
        paths: dict[str, Pairs] = {
            "uncached": KeyframePairDataset(uncached),
            "cached": KeyframePairDataset(cached),
            "cached + augmentation + dropout": augmented,
        }
        result["batch_ms"] = {
            name: _batch_ms(pairs, model, args.batch_size, args.batches)
            for name, pairs in paths.items()
        }
    return result


def _first_scenes(reader: NuScenesReader, count: int) -> NuScenesReader:
    """The reader restricted to its first `count` scenes (its public split attributes)."""
    nusc = reader.nusc
    reader.scene_names = reader.scene_names[:count]
    chosen = {scene["token"] for scene in nusc.scene if scene["name"] in reader.scene_names}
    reader.sample_tokens = [
        token
        for token in reader.sample_tokens
        if nusc.get("sample", token)["scene_token"] in chosen
    ]
    return reader


def _median_ms(calls: Sequence[Callable[[], object]]) -> float:
    samples = []
    for call in calls:
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _batch_ms(pairs: Pairs, model: ModelConfig, batch_size: int, batches: int) -> dict[str, float]:
    """Median ms per batch of `batch_size` consecutive pairs: read only, read and collated."""
    count = len(pairs)  # type: ignore[arg-type]
    starts = [(b * batch_size) % max(count - batch_size + 1, 1) for b in range(batches)]

    def read(start: int) -> list[tuple[TrainingItem, TrainingItem]]:
        return [pairs[i % count] for i in range(start, start + batch_size)]

    def read_and_collate(start: int) -> object:
        return collate_pairs(read(start), model)

    return {
        "read": _median_ms([functools.partial(read, s) for s in starts]),
        "read_and_collate": _median_ms([functools.partial(read_and_collate, s) for s in starts]),
    }


def render(result: dict[str, Any]) -> str:
    build = result["build"]
    rows = [
        ("cache build, 1 process", f"{build['s_per_keyframe']:.3f} s per keyframe"),
        (
            f"cache build, workers={build['workers']}",
            f"{build['s_per_keyframe_workers']:.3f} s per keyframe",
        ),
        ("cache size", f"{build['mb_per_keyframe']:.2f} MB per keyframe"),
        ("second call (complete cache)", f"{build['second_call_ms']:.0f} ms"),
        (
            "one keyframe, uncached / cached / cached with mmap",
            " / ".join(f"{result['keyframe_ms'][k]:.1f}" for k in ("uncached", "cached", "mmap"))
            + " ms",
        ),
    ]
    for kind, label in (("read", "read only"), ("read_and_collate", "with collate_pairs")):
        figures = " / ".join(f"{v[kind]:.0f}" for v in result["batch_ms"].values())
        rows.append((f"batch, {label}: {' / '.join(result['batch_ms'])}", f"{figures} ms"))
    lines = [
        f"peftdml bench cache: {result['keyframes']} keyframes of {result['scenes']} scenes",
        "| what | measured |",
        "|---|---|",
        *(f"| {what} | {value} |" for what, value in rows),
    ]
    return "\n".join(lines)
