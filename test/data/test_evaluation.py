"""evaluate_submission, evaluate_items and the predictors: the official DetectionEval on a
generated val split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.preprocess import Inputs
from peftdml_ros.core.types import NUSCENES_CLASSES, Detections
from peftdml_ros.data.evaluation import (
    SUBMISSION_NAME,
    Predict,
    SplitScorer,
    backend_predictor,
    evaluate_items,
    evaluate_submission,
    keyframe_ego_to_global,
    node_decode_config,
    scorer_for,
    torch_predictor,
)
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.nuscenes_results import SubmissionBuilder
from peftdml_ros.data.synth import VAL_SPLIT

VERSION = "v1.0-synth"


@pytest.fixture(scope="module")
def val_reader(synth3_dataroot: Path) -> NuScenesReader:
    return NuScenesReader(synth3_dataroot, VERSION, VAL_SPLIT, lidar_sweeps=1, radar_sweeps=1,
                          camera_downscale=8, gt_min_points=1)  # fmt: skip


def _submit(reader: NuScenesReader, path: Path, keep_label: int | None = None,
            empty: bool = False) -> Path:  # fmt: skip
    builder = SubmissionBuilder()
    for record in reader:
        gt = record.ground_truth
        if empty:
            gt = Detections.empty()
        elif keep_label is not None:
            keep = gt.label != keep_label
            gt = dataclasses.replace(
                gt, center_m=gt.center_m[keep], size_wlh_m=gt.size_wlh_m[keep],
                yaw_rad=gt.yaw_rad[keep], velocity_mps=gt.velocity_mps[keep],
                score=gt.score[keep], label=gt.label[keep],
                attribute=tuple(a for a, k in zip(gt.attribute, keep, strict=True) if k),
            )  # fmt: skip
        builder.add(record.sample_token, gt, record.ego_to_global)
    return builder.write(path)


def test_ground_truth_as_predictions_scores_one(
    val_reader: NuScenesReader, tmp_path: Path
) -> None:
    submission = _submit(val_reader, tmp_path / "perfect.json")
    metrics = evaluate_submission(val_reader.dataroot, VERSION, VAL_SPLIT, submission,
                                  tmp_path / "eval", nusc=val_reader.nusc)  # fmt: skip
    assert metrics.mean_ap == pytest.approx(1.0)
    assert metrics.nd_score == pytest.approx(1.0)
    assert set(metrics.class_aps) == set(NUSCENES_CLASSES)
    assert "mAP 1.0000" in metrics.summary_lines()[0]


def test_a_missing_class_costs_exactly_its_ap(val_reader: NuScenesReader, tmp_path: Path) -> None:
    pedestrian = NUSCENES_CLASSES.index("pedestrian")
    submission = _submit(val_reader, tmp_path / "no_ped.json", keep_label=pedestrian)
    metrics = evaluate_submission(val_reader.dataroot, VERSION, VAL_SPLIT, submission,
                                  tmp_path / "eval", nusc=val_reader.nusc)  # fmt: skip
    assert metrics.class_aps["pedestrian"] == pytest.approx(0.0)
    assert metrics.mean_ap == pytest.approx(0.9)


def test_an_empty_submission_scores_zero_without_crashing(
    val_reader: NuScenesReader, tmp_path: Path
) -> None:
    submission = _submit(val_reader, tmp_path / "empty.json", empty=True)
    metrics = evaluate_submission(val_reader.dataroot, VERSION, VAL_SPLIT, submission,
                                  tmp_path / "eval", nusc=val_reader.nusc)  # fmt: skip
    assert metrics.mean_ap == 0.0 and metrics.nd_score == 0.0
    assert np.allclose(list(metrics.tp_errors.values()), 1.0)


# --------------------------------------------------------------------- evaluate_items and friends


@dataclasses.dataclass(frozen=True)
class _Item:
    """A keyframe as evaluate_items sees it; the inputs only say which keyframe it is."""

    inputs: dict[str, np.ndarray]
    sample_token: str


def _oracle(val_reader: NuScenesReader) -> tuple[list[_Item], Predict]:
    """Items of the split and a predictor that returns each keyframe's ground truth."""
    records = list(val_reader)
    items = [_Item({"index": np.array([i])}, r.sample_token) for i, r in enumerate(records)]

    def predict(inputs: Inputs) -> Detections:
        return records[int(inputs["index"][0])].ground_truth

    return items, predict


