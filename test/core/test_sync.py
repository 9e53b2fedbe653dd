"""The frame synchronizer: one test per rule, then hypothesis properties over random streams."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftdml_ros.core import frame_rule
from peftdml_ros.core.errors import ConfigError
from peftdml_ros.core.sync import (
    MS,
    FrameSynchronizer,
    SyncConfig,
    SyncedFrame,
    SyncSensor,
    UnknownSensorError,
)
from peftdml_ros.core.types import Modality

L, R, C, IMU, GNSS = Modality.LIDAR, Modality.RADAR, Modality.CAMERA, Modality.IMU, Modality.GNSS


def _rig(*extra: SyncSensor) -> list[SyncSensor]:
    return [SyncSensor("lidar", L), SyncSensor("cam", C), *extra]


def _sync(sensors: list[SyncSensor] | None = None, **config: Any) -> FrameSynchronizer:
    params: dict[str, Any] = {"deadline_ns": 100 * MS, "period_jitter": 1.0}
    params.update(config)
    return FrameSynchronizer(sensors or _rig(), SyncConfig(**params))


# ---------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("sensors", "config", "match"),
    [
        ([SyncSensor("a", L), SyncSensor("a", C)], {}, "unique; repeated: \\['a'\\]"),
        (
            [SyncSensor("a", L), SyncSensor("i1", IMU), SyncSensor("i2", IMU)],
            {},
            "at most one imu",
        ),
        ([SyncSensor("a", L)], {"reference_sensor": "b"}, "'b' is not a configured sensor"),
        ([SyncSensor("a", L), SyncSensor("i", IMU)], {"reference_sensor": "i"}, "is imu"),
        ([SyncSensor("i", IMU)], {}, "no LiDAR, radar or camera"),
        ([SyncSensor("a", L)], {"deadline_ns": -1}, "deadline_ns = -1"),
        ([SyncSensor("a", L)], {"fallback_order": (GNSS,)}, "fallback_order may name"),
        ([SyncSensor("a", L)], {"slop_ns": {C: -5}}, "slop_ns"),
        ([SyncSensor("a", L)], {"buffer_size": 0}, "buffer_size 0"),
        ([SyncSensor("a", L)], {"period_jitter": 1.5}, "period_jitter"),
        ([], {}, "at least one sensor"),
    ],
)
def test_invalid_configuration_is_refused(
    sensors: list[SyncSensor], config: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        FrameSynchronizer(sensors, SyncConfig(**config))


def test_reference_defaults_to_the_first_lidar() -> None:
    sync = FrameSynchronizer([SyncSensor("cam", C), SyncSensor("top", L), SyncSensor("l2", L)])
    assert sync.reference_sensor == "top"


def test_unknown_sensor_is_an_error() -> None:
    with pytest.raises(UnknownSensorError, match="'nope' is not configured"):
        _sync().add("nope", 0, None, 0)


# ------------------------------------------------------------------------------ trigger and wait


def test_frame_goes_out_as_soon_as_every_sensor_contributed() -> None:
    sync = _sync()
    sync.add("cam", -100 * MS, "c-old", 0)  # the camera is known to be alive
    assert sync.add("lidar", 0, "l0", 1 * MS) == []
    (frame,) = sync.add("cam", 3 * MS, "c0", 12 * MS)
    assert frame.stamp_ns == 0 and frame.trigger_sensor == "lidar"
    assert frame.items == {"lidar": "l0", "cam": "c0"}
    assert frame.stamps_ns == {"lidar": 0, "cam": 3 * MS}
    assert frame.sensor_present == {"lidar": True, "cam": True}
    assert frame.modality_present[L] and frame.modality_present[C]
    assert not frame.modality_present[R]
    assert (frame.emitted_ns, frame.waited_to_deadline) == (12 * MS, False)


def test_late_sensor_frame_waits_to_the_deadline_then_goes_without_it() -> None:
    sync = _sync()
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    assert sync.poll(99 * MS) == []
    (frame,) = sync.poll(100 * MS)
    assert frame.items == {"lidar": "l0"}
    assert frame.sensor_present == {"lidar": True, "cam": False}
    assert not frame.modality_present[C]
    assert frame.waited_to_deadline
    assert sync.stats().frames_waited_to_deadline == 1


def test_never_heard_sensor_does_not_hold_frames() -> None:
    (frame,) = _sync().add("lidar", 0, "l0", 0)
    assert frame.sensor_present == {"lidar": True, "cam": False}


def test_silent_sensor_is_no_longer_waited_for() -> None:
    sync = _sync(sensor_timeout_ns=200 * MS)
    sync.add("cam", 0, "c0", 0)
    assert sync.add("lidar", 150 * MS, "l0", 150 * MS) == []  # cam may still come
    assert len(sync.poll(250 * MS)) == 1  # deadline
    (frame,) = sync.add("lidar", 300 * MS, "l1", 300 * MS)  # cam silent for 300 ms
    assert frame.sensor_present["cam"] is False


def test_sensor_past_the_frame_without_a_match_cannot_improve_it() -> None:
    sync = _sync(slop_ns={C: 10 * MS})
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 1 * MS)
    (frame,) = sync.add("cam", 40 * MS, "c1", 45 * MS)  # beyond slop, but past the frame
    assert frame.items == {"lidar": "l0"} and not frame.waited_to_deadline


def test_period_prediction_stops_waiting_when_the_next_message_cannot_match() -> None:
    sensors = _rig()
    strict = _sync(sensors, slop_ns={C: 20 * MS}, period_jitter=1.0)
    predicted = _sync(sensors, slop_ns={C: 20 * MS}, period_jitter=0.25)
    for sync in (strict, predicted):
        for k in range(3):  # a 100 ms camera, last stamp -60 ms: next due at +40 ms > slop
            sync.add("cam", (k * 100 - 240) * MS, f"c{k}", k * 100 * MS)
    assert strict.add("lidar", 0, "l0", 210 * MS) == []
    (frame,) = predicted.add("lidar", 0, "l0", 210 * MS)
    assert frame.items == {"lidar": "l0"} and not frame.waited_to_deadline


# ---------------------------------------------------------------------------- matching rules


def test_nearest_message_within_slop_is_chosen_and_older_ones_dropped() -> None:
    sync = _sync(slop_ns={C: 30 * MS})
    for stamp in (-50, -20, -5):
        sync.add("cam", stamp * MS, f"c{stamp}", 0)
    # -5 ms is the best so far, but a message stamped before +5 ms would be nearer: wait.
    assert sync.add("lidar", 0, "l0", 1 * MS) == []
    (frame,) = sync.add("cam", 20 * MS, "c20", 2 * MS)
    assert frame.items["cam"] == "c-5" and frame.stamps_ns["cam"] == -5 * MS
    assert not frame.waited_to_deadline
    counters = sync.stats().sensors["cam"]
    # -50 and -20 can serve no later frame; c-5 (used) and c20 stay for the next frames.
    assert (counters.used, counters.dropped_unmatched, counters.buffered) == (1, 2, 1)
    assert [e.stamp_ns for e in sync._streams["cam"].buffer] == [-5 * MS, 20 * MS]


def test_a_nearer_later_message_wins() -> None:
    sync = _sync(slop_ns={C: 30 * MS})
    sync.add("cam", -20 * MS, "c-20", 0)
    assert sync.add("lidar", 0, "l0", 1 * MS) == []
    (frame,) = sync.add("cam", 12 * MS, "c12", 2 * MS)
    assert frame.items["cam"] == "c12"


def test_a_tie_goes_to_the_earlier_message() -> None:
    sync = _sync(slop_ns={C: 30 * MS})
    sync.add("cam", -10 * MS, "c-10", 0)
    assert sync.add("lidar", 0, "l0", 1 * MS) == []
    (frame,) = sync.add("cam", 10 * MS, "c+10", 2 * MS)
    assert frame.items["cam"] == "c-10"


def _camera_every_100_ms(newest_ms: int) -> FrameSynchronizer:
    """A 100 ms camera whose newest stamp is `newest_ms`: its next message is due no earlier
    than 75 ms after that (period_jitter 0.25)."""
    sync = _sync(slop_ns={C: 50 * MS}, period_jitter=0.25)
    for k in range(3):
        sync.add("cam", (newest_ms + (k - 2) * 100) * MS, f"c{k}", k * MS)
    return sync


def test_period_prediction_releases_a_frame_whose_choice_is_known() -> None:
    # Newest at -10 ms: the next (>= +65 ms) cannot beat 10 ms, the frame leaves at once.
    (frame,) = _camera_every_100_ms(-10).add("lidar", 0, "l0", 10 * MS)
    assert frame.items["cam"] == "c2" and not frame.waited_to_deadline
    # Newest at -40 ms: a next message from +35 ms on could be nearer (< 40 ms): wait for it.
    sync = _camera_every_100_ms(-40)
    assert sync.add("lidar", 0, "l0", 10 * MS) == []
    (frame,) = sync.add("cam", 60 * MS, "c3", 70 * MS)  # 60 ms away: c2 (40 ms) stays
    assert frame.items["cam"] == "c2" and not frame.waited_to_deadline
    # Newest at -37.5 ms: the next is due at +37.5 ms at the earliest, a tie at best, and a
    # tie goes to the earlier message: nothing can change the choice, the frame leaves.
    sync = _sync(slop_ns={C: 50 * MS}, period_jitter=0.25)
    for k, stamp_us in enumerate((-237_500, -137_500, -37_500)):
        sync.add("cam", stamp_us * 1000, f"c{k}", k * MS)
    (frame,) = sync.add("lidar", 0, "l0", 10 * MS)
    assert frame.items["cam"] == "c2"


def test_message_outside_slop_is_not_used() -> None:
    sync = _sync(slop_ns={C: 10 * MS})
    sync.add("cam", -11 * MS, "c-11", 0)
    assert sync.add("lidar", 0, "l0", 1 * MS) == []  # a camera message may still come
    (frame,) = sync.add("cam", 11 * MS, "c+11", 12 * MS)
    assert "cam" not in frame.items


def test_a_camera_message_serves_consecutive_frames_and_counts_as_used_once() -> None:
    sync = _sync(slop_ns={C: 40 * MS})
    sync.add("cam", 20 * MS, "c", 0)
    frames = sync.add("lidar", 0, "l0", 30 * MS) + sync.add("lidar", 40 * MS, "l1", 45 * MS)
    assert [f.items.get("cam") for f in frames] == ["c"]  # frame 40 ms waits: c is 20 ms off
    frames += sync.add("cam", 103 * MS, "c2", 110 * MS)  # 63 ms off: c stays the nearest
    frames += sync.add("lidar", 80 * MS, "l2", 115 * MS)  # 60 ms from c, 23 ms from c2
    assert [(f.stamp_ns, f.items.get("cam")) for f in frames] == [
        (0, "c"),
        (40 * MS, "c"),
        (80 * MS, "c2"),
    ]
    assert not any(f.waited_to_deadline for f in frames)
    counters = sync.stats().sensors["cam"]
    assert (counters.received, counters.used, counters.buffered) == (2, 2, 0)
    assert counters.dropped_unmatched == 0  # c was used: leaving the buffer is no loss


def test_a_message_goes_to_every_pending_frame_it_is_nearest_to() -> None:
    sync = _sync(slop_ns={C: 40 * MS})
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    sync.add("lidar", 50 * MS, "l1", 50 * MS)
    frames = sync.add("cam", 35 * MS, "c35", 60 * MS)  # 35 from frame 0, 15 from frame 1
    assert [(f.stamp_ns, f.items.get("cam")) for f in frames] == [(0, "c35")]
    frames += sync.add("cam", 70 * MS, "c70", 80 * MS)  # 20 ms from frame 1: c35 stays
    assert [(f.stamp_ns, f.items.get("cam")) for f in frames] == [(0, "c35"), (50 * MS, "c35")]
    counters = sync.stats().sensors["cam"]
    assert (counters.used, counters.dropped_unmatched, counters.buffered) == (1, 1, 1)


def test_late_message_older_than_a_newer_one_before_the_last_frame_is_dropped_late() -> None:
    sync = _sync(slop_ns={C: 40 * MS})
    sync.add("cam", -5 * MS, "c-5", 0)
    sync.add("cam", 30 * MS, "c30", 1 * MS)
    (frame,) = sync.add("lidar", 0, "l0", 2 * MS)
    assert frame.items["cam"] == "c-5"
    sync.add("cam", -20 * MS, "c-20", 3 * MS)  # -5 ms is nearer to every later frame
    assert sync.stats().sensors["cam"].dropped_late == 1
    sync.add("cam", -1 * MS, "c-1", 4 * MS)  # makes c-5 useless for later frames
    counters = sync.stats().sensors["cam"]
    assert [e.stamp_ns for e in sync._streams["cam"].buffer] == [-1 * MS, 30 * MS]
    assert (counters.used, counters.dropped_unmatched, counters.buffered) == (1, 0, 2)


def test_out_of_order_contributor_is_inserted_in_stamp_order() -> None:
    sync = _sync(slop_ns={C: 30 * MS})
    sync.add("cam", 10 * MS, "c10", 0)
    sync.add("cam", -2 * MS, "c-2", 1 * MS)  # arrives after a newer one
    (frame,) = sync.add("lidar", 0, "l0", 2 * MS)
    assert frame.items["cam"] == "c-2"


def test_imu_contributes_every_sample_since_the_previous_frame() -> None:
    sync = _sync(_rig(SyncSensor("imu", IMU)), imu_window_ns=35 * MS)
    for k in range(-5, 11):  # 100 Hz from -50 ms to +100 ms
        sync.add("imu", k * 10 * MS, k, 0)
    (first,) = sync.add("lidar", 0, "l0", 1 * MS)
    (second,) = sync.add("lidar", 30 * MS, "l1", 2 * MS)
    (third,) = sync.add("lidar", 100 * MS, "l2", 3 * MS)
    assert first.imu == [-3, -2, -1, 0]  # the 35 ms window
    assert second.imu == [1, 2, 3]  # (0, 30 ms]
    assert third.imu == [7, 8, 9, 10]  # (30 ms, 100 ms] cut to the 35 ms window
    assert first.sensor_present["imu"] and second.modality_present[IMU]
    counters = sync.stats().sensors["imu"]
    assert (counters.used, counters.dropped_unmatched) == (11, 5)


def test_gnss_gives_the_newest_fix_within_staleness_and_may_repeat() -> None:
    sync = _sync(
        _rig(SyncSensor("gnss", GNSS)), gnss_staleness_ns=500 * MS, slop_ns={GNSS: 10 * MS}
    )
    sync.add("gnss", -300 * MS, "g-300", 0)
    sync.add("gnss", -100 * MS, "g-100", 0)
    sync.add("gnss", 30 * MS, "g+30", 0)  # after the frame by more than the GNSS slop
    (f0,) = sync.add("lidar", 0, "l0", 1 * MS)
    (f1,) = sync.add("lidar", 20 * MS, "l1", 2 * MS)
    (f2,) = sync.add("lidar", 40 * MS, "l2", 3 * MS)
    assert [f0.gnss, f1.gnss, f2.gnss] == ["g-100", "g+30", "g+30"]
    (f3,) = sync.add("lidar", 600 * MS, "l3", 4 * MS)
    assert f3.gnss is None and f3.sensor_present["gnss"] is False  # 570 ms stale
    counters = sync.stats().sensors["gnss"]
    assert (counters.used, counters.dropped_unmatched) == (2, 1)


# ------------------------------------------------------------------------------- fallback trigger


def _fallback_rig() -> list[SyncSensor]:
    return [SyncSensor("lidar", L), SyncSensor("radar", R), SyncSensor("cam", C)]


def test_camera_triggers_while_the_reference_is_silent_then_reference_returns() -> None:
    sync = _sync(_fallback_rig(), reference_timeout_ns=300 * MS, sensor_timeout_ns=10_000 * MS)
    sync.add("lidar", 0, "l0", 0)
    assert sync.add("cam", 400 * MS, "c1", 400 * MS) == []  # reference silent 400 ms > 300
    frames = sync.poll(1000 * MS)
    assert [(f.trigger_sensor, f.items) for f in frames] == [("cam", {"cam": "c1"})]
    assert sync.stats().current_trigger == "cam"
    frames = sync.add("lidar", 1100 * MS, "l1", 1100 * MS) + sync.poll(2000 * MS)
    assert [f.trigger_sensor for f in frames] == ["lidar"]
    stats = sync.stats()
    assert stats.frames_by_trigger == {"lidar": 2, "radar": 0, "cam": 1}
    flat = stats.flat()
    assert flat["frames_emitted"] == 3 and flat["frames_by_trigger.cam"] == 1
    assert flat["sensor.cam.used"] == 1 and flat["current_trigger"] == "cam"  # lidar silent again


def test_fallback_order_is_configurable() -> None:
    sync = _sync(_fallback_rig(), fallback_order=(R, C), reference_timeout_ns=100 * MS)
    sync.add("cam", 0, "c0", 0)
    sync.add("radar", 0, "r0", 0)
    frames = sync.poll(200 * MS) + sync.add("radar", 200 * MS, "r1", 200 * MS)
    frames += sync.add("cam", 210 * MS, "c1", 210 * MS) + sync.poll(1000 * MS)
    assert [f.trigger_sensor for f in frames] == ["radar"]
    assert frames[0].items == {"radar": "r1", "cam": "c1"}


def test_no_fallback_before_the_timeout_at_start_up() -> None:
    sync = _sync(_fallback_rig(), reference_timeout_ns=300 * MS)
    assert sync.add("cam", 0, "c0", 0) == []
    assert sync.poll(1000 * MS) == []  # camera messages were buffered, never triggered


# ---------------------------------------------------------------------------- bad stamps, memory


def test_duplicates_are_ignored_and_counted() -> None:
    sync = _sync()
    sync.add("cam", 0, "c0", 0)
    sync.add("cam", 0, "c0-again", 1)
    (frame,) = sync.add("lidar", 0, "l0", 2)
    assert sync.add("lidar", 0, "l0-again", 3) == []
    assert frame.items["cam"] == "c0"
    stats = sync.stats()
    assert stats.sensors["cam"].duplicates == 1 and stats.sensors["lidar"].duplicates == 1


def test_jump_back_resets_buffers_and_flushes_pending_frames() -> None:
    sync = _sync(jump_back_threshold_ns=1000 * MS)
    sync.add("cam", 19_900 * MS, "c-old", 0)
    sync.add("cam", 19_950 * MS, "c-old2", 1)
    assert sync.add("lidar", 20_000 * MS, "l-end", 2) == []  # waits for the camera
    flushed = sync.add("lidar", 0, "l-start", 3)  # bag looped to 0
    assert [f.items["lidar"] for f in flushed] == ["l-end"]
    stats = sync.stats()
    assert stats.resets == 1 and stats.sensors["lidar"].resets == 1
    assert stats.pending_frames == 1  # the new frame at 0 waits for the camera again
    (frame,) = sync.add("cam", 0, "c-new", 4)
    assert frame.items == {"lidar": "l-start", "cam": "c-new"}


def test_small_backwards_jump_of_the_reference_is_dropped_as_late() -> None:
    sync = _sync()
    sync.add("lidar", 100 * MS, "l1", 0)
    assert sync.add("lidar", 50 * MS, "l0", 1) == []
    assert sync.stats().sensors["lidar"].dropped_late == 1


def test_contributor_too_old_for_any_future_frame_is_dropped_late() -> None:
    sync = _sync(slop_ns={C: 20 * MS})
    sync.add("lidar", 100 * MS, "l1", 0)
    sync.add("cam", 50 * MS, "c-late", 1)
    assert sync.stats().sensors["cam"].dropped_late == 1


def test_buffers_are_bounded() -> None:
    sync = _sync(buffer_size=4)
    for k in range(10):
        sync.add("cam", k * MS, k, 0)
    counters = sync.stats().sensors["cam"]
    assert (counters.buffered, counters.dropped_overflow) == (4, 6)


def test_clock_going_backwards_releases_pending_frames() -> None:
    sync = _sync()
    sync.add("cam", -100 * MS, "c-old", 4_990 * MS)
    sync.add("lidar", 0, "l0", 5_000 * MS)
    (frame,) = sync.poll(10 * MS)  # /clock was reset
    assert frame.items == {"lidar": "l0"}
    assert sync.stats().clock_jumps_back == 1


# ------------------------------------------------------------------------------- time faults


class _SteadyClock:
    """A monotonic clock (ns) that the test moves by hand: no sleeps, no wall time."""

    def __init__(self, now_ns: int = 0) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def _steady_sync(
    clock: _SteadyClock, sensors: list[SyncSensor] | None = None, **config: Any
) -> FrameSynchronizer:
    params: dict[str, Any] = {
        "deadline_ns": 100 * MS,
        "period_jitter": 1.0,
        "steady_deadline_ns": 500 * MS,
    }
    params.update(config)
    return FrameSynchronizer(sensors or _rig(), SyncConfig(**params), steady_clock_ns=clock)


def test_stopped_clock_releases_a_waiting_frame_at_its_steady_deadline() -> None:
    steady = _SteadyClock(1_000 * MS)
    sync = _steady_sync(steady)
    sync.add("cam", -100 * MS, "c-old", 0)  # the camera is alive: the frame waits for it
    assert sync.add("lidar", 0, "l0", 1 * MS) == []
    steady.now_ns += 499 * MS  # /clock stopped: the caller's clock stays at 1 ms
    assert sync.poll(1 * MS) == []
    steady.now_ns += 1 * MS
    (frame,) = sync.poll(1 * MS)
    assert frame.items == {"lidar": "l0"} and frame.waited_to_deadline
    assert frame.sensor_present == {"lidar": True, "cam": False}
    stats = sync.stats()
    assert (stats.frames_steady_deadline, stats.frames_waited_to_deadline) == (1, 1)
    assert stats.pending_frames == 0 and stats.flat()["frames_steady_deadline"] == 1


def test_steady_deadline_counts_from_each_frame_and_add_releases_too() -> None:
    steady = _SteadyClock()
    sync = _steady_sync(steady)
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    steady.now_ns = 300 * MS
    sync.add("lidar", 50 * MS, "l1", 0)  # the clock is frozen at 0 for both frames
    steady.now_ns = 500 * MS
    # Any call releases what expired; the second frame has 300 ms of steady time left.
    (first,) = sync.add("lidar", 100 * MS, "l2", 0)
    assert first.items == {"lidar": "l0"}
    steady.now_ns = 799 * MS
    assert sync.poll(0) == []
    steady.now_ns = 800 * MS
    assert [f.items["lidar"] for f in sync.poll(0)] == ["l1"]
    assert sync.stats().frames_steady_deadline == 2


def test_a_clock_at_real_speed_reaches_the_deadline_before_the_steady_one() -> None:
    steady = _SteadyClock()
    sync = _steady_sync(steady, steady_deadline_ns=100 * MS)  # the smallest allowed
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    steady.now_ns = 100 * MS
    (frame,) = sync.poll(100 * MS)
    assert frame.waited_to_deadline
    stats = sync.stats()
    assert (stats.frames_steady_deadline, stats.frames_waited_to_deadline) == (0, 1)


def test_a_complete_frame_is_not_counted_as_released_by_the_steady_deadline() -> None:
    steady = _SteadyClock()
    sync = _steady_sync(steady)
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    steady.now_ns = 10_000 * MS
    (frame,) = sync.add("cam", 5 * MS, "c0", 0)  # arrives late in real time, clock stopped
    assert frame.items == {"lidar": "l0", "cam": "c0"} and not frame.waited_to_deadline
    assert sync.stats().frames_steady_deadline == 0


def test_steady_deadline_below_the_deadline_is_refused_with_a_steady_clock_only() -> None:
    config = SyncConfig(deadline_ns=300 * MS, steady_deadline_ns=200 * MS)
    FrameSynchronizer(_rig(), config)  # no steady clock: the steady deadline is not used
    with pytest.raises(ConfigError, match="steady_deadline_ns 200000000 is below deadline_ns"):
        FrameSynchronizer(_rig(), config, steady_clock_ns=_SteadyClock())
    sync = _steady_sync(_SteadyClock())
    with pytest.raises(ConfigError, match="raise steady_deadline_ns"):
        sync.update_config(deadline_ns=600 * MS)
    with pytest.raises(ConfigError, match="steady_deadline_ns = -1"):
        sync.update_config(steady_deadline_ns=-1)
    assert sync.config.steady_deadline_ns == 500 * MS


def test_update_config_changes_the_steady_deadline_of_pending_frames() -> None:
    steady = _SteadyClock()
    sync = _steady_sync(steady)
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    steady.now_ns = 200 * MS
    assert sync.poll(0) == []
    sync.update_config(steady_deadline_ns=150 * MS)
    assert len(sync.poll(0)) == 1


def test_clock_jump_back_emits_pending_frames_and_starts_over() -> None:
    steady = _SteadyClock()
    sync = _steady_sync(steady, jump_back_threshold_ns=1_000 * MS)
    sync.add("cam", 19_990 * MS, "c-old", 19_995 * MS)
    assert sync.add("lidar", 20_000 * MS, "l-end", 20_000 * MS) == []
    # Sim time restarts (bag loop): the pending frame goes out with what it held.
    (old,) = sync.poll(10 * MS)
    assert old.items == {"lidar": "l-end", "cam": "c-old"}
    stats = sync.stats()
    assert (stats.clock_jumps_back, stats.resets, stats.pending_frames) == (1, 0, 0)
    assert stats.sensors["cam"].buffered == 0  # c-old served its frame and is gone
    # As at start-up: the camera, heard only before the jump, is not waited for ...
    (new,) = sync.add("lidar", 0, "l-start", 20 * MS)
    assert new.items == {"lidar": "l-start"} and not new.waited_to_deadline
    # ... and the reference silence is measured on the new timeline: the camera triggers
    # once the LiDAR is silent for reference_timeout (300 ms) after its last message.
    sync.add("cam", 300 * MS, "c1", 310 * MS)
    assert sync.add("cam", 340 * MS, "c2", 330 * MS) == []  # waits for the LiDAR a while
    (fallback,) = sync.poll(430 * MS)
    assert fallback.trigger_sensor == "cam" and fallback.items == {"cam": "c2"}


def test_clock_jump_back_forgets_arrivals_that_would_look_recent() -> None:
    sync = _sync(jump_back_threshold_ns=1_000 * MS, sensor_timeout_ns=200 * MS)
    sync.add("cam", 4_950 * MS, "c-old", 5_000 * MS)
    sync.poll(5_000 * MS)
    # Without forgetting, the camera's arrival at 5 s would read as 4.9 s in the future, i.e.
    # alive, and this frame would wait for it to the deadline.
    (frame,) = sync.add("lidar", 50 * MS, "l0", 100 * MS)
    assert frame.sensor_present["cam"] is False and not frame.waited_to_deadline
    assert sync.stats().clock_jumps_back == 1


def test_small_step_back_of_the_clock_is_not_a_jump() -> None:
    sync = _sync(jump_back_threshold_ns=1_000 * MS)
    sync.add("cam", -100 * MS, "c-old", 4_990 * MS)
    sync.add("lidar", 0, "l0", 5_000 * MS)
    (frame,) = sync.poll(4_500 * MS)  # released at once, never held for a time gone by
    assert frame.items == {"lidar": "l0"}
    assert sync.stats().clock_jumps_back == 0


# ------------------------------------------------------------------------------ run-time changes


def test_update_config_changes_deadline_of_pending_frames_and_slop() -> None:
    sync = _sync()
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    assert sync.poll(30 * MS) == []
    sync.update_config(deadline_ns=20 * MS, slop_ns={C: 5 * MS})
    assert len(sync.poll(30 * MS)) == 1
    assert sync.config.slop_for(C) == 5 * MS and sync.config.slop_for(L) == 50 * MS
    with pytest.raises(ConfigError, match="deadline_ns"):
        sync.update_config(deadline_ns=-3)
    with pytest.raises(ConfigError, match="unknown synchronizer parameter"):
        sync.update_config(deadline_s=1)
    assert sync.config.deadline_ns == 20 * MS  # a refused change leaves the old config


def test_update_config_shrinks_buffers_keeping_the_newest() -> None:
    sync = _sync(buffer_size=8)
    for k in range(6):
        sync.add("cam", k * MS, k, 0)
    sync.update_config(buffer_size=2)
    counters = sync.stats().sensors["cam"]
    assert (counters.buffered, counters.dropped_overflow) == (2, 4)
    (frame,) = sync.add("lidar", 5 * MS, "l", 1)
    assert frame.items["cam"] == 5


def test_flush_emits_everything_pending() -> None:
    sync = _sync()
    sync.add("cam", -100 * MS, "c-old", 0)
    sync.add("lidar", 0, "l0", 0)
    sync.add("lidar", 50 * MS, "l1", 0)
    assert [f.stamp_ns for f in sync.flush(1)] == [0, 50 * MS]


# ------------------------------------------------------------------------ properties (hypothesis)

_SENSORS = [
    SyncSensor("lidar", L),
    SyncSensor("radar", R),
    SyncSensor("cam_a", C),
    SyncSensor("cam_b", C),
    SyncSensor("imu", IMU),
    SyncSensor("gnss", GNSS),
]
_PERIOD_MS = {"lidar": 50, "radar": 77, "cam_a": 83, "cam_b": 83, "imu": 10, "gnss": 100}
_DEADLINE_NS = 60 * MS


@dataclass(frozen=True)
class _Event:
    now_ns: int
    sensor: str | None  # None: a poll
    stamp_ns: int = 0
    seq: int = 0


@st.composite
def _scenarios(draw: st.DrawFn, healthy_reference: bool) -> tuple[list[_Event], int]:
    """Random rig traffic: per-sensor latency and drop-outs, duplicates, polls at any time."""
    duration_ms = draw(st.integers(200, 1200))
    events: list[_Event] = []
    for name, period_ms in _PERIOD_MS.items():
        dead = name != "lidar" and draw(st.booleans()) and draw(st.booleans())
        if dead:
            continue
        phase_ms = draw(st.integers(0, period_ms - 1))
        latency_ms = draw(st.integers(0, 50 if name != "lidar" else 30))
        jitter_ms = draw(st.integers(0, 20))
        drop_every = 0 if name == "lidar" and healthy_reference else draw(st.integers(0, 4))
        rng = random.Random(draw(st.integers(0, 2**32)))  # per-message jitter and duplicates
        seq = 0
        for stamp_ms in range(phase_ms, duration_ms, period_ms):
            seq += 1
            if drop_every and seq % (drop_every + 2) == 0:
                continue
            now_ms = stamp_ms + latency_ms + rng.randint(0, jitter_ms)
            events.append(_Event(now_ms * MS, name, stamp_ms * MS, seq))
            if rng.randint(0, 9) == 0:  # a duplicate delivery
                events.append(_Event((now_ms + 1) * MS, name, stamp_ms * MS, seq))
    poll_gap_ms = draw(st.integers(1, 40))
    events += [_Event(t * MS, None) for t in range(0, duration_ms + 200, poll_gap_ms)]
    events.sort(key=lambda e: e.now_ns)  # stable: per-sensor arrival order may still be shuffled
    return events, poll_gap_ms * MS


def _run(events: list[_Event]) -> tuple[FrameSynchronizer, list[SyncedFrame]]:
    sync = FrameSynchronizer(
        _SENSORS,
        SyncConfig(
            deadline_ns=_DEADLINE_NS,
            reference_timeout_ns=200 * MS,
            slop_ns={L: 25 * MS, R: 30 * MS, C: 40 * MS, GNSS: 20 * MS},
            buffer_size=8,
            imu_buffer_size=64,
        ),
    )
    frames: list[SyncedFrame] = []
    for event in events:
        if event.sensor is None:
            frames += sync.poll(event.now_ns)
        else:
            payload = (event.sensor, event.stamp_ns, event.seq)
            frames += sync.add(event.sensor, event.stamp_ns, payload, event.now_ns)
    return sync, frames


@settings(max_examples=60, deadline=None)
@given(_scenarios(healthy_reference=False))
def test_frames_respect_deadline_masks_reuse_and_accounting(
    scenario: tuple[list[_Event], int],
) -> None:
    events, poll_gap_ns = scenario
    sync, frames = _run(events)
    for frame in frames:
        assert frame.emitted_ns <= frame.trigger_arrival_ns + _DEADLINE_NS + poll_gap_ns
    stamps = [f.stamp_ns for f in frames]
    assert stamps == sorted(set(stamps))  # strictly increasing
    imu_used = Counter(sample for f in frames for sample in f.imu)
    assert max(imu_used.values(), default=1) == 1  # an IMU sample goes to one frame
    # LiDAR, radar, camera messages and GNSS fixes may serve several frames, but count as used
    # once: `used` is the number of distinct messages that frames hold.
    held: dict[str, set[Any]] = {s.name: set() for s in _SENSORS}
    for frame in frames:
        for name, payload in frame.items.items():
            held[name].add(payload)
        if frame.sensor_present["gnss"]:
            held["gnss"].add(frame.gnss)
    for frame in frames:
        _check_masks(sync, frame)
    stats = sync.stats().sensors
    for name, payloads in held.items():
        expected = sum(imu_used.values()) if name == "imu" else len(payloads)
        assert stats[name].used == expected, name
    for name, counters in stats.items():
        accounted = (
            counters.used
            + counters.duplicates
            + counters.dropped_late
            + counters.dropped_unmatched
            + counters.dropped_overflow
            + counters.buffered
        )
        assert accounted == counters.received, name


def _check_masks(sync: FrameSynchronizer, frame: SyncedFrame) -> None:
    config = sync.config
    for sensor in _SENSORS:
        if sensor.modality is IMU:
            assert frame.sensor_present["imu"] == bool(frame.imu)
            assert all(s[1] <= frame.stamp_ns for s in frame.imu)
        elif sensor.modality is GNSS:
            assert frame.sensor_present["gnss"] == (frame.gnss is not None)
        else:
            present = sensor.name in frame.items
            assert frame.sensor_present[sensor.name] == present
            if present:
                payload = frame.items[sensor.name]
                assert payload[0] == sensor.name
                assert frame.stamps_ns[sensor.name] == payload[1]
                if sensor.name != frame.trigger_sensor:
                    assert abs(payload[1] - frame.stamp_ns) <= config.slop_for(sensor.modality)
    for modality in Modality:
        expected = any(frame.sensor_present[s.name] for s in _SENSORS if s.modality is modality)
        assert frame.modality_present[modality] == expected


@settings(max_examples=40, deadline=None)
@given(_scenarios(healthy_reference=True))
def test_healthy_reference_gives_one_frame_per_message(
    scenario: tuple[list[_Event], int],
) -> None:
    events, _ = scenario
    sync, frames = _run(events)
    frames += sync.flush(events[-1].now_ns)
    reference = {e.stamp_ns for e in events if e.sensor == "lidar"}
    assert [f.trigger_sensor for f in frames] == ["lidar"] * len(reference)
    assert [f.stamp_ns for f in frames] == sorted(reference)


_SLOP_NS = {L: 25 * MS, R: 30 * MS, C: 40 * MS}


@st.composite
def _regular_streams(draw: st.DrawFn) -> list[_Event]:
    """In-order, loss-free periodic streams with per-sensor latency and arrival jitter."""
    duration_ms = draw(st.integers(300, 1500))
    events: list[_Event] = []
    for name, period_ms in _PERIOD_MS.items():
        if name != "lidar" and name != "imu" and draw(st.integers(0, 5)) == 0:
            continue  # a dead sensor
        phase_ms = draw(st.integers(0, period_ms - 1))
        latency_ms = draw(st.integers(0, 40))
        rng = random.Random(draw(st.integers(0, 2**32)))
        for seq, stamp_ms in enumerate(range(phase_ms, duration_ms, period_ms)):
            jitter_ms = rng.randint(0, 9) if name != "imu" else 0  # < period: stays in order
            now_ms = stamp_ms + latency_ms + jitter_ms
            events.append(_Event(now_ms * MS, name, stamp_ms * MS, seq))
    events += [_Event(t * MS, None) for t in range(0, duration_ms + 2000, 5)]
    events.sort(key=lambda e: (e.now_ns, e.sensor is None))
    return events


@settings(max_examples=60, deadline=None)
@given(_regular_streams(), st.sampled_from([0.25, 1.0]))
def test_frames_that_leave_before_their_deadline_hold_the_frame_rule_choice(
    events: list[_Event], period_jitter: float
) -> None:
    """The node's choice equals the offline rule (core.frame_rule) on the whole stream."""
    sync = FrameSynchronizer(
        _SENSORS,
        SyncConfig(
            deadline_ns=1000 * MS,
            sensor_timeout_ns=10_000 * MS,
            slop_ns=_SLOP_NS,
            period_jitter=period_jitter,
        ),
    )
    frames: list[SyncedFrame] = []
    first_arrival: dict[str, int] = {}
    for event in events:
        if event.sensor is None:
            frames += sync.poll(event.now_ns)
        else:
            first_arrival.setdefault(event.sensor, event.now_ns)
            payload = (event.sensor, event.stamp_ns, event.seq)
            frames += sync.add(event.sensor, event.stamp_ns, payload, event.now_ns)
    timelines = {
        name: sorted(e.stamp_ns for e in events if e.sensor == name)
        for name in ("radar", "cam_a", "cam_b")
    }
    modality = {s.name: s.modality for s in _SENSORS}
    all_heard = max(first_arrival.values())
    checked = 0
    for frame in frames:
        assert frame.trigger_sensor == "lidar"
        if frame.waited_to_deadline or frame.trigger_arrival_ns < all_heard:
            continue  # cut short, or a sensor was not heard yet (not waited for)
        for name, timeline in timelines.items():
            index = frame_rule.nearest_index(timeline, frame.stamp_ns, _SLOP_NS[modality[name]])
            expected = None if index is None else timeline[index]
            assert frame.stamps_ns.get(name) == expected, (name, frame.stamp_ns)
        checked += 1
    assert checked > 0
    # Only the last frames (waiting for messages that never come) may be cut short.
    assert sum(f.waited_to_deadline for f in frames) <= 3


