"""Pictures people would rather look at than tables: bird's-eye views and frame timelines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from peftdml_ros.core.types import NUSCENES_CLASSES, Detections

# One color per class (tab10), the same in every picture.
CLASS_COLORS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def box_corners_bev(detections: Detections) -> npt.NDArray[np.float64]:
    """[N, 4, 2] BEV corners (x, y) of each box, counter-clockwise from front-left."""
    half_l = detections.size_wlh_m[:, 1].astype(np.float64) / 2
    half_w = detections.size_wlh_m[:, 0].astype(np.float64) / 2
    local = np.stack(
        [np.stack([half_l, half_w], -1), np.stack([-half_l, half_w], -1),
         np.stack([-half_l, -half_w], -1), np.stack([half_l, -half_w], -1)], axis=1
    )  # fmt: skip
    cos, sin = np.cos(detections.yaw_rad), np.sin(detections.yaw_rad)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], axis=1)
    corners: npt.NDArray[np.float64] = np.einsum("nij,nkj->nki", rotation, local)
    return corners + detections.center_m[:, None, :2].astype(np.float64)


def plot_bev(
    path: Path,
    *,
    points_xy: npt.NDArray[np.float32] | None,
    ground_truth: Detections | None,
    detections: Detections,
    range_m: float = 51.2,
    title: str = "",
) -> Path:
    """BEV picture: LiDAR points (grey), ground truth (dashed black), detections (class color)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figure, axes = plt.subplots(figsize=(9, 9), dpi=110)
    if points_xy is not None and len(points_xy):
        axes.scatter(points_xy[:, 0], points_xy[:, 1], s=0.2, c="#9a9a9a", linewidths=0)
    if ground_truth is not None:
        for corners in box_corners_bev(ground_truth):
            closed = np.vstack([corners, corners[:1]])
            axes.plot(closed[:, 0], closed[:, 1], "k--", linewidth=0.9)
    for corners, label, score in zip(
        box_corners_bev(detections), detections.label, detections.score, strict=True
    ):
        closed = np.vstack([corners, corners[:1]])
        color = CLASS_COLORS[int(label)]
        axes.plot(closed[:, 0], closed[:, 1], color=color, linewidth=1.6)
        axes.plot(closed[:2, 0], closed[:2, 1], color=color, linewidth=3.0)  # front edge
        axes.annotate(f"{NUSCENES_CLASSES[int(label)]} {score:.2f}", corners[0], fontsize=6,
                      color=color)  # fmt: skip
    axes.plot([0], [0], marker=">", color="red", markersize=10)  # the ego vehicle, heading +x
    handles = [
        Line2D([], [], color=c, label=n)
        for n, c in zip(NUSCENES_CLASSES, CLASS_COLORS, strict=True)
    ]
    handles.append(Line2D([], [], color="k", linestyle="--", label="ground truth"))
    axes.legend(handles=handles, loc="upper right", fontsize=7)
    axes.set_xlim(-range_m, range_m)
    axes.set_ylim(-range_m, range_m)
    axes.set_aspect("equal")
    axes.set_xlabel("x forward (m)")
    axes.set_ylabel("y left (m)")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_timeline(
    path: Path,
    *,
    times_s: Sequence[float],
    triggers: Sequence[str],
    modalities: Sequence[str],
    detections: Sequence[int],
    dropouts: Sequence[tuple[str, float, float]] = (),
    latencies_ms: Sequence[float | None] | None = None,
    latency_label: str = "latency (ms)",
    title: str = "",
) -> Path:
    """One column per published frame: which sensor triggered it, which modalities it held,
    and how many detections it gave; shaded spans mark rehearsed sensor dropouts.

    latencies_ms, when given: a third panel with each frame's latency (None: not measured),
    its axis labelled `latency_label`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modality_rows = ("lidar", "radar", "camera", "imu", "gnss")
    ratios = [2, 1] if latencies_ms is None else [2, 1, 1]
    figure, panels = plt.subplots(len(ratios), 1, figsize=(11, 2.75 * sum(ratios) / 1.5),
                                  dpi=110, sharex=True,
                                  gridspec_kw={"height_ratios": ratios})  # fmt: skip
    top, bottom = panels[0], panels[1]
    trigger_names = sorted(set(triggers))
    for row, modality in enumerate(modality_rows):
        xs = [t for t, present in zip(times_s, modalities, strict=True)
              if modality in present.split(",")]  # fmt: skip
        top.scatter(xs, [row] * len(xs), marker="|", s=120, color="#2ca02c")
    for index, name in enumerate(trigger_names):
        xs = [t for t, trigger in zip(times_s, triggers, strict=True) if trigger == name]
        top.scatter(xs, [len(modality_rows) + 0.2 * index] * len(xs), s=6,
                    label=f"triggered by {name}")  # fmt: skip
    top.set_yticks(range(len(modality_rows)), [f"{m} present" for m in modality_rows])
    top.legend(loc="upper right", fontsize=7)
    bottom.plot(times_s, detections, ".-", linewidth=0.8, markersize=3)
    bottom.set_ylabel("detections")
    if latencies_ms is not None:
        measured = [(t, v) for t, v in zip(times_s, latencies_ms, strict=True) if v is not None]
        panels[2].plot([t for t, _ in measured], [v for _, v in measured], ".", markersize=3,
                       color="#9467bd")  # fmt: skip
        panels[2].set_ylabel(latency_label, fontsize=8)
        panels[2].set_ylim(bottom=0)
    panels[-1].set_xlabel("bag time (s)")
    for topic, start_s, end_s in dropouts:
        for axes in panels:
            axes.axvspan(start_s, end_s, color="#d62728", alpha=0.12)
        # In axes-fraction height, so the label stays inside the panel whatever its y range.
        bottom.annotate(f" {topic} silenced", (start_s, 0.97), xycoords=("data", "axes fraction"),
                        va="top", fontsize=7, color="#d62728")  # fmt: skip
    top.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


# Box corner order of box_corners_3d: the 4 BEV corners at the bottom, then the same 4 on top.
_BOX_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7),
)  # fmt: skip
# Edges are clipped to this depth in front of the camera before projecting (m).
_NEAR_M = 0.1


def box_corners_3d(detections: Detections) -> npt.NDArray[np.float64]:
    """[N, 8, 3] corners (x, y, z): the BEV corners (box_corners_bev order) at the bottom of the
    box (center z - h/2), then the same corners at its top."""
    bev = box_corners_bev(detections)  # [N, 4, 2]
    half_h = detections.size_wlh_m[:, 2].astype(np.float64)[:, None] / 2
    z = detections.center_m[:, 2].astype(np.float64)[:, None]
    bottom = np.concatenate([bev, np.broadcast_to(z - half_h, bev.shape[:2])[..., None]], -1)
    top = np.concatenate([bev, np.broadcast_to(z + half_h, bev.shape[:2])[..., None]], -1)
    return np.concatenate([bottom, top], axis=1)


def box_edges_in_image(
    corners_ego: npt.NDArray[np.float64],
    intrinsics: npt.ArrayLike,
    camera_to_ego: npt.ArrayLike,
) -> list[npt.NDArray[np.float64]]:
    """The 12 edges of each box [N, 8, 3] (ego frame) as pixel segments [2, 2] (u, v), clipped
    to the space in front of the camera: edges wholly behind it are left out.

    intrinsics: [3, 3] K of the image; camera_to_ego: [4, 4] optical frame (z forward) -> ego.
    """
    k = np.asarray(intrinsics, np.float64)
    ego_to_camera = np.linalg.inv(np.asarray(camera_to_ego, np.float64))
    segments: list[npt.NDArray[np.float64]] = []
    for box in corners_ego:
        cam = box @ ego_to_camera[:3, :3].T + ego_to_camera[:3, 3]
        for a, b in _BOX_EDGES:
            p, q = cam[a], cam[b]
            if p[2] < _NEAR_M and q[2] < _NEAR_M:
                continue
            if p[2] < _NEAR_M or q[2] < _NEAR_M:  # move the point behind onto the near plane
                t = (_NEAR_M - p[2]) / (q[2] - p[2])
                clipped = p + t * (q - p)
                p, q = (clipped, q) if p[2] < _NEAR_M else (p, clipped)
            ends = np.stack([p, q]) @ k.T
            segments.append(ends[:, :2] / ends[:, 2:3])
    return segments


def plot_camera_boxes(
    path: Path,
    *,
    image: npt.NDArray[np.uint8],
    intrinsics: npt.ArrayLike,
    camera_to_ego: npt.ArrayLike,
    ground_truth: Detections | None,
    detections: Detections,
    title: str = "",
) -> Path:
    """A camera image with 3D boxes projected through its calibration: ground truth (dashed
    white), detections (class color, with class and score).

    image: [H, W, 3] uint8 RGB; intrinsics: its [3, 3] K; camera_to_ego: [4, 4]; boxes in the
    ego frame the calibration refers to.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = image.shape[:2]
    figure, axes = plt.subplots(figsize=(10, 10 * height / width + 0.6), dpi=110)
    axes.imshow(image, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    if ground_truth is not None:
        for segment in box_edges_in_image(box_corners_3d(ground_truth), intrinsics, camera_to_ego):
            axes.plot(segment[:, 0], segment[:, 1], "w--", linewidth=0.9)
    corners = box_corners_3d(detections)
    for index in range(len(detections)):
        label = int(detections.label[index])
        color = CLASS_COLORS[label]
        segments = box_edges_in_image(corners[index : index + 1], intrinsics, camera_to_ego)
        for segment in segments:
            axes.plot(segment[:, 0], segment[:, 1], color=color, linewidth=1.4)
        if segments:
            u, v = segments[0][0]
            if 0 <= u < width and 0 <= v < height:
                axes.annotate(f"{NUSCENES_CLASSES[label]} {detections.score[index]:.2f}",
                              (u, v), fontsize=6, color=color)  # fmt: skip
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_axis_off()
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
