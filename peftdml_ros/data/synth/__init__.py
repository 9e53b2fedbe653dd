"""A seeded synthetic world written as a nuScenes-format dataset (`peftdml synth`).

`generate_dataset(out_dir, scenes=..., seed=..., preset="small"|"full", degradations=...)`
writes `<out_dir>/v1.0-synth/` (all 13 tables, `splits.json` with "synth_train"/"synth_val"),
`samples/`, `sweeps/`, `maps/` and `can_bus/`, readable by the official nuscenes-devkit:
`NuScenes(version="v1.0-synth", dataroot=out_dir)`.
"""

from __future__ import annotations

from peftdml_ros.data.synth.degrade import Degradation, parse_degradation
from peftdml_ros.data.synth.errors import SynthConfigError
from peftdml_ros.data.synth.generate import (
    PRESETS,
    TRAIN_SPLIT,
    VAL_SPLIT,
    Preset,
    generate_dataset,
    scene_names,
)
from peftdml_ros.data.synth.tables import VERSION

__all__ = [
    "PRESETS",
    "TRAIN_SPLIT",
    "VAL_SPLIT",
    "VERSION",
    "Degradation",
    "Preset",
    "SynthConfigError",
    "generate_dataset",
    "parse_degradation",
    "scene_names",
]
