"""The frame rule: which message of each sensor a frame holds.

One implementation, two users: the node's synchronizer (`core.sync`) applies it to live
messages, the dataset reader (`data.nuscenes_reader`) to a scene's sample_data timeline (sweeps
included). The model therefore trains on frames built exactly as the vehicle builds them, with
the same offsets, reuse and gaps. Stamps are integer nanoseconds; a frame's stamp is its
trigger (reference) message's stamp.

Rules
-----
- LiDAR, radar, camera (every one but the trigger): the message whose stamp is nearest the frame
  stamp, if it is within the modality's slop; otherwise the sensor is absent from the frame.
  A tie (one message before and one after the frame, equally far) goes to the earlier message:
  it was measured before the frame instant, and the node need not wait for the later one to
  decide. Equal stamps in one timeline: the first.
- Reuse. A message may serve several consecutive frames: a 12 Hz camera is the nearest message
  of most 20 Hz LiDAR frames twice. The slop is the staleness bound: no frame ever holds a
  message stamped more than slop away from its own stamp. (Nearest-message choice is monotone:
  a message that serves two frames serves every frame between them.)
- IMU: every sample in (max(stamp - window, previous frame stamp), stamp]. Each sample goes to
  one frame; the previous frame of a LiDAR-triggered stream is the previous LiDAR sweep.
- GNSS: the newest fix stamped at most slop after the frame and at most `staleness` before it.
  A fix may serve several frames (GNSS is slower than the frame rate).

Defaults (DEFAULT_SLOP_NS) fit the nuScenes rig: LiDAR 20 Hz (50 ms period), camera 12 Hz
(83 ms), radar 13 Hz (77 ms). A slop of at least half the period plus jitter puts a message
within reach of every frame of a healthy sensor, so a healthy rig gives full frames: 50 ms for
camera and radar (41.7 and 38.5 ms half periods plus ~10 ms of stamp jitter) and for an extra
LiDAR. GNSS takes 20 ms, less than half the 20 Hz frame period: where one fix is derived per
LiDAR sweep (the bag writer does so), a frame takes the fix of its own sweep, never the next.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from peftdml_ros.core.types import Modality

MS = 1_000_000  # ns per millisecond
NS_PER_S = 1_000_000_000

T = TypeVar("T")

DEFAULT_SLOP_NS: dict[Modality, int] = {
    Modality.LIDAR: 50 * MS,
    Modality.RADAR: 50 * MS,
    Modality.CAMERA: 50 * MS,
    Modality.IMU: 0,  # unused: IMU takes a window (imu_window)
    Modality.GNSS: 20 * MS,
}
# Modalities whose frames take the nearest message (and may reuse it).
NEAREST_MODALITIES: frozenset[Modality] = frozenset(
    {Modality.LIDAR, Modality.RADAR, Modality.CAMERA}
)
DEFAULT_IMU_WINDOW_NS = 1000 * MS
DEFAULT_GNSS_STALENESS_NS = 1000 * MS


def _identity(stamp: Any) -> int:
    return int(stamp)


def nearest_index(
    timeline: Sequence[T],
    stamp_ns: int,
    slop_ns: int,
    key: Callable[[T], int] | None = None,
) -> int | None:
    """Index of the message nearest `stamp_ns` within `slop_ns`, or None (the sensor is absent).

    timeline: messages sorted by stamp (`key` gives a message's stamp; default: the items are
    stamps). Ties go to the earlier message; equal stamps to the first of them.
    """
    get = key or _identity
    after = bisect.bisect_left(timeline, stamp_ns, key=get)  # first stamp >= stamp_ns
    best: int | None = None
    best_dist = slop_ns + 1
    if after > 0:
        before = after - 1
        # The first of a run of equal stamps: bisect to it.
        before = bisect.bisect_left(timeline, get(timeline[before]), hi=before + 1, key=get)
        best, best_dist = before, stamp_ns - get(timeline[before])
    if after < len(timeline):
        dist = get(timeline[after]) - stamp_ns
        if dist < best_dist:  # strictly nearer: a tie keeps the earlier message
            best, best_dist = after, dist
    return best if best is not None and best_dist <= slop_ns else None


def imu_window(stamp_ns: int, previous_ns: int | None, window_ns: int) -> tuple[int, int]:
    """(exclusive start, inclusive end) of the IMU samples a frame takes."""
    start = stamp_ns - window_ns
    if previous_ns is not None:
        start = max(start, previous_ns)
    return start, stamp_ns


def imu_slice(
    timeline: Sequence[T],
    stamp_ns: int,
    previous_ns: int | None,
    window_ns: int,
    key: Callable[[T], int] | None = None,
) -> slice:
    """The samples of a stamp-sorted timeline that go with the frame (see imu_window)."""
    get = key or _identity
    start, end = imu_window(stamp_ns, previous_ns, window_ns)
    return slice(
        bisect.bisect_right(timeline, start, key=get),
        bisect.bisect_right(timeline, end, key=get),
    )


def gnss_index(
    timeline: Sequence[T],
    stamp_ns: int,
    slop_ns: int,
    staleness_ns: int,
    key: Callable[[T], int] | None = None,
) -> int | None:
    """Index of the newest fix stamped in [stamp - staleness, stamp + slop], or None."""
    get = key or _identity
    index = bisect.bisect_right(timeline, stamp_ns + slop_ns, key=get) - 1
    if index < 0 or get(timeline[index]) < stamp_ns - staleness_ns:
        return None
    return index


def sweep_dt_s(frame_stamp_ns: int, sweep_stamp_ns: int) -> float:
    """The dt_s column of a sweep's points: (frame stamp - sweep stamp) in seconds.

    One expression for the node and the dataset, so both store the same float32 value.
    """
    return (frame_stamp_ns - sweep_stamp_ns) / NS_PER_S
