"""`peftdml demo`: the figures it derives (keyframe matching, latency and dropout statistics) and
one real run on a short generated scene that must leave a complete out/demo behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.types import Detections
from peftdml_ros.ros.demo_session import FrameRecord
from peftdml_ros.ros.replay import DropWindow
from peftdml_ros.tools import demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MS = 1_000_000  # ns
BAG_START_NS = 1_000 * demo.NS_PER_S


def _frame(t_s: float, trigger: str = "LIDAR_TOP", detections: int = 3) -> FrameRecord:
    return FrameRecord(BAG_START_NS + round(t_s * demo.NS_PER_S), trigger, "radar", detections)


def test_keyframes_take_their_own_frame_else_the_nearest_within_tolerance() -> None:
    frames = [100 * MS, 180 * MS, 230 * MS, 400 * MS]
    keyframes = [100 * MS, 200 * MS, 210 * MS, 300 * MS, 415 * MS]
    matched = demo.match_keyframes(keyframes, frames, tolerance_ns=30 * MS)
    # 200: 180 is 20 ms away, 230 30 ms; 210: 230 is the nearer (20 vs 30 ms); 300: nothing
    # within 30 ms; 415: the last frame, 15 ms before.
    assert matched == [100 * MS, 180 * MS, 230 * MS, None, 400 * MS]
    assert demo.match_keyframes([5 * MS], [0, 10 * MS], tolerance_ns=5 * MS) == [0]  # tie: earlier
    assert demo.match_keyframes([5 * MS], [], tolerance_ns=MS) == [None]


def test_latency_stats_skip_unmeasured_frames() -> None:
    stats = demo.latency_stats([10.0, None, 30.0, 20.0])
    assert stats["frames"] == 3 and stats["frames_not_measured"] == 1
    assert stats["p50"] == 20.0 and stats["max"] == 30.0 and stats["mean"] == 20.0
    assert stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    empty = demo.latency_stats([None])
    assert empty["frames"] == 0 and empty["p50"] is None and empty["p99"] is None
    json.dumps(stats)  # plain floats, no numpy scalars


def test_window_stats_count_frames_in_the_half_open_window() -> None:
    frames = [
        _frame(1.9),
        _frame(2.0, "CAM_FRONT"),
        _frame(2.5, "CAM_FRONT", detections=0),
        _frame(3.0),  # the window's end is outside it
    ]
    window = DropWindow.parse("/lidar/points@2-3")
    stats = demo.window_stats(frames, window, BAG_START_NS, messages_dropped=10)
    assert stats["topic"] == "/lidar/points"
    assert (stats["start_s"], stats["end_s"]) == (2.0, 3.0)
    assert stats["frames_during"] == 2
    assert stats["frames_with_detections_during"] == 1
    assert stats["detections_during"] == 3
    assert stats["triggers_during"] == {"CAM_FRONT": 2}
    assert stats["messages_dropped"] == 10


def test_moved_carries_boxes_through_a_rigid_transform() -> None:
    boxes = Detections(
        center_m=np.array([[10.0, 0.0, 1.0]], np.float32),
        size_wlh_m=np.array([[2.0, 4.0, 1.5]], np.float32),
        yaw_rad=np.array([3.0], np.float32),
        velocity_mps=np.zeros((1, 2), np.float32),
        score=np.array([0.9], np.float32),
        label=np.array([2], np.int64),
    )
    transform = np.eye(4)
    transform[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # +90 deg about z
    transform[:3, 3] = [1.0, 2.0, 0.5]
    out = demo.moved(boxes, transform)
    np.testing.assert_allclose(out.center_m[0], [1.0, 12.0, 1.5], atol=1e-5)
    # 3 + pi/2 wraps to 3 + pi/2 - 2 pi.
    np.testing.assert_allclose(out.yaw_rad[0], 3.0 + math.pi / 2 - 2 * math.pi, atol=1e-5)
    np.testing.assert_array_equal(out.size_wlh_m, boxes.size_wlh_m)
    np.testing.assert_array_equal(out.label, boxes.label)


def test_a_bad_drop_window_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOPIC@T0-T1"):
        demo.main(["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                   "--drop", "/lidar/points@3"])  # fmt: skip
    assert not (tmp_path / "w").exists()


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.timeout(300)  # about 30 s on 2 loaded cores; the limit only stops a hung run
def test_demo_writes_metrics_and_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole demo on one 2 s scene of the small preset, the LiDAR silenced for 1.2 s."""
    out = tmp_path / "out"
    argv = ["--workdir", str(tmp_path / "work"), "--out", str(out), "--preset", "small",
            "--seed", "0", "--drop", "/lidar/points@0.4-1.6", "--quiet"]  # fmt: skip
    assert demo.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())

    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["NDS"] <= 1.0
    assert metrics["mAP"] > 0.0  # the shipped model finds objects of a scene it never saw
    assert metrics["scoring"]["keyframes"] == 5  # 2 s at 2 Hz, both ends included
    assert isinstance(metrics["frames"], int) and metrics["frames"] > 0
    assert 0 < metrics["frames_with_detections"] <= metrics["frames"], metrics["node"]
    assert metrics["node"]["model"].endswith("peftdml_synth_cpu30.onnx")

    dropout = metrics["dropout"]
    assert dropout["topic"] == "/lidar/points"
    assert (dropout["start_s"], dropout["end_s"]) == (0.4, 1.6)
    assert dropout["messages_dropped"] > 0
    # The node keeps publishing without its reference sensor, from the fallback trigger.
    assert dropout["frames_during"] >= 1, dropout
    assert 0 <= dropout["frames_with_detections_during"] <= dropout["frames_during"]
    assert "LIDAR_TOP" not in dropout["triggers_during"]
    assert metrics["dropouts"] == [dropout]
    # Whether a /diagnostics period fell inside the silence depends on timing: types only.
    assert all(isinstance(n, int) for n in metrics["sensors_reported_missing"].values())

    timeline = metrics["timeline"]
    assert len(timeline) == metrics["frames"]
    times = [row["t_s"] for row in timeline]
    assert times == sorted(times) and times[0] >= 0.0 and times[-1] <= 2.2
    during = [r for r in timeline if dropout["start_s"] <= r["t_s"] < dropout["end_s"]]
    assert len(during) == dropout["frames_during"]
    assert all(r["trigger"] != "LIDAR_TOP" for r in during), during

    wall = metrics["latency"]["receipt_to_publish_wall_ms"]
    assert "wall" in wall["clock"] and "monotonic" in wall["clock"]
    assert wall["frames"] + wall["frames_not_measured"] == metrics["frames"]
    assert wall["frames"] > 0 and 0.0 < wall["p50"] <= wall["p99"] <= wall["max"]
    assert metrics["latency"]["stamp_to_publish_sim_ms"]["clock"].startswith("sim")
    assert metrics["latency"]["node_processing_wall_ms"]["p50"] > 0.0

    assert set(metrics["pictures"]) >= {"bev", "camera", "timeline"}, metrics["scoring"]
    for name in metrics["pictures"].values():
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name

    printed = capsys.readouterr().out
    summary = printed[printed.index("peftdml demo: done") :]
    assert len(summary.strip().splitlines()) <= 8
    assert f"mAP {metrics['mAP']:.3f}" in summary and "p99" in summary
    assert str(out) in summary