def _frame_key(frame: SyncedFrame) -> tuple[Any, ...]:
    """Everything a frame holds and says about itself."""
    return (
        frame.stamp_ns,
        frame.trigger_sensor,
        sorted(frame.items.items()),
        sorted(frame.stamps_ns.items()),
        frame.imu,
        frame.gnss,
        sorted(frame.sensor_present.items()),
        frame.waited_to_deadline,
        frame.emitted_ns,
    )


def _feed(
    sync: FrameSynchronizer,
    events: list[_Event],
    steady: _SteadyClock | None = None,
    steady_of: Any = None,
    now_of: Any = None,
    tag: int = 0,
) -> list[tuple[int, SyncedFrame]]:
    """Play events into `sync`; (steady clock at emission, frame) for each frame out.

    steady_of / now_of map an event to the steady clock and the caller's clock (default: the
    event's now_ns); payloads are (sensor, stamp, seq, tag).
    """
    out: list[tuple[int, SyncedFrame]] = []
    for event in events:
        now_ns = event.now_ns if now_of is None else now_of(event)
        if steady is not None:
            steady.now_ns = steady_of(event)
        if event.sensor is None:
            frames = sync.poll(now_ns)
        else:
            payload = (event.sensor, event.stamp_ns, event.seq, tag)
            frames = sync.add(event.sensor, event.stamp_ns, payload, now_ns)
        out += [(steady.now_ns if steady is not None else now_ns, f) for f in frames]
    return out


