"""`peftdml eval`: a model on a dataset split, scored with the official nuScenes metrics.

    peftdml eval --checkpoint runs/a/checkpoint.pt --dataroot data/synth --version v1.0-synth \
        --split synth_val --dropout --degradation fog night --json eval.json

The keyframes go through what the node runs: the reader's frame rule with the settings the model
was trained with (recorded in the checkpoint, or in the manifest beside an ONNX file), the core
Preprocessor, the node's Detector backend, and its decode with its thresholds. The devkit's
DetectionEval scores the detections (mAP, NDS, mATE, mASE, mAOE, mAVE, mAAE, AP per class).

--dropout scores the split again for each of the 31 non-empty subsets of {lidar, radar, camera,
imu, gnss} (the other modalities masked absent and zeroed as preprocessing zeroes them) and with
each single camera and radar removed; retention = NDS of the run / NDS of the full run.
--degradation regenerates a generated dataset's scenes with a degradation (once, cached) and
scores the model on them.

Writes to --out: metrics.json (and --json), eval.md (printed too), curves/ (precision-recall per
class), bev_<scene>.png and camera_<scene>_<camera>.png (a keyframe per scene), and per run
(full/, dropout/<run>/, degradation/<name>/) its submission and the devkit's metric files.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from peftdml_ros.core.backends import BACKEND_NAMES
from peftdml_ros.core.detector import Detector, DetectorConfig
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.preprocess import (
    Inputs,
    PreprocessConfig,
    remove_modalities,
    remove_sensors,
)
from peftdml_ros.core.types import (
    MODALITIES,
    NUSCENES_CLASSES,
    NUSCENES_RADARS,
    Detections,
    Frame,
    Modality,
)
from peftdml_ros.data.cache import CACHE_DIR_NAME, build_or_load_cache
from peftdml_ros.data.evaluation import (
    TP_ERROR_NAMES,
    TP_ERRORS,
    DetectionMetrics,
    Predict,
    SplitScorer,
    backend_predictor,
    evaluate_items,
    item_pose,
    node_decode_config,
)
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.nuscenes_results import SubmissionBox, SubmissionBuilder
from peftdml_ros.data.training import KeyframeDataset, TrainingItem

FULL = "full"
# How the node builds frames (one sweep per sensor, static extrinsics): the reader settings for
# a model that does not record its training frames (see tools/train.py).
NODE_FRAME_SETTINGS: dict[str, Any] = {
    "lidar_sweeps": 1,
    "radar_sweeps": 1,
    "compensate_ego_motion": False,
}
# The reader options a recorded training-data setting may set (the rest belong to the caller).
_NOT_SETTINGS = {"self", "dataroot", "version", "split", "nusc"}
SYNTH_MANIFEST = "synth_manifest.json"
_CAMERA_PREFERENCE = ("CAM_FRONT",)
PICTURE_CAMERA_DOWNSCALE = 2


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint or --model, one of them required (eval, calibrate, health-eval)."""
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="a `peftdml train` checkpoint (.pt)")
    model.add_argument(
        "--model", type=Path, help="an exported .onnx (manifest beside it) or TensorRT engine"
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="peftdml eval",
        description=__doc__.split("\n")[0],
        epilog="Outputs and the meaning of the numbers: docs/eval.md",
    )
    add_model_arguments(p)
    p.add_argument("--backend", choices=BACKEND_NAMES, default="auto", help="as the node's")
    p.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot")
    p.add_argument("--version", default="v1.0-trainval", help="e.g. v1.0-mini, v1.0-synth")
    p.add_argument("--split", default="val", help="split name (or one in splits.json)")
    p.add_argument("--out", type=Path, default=None, help="default: eval/<model>-<split>")
    p.add_argument(
        "--dropout", action="store_true", help="every modality subset, each camera/radar removed"
    )
    p.add_argument(
        "--degradation",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="night, fog, rain, overexposure, blur, beam_loss (or a full `peftdml synth "
        "--degrade` spec); generated datasets only",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the metrics JSON here")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--limit", type=int, default=None, help="only the first N keyframes")
    p.add_argument("--score-threshold", type=float, default=None, help="default: the node's")
    p.add_argument("--nms-iou-threshold", type=float, default=None, help="default: the node's")
    p.add_argument("--max-detections", type=int, default=None, help="default: the node's")
    p.add_argument("--pictures", type=int, default=10, help="scenes drawn (BEV and camera)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="preprocessed-keyframe caches (shared with `peftdml train --cache-dir`) and, under "
        "degraded/, the degraded datasets (default: <dataroot>/.peftdml_cache)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="preprocess every keyframe on the fly, write no keyframe cache",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars, no tables printed")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    if args.pictures < 0:
        raise ConfigError(f"--pictures {args.pictures} must be >= 0")
    return args


