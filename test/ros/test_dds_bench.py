"""`peftdml bench dds` really moves clouds between two processes and counts them."""

from __future__ import annotations

from peftdml_ros.ros import dds_bench


def test_small_reliable_clouds_all_arrive_in_the_other_process() -> None:
    result = dds_bench.run_once(
        messages=5, points=2_000, rate_hz=20.0, reliable=True, profile=dds_bench.default_profile()
    )
    assert result.sent == 5
    assert result.received == 5
    assert result.message_mb == 0.04
