"""The ground as a semantic raster (0.1 m cells, the nuScenes map resolution) and the map mask."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from peftdml_ros.data.synth.geometry import F64
from peftdml_ros.data.synth.world import (
    CURB_M,
    MAP_MARGIN_M,
    ROAD_HALF_WIDTH_M,
    SIDEWALK_OUTER_M,
    Road,
)

MAP_RESOLUTION_M = 0.1  # the devkit assumes map PNGs at 0.1 m per pixel

TERRAIN, ASPHALT, MARKING, SIDEWALK, STRIP = 0, 1, 2, 3, 4
# Per surface class: camera colour (BGR) and LiDAR reflectivity (0..1).
SURFACE_BGR = np.array(
    [[70, 115, 85], [82, 82, 86], [225, 228, 230], [150, 155, 160], [96, 96, 100]], dtype=np.uint8
)
SURFACE_REFLECTIVITY = np.array([0.25, 0.1, 0.8, 0.3, 0.12])


CLASS_BITS = 3  # a raster cell: surface class in the low 3 bits, texture shade (0..31) above
SHADES = 32


@dataclass(frozen=True)
class Ground:
    """codes [H, W] uint8: surface class (low 3 bits) and a texture shade (high 5 bits) per
    0.1 m cell; pixel (row, col) covers global x = col * res, y = (H - row) * res, as the
    devkit's MapMask maps it."""

    codes: npt.NDArray[np.uint8]

    @property
    def height_px(self) -> int:
        return int(self.codes.shape[0])

    def lookup_codes(self, x_m: F64, y_m: F64) -> npt.NDArray[np.uint8]:
        """Raster codes at global points (TERRAIN, mid shade outside the raster)."""
        col = np.round(x_m / MAP_RESOLUTION_M).astype(np.int64)
        row = np.round(self.height_px - y_m / MAP_RESOLUTION_M).astype(np.int64)
        h, w = self.codes.shape
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        out = np.full(x_m.shape, TERRAIN | (SHADES // 2) << CLASS_BITS, dtype=np.uint8)
        out[inside] = self.codes[row[inside], col[inside]]
        return out

    def lookup(self, x_m: F64, y_m: F64) -> npt.NDArray[np.uint8]:
        """Surface class at global points (TERRAIN outside the raster)."""
        return self.lookup_codes(x_m, y_m) & np.uint8((1 << CLASS_BITS) - 1)

    def map_mask(self) -> npt.NDArray[np.uint8]:
        """[H, W] 255 on drivable surface and sidewalks, 0 elsewhere (nuScenes semantic prior)."""
        classes = self.codes & np.uint8((1 << CLASS_BITS) - 1)
        return np.where(classes != TERRAIN, 255, 0).astype(np.uint8)


def surface_palette() -> npt.NDArray[np.float32]:
    """[256, 3] BGR of every raster code: the class colour times its shade (0.85..1.15)."""
    codes = np.arange(256)
    classes = np.minimum(codes & ((1 << CLASS_BITS) - 1), len(SURFACE_BGR) - 1)
    shade = 0.85 + 0.3 * (codes >> CLASS_BITS) / (SHADES - 1)
    palette: npt.NDArray[np.float32] = (
        SURFACE_BGR[classes].astype(np.float64) * shade[:, None]
    ).astype(np.float32)
    return palette


def _to_px(points_m: F64, height_px: int) -> npt.NDArray[np.int32]:
    """Global points [K, 2] -> pixel coordinates with 2 fractional bits (cv2 `shift=2`)."""
    col = points_m[:, 0] / MAP_RESOLUTION_M
    row = height_px - points_m[:, 1] / MAP_RESOLUTION_M
    out: npt.NDArray[np.int32] = np.round(np.stack([col, row], axis=1) * 4.0).astype(np.int32)
    return out


def _fill_band(
    image: npt.NDArray[np.uint8], road: Road, d_a: float, d_b: float, value: int
) -> None:
    left = road.edge_polyline(d_a)
    right = road.edge_polyline(d_b)[::-1]
    polygon = _to_px(np.concatenate([left, right]), image.shape[0])
    cv2.fillPoly(image, [polygon], (float(value),), lineType=cv2.LINE_8, shift=2)


TEXTURE_TILE_PX = 512  # the texture repeats every 51.2 m


def _texture(shape: tuple[int, int], seed: int) -> npt.NDArray[np.uint8]:
    """[H, W] shades 0..31: blotches of ~2 m plus fine grain, fixed to the ground (a tile of
    51.2 m repeated, which is cheaper than texturing the whole map)."""
    rng = np.random.default_rng(seed)
    tile = TEXTURE_TILE_PX
    coarse = rng.random((tile // 20, tile // 20)).astype(np.float32)
    # Wrap the coarse grid so the upsampled tile joins seamlessly with its neighbours.
    wrapped = np.pad(coarse, ((0, 1), (0, 1)), mode="wrap")
    step = tile / coarse.shape[0]
    smooth = cv2.resize(wrapped, (tile + round(step), tile + round(step)))[:tile, :tile]
    grain = rng.random((tile, tile), dtype=np.float32)
    shade = np.clip((0.75 * smooth + 0.25 * grain) * SHADES, 0, SHADES - 1).astype(np.uint8)
    reps = (shape[0] // tile + 1, shape[1] // tile + 1)
    return np.tile(shade, reps)[: shape[0], : shape[1]]


def build_ground(road: Road, seed: int = 0) -> Ground:
    """Rasterize sidewalks, the curb strips, the lanes and their markings, with a texture."""
    width_m = float(road.xy_m[:, 0].max()) + MAP_MARGIN_M
    height_m = float(road.xy_m[:, 1].max()) + MAP_MARGIN_M
    shape = (int(np.ceil(height_m / MAP_RESOLUTION_M)), int(np.ceil(width_m / MAP_RESOLUTION_M)))
    classes = np.zeros(shape, dtype=np.uint8)
    _fill_band(classes, road, -SIDEWALK_OUTER_M, SIDEWALK_OUTER_M, SIDEWALK)
    _fill_band(classes, road, -CURB_M, CURB_M, STRIP)
    _fill_band(classes, road, -ROAD_HALF_WIDTH_M, ROAD_HALF_WIDTH_M, ASPHALT)
    height_px = shape[0]
    for d in (-ROAD_HALF_WIDTH_M + 0.15, ROAD_HALF_WIDTH_M - 0.15):
        line = _to_px(road.edge_polyline(d), height_px)
        cv2.polylines(classes, [line], False, (float(MARKING),), thickness=2, shift=2)
    # Dashed center line: 3 m dashes every 9 m.
    dashes = [
        _to_px(road.edge_polyline(0.0, s, s + 3.0), height_px)
        for s in np.arange(0.0, road.length_m - 3.0, 9.0)
    ]
    cv2.polylines(classes, dashes, False, (float(MARKING),), thickness=2, shift=2)
    codes = (classes | (_texture(shape, seed) << CLASS_BITS)).astype(np.uint8)
    return Ground(codes=codes)