# ----------------------------------------------------------------------------- keyframes


class Keyframes(Protocol):
    """Preprocessed keyframes of a split, in reader order (KeyframeDataset, CachedKeyframes)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> TrainingItem: ...


def open_keyframes(
    reader: NuScenesReader,
    config: ModelConfig,
    limit: int | None,
    cache_root: Path | None,
    progress: bool = True,
) -> FirstKeyframes:
    """Where evaluation gets its preprocessed keyframes: the first `limit` of the reader's
    split. With a cache root and the whole split, the on-disk cache (built on first use and
    shared with `peftdml train`, whose validation caches the same way); else read and
    preprocessed on demand (a smoke run should not build a cache of the whole split)."""
    if cache_root is not None and limit is None:
        preprocess = PreprocessConfig.from_model_config(config)
        cached = build_or_load_cache(reader, preprocess, cache_root, progress=progress)
        return FirstKeyframes(cached, None)
    return FirstKeyframes(KeyframeDataset(reader, config), limit)


class FirstKeyframes:
    """The first `limit` keyframes of a source (all of them for None), iterable."""

    def __init__(self, keyframes: Keyframes, limit: int | None) -> None:
        self.keyframes = keyframes
        self._count = len(keyframes) if limit is None else min(limit, len(keyframes))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> TrainingItem:
        if not 0 <= index < self._count:
            raise IndexError(f"keyframe {index} out of range for {self._count}")
        return self.keyframes[index]

    def __iter__(self) -> Iterator[TrainingItem]:
        return (self.keyframes[i] for i in range(self._count))


# ------------------------------------------------------------------------------- dropout


def modality_subsets() -> list[tuple[Modality, ...]]:
    """The 31 non-empty subsets of MODALITIES, largest first, in MODALITIES order within."""
    return [
        subset
        for size in range(len(MODALITIES), 0, -1)
        for subset in itertools.combinations(MODALITIES, size)
    ]


def subset_name(subset: Collection[Modality]) -> str:
    """'lidar+camera': the present modalities joined by +, in MODALITIES order."""
    return "+".join(m.value for m in MODALITIES if m in subset)


def retention(run_nds: float, full_nds: float) -> float | None:
    """NDS of a run as a fraction of the full run's; None when the full run scores 0."""
    return run_nds / full_nds if full_nds > 0 else None


@dataclass(frozen=True)
class Variant:
    """One way of feeding the split: all of it, a modality subset, or a sensor removed."""

    name: str
    modalities: tuple[Modality, ...] = MODALITIES
    removed: tuple[str, ...] = ()
    # The earlier variant that gives this one's inputs exactly, for a model that reads only some
    # modalities (ModelConfig.input_modalities): its detections and metrics are reused.
    same_as: str | None = None

    def inputs(self, item: TrainingItem, config: PreprocessConfig) -> Inputs:
        """The item's inputs as preprocessing makes them for a frame without the absent
        modalities (zeroed and masked) or the removed sensors."""
        if self.removed:
            if item.radar_sensor_index is None and any(s in NUSCENES_RADARS for s in self.removed):
                raise ConfigError(
                    f"keyframe {item.sample_token} does not say which radar each point came "
                    "from (radar_sensor_index): read it with KeyframeDataset or the cache"
                )
            return remove_sensors(
                item.inputs, config,
                cameras=[s for s in self.removed if s in config.camera_names],
                radars=[s for s in self.removed if s in NUSCENES_RADARS],
                radar_index=item.radar_sensor_index,
            )  # fmt: skip
        absent = [m for m in MODALITIES if m not in self.modalities]
        return remove_modalities(item.inputs, absent) if absent else item.inputs


