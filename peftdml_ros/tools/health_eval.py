"""`peftdml health-eval`: how well the normality score tells clean frames from bad ones.

    peftdml health-eval --model models/peftdml_synth_cpu30.onnx --dataroot data/eval_s13 \
        --version v1.0-synth --split synth_all

Scores every keyframe of a clean split as the node does (its backend, the frames built with the
model's recorded training-data settings) and compares the raw normality score of the clean frames
(negatives) with that of the same keyframes
  - under each degradation (the dataset's scenes generated again with it, once, cached: what
    `peftdml eval --degradation` does; generated datasets only), and
  - with a sensor dead, as the node's frames are when it is silent: a whole modality absent
    (LiDAR, radar, cameras, IMU, GNSS: masked and zeroed), or one camera or one radar removed.
Per case: ROC AUC (core.health.roc_auc: the probability that a bad frame scores above a clean
one, ties half), and, with the model's calibration, the share of frames each percentile
threshold would flag; for the clean frames that share is the false-alarm rate. Writes health.json,
health.md (printed too) and health_scores.png to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.backends import BACKEND_NAMES
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.health import HealthCalibration, flagged_share, load_calibration, roc_auc
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.preprocess import PreprocessConfig
from peftdml_ros.core.types import MODALITIES, NUSCENES_RADARS
from peftdml_ros.data.cache import CACHE_DIR_NAME
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.tools.calibrate import Keyframes, Score, backend_scorer, score_items
from peftdml_ros.tools.eval import (
    Variant,
    add_model_arguments,
    degraded_dataroot,
    load_detector,
    open_keyframes,
    reader_settings,
    synth_recipe,
)

CLEAN = "clean"
DEGRADATION = "degradation"
DEAD = "dead sensor"
DEGRADATIONS = ("night", "fog", "rain", "overexposure", "blur", "beam_loss")
DEFAULT_THRESHOLDS = (0.1, 1.0, 5.0)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="peftdml health-eval",
        description=__doc__.split("\n")[0],
        epilog="The score and its calibration: docs/model.md, 'Sensor-health score'",
    )
    add_model_arguments(p)
    p.add_argument("--backend", choices=BACKEND_NAMES, default="auto", help="as the node's")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (clean)")
    p.add_argument("--version", default="v1.0-trainval", help="e.g. v1.0-mini, v1.0-synth")
    p.add_argument("--split", default="val", help="split name (or one in splits.json)")
    p.add_argument(
        "--degradation",
        nargs="+",
        default=list(DEGRADATIONS),
        metavar="NAME",
        help=f"degradations (default: {' '.join(DEGRADATIONS)}; or full `peftdml synth "
        "--degrade` specs); 'none' for none",
    )
    p.add_argument("--no-dead", action="store_true", help="no dead-sensor cases")
    p.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        default=list(DEFAULT_THRESHOLDS),
        metavar="PERCENTILE",
        help="percentile thresholds whose flag rates are reported (needs a calibration)",
    )
    p.add_argument("--out", type=Path, default=None, help="default: eval/<model>-<split>-health")
    p.add_argument("--json", type=Path, default=None, help="also write health.json here")
    p.add_argument("--limit", type=int, default=None, help="only the first N keyframes")
    p.add_argument("--cache-dir", type=Path, default=None, help="as `peftdml eval --cache-dir`")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no table printed")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be at least 1")
    if any(not 0.0 <= t <= 100.0 for t in args.thresholds):
        raise ConfigError(f"--thresholds {args.thresholds} must be percentiles in [0, 100]")
    if [d.lower() for d in args.degradation] == ["none"]:
        args.degradation = []
    return args


# ------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """The scores [N] of one way of feeding the keyframes."""

    name: str
    kind: str  # CLEAN, DEGRADATION or DEAD
    scores: npt.NDArray[np.float64]


def dead_sensor_variants(config: ModelConfig) -> list[Variant]:
    """Each modality absent, then each camera of the model and each radar removed."""
    runs = [
        Variant(f"no {m.value}", modalities=tuple(x for x in MODALITIES if x is not m))
        for m in MODALITIES
    ]
    runs += [Variant(f"no {s}", removed=(s,)) for s in (*config.camera_names, *NUSCENES_RADARS)]
    return runs


def score_clean_and_dead(
    score: Score,
    keyframes: Keyframes,
    preprocess: PreprocessConfig,
    dead: Sequence[Variant],
    progress: bool,
) -> tuple[list[Case], list[str], list[str]]:
    """(clean case and one case per dead-sensor variant, sample tokens, scene names), each
    keyframe read once."""
    from tqdm import tqdm

    clean: list[float] = []
    per_variant: dict[str, list[float]] = {run.name: [] for run in dead}
    tokens: list[str] = []
    scenes: list[str] = []
    description = f"scores x{1 + len(dead)}"
    for index in tqdm(range(len(keyframes)), desc=description, unit="frame", disable=not progress):
        item = keyframes[index]
        clean.append(score(item.inputs))
        for run in dead:
            per_variant[run.name].append(score(run.inputs(item, preprocess)))
        tokens.append(item.sample_token)
        scenes.append(item.scene_name)
    cases = [Case(CLEAN, CLEAN, np.asarray(clean))]
    cases += [Case(name, DEAD, np.asarray(values)) for name, values in per_variant.items()]
    return cases, tokens, scenes


def score_degraded(
    score: Score,
    root: Path,
    args: argparse.Namespace,
    settings: Mapping[str, Any],
    config: ModelConfig,
    tokens: Sequence[str],
    cache_root: Path,
) -> npt.NDArray[np.float64]:
    """Scores of the degraded copy's keyframes (the same keyframes as the clean run)."""
    reader = NuScenesReader(root, args.version, args.split, **settings)
    keyframes = open_keyframes(reader, config, args.limit, cache_root, not args.quiet)
    if reader.sample_tokens[: len(keyframes)] != list(tokens):
        raise ConfigError(
            f"the dataset generated again in {root} does not hold the same keyframes as "
            f"{args.dataroot}: delete {root} and run again with the `peftdml synth` version "
            f"that made {args.dataroot}"
        )
    items = (keyframes[i] for i in range(len(keyframes)))
    return score_items(score, items, progress=not args.quiet, description=root.name,
                       total=len(keyframes))  # fmt: skip


