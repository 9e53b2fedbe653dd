"""The frame rule (core.frame_rule) against brute-force statements of each rule."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peftdml_ros.core import frame_rule
from peftdml_ros.core.frame_rule import MS


def test_nearest_within_slop_and_the_slop_boundary() -> None:
    stamps = [-30 * MS, 5 * MS, 40 * MS]
    assert frame_rule.nearest_index(stamps, 0, 10 * MS) == 1
    assert frame_rule.nearest_index(stamps, 20 * MS, 14 * MS) is None  # 15 and 20 away
    assert frame_rule.nearest_index(stamps, 20 * MS, 15 * MS) == 1  # slop is inclusive
    assert frame_rule.nearest_index(stamps, 100 * MS, 59 * MS) is None
    assert frame_rule.nearest_index(stamps, 100 * MS, 60 * MS) == 2
    assert frame_rule.nearest_index([], 0, 10 * MS) is None


def test_ties_go_to_the_earlier_message_and_equal_stamps_to_the_first() -> None:
    assert frame_rule.nearest_index([-10, 10], 0, 50) == 0
    assert frame_rule.nearest_index([-10, 9], 0, 50) == 1
    assert frame_rule.nearest_index([3, 3, 3, 8], 4, 50) == 0
    assert frame_rule.nearest_index([0, 7, 7], 9, 50) == 1
    assert frame_rule.nearest_index([0, 7, 7], 7, 50) == 1


def test_key_reads_stamps_from_records() -> None:
    records = [{"t": 0}, {"t": 60}, {"t": 100}]
    assert frame_rule.nearest_index(records, 75, 30, key=lambda r: r["t"]) == 1
    assert frame_rule.gnss_index(records, 75, 30, 1000, key=lambda r: r["t"]) == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-200, 200), max_size=12).map(sorted),
    st.integers(-250, 250),
    st.integers(0, 120),
)
def test_nearest_index_is_the_brute_force_argmin(stamps: list[int], ref: int, slop: int) -> None:
    candidates = [(abs(s - ref), s > ref, i) for i, s in enumerate(stamps) if abs(s - ref) <= slop]
    # Nearest first; at equal distance the earlier (stamp before the frame, then lower index).
    expected = min(candidates)[2] if candidates else None
    assert frame_rule.nearest_index(stamps, ref, slop) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 100), max_size=20).map(sorted),
    st.integers(0, 100),
    st.one_of(st.none(), st.integers(0, 100)),
    st.integers(0, 60),
)
def test_imu_slice_is_the_half_open_window(
    stamps: list[int], ref: int, previous: int | None, window: int
) -> None:
    low = ref - window if previous is None else max(ref - window, previous)
    assert stamps[frame_rule.imu_slice(stamps, ref, previous, window)] == [
        s for s in stamps if low < s <= ref
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 100), max_size=12).map(sorted),
    st.integers(0, 100),
    st.integers(0, 20),
    st.integers(0, 50),
)
def test_gnss_index_is_the_newest_fix_in_the_window(
    stamps: list[int], ref: int, slop: int, staleness: int
) -> None:
    inside = [i for i, s in enumerate(stamps) if ref - staleness <= s <= ref + slop]
    newest = max(inside, key=lambda i: (stamps[i], i)) if inside else None
    assert frame_rule.gnss_index(stamps, ref, slop, staleness) == newest


def test_sweep_dt_is_seconds_from_the_sweep_to_the_frame() -> None:
    assert frame_rule.sweep_dt_s(1_000_050_000_000, 1_000_000_000_000) == 0.05
    assert frame_rule.sweep_dt_s(0, 12_345_000) == -0.012345


def test_property_tests_draw_the_same_examples_on_every_run() -> None:
    # test/conftest.py's profile; each test's own @settings inherits it.
    profile = settings.default
    assert profile is not None and profile.derandomize and profile.database is None
    assert profile.deadline is None
    assert settings(max_examples=5).derandomize
