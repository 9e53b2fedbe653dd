"""Score detections with the official nuScenes devkit (DetectionEval, detection_cvpr_2019).

- `SplitScorer`: the ground truth of a split loaded once (the devkit's loaders and filters);
  each submission is then scored with the devkit's own `DetectionEval.evaluate`, on the whole
  split or on some of its samples (smoke runs). Training's validation pass and `peftdml eval`
  score many submissions against one split, so the ground truth is not re-read each time.
- `evaluate_submission`: one submission file against one split.
- `evaluate_items`: run a predictor over preprocessed keyframes, write the submission, score it.
- `torch_predictor` / `backend_predictor`: engine inputs -> Detections, decoded with the node's
  thresholds (`core.detector.DetectorConfig`) exactly as its `Detector` decodes.

Every sample of the split needs a key in a submission (the devkit's rule); `SplitScorer` pads
the samples a run did not predict with empty lists, and `sample_tokens` restricts the score to
the samples that were predicted (both ground truth and predictions of the others are dropped,
so a subset is scored as if it were the split).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.detector import DetectorConfig, check_thresholds
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.model.config import ModelConfig
from peftdml_ros.core.model.decode import decode_detections
from peftdml_ros.core.preprocess import Inputs
from peftdml_ros.core.types import Detections
from peftdml_ros.data.nuscenes_results import SubmissionBox, SubmissionBuilder, write_submission

TP_ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
# The names the nuScenes paper and leaderboard give the mean true-positive errors.
TP_ERROR_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE",
                  "vel_err": "mAVE", "attr_err": "mAAE"}  # fmt: skip
DETECTION_CONFIG = "detection_cvpr_2019"
SUBMISSION_NAME = "results_nusc.json"

# Engine inputs ([1, ...] float32 per model_io name) -> detections in that frame's ego frame.
Predict = Callable[[Inputs], Detections]


@dataclass(frozen=True)
class DetectionMetrics:
    """The nuScenes detection metrics of one evaluation (errors in m, rad, m/s or 1 - IoU).

    class_tp_errors: per class, the five TP errors (NaN where the devkit leaves a class's error
    undefined: attribute and velocity of cones and barriers, orientation of cones).
    samples: how many samples were scored.
    """

    mean_ap: float
    nd_score: float
    tp_errors: dict[str, float]  # trans_err, scale_err, orient_err, vel_err, attr_err
    class_aps: dict[str, float]  # mean over the distance thresholds
    class_tp_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: int = 0

    def summary_lines(self) -> list[str]:
        errors = "  ".join(
            f"{TP_ERROR_NAMES.get(k, k)} {v:.3f}" for k, v in self.tp_errors.items()
        )
        lines = [f"mAP {self.mean_ap:.4f}  NDS {self.nd_score:.4f}", errors, "per-class AP:"]
        lines += [f"  {name:<22} {ap:.3f}" for name, ap in self.class_aps.items()]
        return lines

    def as_dict(self) -> dict[str, Any]:
        """{"mAP", "NDS", "mATE", ..., "per_class_AP", "per_class_TP", "samples"}; NaN -> None
        (JSON has no NaN)."""
        out: dict[str, Any] = {"mAP": self.mean_ap, "NDS": self.nd_score}
        out.update({TP_ERROR_NAMES[k]: _finite_or_none(v) for k, v in self.tp_errors.items()})
        out["per_class_AP"] = dict(self.class_aps)
        out["per_class_TP"] = {
            name: {TP_ERROR_NAMES[k]: _finite_or_none(v) for k, v in errors.items()}
            for name, errors in self.class_tp_errors.items()
        }
        out["samples"] = self.samples
        return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@contextlib.contextmanager
def _devkit_output(verbose: bool) -> Iterator[None]:
    """The devkit prints and draws progress bars; keep them out of the way unless asked."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def split_sample_tokens(nusc: Any, eval_set: str) -> list[str]:
    """The sample tokens DetectionEval scores for `eval_set`: a predefined nuScenes split
    (train, val, mini_val, ...) or a name in <dataroot>/<version>/splits.json."""
    from nuscenes.eval.common.loaders import get_samples_of_custom_split, get_samples_of_scenes
    from nuscenes.utils.splits import create_splits_scenes, is_predefined_split

    if is_predefined_split(split_name=eval_set):
        return list(get_samples_of_scenes(create_splits_scenes()[eval_set], nusc))
    try:
        return list(get_samples_of_custom_split(split_name=eval_set, nusc=nusc))
    except ValueError as error:
        raise ConfigError(
            f"{error} Pass a predefined split or one of the names in splits.json"
        ) from error