def _property_config(**changes: Any) -> SyncConfig:
    return SyncConfig(
        deadline_ns=_DEADLINE_NS,
        reference_timeout_ns=200 * MS,
        slop_ns={L: 25 * MS, R: 30 * MS, C: 40 * MS, GNSS: 20 * MS},
        buffer_size=8,
        imu_buffer_size=64,
        **changes,
    )


@settings(max_examples=40, deadline=None)
@given(
    _scenarios(healthy_reference=False),
    st.integers(_DEADLINE_NS, 3 * _DEADLINE_NS),
    st.integers(0, 10**12),
)
def test_a_steady_clock_at_real_speed_changes_no_frame(
    scenario: tuple[list[_Event], int], steady_deadline_ns: int, offset_ns: int
) -> None:
    """On a clock at real speed the steady deadline never decides: frames are those without it."""
    events, _ = scenario
    plain = _feed(FrameSynchronizer(_SENSORS, _property_config()), events)
    steady = _SteadyClock()
    sync = FrameSynchronizer(
        _SENSORS,
        _property_config(steady_deadline_ns=steady_deadline_ns),
        steady_clock_ns=steady,
    )
    timed = _feed(sync, events, steady, steady_of=lambda e: e.now_ns + offset_ns)
    assert [_frame_key(f) for _, f in timed] == [_frame_key(f) for _, f in plain]
    assert sync.stats().frames_steady_deadline == 0


