"""Peak picking of the detection decoder: numpy's 3 x 3 local maxima equal torch's max-pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peftdml_ros.core.model.decode import local_maxima


def _max_pool_peaks(heatmap: np.ndarray) -> np.ndarray:
    """The max-pool NMS formulation (what CenterPoint-style decoders write)."""
    tensor = torch.from_numpy(heatmap)
    pooled = F.max_pool2d(tensor, kernel_size=3, stride=1, padding=1)
    return torch.where(tensor == pooled, tensor, torch.zeros_like(tensor)).numpy()


@pytest.mark.parametrize("levels", [None, 4])
def test_local_maxima_equal_max_pool_peaks(levels: int | None) -> None:
    rng = np.random.default_rng(3)
    heatmap = rng.random((2, 10, 17, 23)).astype(np.float32)
    if levels is not None:  # plateaus and ties: every cell of a flat top is a peak in both
        heatmap = np.floor(heatmap * levels).astype(np.float32) / levels
    expected = _max_pool_peaks(heatmap)
    got = local_maxima(heatmap)
    assert got.dtype == np.float32 and got.shape == heatmap.shape
    np.testing.assert_array_equal(got, expected)
    assert 0 < np.count_nonzero(got) < heatmap.size


def test_local_maxima_keeps_border_peaks_and_drops_neighbours() -> None:
    heatmap = np.zeros((1, 1, 4, 5), np.float32)
    heatmap[0, 0, 0, 0] = 0.9  # a corner: padding must not hide it
    heatmap[0, 0, 0, 1] = 0.5  # beside a higher cell: not a peak
    heatmap[0, 0, 3, 4] = 0.7  # the opposite corner
    peaks = local_maxima(heatmap)
    assert peaks[0, 0, 0, 0] == np.float32(0.9) and peaks[0, 0, 3, 4] == np.float32(0.7)
    assert peaks[0, 0, 0, 1] == 0.0