# ----------------------------------------------------------------------------------- report


def _stats(scores: npt.NDArray[np.float64]) -> dict[str, float]:
    p5, p50, p95 = np.percentile(scores, [5, 50, 95])
    return {"p5": float(p5), "median": float(p50), "p95": float(p95)}


def build_report(
    cases: Sequence[Case],
    calibration: HealthCalibration | None,
    thresholds: Sequence[float],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """health.json: meta, then per case its kind, frame count, score statistics, ROC AUC
    against the clean case and the share of frames below each threshold (None without a
    calibration)."""
    clean = next(c for c in cases if c.kind == CLEAN)
    out: dict[str, Any] = {"meta": dict(meta), "cases": {}}
    for case in cases:
        flagged = {
            f"{t:g}": (
                flagged_share(case.scores, calibration, t) if calibration is not None else None
            )
            for t in thresholds
        }
        percentiles = (
            [calibration.percentile(float(s)) for s in case.scores] if calibration else None
        )
        out["cases"][case.name] = {
            "kind": case.kind,
            "frames": int(case.scores.size),
            **_stats(case.scores),
            "median_percentile": float(np.median(percentiles)) if percentiles else None,
            "auc": None if case is clean else roc_auc(clean.scores, case.scores),
            "flagged_below": flagged,
        }
    return out


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_report(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    thresholds = meta["thresholds"]
    header = ["case", "kind", "frames", "median score", "median pct", "ROC AUC"]
    header += [f"flagged < {t:g}" for t in thresholds]
    lines = [
        f"# Sensor-health score of {meta['model']} on {meta['dataset']} "
        f"({meta['version']} / {meta['split']})",
        "",
        f"{meta['frames']} keyframes; backend {meta['backend']}; calibration: "
        f"{meta['calibration_text']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for name, case in report["cases"].items():
        row = [name, case["kind"], str(case["frames"]), _cell(case["median"], 1),
               _cell(case["median_percentile"], 1), _cell(case["auc"])]  # fmt: skip
        row += [_cell(case["flagged_below"][f"{t:g}"]) for t in thresholds]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "score: the raw normality score (-log p of the fused features under the clean GMM, "
        "nats; higher = less normal). pct: its percentile among the calibration's clean "
        "frames. ROC AUC: probability that a frame of the case scores above a clean frame "
        "(ties half); 0.5 = no separation. flagged < t: share of frames whose percentile is "
        "below t (the clean row: the false-alarm rate on these held-out frames).",
        "",
    ]
    return "\n".join(lines)


def plot_scores(
    path: Path, cases: Sequence[Case], calibration: HealthCalibration | None,
    thresholds: Sequence[float], title: str,
) -> Path:  # fmt: skip
    """One row per case (the clean one on top): box plot and points of its raw scores minus the
    clean median, on an axis linear over the clean frames' 5-95 % spread and logarithmic beyond
    (bad frames reach thousands of nats); dashed lines at the percentile thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {CLEAN: "#4d4d4d", DEGRADATION: "#d62728", DEAD: "#1f77b4"}
    clean = next(c for c in cases if c.kind == CLEAN).scores
    center = float(np.median(clean))
    p5, p95 = np.percentile(clean, [5, 95])
    figure, axes = plt.subplots(figsize=(10, 0.38 * len(cases) + 1.6), dpi=110)
    rows = list(reversed(cases))
    positions = np.arange(len(rows))
    axes.boxplot([c.scores - center for c in rows], positions=positions,
                 orientation="horizontal", widths=0.6, showfliers=False,
                 medianprops={"color": "black"})  # fmt: skip
    jitter = np.random.default_rng(0)
    for y, case in zip(positions, rows, strict=True):
        offsets = jitter.uniform(-0.22, 0.22, case.scores.size)
        axes.scatter(case.scores - center, y + offsets, s=5, alpha=0.5,
                     color=colors[case.kind], linewidths=0)  # fmt: skip
    axes.set_xscale("symlog", linthresh=max(1.0, float(p95 - p5)))
    if calibration is not None:
        for i, t in enumerate(sorted(thresholds, reverse=True)):
            x = calibration.score_at(t) - center
            axes.axvline(x, color="#555555", linestyle="--", linewidth=0.8)
            # Staggered: thresholds of a small calibration can lie a few nats apart.
            axes.text(x, 0.995 - 0.018 * i, f" pct {t:g}", fontsize=7, color="#555555",
                      va="top", transform=axes.get_xaxis_transform())  # fmt: skip
    axes.set_yticks(positions, [c.name for c in rows], fontsize=8)
    axes.set_xlabel(
        f"normality score - clean median ({center:.1f}), nats: linear within the clean 5-95 % "
        f"spread ({p95 - p5:.0f}), logarithmic beyond"
    )
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------- main


def _token_digest(tokens: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(tokens).encode()).hexdigest()[:16]


def _calibration_text(calibration: HealthCalibration | None) -> str:
    if calibration is None:
        return "none (flag rates n/a; run `peftdml calibrate`)"
    data = calibration.dataset
    return (
        f"{calibration.frames} clean keyframes of {data.get('name', '?')} "
        f"({data.get('split', '?')})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    start = time.perf_counter()
    progress = not args.quiet
    recipe = synth_recipe(args.dataroot) if args.degradation else None
    detector = load_detector(args)
    model_path: Path = args.checkpoint if args.checkpoint is not None else args.model
    calibration = load_calibration(model_path)
    config = detector.model_config
    settings, notes = reader_settings(detector.training_data)
    for note in notes:
        print(f"peftdml health-eval: {note}", file=sys.stderr)
    reader = NuScenesReader(args.dataroot, args.version, args.split, **settings)
    cache_root: Path = args.cache_dir or args.dataroot / CACHE_DIR_NAME
    keyframes = open_keyframes(reader, config, args.limit, cache_root, progress)
    score = backend_scorer(detector.backend)
    dead = [] if args.no_dead else dead_sensor_variants(config)
    cases, tokens, scenes = score_clean_and_dead(
        score, keyframes, PreprocessConfig.from_model_config(config), dead, progress
    )
    if recipe is not None:
        count = 1 + max(recipe.scene_names.index(s) for s in set(scenes))
        for spec in args.degradation:
            root = degraded_dataroot(
                args.dataroot, recipe, spec, count, cache_root / "degraded", progress
            )
            values = score_degraded(score, root, args, settings, config, tokens, cache_root)
            cases.insert(1 + len([c for c in cases if c.kind == DEGRADATION]),
                         Case(spec, DEGRADATION, values))  # fmt: skip
    in_sample = calibration is not None and calibration.dataset.get(
        "sample_tokens_sha256"
    ) == _token_digest(tokens)
    if in_sample:
        print(
            "peftdml health-eval: the model was calibrated on these very keyframes: the clean "
            "flag rates are in-sample; evaluate on other frames",
            file=sys.stderr,
        )
    meta = {
        "model": model_path.name,
        "backend": detector.backend.name,
        "dataset": Path(args.dataroot).resolve().name,
        "version": args.version,
        "split": args.split,
        "frames": len(tokens),
        "limit": args.limit,
        "thresholds": list(args.thresholds),
        "calibration": None if calibration is None else calibration.to_dict(),
        "calibration_text": _calibration_text(calibration),
        "calibrated_on_these_frames": in_sample,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    report = build_report(cases, calibration, args.thresholds, meta)
    out_dir = args.out or Path("eval") / f"{model_path.stem}-{args.split}-health"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (out_dir / "health.json").write_text(text + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    markdown = markdown_report(report)
    (out_dir / "health.md").write_text(markdown)
    picture = plot_scores(
        out_dir / "health_scores.png", cases, calibration, args.thresholds,
        f"{model_path.name}: normality score per frame, {meta['dataset']} ({len(tokens)} "
        "keyframes)",
    )  # fmt: skip
    if not args.quiet:
        print(markdown)
    print(f"wrote {out_dir / 'health.json'}, {out_dir / 'health.md'}, {picture} "
          f"({time.perf_counter() - start:.0f} s wall)")  # fmt: skip
    return 0


__all__ = ["Case", "build_report", "dead_sensor_variants", "main"]