_STEADY_DEADLINE_NS = 150 * MS


@settings(max_examples=60, deadline=None)
@given(_scenarios(healthy_reference=False), st.integers(0, 1200))
def test_a_stopped_clock_never_holds_a_frame_past_its_steady_deadline(
    scenario: tuple[list[_Event], int], stop_ms: int
) -> None:
    """/clock stops at `stop_ms` while real time and the messages go on."""
    events, poll_gap_ns = scenario
    end_ns = events[-1].now_ns
    events = events + [
        _Event(t, None) for t in range(end_ns, end_ns + 2 * _STEADY_DEADLINE_NS, poll_gap_ns)
    ]
    steady = _SteadyClock()
    sync = FrameSynchronizer(
        _SENSORS,
        _property_config(steady_deadline_ns=_STEADY_DEADLINE_NS),
        steady_clock_ns=steady,
    )
    out = _feed(
        sync,
        events,
        steady,
        steady_of=lambda e: e.now_ns,
        now_of=lambda e: min(e.now_ns, stop_ms * MS),
    )
    arrival: dict[tuple[Any, ...], int] = {}
    for event in events:  # a duplicate delivery is ignored: the first arrival counts
        if event.sensor is not None:
            arrival.setdefault((event.sensor, event.stamp_ns, event.seq, 0), event.now_ns)
    for emitted_ns, frame in out:
        trigger_arrival = arrival[frame.items[frame.trigger_sensor]]
        assert emitted_ns - trigger_arrival <= _STEADY_DEADLINE_NS + poll_gap_ns
        _check_masks(sync, frame)
    stamps = [f.stamp_ns for _, f in out]
    assert stamps == sorted(set(stamps))
    stats = sync.stats()
    assert stats.pending_frames == 0
    for name, counters in stats.sensors.items():
        accounted = (
            counters.used
            + counters.duplicates
            + counters.dropped_late
            + counters.dropped_unmatched
            + counters.dropped_overflow
            + counters.buffered
        )
        assert accounted == counters.received, name


