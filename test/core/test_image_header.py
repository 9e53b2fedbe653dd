"""Image headers read without decoding: sizes, bombs refused before the decoder sees them."""

from __future__ import annotations

import struct
import time

import cv2
import numpy as np
import pytest
from hostile_images import jpeg_claiming, png_bomb, progressive_scan_bomb, small_jpeg
from hypothesis import given
from hypothesis import strategies as st

from peftdml_ros.core import image as im
from peftdml_ros.core.errors import InputDataError

LIMIT = 4096 * 3072


def _png(height: int, width: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return bytes(encoded.tobytes())


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grey", "png"])
def test_header_gives_the_encoded_size(kind: str) -> None:
    data = {
        "baseline": lambda: small_jpeg(30, 70),
        "progressive": lambda: small_jpeg(30, 70, IMWRITE_JPEG_PROGRESSIVE=1),
        "grey": lambda: bytes(cv2.imencode(".jpg", np.zeros((30, 70), np.uint8))[1].tobytes()),
        "png": lambda: _png(30, 70),
    }[kind]()
    header = im.read_image_header(data)
    assert header.size_hw == (30, 70) and header.kind == ("png" if kind == "png" else "jpeg")
    assert (header.scans > 1) == (kind == "progressive")
    assert im.compressed_image_size(data) == (30, 70)


def test_sof_after_a_large_app_segment_is_found() -> None:
    # An EXIF/ICC payload of several 64 kB segments before the frame header (cameras add them).
    data = small_jpeg(30, 70)
    app = b"".join(b"\xff\xe2" + struct.pack(">H", 65535) + bytes(65533) for _ in range(3))
    assert im.read_image_header(data[:2] + app + data[2:]).size_hw == (30, 70)


def test_bombs_are_measured_from_their_header_in_microseconds() -> None:
    jpeg = jpeg_claiming(65000, 65000)
    png = png_bomb(20000, 20000)
    assert len(jpeg) < 1000 and len(png) < 2_000_000
    start = time.perf_counter()
    sizes = [im.read_image_header(jpeg).size_hw, im.read_image_header(png).size_hw]
    assert time.perf_counter() - start < 0.5  # generous: it is microseconds
    assert sizes == [(65000, 65000), (20000, 20000)]
    for size in sizes:
        with pytest.raises(im.ImageTooLargeError, match="max_image_pixels"):
            im.check_image_size(size, max_pixels=LIMIT)


def test_the_png_bomb_is_a_real_png() -> None:
    # The same construction, small enough to decode here: what the header says is what it holds.
    out = im.decode_compressed(png_bomb(300, 500), fmt="png")
    assert out.shape == (300, 500, 3) and not out.any()


def test_scan_bomb_is_refused_and_ordinary_progressive_is_not() -> None:
    assert im.read_image_header(progressive_scan_bomb(64, 5)).scans <= im.MAX_JPEG_SCANS
    with pytest.raises(im.TooManyScansError, match="scans"):
        im.read_image_header(progressive_scan_bomb(64, im.MAX_JPEG_SCANS + 1))


def test_size_checks_name_their_reason() -> None:
    im.check_image_size((3072, 4096), max_pixels=LIMIT, expected_hw=(3072, 4096))
    with pytest.raises(im.ImageTooLargeError):
        im.check_image_size((3072, 4097), max_pixels=LIMIT)
    with pytest.raises(im.ImageSizeMismatchError, match="CameraInfo says 1600x900"):
        im.check_image_size((900, 1601), max_pixels=LIMIT, expected_hw=(900, 1600))
    with pytest.raises(im.EmptyImageError):
        im.check_image_size((0, 1600), max_pixels=LIMIT)  # a JPEG whose height is in a DNL


def test_malformed_headers_are_corrupt() -> None:
    jpeg = small_jpeg(30, 70)
    with pytest.raises(im.CorruptImageError):
        im.read_image_header(jpeg[:20])  # cut inside the header
    with pytest.raises(im.CorruptImageError):
        im.read_image_header(b"\xff\xd8\xff\xd9")  # no frame at all
    with pytest.raises(im.CorruptImageError):
        im.read_image_header(_png(4, 4)[:20])
    five = bytearray(jpeg)
    sof = five.index(b"\xff\xc0")
    five[sof + 9] = 5  # five color components
    with pytest.raises(im.UnsupportedEncodingError, match="5 color components"):
        im.read_image_header(bytes(five))


@given(st.data())
def test_any_mutated_header_gives_a_header_or_a_named_error(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([small_jpeg(16, 24), _png(16, 24)]), label="image")
    head = bytearray(base[:400])
    for _ in range(data.draw(st.integers(0, 8), label="mutations")):
        position = data.draw(st.integers(0, len(head) - 1), label="position")
        head[position] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(head)), label="cut")
    try:
        header = im.read_image_header(bytes(head[:cut]) + base[400:])
    except InputDataError:
        return
    assert header.kind in ("jpeg", "png") and header.height >= 0 and header.width >= 0
    assert header.scans >= 1