def test_ground_truth_through_evaluate_items_scores_one(
    val_reader: NuScenesReader, tmp_path: Path
) -> None:
    items, predict = _oracle(val_reader)
    metrics = evaluate_items(predict, items, val_reader, tmp_path / "eval")
    assert metrics.mean_ap == pytest.approx(1.0)
    assert metrics.nd_score == pytest.approx(1.0)
    assert metrics.samples == len(val_reader)
    submission = json.loads((tmp_path / "eval" / SUBMISSION_NAME).read_text())
    assert set(submission["results"]) == set(val_reader.sample_tokens)
    # The scorer of a reader is built once and reused by the next validation.
    assert scorer_for(val_reader) is scorer_for(val_reader)


def test_a_subset_is_scored_as_a_split_of_its_own(
    val_reader: NuScenesReader, tmp_path: Path
) -> None:
    items, predict = _oracle(val_reader)
    subset = evaluate_items(predict, items[:2], val_reader, tmp_path / "subset")
    assert subset.samples == 2
    assert subset.mean_ap == pytest.approx(1.0) and subset.nd_score == pytest.approx(1.0)
    # The same submission scored on the whole split: the samples it leaves empty count as
    # missed objects.
    whole = evaluate_submission(
        val_reader.dataroot, VERSION, VAL_SPLIT, tmp_path / "subset" / SUBMISSION_NAME,
        tmp_path / "whole", nusc=val_reader.nusc,
    )  # fmt: skip
    assert whole.samples == len(val_reader)
    assert whole.mean_ap < 0.9


def test_submissions_must_key_every_sample_of_the_split(
    val_reader: NuScenesReader, tmp_path: Path
) -> None:
    record = val_reader[0]
    builder = SubmissionBuilder()
    builder.add(record.sample_token, record.ground_truth, record.ego_to_global)
    path = builder.write(tmp_path / "partial.json")
    with pytest.raises(ConfigError, match="every sample needs a key"):
        evaluate_submission(val_reader.dataroot, VERSION, VAL_SPLIT, path, tmp_path / "eval",
                            nusc=val_reader.nusc)  # fmt: skip
    scorer = SplitScorer(val_reader.nusc, val_reader.sample_tokens)
    with pytest.raises(ConfigError, match="not in the evaluated split"):
        scorer.padded({"not-a-sample": []})


def test_keyframe_pose_is_the_readers_ego_frame(val_reader: NuScenesReader) -> None:
    record = val_reader[1]
    np.testing.assert_allclose(
        keyframe_ego_to_global(val_reader.nusc, record.sample_token), record.ego_to_global,
        atol=1e-9,
    )  # fmt: skip


def test_pr_curves_are_drawn_for_every_class(val_reader: NuScenesReader, tmp_path: Path) -> None:
    items, predict = _oracle(val_reader)
    evaluate_items(predict, items, val_reader, tmp_path / "eval", curves_dir=tmp_path / "pr")
    for name in NUSCENES_CLASSES:
        assert (tmp_path / "pr" / f"pr_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_torch_predictor_decodes_as_the_node_and_keeps_training_modes() -> None:
    import torch

    from peftdml_ros.core.backends.torch_backend import TorchBackend
    from peftdml_ros.core.model import build_model, example_inputs, tiny_config

    torch.manual_seed(0)
    config = tiny_config()
    model = build_model(config).train()
    frozen = next(model.children()).eval()  # a part kept in eval mode while training
    inputs = {k: v.numpy() for k, v in
              example_inputs(config, 1, torch.Generator().manual_seed(1)).items()}  # fmt: skip
    ours = torch_predictor(model, config, "cpu", score_threshold=0.05)(inputs)
    assert model.training and not frozen.training
    node = backend_predictor(
        TorchBackend(model, config, "cpu"), node_decode_config(config, score_threshold=0.05)
    )(inputs)
    assert len(ours) == len(node) > 0
    np.testing.assert_allclose(ours.center_m, node.center_m, atol=1e-4)
    np.testing.assert_array_equal(ours.label, node.label)
    default = node_decode_config(config)  # the node's defaults (config/peftdml.yaml)
    assert (default.score_threshold, default.nms_iou_threshold, default.max_detections) == (
        0.3, 0.2, 100,
    )  # fmt: skip