@settings(max_examples=40, deadline=None)
@given(_regular_streams(), st.data())
def test_a_clock_jump_back_starts_over_without_mixing_passes(
    events: list[_Event], data: st.DataObject
) -> None:
    """A bag played once up to a random point, then again from its start (sim time jumps)."""
    cuts = [i for i, e in enumerate(events) if e.now_ns >= 300 * MS]
    cut = data.draw(st.sampled_from(cuts))
    config = _property_config(jump_back_threshold_ns=100 * MS)
    sync = FrameSynchronizer(_SENSORS, config)
    first = [f for _, f in _feed(sync, events[: cut + 1], tag=1)]
    second = [f for _, f in _feed(sync, events, tag=2)]
    fresh = [f for _, f in _feed(FrameSynchronizer(_SENSORS, config), events, tag=2)]
    stats = sync.stats()
    assert (stats.clock_jumps_back, stats.resets) == (1, 0)
    for frame in first + second:  # every payload of a frame comes from its trigger's pass
        payloads = [*frame.items.values(), *frame.imu]
        if frame.sensor_present["gnss"]:
            payloads.append(frame.gnss)
        assert {p[3] for p in payloads} == {frame.items[frame.trigger_sensor][3]}
    # The frames pending at the jump go out first; then the second pass, as at start-up.
    released = [f for f in second if f.items[f.trigger_sensor][3] == 1]
    assert second[: len(released)] == released
    assert [_frame_key(f) for f in second[len(released) :]] == [_frame_key(f) for f in fresh]


