"""Training data: nuScenes keyframes (NuScenesReader records) -> engine inputs + BEV targets.

One dataset item is one keyframe: its preprocessed inputs (exactly what the deployed detector
feeds the engine, batch dimension 1) and its ground truth. `collate_training` stacks items into
torch tensors and builds the CenterPoint targets of the batch with the model's `build_targets`.
Instance tokens become stable int64 track ids (a hash), so the temporal consistency loss can
match an object across keyframes; `KeyframePairDataset` yields keyframes t and t+1 of a scene
together, and `collate_pairs` makes one batch of each.

`KeyframeDataset` preprocesses every read (JPEG decodes included); for training read the
on-disk cache instead (`peftdml_ros.data.cache.build_or_load_cache`), whose `CachedKeyframes`
gives the same items; `peftdml_ros.data.augment` adds augmentation and per-sensor dropout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.targets import BevTargets, build_targets
from peftdml_ros.core.preprocess import (
    Inputs,
    PreprocessConfig,
    Preprocessor,
    collate,
    radar_sensor_index,
)
from peftdml_ros.core.types import Detections
from peftdml_ros.data.nuscenes_reader import KeyframeRecord, NuScenesReader


def instance_id(token: str) -> int:
    """A stable non-negative int64 id of an instance token (56-bit blake2b)."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=7).digest(), "big")


@dataclass(frozen=True)
class TrainingItem:
    """One keyframe: inputs ([1, ...] float32 per model_io name) and its ground truth.

    radar_sensor_index: [1, P_R] int8, per packed radar row the index of its radar in the rig's
    radar names (core.types.NUSCENES_RADARS), -1 on padding: what single-radar removal needs.
    ego_to_global: [4, 4] float64 pose of the keyframe's ego frame (for submissions).
    """

    inputs: Inputs
    ground_truth: Detections
    instance_ids: npt.NDArray[np.int64]
    scene_name: str
    sample_token: str
    radar_sensor_index: npt.NDArray[np.int8] | None = None
    ego_to_global: npt.NDArray[np.float64] | None = None


class KeyframeSource(Protocol):
    """Keyframes in scene order: KeyframeDataset, CachedKeyframes, AugmentedKeyframes."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> TrainingItem: ...

    def scene_names(self) -> list[str]:
        """The scene name of every index (without reading the items)."""
        ...


@dataclass(frozen=True)
class TrainingBatch:
    """B keyframes: inputs as float32 tensors [B, ...] and their targets."""

    inputs: dict[str, torch.Tensor]
    targets: BevTargets
    ground_truth: tuple[Detections, ...]
    sample_tokens: tuple[str, ...]

    def to(self, device: torch.device | str) -> TrainingBatch:
        return TrainingBatch(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            targets=self.targets.to(device),
            ground_truth=self.ground_truth,
            sample_tokens=self.sample_tokens,
        )


class KeyframeDataset(Dataset[TrainingItem]):
    """Keyframes of a NuScenesReader, preprocessed for `config`.

    cache: keep every item in memory after its first read (small datasets, smoke runs; with the
    default config an item is about 3 MB). Only useful with DataLoader num_workers=0.
    """

    def __init__(self, reader: NuScenesReader, config: ModelConfig, cache: bool = False) -> None:
        if len(reader) == 0:
            raise ConfigError(
                f"the split of {reader.dataroot} ({reader.version}) has no keyframes; check "
                "--version and --split (splits.json for custom splits)"
            )
        self.reader = reader
        self.config = config
        self.preprocessor = Preprocessor(PreprocessConfig.from_model_config(config))
        self._cache: dict[int, TrainingItem] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.reader)

    def scene_names(self) -> list[str]:
        """The scene name of every index (from the tables; no sensor data is read)."""
        nusc = self.reader.nusc
        names = {scene["token"]: scene["name"] for scene in nusc.scene}
        return [names[nusc.get("sample", t)["scene_token"]] for t in self.reader.sample_tokens]

    def __getitem__(self, index: int) -> TrainingItem:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = self._read(index)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def _read(self, index: int) -> TrainingItem:
        return keyframe_item(self.reader[index], self.preprocessor)


def keyframe_item(record: KeyframeRecord, preprocessor: Preprocessor) -> TrainingItem:
    """The TrainingItem of one reader record."""
    return TrainingItem(
        inputs=preprocessor(record.frame),
        ground_truth=record.ground_truth,
        instance_ids=np.array([instance_id(t) for t in record.gt_instance_tokens], np.int64),
        scene_name=record.scene_name,
        sample_token=record.sample_token,
        radar_sensor_index=radar_sensor_index(record.frame, preprocessor.config),
        ego_to_global=np.asarray(record.ego_to_global, np.float64),
    )


def consecutive_pairs(scene_names: Sequence[str]) -> list[tuple[int, int]]:
    """(t, t+1) index pairs of consecutive keyframes of the same scene (indices in scene order)."""
    return [
        (i, i + 1) for i in range(len(scene_names) - 1) if scene_names[i] == scene_names[i + 1]
    ]


class KeyframePairDataset(Dataset[tuple[TrainingItem, TrainingItem]]):
    """Pairs of consecutive keyframes (t, t+1) of one scene, for the temporal consistency loss."""

    def __init__(self, keyframes: KeyframeSource) -> None:
        self.keyframes = keyframes
        self.pairs = consecutive_pairs(keyframes.scene_names())
        if not self.pairs:
            raise ConfigError(
                "no scene of this split has two keyframes, so there is no (t, t+1) pair for the "
                "temporal loss: use a split with longer scenes"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[TrainingItem, TrainingItem]:
        now, later = self.pairs[index]
        return self.keyframes[now], self.keyframes[later]


def collate_training(items: Sequence[TrainingItem], config: ModelConfig) -> TrainingBatch:
    """Stack items into a batch and build its targets (use with functools.partial)."""
    inputs = collate([item.inputs for item in items])
    targets = build_targets(
        [item.ground_truth for item in items], config, [item.instance_ids for item in items]
    )
    return TrainingBatch(
        inputs={k: torch.from_numpy(v) for k, v in inputs.items()},
        targets=targets,
        ground_truth=tuple(item.ground_truth for item in items),
        sample_tokens=tuple(item.sample_token for item in items),
    )


def collate_pairs(
    pairs: Sequence[tuple[TrainingItem, TrainingItem]], config: ModelConfig
) -> tuple[TrainingBatch, TrainingBatch]:
    """(batch of the t keyframes, batch of their t+1 keyframes)."""
    return (
        collate_training([now for now, _ in pairs], config),
        collate_training([later for _, later in pairs], config),
    )
