"""Score a nuScenes submission with the official devkit (DetectionEval, detection_cvpr_2019)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import NUSCENES_CLASSES

TP_ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
# The names the nuScenes paper and leaderboard give the mean true-positive errors.
TP_ERROR_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE",
                  "vel_err": "mAVE", "attr_err": "mAAE"}  # fmt: skip


@dataclass(frozen=True)
class DetectionMetrics:
    """The nuScenes detection metrics of one evaluation (errors in m, rad, m/s or 1 - IoU)."""

    mean_ap: float
    nd_score: float
    tp_errors: dict[str, float]  # trans_err, scale_err, orient_err, vel_err, attr_err
    class_aps: dict[str, float]  # mean over the distance thresholds

    def summary_lines(self) -> list[str]:
        errors = "  ".join(
            f"{TP_ERROR_NAMES.get(k, k)} {v:.3f}" for k, v in self.tp_errors.items()
        )
        lines = [f"mAP {self.mean_ap:.4f}  NDS {self.nd_score:.4f}", errors, "per-class AP:"]
        lines += [f"  {name:<22} {ap:.3f}" for name, ap in self.class_aps.items()]
        return lines


def evaluate_submission(
    dataroot: Path,
    version: str,
    eval_set: str,
    submission: Path,
    out_dir: Path,
    *,
    nusc: Any = None,
    verbose: bool = False,
) -> DetectionMetrics:
    """Run DetectionEval on `submission` for the scenes of `eval_set` (a splits.json name or a
    predefined nuScenes split); the devkit writes metrics_summary.json into `out_dir`."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    if not submission.is_file():
        raise ConfigError(f"{submission} does not exist; write the submission first")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = json.loads(submission.read_text()).get("results", {})
    if not any(results.values()):
        # The devkit cannot score a submission without a single box (it crashes reading the
        # class field); every AP is 0 by definition and the TP errors are undefined (1.0 each).
        return DetectionMetrics(
            mean_ap=0.0,
            nd_score=0.0,
            tp_errors={k: 1.0 for k in TP_ERRORS},
            class_aps=dict.fromkeys(NUSCENES_CLASSES, 0.0),
        )
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        if nusc is None:
            nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
        evaluator = DetectionEval(
            nusc,
            config=config_factory("detection_cvpr_2019"),
            result_path=str(submission),
            eval_set=eval_set,
            output_dir=str(out_dir),
            verbose=verbose,
        )
        evaluator.main(plot_examples=0, render_curves=False)
    summary = json.loads((out_dir / "metrics_summary.json").read_text())
    return DetectionMetrics(
        mean_ap=float(summary["mean_ap"]),
        nd_score=float(summary["nd_score"]),
        tp_errors={k: float(v) for k, v in summary["tp_errors"].items()},
        class_aps={k: float(v) for k, v in summary["mean_dist_aps"].items()},
    )