def test_presence_does_not_depend_on_the_payload_value() -> None:
    sync = _sync(_rig(SyncSensor("imu", IMU), SyncSensor("gnss", GNSS)))
    for name in ("cam", "imu", "gnss"):
        sync.add(name, 0, None, 0)
    (frame,) = sync.add("lidar", 0, None, 1)
    assert all(frame.sensor_present.values())
    assert frame.items == {"lidar": None, "cam": None} and frame.imu == [None]


def test_bench_sync_reports_reference_rate_and_a_dead_lidar_fallback() -> None:
    from peftdml_ros.tools import bench

    args = bench._parser().parse_args(["sync", "--duration-s", "3", "--repeat", "1"])
    result = bench.TARGETS["sync"].run(args)
    rows = {row["scenario"]: row for row in result["scenarios"]}
    assert len(rows) == 4
    for label, row in rows.items():
        assert row["us_per_message_best"] > 0
        assert row["wait_ms_max"] <= result["deadline_ms"] + 1000 / result["poll_hz"], label
        if "LiDAR dead" in label:
            assert row["triggers"] == {"CAM_FRONT": row["frames"]}
        else:
            assert row["frames"] == 3 * 20  # one frame per LiDAR sweep
        # A healthy rig gives full frames (only the first, before every sensor was heard,
        # may lack one); the frame rule reuses camera and radar messages to fill them.
        assert row["full_frame_share"] >= 0.95, label
    full_rig = rows["nuScenes rig (14 inputs)"]
    assert full_rig["cameras_per_frame"] > 5.9 and full_rig["radars_per_frame"] > 4.9
    assert rows["nuScenes rig, CAM_BACK dead"]["cameras_per_frame"] < 5.0 + 1e-9
    text = bench.TARGETS["sync"].render(result)
    assert "us/msg" in text and "full" in text
    if not result["message_filters"]["available"]:  # no ROS install: nothing made up
        assert (
            "message_filters.ApproximateTimeSynchronizer (Python), 3 inputs: not available" in text
        )