def keyframe_ego_to_global(nusc: Any, sample_token: str) -> npt.NDArray[np.float64]:
    """[4, 4] pose of a sample's reference ego frame (its LIDAR_TOP ego pose), the frame the
    reader puts keyframes and detections in (KeyframeRecord.ego_to_global)."""
    from peftdml_ros.data.nuscenes_reader import LIDAR_CHANNEL, global_from_ego

    sample = nusc.get("sample", sample_token)
    return global_from_ego(nusc, nusc.get("sample_data", sample["data"][LIDAR_CHANNEL]))


class SplitScorer:
    """Scores submissions against the ground truth of a set of samples (a split).

    The ground truth is loaded and filtered once, as DetectionEval does (boxes of the 10
    classes, within the class ranges, with at least one LiDAR or radar point, no bike racks).
    """

    def __init__(self, nusc: Any, sample_tokens: Sequence[str], *, verbose: bool = False) -> None:
        from nuscenes.eval.common.config import config_factory
        from nuscenes.eval.common.loaders import (
            add_center_dist,
            filter_eval_boxes,
            load_gt_of_sample_tokens,
        )
        from nuscenes.eval.detection.data_classes import DetectionBox

        if not sample_tokens:
            raise ConfigError("nothing to score: the split has no samples")
        self.nusc = nusc
        self.sample_tokens: tuple[str, ...] = tuple(sample_tokens)
        self.verbose = verbose
        self.config = config_factory(DETECTION_CONFIG)
        with _devkit_output(verbose):
            gt = load_gt_of_sample_tokens(nusc, list(self.sample_tokens), DetectionBox, verbose)
            gt = add_center_dist(nusc, gt)
            if gt.all:  # the devkit's filter cannot look at an empty box set
                gt = filter_eval_boxes(nusc, gt, self.config.class_range, verbose=verbose)
        self._gt = gt
        self._poses: dict[str, npt.NDArray[np.float64]] = {}

    @staticmethod
    def for_split(nusc: Any, eval_set: str, *, verbose: bool = False) -> SplitScorer:
        """The scorer of a split name, with the devkit's rule for which samples it holds."""
        return SplitScorer(nusc, split_sample_tokens(nusc, eval_set), verbose=verbose)

    def ego_to_global(self, sample_token: str) -> npt.NDArray[np.float64]:
        """The pose detections of this sample are expressed in (see keyframe_ego_to_global)."""
        if sample_token not in self._poses:
            self._poses[sample_token] = keyframe_ego_to_global(self.nusc, sample_token)
        return self._poses[sample_token]

    def padded(
        self, results: Mapping[str, Iterable[SubmissionBox]]
    ) -> dict[str, list[SubmissionBox]]:
        """`results` with an empty list for every sample of the split it lacks."""
        unknown = set(results) - set(self.sample_tokens)
        if unknown:
            raise ConfigError(
                f"{len(unknown)} sample(s) with results are not in the evaluated split (e.g. "
                f"{sorted(unknown)[0]}): predict on the keyframes of the split that is scored"
            )
        return {token: list(results.get(token, ())) for token in self.sample_tokens}

    def score_results(
        self,
        results: Mapping[str, Iterable[SubmissionBox]],
        out_dir: Path,
        *,
        sample_tokens: Collection[str] | None = None,
        curves_dir: Path | None = None,
    ) -> DetectionMetrics:
        """Write `results` (padded) as out_dir/results_nusc.json and score it (`score`)."""
        submission = write_submission(out_dir / SUBMISSION_NAME, self.padded(results))
        return self.score(submission, out_dir, sample_tokens=sample_tokens, curves_dir=curves_dir)

    def score(
        self,
        submission: Path,
        out_dir: Path,
        *,
        sample_tokens: Collection[str] | None = None,
        curves_dir: Path | None = None,
    ) -> DetectionMetrics:
        """Score a submission file; the devkit's metrics_summary.json and metrics_details.json
        go to `out_dir`, PR curves per class (PNG) to `curves_dir` when given.

        sample_tokens: score only these samples of the split (default: all of them).
        """
        from nuscenes.eval.common.loaders import (
            add_center_dist,
            filter_eval_boxes,
            load_prediction_of_sample_tokens,
        )
        from nuscenes.eval.detection.data_classes import DetectionBox

        if not submission.is_file():
            raise ConfigError(f"{submission} does not exist; write the submission first")
        chosen = self._chosen_tokens(sample_tokens)
        out_dir.mkdir(parents=True, exist_ok=True)
        with _devkit_output(self.verbose):
            try:
                predictions, meta = load_prediction_of_sample_tokens(
                    str(submission), self.config.max_boxes_per_sample, DetectionBox,
                    sample_tokens=list(self.sample_tokens), verbose=self.verbose,
                )  # fmt: skip
            except KeyError as error:
                raise ConfigError(
                    f"{submission} has no results for sample {error} of the split; every sample "
                    "needs a key (an empty list where nothing was detected)"
                ) from None
            predictions = add_center_dist(self.nusc, _subset(predictions, chosen))
            # The devkit's filter crashes on a set without a single box (it reads the class
            # field of the first box); there is nothing to filter then, and its evaluation
            # scores the empty set as it should: every AP 0, every TP error 1.
            if predictions.all:
                predictions = filter_eval_boxes(
                    self.nusc, predictions, self.config.class_range, verbose=self.verbose
                )
            evaluation = _evaluator(
                self.config, _subset(self._gt, chosen), predictions, out_dir, self.verbose
            )
            metrics, metric_data = evaluation.evaluate()
        summary = metrics.serialize()
        summary["meta"] = dict(meta or {})
        (out_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
        (out_dir / "metrics_details.json").write_text(json.dumps(metric_data.serialize()))
        if curves_dir is not None:
            render_pr_curves(metric_data, metrics, self.config, curves_dir)
        return _metrics_of(summary, len(chosen))

    def _chosen_tokens(self, sample_tokens: Collection[str] | None) -> list[str]:
        if sample_tokens is None:
            return list(self.sample_tokens)
        wanted = set(sample_tokens)
        outside = wanted - set(self.sample_tokens)
        if outside:
            raise ConfigError(
                f"{len(outside)} sample(s) to score are not in the split (e.g. "
                f"{sorted(outside)[0]}); score samples of the split this scorer was built for"
            )
        if not wanted:
            raise ConfigError("sample_tokens is empty: give at least one sample to score")
        return [t for t in self.sample_tokens if t in wanted]


def _subset(boxes: Any, tokens: Sequence[str]) -> Any:
    """EvalBoxes of only `tokens` (every one keyed, as the devkit expects)."""
    from nuscenes.eval.common.data_classes import EvalBoxes

    out = EvalBoxes()
    for token in tokens:
        out.add_boxes(token, list(boxes[token]))
    return out


@functools.cache
def _evaluation_class() -> type:
    from nuscenes.eval.detection.evaluate import DetectionEval

    class LoadedBoxesEval(DetectionEval):  # type: ignore[misc]
        """DetectionEval on boxes already loaded and filtered with the devkit's own loaders:
        `evaluate` (matching, AP, TP errors, NDS) is the devkit's, unchanged."""

        def __init__(
            self, config: Any, gt: Any, predictions: Any, out_dir: Path, verbose: bool
        ) -> None:
            self.cfg = config
            self.gt_boxes = gt
            self.pred_boxes = predictions
            self.sample_tokens = gt.sample_tokens
            self.output_dir = str(out_dir)
            self.plot_dir = str(out_dir / "plots")
            self.verbose = verbose
            self.eval_set = ""
            self.meta: dict[str, Any] = {}

    return LoadedBoxesEval


def _evaluator(config: Any, gt: Any, predictions: Any, out_dir: Path, verbose: bool) -> Any:
    return _evaluation_class()(config, gt, predictions, out_dir, verbose)


def _metrics_of(summary: Mapping[str, Any], samples: int) -> DetectionMetrics:
    return DetectionMetrics(
        mean_ap=float(summary["mean_ap"]),
        nd_score=float(summary["nd_score"]),
        tp_errors={k: float(v) for k, v in summary["tp_errors"].items()},
        class_aps={k: float(v) for k, v in summary["mean_dist_aps"].items()},
        class_tp_errors={
            name: {k: float(v) for k, v in errors.items()}
            for name, errors in summary["label_tp_errors"].items()
        },
        samples=samples,
    )


def render_pr_curves(metric_data: Any, metrics: Any, config: Any, out_dir: Path) -> list[Path]:
    """pr_<class>.png (precision-recall at each matching distance, with its AP) per class and
    pr_all_<d>m.png (every class at the TP matching distance), drawn by the devkit."""
    import matplotlib

    matplotlib.use("Agg")
    from nuscenes.eval.detection.render import class_pr_curve, dist_pr_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in config.class_names:
        path = out_dir / f"pr_{name}.png"
        class_pr_curve(metric_data, metrics, name, config.min_precision, config.min_recall,
                       savepath=str(path))  # fmt: skip
        paths.append(path)
    path = out_dir / f"pr_all_{config.dist_th_tp:g}m.png"
    dist_pr_curve(metric_data, metrics, config.dist_th_tp, config.min_precision,
                  config.min_recall, savepath=str(path))  # fmt: skip
    paths.append(path)
    return paths


def evaluate_submission(
    dataroot: Path,
    version: str,
    eval_set: str,
    submission: Path,
    out_dir: Path,
    *,
    nusc: Any = None,
    verbose: bool = False,
    sample_tokens: Collection[str] | None = None,
) -> DetectionMetrics:
    """Score `submission` on the samples of `eval_set` (a splits.json name or a predefined
    nuScenes split); the devkit's metrics_summary.json goes into `out_dir`.

    sample_tokens: score only these samples of the split (default: every one).
    """
    from peftdml_ros.data.nuscenes_reader import open_nuscenes

    if not submission.is_file():
        raise ConfigError(f"{submission} does not exist; write the submission first")
    if nusc is None:
        with _devkit_output(verbose):
            nusc = open_nuscenes(dataroot, version)
    scorer = SplitScorer.for_split(nusc, eval_set, verbose=verbose)
    return scorer.score(submission, out_dir, sample_tokens=sample_tokens)


# ------------------------------------------------------------------------------- predictions


class KeyframeItem(Protocol):
    """What evaluate_items needs of a keyframe (data.training.TrainingItem has it)."""

    @property
    def inputs(self) -> Inputs: ...

    @property
    def sample_token(self) -> str: ...


class SplitReader(Protocol):
    """A reader of one split (data.nuscenes_reader.NuScenesReader): its devkit object and the
    sample tokens of the split."""

    @property
    def nusc(self) -> Any: ...

    @property
    def sample_tokens(self) -> list[str]: ...


# One scorer per reader: a training run validates every N steps against the same split.
_SCORERS: weakref.WeakKeyDictionary[Any, SplitScorer] = weakref.WeakKeyDictionary()


def scorer_for(split: SplitReader | SplitScorer) -> SplitScorer:
    """The scorer of a reader's split (built once per reader object), or `split` itself."""
    if isinstance(split, SplitScorer):
        return split
    scorer = _SCORERS.get(split)
    if scorer is None or scorer.sample_tokens != tuple(split.sample_tokens):
        scorer = SplitScorer(split.nusc, split.sample_tokens)
        _SCORERS[split] = scorer
    return scorer


def predict_items(
    predict: Predict,
    items: Iterable[KeyframeItem],
    scorer: SplitScorer,
    *,
    progress: bool = False,
    description: str = "eval",
) -> tuple[dict[str, list[SubmissionBox]], list[str]]:
    """(submission results, sample tokens predicted) of `predict` over `items`."""
    from tqdm import tqdm

    builder = SubmissionBuilder()
    tokens: list[str] = []
    total = len(items) if isinstance(items, Sized) else None
    for item in tqdm(items, total=total, desc=description, unit="frame", disable=not progress):
        token = item.sample_token
        builder.add(token, predict(item.inputs), item_pose(item, scorer))
        tokens.append(token)
    return builder.results, tokens


def item_pose(item: KeyframeItem, scorer: SplitScorer) -> npt.NDArray[np.float64]:
    """The ego pose a keyframe's detections are in: the item's own when it carries one."""
    pose = getattr(item, "ego_to_global", None)
    return np.asarray(pose) if pose is not None else scorer.ego_to_global(item.sample_token)


def evaluate_items(
    predict: Predict,
    items: Iterable[KeyframeItem],
    split: SplitReader | SplitScorer,
    out_dir: Path,
    *,
    progress: bool = False,
    curves_dir: Path | None = None,
) -> DetectionMetrics:
    """Run `predict` over preprocessed keyframes and score them with the official metrics.

    items: keyframes of the split (a KeyframeDataset, CachedKeyframes, a list);
    split: the NuScenesReader the items come from (its scorer is built once and reused by
    later calls with the same reader) or a SplitScorer. Items that cover the whole split give
    the split's metrics; fewer items are scored as a subset (the ground truth of the samples
    not predicted is left out, not counted as missed).
    Writes out_dir/results_nusc.json (every sample of the split keyed) and the devkit's files.
    """
    scorer = scorer_for(split)
    results, tokens = predict_items(predict, items, scorer, progress=progress)
    if not tokens:
        raise ConfigError("evaluate_items got no items: pass the keyframes to evaluate")
    return scorer.score_results(results, out_dir, sample_tokens=tokens, curves_dir=curves_dir)


def node_decode_config(
    model_config: ModelConfig,
    score_threshold: float | None = None,
    nms_iou_threshold: float | None = None,
    max_detections: int | None = None,
) -> ModelConfig:
    """The decode settings the node's Detector uses: its thresholds (DetectorConfig defaults,
    the node's YAML defaults, unless given) over the model's config."""
    node = DetectorConfig()
    score = node.score_threshold if score_threshold is None else score_threshold
    iou = node.nms_iou_threshold if nms_iou_threshold is None else nms_iou_threshold
    most = node.max_detections if max_detections is None else max_detections
    check_thresholds(score, iou, most)
    return dataclasses.replace(
        model_config,
        score_threshold=score,
        nms_iou_threshold=iou,
        max_detections=most,
        pre_nms_top_k=max(model_config.pre_nms_top_k, most),
    )


def backend_predictor(backend: Any, decode_config: ModelConfig) -> Predict:
    """Predict with an InferenceBackend (torch, ONNX Runtime, TensorRT), as Detector.detect."""

    def predict(inputs: Inputs) -> Detections:
        return decode_detections(backend.run(inputs), decode_config)[0]

    return predict


def torch_predictor(
    model: Any,
    config: ModelConfig,
    device: Any = "cpu",
    *,
    score_threshold: float | None = None,
    nms_iou_threshold: float | None = None,
    max_detections: int | None = None,
) -> Predict:
    """Predict with a PeftDmlNet being trained: eval mode for the forward (each module's own
    mode is restored afterwards), no gradients, the node's decode (node_decode_config).

    device: where the model is (a torch.device or its name); inputs are moved there.
    """
    import torch

    decode_config = node_decode_config(config, score_threshold, nms_iou_threshold, max_detections)

    def predict(inputs: Inputs) -> Detections:
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.inference_mode():
                tensors = [
                    torch.from_numpy(np.ascontiguousarray(inputs[name], np.float32)).to(device)
                    for name in model_io.INPUT_NAMES
                ]
                outputs = model(*tensors)
        finally:
            for module, training in modes:
                module.training = training
        return decode_detections(outputs, decode_config)[0]

    return predict