def variants(config: ModelConfig, dropout: bool) -> list[Variant]:
    """The full run, then (dropout) the 31 subsets and each camera of the model and radar out."""
    runs = [Variant(FULL)]
    if dropout:
        runs += [Variant(subset_name(s), modalities=s) for s in modality_subsets()]
        runs += [Variant(f"-{s}", removed=(s,)) for s in (*config.camera_names, *NUSCENES_RADARS)]
    return _mark_equivalent(runs, config)


def _mark_equivalent(runs: list[Variant], config: ModelConfig) -> list[Variant]:
    """Variants that differ only in what the model does not read point at the first of them.

    The network masks every modality outside input_modalities, so a LiDAR-only model gives the
    same detections with or without radar, cameras, IMU and GNSS: scoring them again would
    only cost time.
    """
    read = {m for m in MODALITIES if m.value in config.input_modalities}
    first: dict[tuple[frozenset[Modality], frozenset[str]], str] = {}
    out: list[Variant] = []
    for run in runs:
        removed = {
            s
            for s in run.removed
            if (s in config.camera_names and Modality.CAMERA in read)
            or (s in NUSCENES_RADARS and Modality.RADAR in read)
        }
        key = (frozenset(set(run.modalities) & read), frozenset(removed))
        same = first.setdefault(key, run.name)
        out.append(run if same == run.name else replace(run, same_as=same))
    return out


@dataclass
class Predictions:
    """Submission results per variant and what pictures need of the full run."""

    results: dict[str, dict[str, list[SubmissionBox]]]
    tokens: list[str]
    detections: dict[str, Detections]  # the full run's, per sample token
    scenes: dict[str, list[tuple[str, int]]]  # scene -> (sample token, GT boxes)
    same_as: dict[str, str] = field(default_factory=dict)  # variant -> the variant it equals


def predict_variants(
    predict: Predict,
    keyframes: Keyframes,
    config: PreprocessConfig,
    scorer: SplitScorer,
    runs: Sequence[Variant],
    progress: bool,
) -> Predictions:
    """Each keyframe is read once and fed in every variant (a variant that leaves the inputs
    as they are, such as all five modalities, reuses the full run's detections)."""
    builders = {run.name: SubmissionBuilder() for run in runs}
    out = Predictions({}, [], {}, {})
    description = "eval" if len(runs) == 1 else f"eval x{len(runs)} runs"
    for index in tqdm(range(len(keyframes)), desc=description, unit="frame", disable=not progress):
        item = keyframes[index]
        pose = item_pose(item, scorer)
        unchanged: Detections | None = None
        for run in runs:
            if run.same_as is not None:
                continue
            inputs = run.inputs(item, config)
            if inputs is item.inputs:
                unchanged = predict(inputs) if unchanged is None else unchanged
                detections = unchanged
            else:
                detections = predict(inputs)
            builders[run.name].add(item.sample_token, detections, pose)
            if run.name == FULL:
                out.detections[item.sample_token] = detections
        out.tokens.append(item.sample_token)
        out.scenes.setdefault(item.scene_name, []).append(
            (item.sample_token, len(item.ground_truth))
        )
    same_as = {run.name: run.same_as for run in runs if run.same_as is not None}
    out.results = {name: builders[same_as.get(name, name)].results for name in builders}
    out.same_as = same_as
    return out