class _FakeFilter:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def registerCallback(self, callback: Any, *args: Any) -> None:
        self.callbacks.append((callback, args))

    def signalMessage(self, msg: Any) -> None:
        for callback, args in self.callbacks:
            callback(msg, *args)


class _FakeApproximate(_FakeFilter):
    """Emits a set whenever every input holds a message (enough to exercise the bench)."""

    def __init__(self, inputs: list[_FakeFilter], queue_size: int, slop: float) -> None:
        super().__init__()
        self.queues: list[list[Any]] = [[] for _ in inputs]
        for i, source in enumerate(inputs):
            source.registerCallback(self._add, i)

    def _add(self, msg: Any, index: int) -> None:
        assert msg.header.stamp.sec >= 0  # a builtin_interfaces/Time, as real messages carry
        self.queues[index].append(msg)
        if all(self.queues):
            msgs = [queue.pop(0) for queue in self.queues]
            for callback, args in self.callbacks:
                callback(*msgs, *args)


def test_bench_sync_times_message_filters_where_it_imports(monkeypatch: Any) -> None:
    import sys
    import types

    from peftdml_ros.tools import bench

    # message_filters is not installable without a ROS install: a stand-in module exercises the
    # bench's "where it imports" path; its timings are never reported as a result.
    fake = types.ModuleType("message_filters")
    fake.SimpleFilter = _FakeFilter  # type: ignore[attr-defined]
    fake.ApproximateTimeSynchronizer = _FakeApproximate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "message_filters", fake)
    args = bench._parser().parse_args(["sync", "--duration-s", "2", "--repeat", "1"])
    result = bench.TARGETS["sync"].run(args)
    measured = result["message_filters"]
    assert measured["available"] and measured["inputs"] == 3 and measured["us_per_message"] > 0
    assert 10 < measured["sets_per_s"] < 14  # one set per message of the 12 Hz camera
    assert "measured now" in bench.TARGETS["sync"].render(result)


