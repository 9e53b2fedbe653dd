"""BEV and timeline pictures: box geometry and that real PNGs come out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from peftdml_ros.core.types import Detections
from peftdml_ros.tools.plots import box_corners_bev, plot_bev, plot_timeline


def _boxes(yaw_rad: float) -> Detections:
    return Detections(
        center_m=np.array([[10.0, 5.0, 1.0]], np.float32),
        size_wlh_m=np.array([[2.0, 4.0, 1.5]], np.float32),
        yaw_rad=np.array([yaw_rad], np.float32),
        velocity_mps=np.zeros((1, 2), np.float32),
        score=np.array([0.8], np.float32),
        label=np.array([0], np.int64),
    )


def test_box_corners_follow_the_box_convention() -> None:
    corners = box_corners_bev(_boxes(0.0))[0]
    # length (4 m) along +x at yaw 0, width (2 m) along y; first corner is front-left.
    np.testing.assert_allclose(corners[0], [12.0, 6.0], atol=1e-6)
    np.testing.assert_allclose(corners.min(axis=0), [8.0, 4.0], atol=1e-6)
    rotated = box_corners_bev(_boxes(np.pi / 2))[0]
    np.testing.assert_allclose(rotated.max(axis=0) - rotated.min(axis=0), [2.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(rotated[0], [9.0, 7.0], atol=1e-5)


def test_pictures_are_written(tmp_path: Path) -> None:
    points = np.random.default_rng(0).uniform(-40, 40, (500, 2)).astype(np.float32)
    bev = plot_bev(tmp_path / "bev.png", points_xy=points, ground_truth=_boxes(0.3),
                   detections=_boxes(0.35), title="test")  # fmt: skip
    timeline = plot_timeline(
        tmp_path / "timeline.png", times_s=[0.0, 0.05, 0.1], triggers=["LIDAR_TOP", "CAM_FRONT",
        "LIDAR_TOP"], modalities=["lidar,radar", "camera", "lidar"], detections=[3, 1, 2],
        dropouts=[("/lidar/points", 0.04, 0.08)],
    )  # fmt: skip
    for path in (bev, timeline):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000


def test_timeline_with_a_latency_panel(tmp_path: Path) -> None:
    import matplotlib.image

    common: dict[str, Any] = {
        "times_s": [0.0, 0.05, 0.1],
        "triggers": ["LIDAR_TOP", "CAM_FRONT", "LIDAR_TOP"],
        "modalities": ["lidar,radar", "camera", "lidar"],
        "detections": [3, 1, 2],
        "dropouts": [("/lidar/points", 0.04, 0.08)],
    }
    two = plot_timeline(tmp_path / "two.png", **common)
    three = plot_timeline(tmp_path / "three.png", latencies_ms=[120.0, None, 90.0], **common)
    assert three.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The third panel makes the picture taller, not narrower.
    two_h, two_w = matplotlib.image.imread(two).shape[:2]
    three_h, three_w = matplotlib.image.imread(three).shape[:2]
    assert three_w == two_w and three_h > two_h