def score_variants(
    scorer: SplitScorer, predictions: Predictions, out_dir: Path, progress: bool
) -> dict[str, DetectionMetrics]:
    """The official metrics of every variant (PR curves of the full run into out/curves)."""
    metrics: dict[str, DetectionMetrics] = {}
    names = list(predictions.results)
    for name in tqdm(names, desc="scoring", unit="run", disable=not progress or len(names) < 2):
        if name in predictions.same_as:
            metrics[name] = metrics[predictions.same_as[name]]
            continue
        run_dir = out_dir / FULL if name == FULL else out_dir / "dropout" / _safe(name)
        metrics[name] = scorer.score_results(
            predictions.results[name],
            run_dir,
            sample_tokens=predictions.tokens,
            curves_dir=out_dir / "curves" if name == FULL else None,
        )
    return metrics


def _safe(name: str) -> str:
    """A directory name for a run or spec name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


# -------------------------------------------------------------------------- degradations


@dataclass(frozen=True)
class SynthRecipe:
    """How a generated dataset was made (its synth_manifest.json)."""

    seed: int
    preset: str
    scene_names: tuple[str, ...]
    degradations: tuple[str, ...]


def synth_recipe(dataroot: Path) -> SynthRecipe:
    """The recipe of a `peftdml synth` dataset; ConfigError for any other dataroot."""
    from peftdml_ros.data.synth import scene_names

    path = dataroot / SYNTH_MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"--degradation renders the degradation by generating the dataset's scenes again, "
            f"which only works for datasets written by `peftdml synth` ({dataroot} has no "
            f"{SYNTH_MANIFEST}); for other data, evaluate a dataset recorded in that condition"
        )
    try:
        manifest = json.loads(path.read_text())
        names = tuple(manifest["scenes"])
        recipe = SynthRecipe(
            seed=int(manifest["seed"]),
            preset=str(manifest["preset"]),
            scene_names=names,
            degradations=tuple(str(d) for d in manifest.get("degradations", ())),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path} is not a `peftdml synth` manifest ({error})") from error
    if list(names) != scene_names(len(names)):
        raise ConfigError(
            f"{path} lists scenes {list(names)[:3]}..., not the generator's scene-0001.. "
            "sequence: the scenes cannot be generated again"
        )
    return recipe


def degraded_dataroot(
    dataroot: Path,
    recipe: SynthRecipe,
    spec: str,
    scene_count: int,
    cache_dir: Path,
    progress: bool,
) -> Path:
    """The first `scene_count` scenes of the dataset generated again with `spec` added to its
    own degradations (same seed, preset and scenes: same world, same sample tokens), under
    cache_dir; generated once and reused."""
    from peftdml_ros.data.synth import generate_dataset, parse_degradation

    names = set(recipe.scene_names[:scene_count])
    # Degradations scoped to scenes not generated here would be refused (and change nothing).
    base = [d for d in (parse_degradation(s) for s in recipe.degradations)
            if d.scene is None or d.scene in names]  # fmt: skip
    added = parse_degradation(spec)
    key = {
        "seed": recipe.seed,
        "preset": recipe.preset,
        "scenes": scene_count,
        "degradations": [str(d) for d in (*base, added)],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir / f"{_safe(spec)}-{digest}"
    if (target / ".complete").is_file():
        return target
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    generate_dataset(
        partial,
        scenes=scene_count,
        seed=recipe.seed,
        preset=recipe.preset,
        degradations=(*base, added),
        overwrite=True,
        progress=progress,
    )
    # The dataset's own splits (they may have been edited) name the same scenes.
    for version_dir in dataroot.glob("*/splits.json"):
        destination = partial / version_dir.parent.name / "splits.json"
        if destination.parent.is_dir():
            shutil.copyfile(version_dir, destination)
    (partial / ".complete").write_text(json.dumps(key, indent=1))
    if (target / ".complete").is_file():  # generated meanwhile by another run
        shutil.rmtree(partial)
    else:
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    return target


# ---------------------------------------------------------------------------- the model


def load_detector(args: argparse.Namespace) -> Detector:
    """The node's Detector for the model (its backend, config, recorded training data)."""
    model_path = args.checkpoint if args.checkpoint is not None else args.model
    backend = "torch" if args.checkpoint is not None and args.backend == "auto" else args.backend
    return Detector(
        DetectorConfig(model_path=str(model_path), backend=backend, device=args.device)
    )


