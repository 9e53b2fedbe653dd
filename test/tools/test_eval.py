"""`peftdml eval` on a generated one-scene dataset: the command end to end, the dropout runs and
their retention, exactness against the node's Detector, the degraded copy, camera projection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from peftdml_ros.core.detector import Detector, DetectorConfig
from peftdml_ros.core.model import build_model, save_checkpoint, tiny_config
from peftdml_ros.core.preprocess import Inputs, PreprocessConfig, Preprocessor
from peftdml_ros.core.types import MODALITIES, NUSCENES_RADARS, Detections, Modality
from peftdml_ros.data.evaluation import SplitScorer, backend_predictor, node_decode_config
from peftdml_ros.data.nuscenes_reader import NuScenesReader
from peftdml_ros.data.synth import VERSION, generate_dataset
from peftdml_ros.data.synth.generate import ALL_SPLIT
from peftdml_ros.data.training import KeyframeDataset, keyframe_item
from peftdml_ros.tools.cli import main as peftdml
from peftdml_ros.tools.eval import (
    FULL,
    FirstKeyframes,
    Variant,
    build_report,
    markdown_report,
    modality_subsets,
    predict_variants,
    retention,
    score_variants,
    subset_name,
    variants,
)
from peftdml_ros.tools.plots import box_corners_3d, box_edges_in_image, plot_camera_boxes

# How the checkpoint's frames are read (what `peftdml train` records in extra["data"]).
DATA_SETTINGS = {"lidar_sweeps": 1, "radar_sweeps": 1, "camera_downscale": 8,
                 "compensate_ego_motion": False}  # fmt: skip
RADAR_AND_CAMERA_RUNS = ("-CAM_FRONT", "-CAM_BACK", *(f"-{r}" for r in NUSCENES_RADARS))


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("synth"), scenes=1, seed=7, preset="small", progress=False
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model: its scores are meaningless, its plumbing is the real one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return save_checkpoint(path, build_model(tiny_config()), {"data": DATA_SETTINGS})


@pytest.fixture(scope="module")
def reader(dataroot: Path) -> NuScenesReader:
    return NuScenesReader(dataroot, VERSION, ALL_SPLIT, gt_min_points=1, **DATA_SETTINGS)


def test_the_command_writes_metrics_tables_and_pictures(
    dataroot: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report_path, cache = tmp_path / "out", tmp_path / "report.json", tmp_path / "cache"
    code = peftdml(
        ["eval", "--checkpoint", str(checkpoint), "--dataroot", str(dataroot), "--version",
         VERSION, "--split", ALL_SPLIT, "--out", str(out), "--dropout", "--degradation", "blur",
         "--limit", "2", "--json", str(report_path), "--cache-dir", str(cache),
         "--score-threshold", "0.05", "--device", "cpu", "--pictures", "1", "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.startswith("mAP ")  # --quiet: the one summary line
    report = json.loads(report_path.read_text())
    assert report == json.loads((out / "metrics.json").read_text())

    full = report["full"]
    for key in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert full[key] is None or 0.0 <= full[key] <= 1.0 + 1e-9, key
    assert len(full["per_class_AP"]) == 10 and full["samples"] == 2
    expected_runs = [subset_name(s) for s in modality_subsets()] + list(RADAR_AND_CAMERA_RUNS)
    assert list(report["dropout"]) == expected_runs
    for run in report["dropout"].values():
        if full["NDS"] > 0:
            assert run["retention"] == pytest.approx(run["NDS"] / full["NDS"])
        else:
            assert run["retention"] is None
        assert run["samples"] == 2
    # All five modalities present is the full run itself.
    assert report["dropout"]["lidar+radar+camera+imu+gnss"]["NDS"] == pytest.approx(full["NDS"])
    assert set(report["degradation"]) == {"blur"}
    assert {"mAP", "NDS"} <= set(report["degradation"]["blur"])

    markdown = (out / "eval.md").read_text()
    assert "| lidar+camera |" in markdown and "| -RADAR_FRONT |" in markdown
    assert "| blur |" in markdown and "| pedestrian |" in markdown
    for picture in ("curves/pr_car.png", "curves/pr_barrier.png", "bev_scene-0001.png",
                    "camera_scene-0001_CAM_FRONT.png"):  # fmt: skip
        assert (out / picture).read_bytes()[:4] == b"\x89PNG", picture
    # The blurred copy: generated once into the cache, with the same scene and a record of how.
    (degraded,) = (cache / "degraded").iterdir()
    assert json.loads((degraded / ".complete").read_text())["degradations"] == ["blur=0.5"]
    manifest = json.loads((degraded / "synth_manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["degradations"] == ["blur=0.5"]


def test_degradations_need_a_generated_dataset(
    dataroot: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same nuScenes-format data without the generator's manifest: a dataset from elsewhere.
    other = tmp_path / "recorded"
    other.mkdir()
    for part in ("samples", "sweeps", "maps", "can_bus", VERSION):
        (other / part).symlink_to(dataroot / part)
    code = peftdml(
        ["eval", "--checkpoint", str(checkpoint), "--dataroot", str(other), "--version",
         VERSION, "--split", ALL_SPLIT, "--degradation", "fog", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 1
    assert "only works for datasets written by `peftdml synth`" in capsys.readouterr().err
    code = peftdml(
        ["eval", "--checkpoint", str(checkpoint), "--dataroot", str(dataroot), "--version",
         VERSION, "--split", ALL_SPLIT, "--degradation", "smoke", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 1 and "is not KIND" in capsys.readouterr().err


def test_retention_is_run_nds_over_full_nds() -> None:
    assert retention(0.5, 0.8) == pytest.approx(0.625)
    assert retention(0.8, 0.8) == 1.0
    assert retention(0.3, 0.0) is None


def test_the_31_subsets_and_their_names() -> None:
    subsets = modality_subsets()
    assert len(subsets) == len(set(subsets)) == 31
    assert subset_name(subsets[0]) == "lidar+radar+camera+imu+gnss"
    assert subset_name((Modality.CAMERA, Modality.LIDAR)) == "lidar+camera"
    assert [v.name for v in variants(tiny_config(), dropout=False)] == [FULL]


def test_dropout_runs_feed_what_the_model_would_see(
    reader: NuScenesReader, tmp_path: Path
) -> None:
    """An oracle that sees the ground truth only through the LiDAR: every run with the LiDAR
    keeps NDS 1 (retention 1), every run without it scores 0 (retention 0)."""
    config = tiny_config()
    keyframes = FirstKeyframes(KeyframeDataset(reader, config), 3)
    truth = {keyframes[i].inputs["lidar_points"].tobytes(): keyframes[i].ground_truth
             for i in range(len(keyframes))}  # fmt: skip

    def oracle(inputs: Inputs) -> Detections:
        return truth.get(inputs["lidar_points"].tobytes(), Detections.empty())

    scorer = SplitScorer(reader.nusc, reader.sample_tokens)
    runs = variants(config, dropout=True)
    predictions = predict_variants(
        oracle, keyframes, PreprocessConfig.from_model_config(config), scorer, runs, False
    )
    metrics = score_variants(scorer, predictions, tmp_path, progress=False)
    assert metrics[FULL].nd_score == pytest.approx(1.0)
    report = build_report(
        metrics[FULL], {k: v for k, v in metrics.items() if k != FULL}, {}, _meta()
    )
    for name, run in report["dropout"].items():
        has_lidar = name.startswith("-") or "lidar" in name.split("+")
        assert run["retention"] == pytest.approx(1.0 if has_lidar else 0.0), name
    assert "| radar+camera | 0.000 | 0.000 | 0.000 |" in markdown_report(report)


def test_removed_sensors_and_subsets_are_masked_as_preprocessing_masks_them(
    reader: NuScenesReader,
) -> None:
    config = tiny_config()
    preprocess = PreprocessConfig.from_model_config(config)
    item = KeyframeDataset(reader, config)[0]
    front = Variant("-CAM_FRONT", removed=("CAM_FRONT",)).inputs(item, preprocess)
    assert front["camera_valid"][0].tolist() == [0.0, 1.0]
    assert not front["camera_images"][0, 0].any() and front["camera_images"][0, 1].any()
    assert front["modality_mask"][0].tolist() == item.inputs["modality_mask"][0].tolist()
    lidar_only = Variant("lidar", modalities=(Modality.LIDAR,)).inputs(item, preprocess)
    assert lidar_only["modality_mask"][0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert not lidar_only["radar_points"].any() and not lidar_only["camera_images"].any()
    np.testing.assert_array_equal(lidar_only["lidar_points"], item.inputs["lidar_points"])
    # Without any radar the model sees exactly what a frame with no radar gives it.
    no_radar = Variant("-radars", removed=NUSCENES_RADARS).inputs(item, preprocess)
    record = reader[0]
    bare = Preprocessor(preprocess)(
        type(record.frame)(**{**record.frame.__dict__, "radar": (),
                              "modality_present": {**record.frame.modality_present,
                                                   Modality.RADAR: False}})
    )  # fmt: skip
    for name, array in bare.items():
        np.testing.assert_array_equal(no_radar[name], array, err_msg=name)
    assert len(MODALITIES) == no_radar["modality_mask"].shape[1]


def test_predictions_equal_the_node_detectors(reader: NuScenesReader, checkpoint: Path) -> None:
    detector = Detector(DetectorConfig(model_path=str(checkpoint), backend="torch",
                                       device="cpu", score_threshold=0.05))  # fmt: skip
    record = reader[1]
    node = detector.detect(record.frame).detections
    predict = backend_predictor(
        detector.backend, node_decode_config(detector.model_config, score_threshold=0.05)
    )
    ours = predict(keyframe_item(record, detector.preprocessor).inputs)
    assert len(node) > 0
    for field in ("center_m", "size_wlh_m", "yaw_rad", "velocity_mps", "score", "label"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(node, field), err_msg=field)
    assert ours.attribute == node.attribute


# Optical frame (z forward, x right, y down) -> ego (x forward, y left, z up), at 1.5 m height.
_CAMERA_TO_EGO = np.array(
    [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]]
)
_K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])


def _box(x_m: float, y_m: float) -> Detections:
    return Detections(
        center_m=np.array([[x_m, y_m, 1.5]], np.float32),
        size_wlh_m=np.array([[2.0, 4.0, 1.0]], np.float32),
        yaw_rad=np.zeros(1, np.float32),
        velocity_mps=np.zeros((1, 2), np.float32),
        score=np.ones(1, np.float32),
        label=np.zeros(1, np.int64),
    )


def test_boxes_project_through_the_calibration(tmp_path: Path) -> None:
    corners = box_corners_3d(_box(20.0, 0.0))
    assert corners.shape == (1, 8, 3)
    np.testing.assert_allclose(corners[0, :4, 2], 1.0)
    np.testing.assert_allclose(corners[0, 4:, 2], 2.0)
    segments = box_edges_in_image(corners, _K, _CAMERA_TO_EGO)
    assert len(segments) == 12
    pixels = np.concatenate(segments)
    # Centered ahead at the camera's height: symmetric about the principal point; the near face
    # (18 m) spans 2 m of width = 500 * 2 / 18 px.
    np.testing.assert_allclose(pixels.mean(axis=0), [320.0, 240.0], atol=1e-6)
    np.testing.assert_allclose(pixels[:, 0].max() - 320.0, 500.0 * 1.0 / 18.0, atol=1e-6)
    # A box behind the camera has no edge in the image; one across the camera plane is clipped.
    assert box_edges_in_image(box_corners_3d(_box(-20.0, 0.0)), _K, _CAMERA_TO_EGO) == []
    crossing = box_edges_in_image(box_corners_3d(_box(1.0, 0.0)), _K, _CAMERA_TO_EGO)
    assert len(crossing) > 0 and all(np.isfinite(s).all() for s in crossing)
    image = np.full((480, 640, 3), 90, np.uint8)
    path = plot_camera_boxes(tmp_path / "cam.png", image=image, intrinsics=_K,
                             camera_to_ego=_CAMERA_TO_EGO, ground_truth=_box(20.0, 0.0),
                             detections=_box(20.5, 0.3))  # fmt: skip
    assert path.read_bytes()[:4] == b"\x89PNG"


def _meta() -> dict[str, object]:
    return {"model": "oracle", "backend": "none", "version": VERSION, "split": ALL_SPLIT,
            "limit": 3, "score_threshold": 0.0, "nms_iou_threshold": 0.2,
            "max_detections": 100}  # fmt: skip


def test_reports_hold_no_nan() -> None:
    # JSON has no NaN: undefined TP errors (cones' orientation) are written as null.
    from peftdml_ros.data.evaluation import DetectionMetrics

    metrics = DetectionMetrics(0.5, 0.6, {"trans_err": 0.1, "scale_err": 0.2, "orient_err": 0.3,
                               "vel_err": math.nan, "attr_err": 0.4}, {"car": 0.5},
                               {"traffic_cone": {"orient_err": math.nan}}, 3)  # fmt: skip
    text = json.dumps(build_report(metrics, {"lidar": metrics}, {}, _meta()), allow_nan=False)
    assert '"mAVE": null' in text


def test_variants_a_model_cannot_tell_apart_are_scored_once() -> None:
    runs = variants(tiny_config(input_modalities=("lidar",)), dropout=True)
    by_name = {run.name: run for run in runs}
    distinct = [run.name for run in runs if run.same_as is None]
    # With LiDAR and without it; removing one camera or radar changes nothing it reads.
    assert distinct == [FULL, "radar+camera+imu+gnss"]
    assert by_name["lidar"].same_as == FULL
    assert by_name["-CAM_FRONT"].same_as == FULL
    assert by_name["camera"].same_as == "radar+camera+imu+gnss"
    full_model = variants(tiny_config(), dropout=True)
    assert [run.name for run in full_model if run.same_as is not None] == [
        "lidar+radar+camera+imu+gnss"
    ]