def test_to_frame_builds_the_detector_frame_in_sensor_order() -> None:
    import numpy as np

    from peftdml_ros.core.types import CameraImage, GnssFix, ImuSample, PointCloud

    sensors = [
        SyncSensor("lidar", L),
        SyncSensor("cam_b", C),
        SyncSensor("cam_a", C),
        SyncSensor("imu", IMU),
        SyncSensor("gnss", GNSS),
    ]
    sync = _sync(sensors)

    def camera(name: str) -> CameraImage:
        eye = np.eye(4, dtype=np.float32)
        return CameraImage(name, 0, np.zeros((2, 2, 3), np.uint8), eye[:3, :3], eye)

    sync.add("cam_a", 0, camera("cam_a"), 0)
    sync.add("cam_b", 0, camera("cam_b"), 0)
    sync.add("imu", 0, ImuSample(0, (0.0, 0.0, 0.0), (0.0, 0.0, 9.8)), 0)
    sync.add("gnss", 0, GnssFix(0, 1.0, 2.0, 3.0), 0)
    cloud = PointCloud("lidar", 0, np.zeros((1, 5), np.float32), ("x", "y", "z", "i", "dt_s"))
    (synced,) = sync.add("lidar", 0, cloud, 1)
    frame = sync.to_frame(synced)
    assert frame.lidar == (cloud,) and frame.radar == ()
    assert [c.sensor for c in frame.cameras] == ["cam_b", "cam_a"]
    assert len(frame.imu) == 1 and frame.gnss is not None
    assert frame.modality_mask().tolist() == [True, False, True, True, True]
    (bad,) = sync.add("lidar", 50 * MS, "not a cloud", 2) + sync.poll(200 * MS)
    with pytest.raises(TypeError, match="'lidar' \\(lidar\\) carried a str"):
        sync.to_frame(bad)


def test_restart_forgets_buffers_and_arrivals_as_at_start_up() -> None:
    # A managed node that is deactivated and activated again starts from new messages.
    sync = _sync(sensor_timeout_ns=200 * MS)
    sync.add("cam", 950 * MS, "c-old", 1_000 * MS)
    assert sync.add("lidar", 1_000 * MS, "l-old", 1_000 * MS) == []  # waits for the camera
    (held,) = sync.restart(1_010 * MS)
    assert held.items == {"lidar": "l-old", "cam": "c-old"}
    stats = sync.stats()
    assert stats.pending_frames == 0 and stats.sensors["cam"].buffered == 0
    # The camera heard 200 ms before is neither used nor waited for (without the restart it
    # would still count as alive and the frame would wait for it to the deadline).
    (frame,) = sync.add("lidar", 1_200 * MS, "l-new", 1_200 * MS)
    assert frame.items == {"lidar": "l-new"} and not frame.waited_to_deadline