def reader_settings(recorded: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """(NuScenesReader keyword arguments, notes) from the model's recorded training-data
    settings; the node's frame settings when nothing is recorded."""
    accepted = set(inspect.signature(NuScenesReader.__init__).parameters) - _NOT_SETTINGS
    if not recorded:
        return dict(NODE_FRAME_SETTINGS), [
            "the model does not record how its training frames were built; reading frames as "
            f"the node builds them ({NODE_FRAME_SETTINGS})"
        ]
    settings = {k: v for k, v in recorded.items() if k in accepted}
    ignored = sorted(set(recorded) - accepted)
    notes = [f"recorded training-data settings this reader does not take: {ignored}"]
    return settings, notes if ignored else []


# -------------------------------------------------------------------------------- report


def _run_summary(metrics: DetectionMetrics, full_nds: float | None) -> dict[str, Any]:
    summary = metrics.as_dict()
    summary.pop("per_class_TP", None)
    if full_nds is not None:
        summary["retention"] = retention(metrics.nd_score, full_nds)
    return summary


def build_report(
    full: DetectionMetrics,
    dropout: Mapping[str, DetectionMetrics],
    degradation: Mapping[str, DetectionMetrics],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The metrics JSON: full, dropout (retention per run), degradation, meta."""
    return {
        "meta": dict(meta),
        "full": full.as_dict(),
        "dropout": {name: _run_summary(m, full.nd_score) for name, m in dropout.items()},
        "degradation": {name: _run_summary(m, full.nd_score) for name, m in degradation.items()},
    }


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report as Markdown tables."""
    meta, full = report["meta"], report["full"]
    errors = [TP_ERROR_NAMES[k] for k in TP_ERRORS]
    per_class = [
        [name, _number(full["per_class_AP"].get(name))]
        + [_number(full["per_class_TP"].get(name, {}).get(e)) for e in errors]
        for name in NUSCENES_CLASSES
    ]
    lines = [
        f"# {meta['model']} on {meta['version']} / {meta['split']}",
        "",
        f"{full['samples']} keyframes{' (--limit)' if meta.get('limit') else ''}; backend "
        f"{meta['backend']}; score threshold {meta['score_threshold']:g}, NMS IoU "
        f"{meta['nms_iou_threshold']:g}, at most {meta['max_detections']} boxes.",
        "",
        "## Full sensor set",
        "",
        *_table(["mAP", "NDS", *errors], [[_number(full[k]) for k in ("mAP", "NDS", *errors)]]),
        "",
        *_table(["class", "AP", *(e[1:] for e in errors)], per_class),
    ]
    dropout = report["dropout"]
    subsets = [(k, v) for k, v in dropout.items() if not k.startswith("-")]
    removed = [(k, v) for k, v in dropout.items() if k.startswith("-")]
    if subsets:
        lines += ["", "## Sensor dropout: modalities present", ""]
        lines += _table(["modalities", "mAP", "NDS", "retention"], _rows(subsets))
    if removed:
        lines += ["", "## Sensor dropout: one sensor removed", ""]
        lines += _table(["removed", "mAP", "NDS", "retention"], _rows(removed))
    if report["degradation"]:
        lines += ["", "## Degradations", ""]
        lines += _table(
            ["degradation", "mAP", "NDS", "retention"], _rows(report["degradation"].items())
        )
    lines += [
        "",
        "retention = NDS of the run / NDS with the full sensor set (n/a when that is 0).",
        "",
    ]
    return "\n".join(lines)


def _rows(runs: Any) -> list[list[str]]:
    return [
        [name, _number(m["mAP"]), _number(m["NDS"]), _number(m.get("retention"))]
        for name, m in runs
    ]


# ------------------------------------------------------------------------------ pictures


def draw_scenes(
    reader: NuScenesReader,
    settings: Mapping[str, Any],
    predictions: Predictions,
    config: ModelConfig,
    out_dir: Path,
    count: int,
) -> list[Path]:
    """For the first `count` scenes, the keyframe with the most ground truth: a BEV and a
    camera image, each with the full run's detections and the ground truth."""
    from peftdml_ros.tools.plots import plot_bev, plot_camera_boxes

    if count == 0:
        return []
    # The same frames with camera images decoded at half size: pictures people can read.
    settings = {**settings, "camera_downscale": PICTURE_CAMERA_DOWNSCALE}
    reader = NuScenesReader(reader.dataroot, reader.version, None, nusc=reader.nusc, **settings)
    paths: list[Path] = []
    x0, y0, _, x1, y1, _ = config.point_cloud_range_m
    range_m = float(max(abs(x0), abs(y0), abs(x1), abs(y1)))
    for scene, samples in list(predictions.scenes.items())[:count]:
        token = max(samples, key=lambda s: s[1])[0]
        record = reader.record(token)
        detections = predictions.detections[token]
        lidar = record.frame.lidar[0].points[:, :2] if record.frame.lidar else None
        stamp = f"{scene} keyframe {[s[0] for s in samples].index(token)}"
        paths.append(plot_bev(
            out_dir / f"bev_{_safe(scene)}.png", points_xy=lidar,
            ground_truth=record.ground_truth, detections=detections, range_m=range_m,
            title=f"{stamp}: {len(detections)} detections, {len(record.ground_truth)} GT boxes",
        ))  # fmt: skip
        camera = _pick_camera(record.frame)
        if camera is not None:
            paths.append(plot_camera_boxes(
                out_dir / f"camera_{_safe(scene)}_{camera.sensor}.png", image=camera.image,
                intrinsics=camera.intrinsics, camera_to_ego=camera.camera_to_ego,
                ground_truth=record.ground_truth, detections=detections,
                title=f"{stamp}, {camera.sensor}: detections (color) and ground truth (dashed)",
            ))  # fmt: skip
    return paths


def _pick_camera(frame: Frame) -> Any:
    for name in _CAMERA_PREFERENCE:
        for camera in frame.cameras:
            if camera.sensor == name:
                return camera
    return frame.cameras[0] if frame.cameras else None


# ---------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    progress = not args.quiet
    # Refuse what cannot run before minutes of inference.
    recipe = _check_degradations(args.dataroot, args.degradation)
    detector = load_detector(args)
    config = detector.model_config
    settings, notes = reader_settings(detector.training_data)
    for note in notes:
        print(f"peftdml eval: {note}", file=sys.stderr)
    reader = NuScenesReader(args.dataroot, args.version, args.split, **settings)
    cache_root = _cache_root(args)
    keyframes = open_keyframes(reader, config, args.limit, cache_root, progress)
    scorer = SplitScorer(reader.nusc, reader.sample_tokens)
    decode = node_decode_config(
        config, args.score_threshold, args.nms_iou_threshold, args.max_detections
    )
    predict = backend_predictor(detector.backend, decode)
    out_dir = _out_dir(args)
    out_dir.mkdir(parents=True, exist_ok=True)

    predictions = predict_variants(
        predict, keyframes, PreprocessConfig.from_model_config(config), scorer,
        variants(config, args.dropout), progress,
    )  # fmt: skip
    metrics = score_variants(scorer, predictions, out_dir, progress)
    degraded: dict[str, DetectionMetrics] = {}
    if recipe is not None:
        count = 1 + max(recipe.scene_names.index(s) for s in predictions.scenes)
        for spec in args.degradation:
            root = degraded_dataroot(
                args.dataroot, recipe, spec, count, _degraded_root(args), progress
            )
            degraded[spec] = _evaluate_degraded(
                root, args, settings, config, predict, predictions.tokens,
                out_dir / "degradation" / _safe(spec), cache_root,
            )  # fmt: skip

    meta = {
        "model": str(_model_path(args)),
        "backend": detector.backend.name,
        "dataroot": str(args.dataroot),
        "version": args.version,
        "split": args.split,
        "limit": args.limit,
        "reader": dict(settings),
        "score_threshold": decode.score_threshold,
        "nms_iou_threshold": decode.nms_iou_threshold,
        "max_detections": decode.max_detections,
    }
    dropout_runs = {k: v for k, v in metrics.items() if k != FULL}
    report = build_report(metrics[FULL], dropout_runs, degraded, meta)
    markdown = _write_report(report, out_dir, args.json)
    pictures = draw_scenes(reader, settings, predictions, config, out_dir, args.pictures)
    if not args.quiet:
        print(markdown)
        print(f"pictures: {len(pictures)} in {out_dir}, PR curves in {out_dir / 'curves'}")
    full = metrics[FULL]
    print(f"mAP {full.mean_ap:.4f}  NDS {full.nd_score:.4f}  ({full.samples} keyframes); "
          f"wrote {out_dir / 'metrics.json'}, {out_dir / 'eval.md'}")  # fmt: skip
    return 0


def _check_degradations(dataroot: Path, specs: Sequence[str]) -> SynthRecipe | None:
    """The dataset's recipe when degradations are asked for (ConfigError when they cannot
    run: a dataset not generated, a spec that does not parse)."""
    if not specs:
        return None
    from peftdml_ros.data.synth import parse_degradation

    recipe = synth_recipe(dataroot)
    for spec in specs:
        parse_degradation(spec)
    return recipe


def _model_path(args: argparse.Namespace) -> Path:
    path: Path = args.checkpoint if args.checkpoint is not None else args.model
    return path


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        out: Path = args.out
        return out
    model = _model_path(args)
    return Path("eval") / _safe(f"{model.parent.name}-{model.stem}-{args.split}".lstrip("-"))


def _cache_root(args: argparse.Namespace) -> Path | None:
    """Root of the preprocessed-keyframe caches (None: --no-cache)."""
    if args.no_cache:
        return None
    root: Path = args.cache_dir or args.dataroot / CACHE_DIR_NAME
    return root


def _degraded_root(args: argparse.Namespace) -> Path:
    base: Path = args.cache_dir or args.dataroot / CACHE_DIR_NAME
    return base / "degraded"


def _write_report(report: Mapping[str, Any], out_dir: Path, json_path: Path | None) -> str:
    """metrics.json (and json_path) and eval.md in out_dir; returns the Markdown."""
    text = json.dumps(report, indent=2)
    (out_dir / "metrics.json").write_text(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
    markdown = markdown_report(report)
    (out_dir / "eval.md").write_text(markdown)
    return markdown


def _evaluate_degraded(
    root: Path,
    args: argparse.Namespace,
    settings: Mapping[str, Any],
    config: ModelConfig,
    predict: Predict,
    tokens: Sequence[str],
    out_dir: Path,
    cache_root: Path | None,
) -> DetectionMetrics:
    """The model on the degraded copy of the dataset: the same keyframes as the full run."""
    reader = NuScenesReader(root, args.version, args.split, **settings)
    # The degraded copy is a dataset of its own: its keyframes are cached under its own key.
    keyframes = open_keyframes(reader, config, args.limit, cache_root, not args.quiet)
    if reader.sample_tokens[: len(keyframes)] != list(tokens):
        raise ConfigError(
            f"the dataset generated again in {root} does not hold the same keyframes as "
            f"{args.dataroot}: was it made by another version of `peftdml synth`? Delete "
            f"{root} and evaluate with the version that made {args.dataroot}"
        )
    scorer = SplitScorer(reader.nusc, reader.sample_tokens)
    return evaluate_items(predict, keyframes, scorer, out_dir, progress=not args.quiet)
