"""Image decoding: JPEG/PNG (full and reduced), raw encodings with step padding, corrupt data."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from peftdml_ros.core import image as im
from peftdml_ros.core.errors import InputDataError


def _rgb_test_image(height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth RGB image (JPEG-friendly): red ramps along x, green along y, blue constant."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    rgb[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    rgb[..., 2] = 200
    return rgb


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def test_png_decodes_losslessly_to_rgb() -> None:
    rgb = _rgb_test_image()
    out = im.decode_compressed(_encode(rgb, ".png"), fmt="png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_decodes_to_rgb_channel_order() -> None:
    rgb = _rgb_test_image()
    out = im.decode_compressed(_encode(rgb, ".jpg"), fmt="rgb8; jpeg compressed bgr8")
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 4  # lossy, but channels not swapped


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_reduced_jpeg_decode_size_and_content(factor: int) -> None:
    rgb = _rgb_test_image(90, 160)
    out = im.decode_compressed(_encode(rgb, ".jpg"), reduction=factor)
    assert out.shape == (-(-90 // factor), -(-160 // factor), 3)
    small = cv2.resize(rgb, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - small).mean() < 8


def test_header_size_without_decoding() -> None:
    rgb = _rgb_test_image(30, 70)
    assert im.compressed_image_size(_encode(rgb, ".jpg")) == (30, 70)
    assert im.compressed_image_size(_encode(rgb, ".png")) == (30, 70)


@pytest.mark.parametrize(
    ("source_hw", "target_hw", "factor"),
    [
        ((900, 1600), (256, 704), 2),
        ((900, 1600), (112, 200), 8),
        ((900, 1600), (113, 200), 8),  # ceil(900 / 8) = 113
        ((900, 1600), (114, 200), 4),
        ((900, 1600), (900, 1600), 1),
        ((900, 1600), None, 1),
    ],
)
def test_reduction_for(
    source_hw: tuple[int, int], target_hw: tuple[int, int] | None, factor: int
) -> None:
    assert im.reduction_for(source_hw, target_hw) == factor


def test_decode_for_input_picks_the_reduction_from_the_header() -> None:
    jpeg = _encode(_rgb_test_image(96, 160), ".jpg")
    assert im.decode_compressed_for_input(jpeg, (24, 40)).shape == (24, 40, 3)
    assert im.decode_compressed_for_input(jpeg, (25, 40)).shape == (48, 80, 3)


def test_corrupt_compressed_data_raises() -> None:
    jpeg = _encode(_rgb_test_image(), ".jpg")
    png = _encode(_rgb_test_image(), ".png")
    with pytest.raises(im.CorruptImageError, match="truncated"):
        im.decode_compressed(jpeg[: len(jpeg) // 2])
    with pytest.raises(im.CorruptImageError, match="neither JPEG nor PNG"):
        im.decode_compressed(b"not an image at all")
    with pytest.raises(im.CorruptImageError, match="could not be decoded"):
        im.decode_compressed(png[: len(png) // 2])
    with pytest.raises(im.CorruptImageError, match="format says 'png' but the bytes are jpeg"):
        im.decode_compressed(jpeg, fmt="png")
    with pytest.raises(im.UnsupportedEncodingError, match="'tiff' is not JPEG or PNG"):
        im.decode_compressed(jpeg, fmt="tiff")
    with pytest.raises(InputDataError):
        im.decode_compressed(b"")


def _raw(encoding: str, pixels: np.ndarray, pad: int) -> SimpleNamespace:
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    data = np.concatenate([row, np.full((height, pad), 7, np.uint8)], axis=1)
    return SimpleNamespace(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=False,
        step=row.shape[1] + pad,
        data=data.tobytes(),
    )


@pytest.mark.parametrize("pad", [0, 5])
def test_raw_encodings_with_step_padding(pad: int) -> None:
    rgb = _rgb_test_image(5, 6)
    alpha = np.full((5, 6, 1), 255, np.uint8)
    bgr = rgb[..., ::-1]
    cases = {
        "rgb8": rgb,
        "bgr8": bgr,
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([bgr, alpha], axis=2),
    }
    for encoding, pixels in cases.items():
        out = im.decode_raw(_raw(encoding, np.ascontiguousarray(pixels), pad))
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)
    mono = rgb[..., 1]
    out = im.decode_raw(_raw("mono8", np.ascontiguousarray(mono), pad))
    np.testing.assert_array_equal(out, np.repeat(mono[..., None], 3, axis=2))


def test_raw_errors_name_the_problem() -> None:
    msg = _raw("rgb8", _rgb_test_image(4, 4), 0)
    with pytest.raises(im.UnsupportedEncodingError, match="'16UC1' is not supported"):
        im.decode_raw(SimpleNamespace(**{**vars(msg), "encoding": "16UC1"}))
    with pytest.raises(im.ImageLayoutError, match="step 8 is smaller than width 4 x 3"):
        im.decode_raw(SimpleNamespace(**{**vars(msg), "step": 8}))
    with pytest.raises(im.ImageLayoutError, match="truncated"):
        im.decode_raw(SimpleNamespace(**{**vars(msg), "data": msg.data[:-1]}))


def test_exif_orientation_is_ignored_so_pixels_match_the_camera_info() -> None:
    import io

    from PIL import Image

    from peftdml_ros.core.image import decode_compressed

    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :8] = 255
    picture = Image.fromarray(pixels)
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif.tobytes())
    from pathlib import Path

    from peftdml_ros.data.nuscenes_reader import decode_jpeg

    for reduction in (1, 2):
        decoded = decode_compressed(buffer.getvalue(), reduction=reduction)
        assert decoded.shape == (16 // reduction, 32 // reduction, 3)
        # Training reads dataset JPEGs through the same decode: the same pixels.
        from_dataset = decode_jpeg(buffer.getvalue(), reduction, Path("x.jpg"))
        assert np.array_equal(from_dataset, decoded)
