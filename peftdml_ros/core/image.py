"""ROS-free image decoding: CompressedImage (JPEG/PNG) and raw Image bytes to RGB uint8.

Functions take plain values or any object with the attribute names of sensor_msgs/msg/Image
(height, width, encoding, is_bigendian, step, data) and sensor_msgs/msg/CompressedImage (format,
data); nothing here imports ROS.

- `decode_compressed(data, reduction=...)` decodes JPEG/PNG to [H, W, 3] RGB uint8. A JPEG can be
  decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (cv2.IMREAD_REDUCED_COLOR_*), which is much
  cheaper than a full decode and a resize; `reduction_for(source_hw, target_hw)` picks the largest
  factor that still gives at least the model's input size, and `compressed_image_size(data)`
  reads the source size from the JPEG/PNG header without decoding.
- `read_image_header(data)` parses the JPEG start-of-frame / PNG IHDR header (and counts the
  JPEG's scans) without decoding; `check_image_size` refuses an empty image, one beyond a pixel
  limit and one whose size differs from its calibration. Call both before any decode: the
  decoder allocates what the header claims, so a 600-byte JPEG claiming 65000x65000 pixels costs
  gigabytes and seconds (a decompression bomb).
- `decode_raw(msg)` converts rgb8, bgr8, rgba8, bgra8 and mono8 images (any step padding).

A reduced decode gives ceil(W / f) x ceil(H / f) pixels; scale the intrinsics by the actual
output size over the source size, not by 1/f.
Corrupt or unsupported data raises an `ImageDecodeError` subclass (an `InputDataError`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import ConfigError, InputDataError

RgbImage = npt.NDArray[np.uint8]  # [H, W, 3] RGB

REDUCTIONS: tuple[int, ...] = (1, 2, 4, 8)
# EXIF orientation is ignored: the CameraInfo describes the sensor's pixel grid as sent, and a
# rotated decode would no longer match its intrinsics.
_REDUCED_FLAG: dict[int, int] = {
    1: cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_EOI = b"\xff\xd9"
# Some encoders pad after the end-of-image marker; look for it this far from the end.
_EOI_SEARCH_BYTES = 64
# Start-of-frame markers (baseline, progressive, ...) that carry the image size; not DHT/JPG/DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS = 0xDA  # start of scan: the entropy-coded data follows
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
# Scans a JPEG may have. Camera drivers write baseline JPEGs (one scan, or one per component);
# progressive encoders use about 10. libjpeg re-reads its whole coefficient buffer for every
# scan, so thousands of tiny scans make a small file a CPU bomb.
MAX_JPEG_SCANS = 100
# Color components libjpeg/OpenCV turn into RGB: grey, YCbCr/RGB, CMYK/YCCK.
_JPEG_COMPONENTS = (1, 3, 4)
# Raw encoding -> (channels, channel order to take for R, G, B).
_RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}


class ImageDecodeError(InputDataError):
    """Image bytes cannot be decoded."""


class CorruptImageError(ImageDecodeError):
    """Compressed bytes are truncated, corrupt or not JPEG/PNG."""


class UnsupportedEncodingError(ImageDecodeError):
    """A raw Image encoding (or CompressedImage format) this decoder does not handle."""


class ImageLayoutError(ImageDecodeError):
    """A raw Image's step or data length does not match its size."""


class EmptyImageError(ImageDecodeError):
    """An image header declares zero rows or columns."""


class ImageTooLargeError(ImageDecodeError):
    """An image declares more pixels than allowed (input.max_image_pixels): never decoded."""


class ImageSizeMismatchError(ImageDecodeError):
    """An image's size differs from the size its CameraInfo declares: never decoded."""


class TooManyScansError(ImageDecodeError):
    """A JPEG with more scans than MAX_JPEG_SCANS (a CPU bomb): never decoded."""


@dataclass(frozen=True)
class ImageHeader:
    """What a JPEG/PNG header says, read without decoding a pixel."""

    kind: str  # "jpeg" | "png"
    height: int
    width: int
    scans: int = 1  # JPEG start-of-scan segments (1 for PNG)

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.height, self.width


class RawImageLike(Protocol):
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def encoding(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def data(self) -> Any: ...


def _as_uint8(data: Any) -> npt.NDArray[np.uint8]:
    if isinstance(data, list | tuple):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_kind(data: Any) -> str:
    """'jpeg' or 'png' from the magic bytes; CorruptImageError for anything else."""
    head = bytes(_as_uint8(data)[:8])
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        return "png"
    raise CorruptImageError(
        f"image data starts with {head.hex()} which is neither JPEG nor PNG; check the topic's "
        "CompressedImage format (only jpeg and png are supported)"
    )


def check_format(fmt: str, data: Any) -> str:
    """Check a CompressedImage `format` string against the bytes; return 'jpeg' or 'png'.

    Accepts the forms image_transport writes ("jpeg", "png", "bgr8; jpeg compressed bgr8",
    "rgb8; png compressed rgb8") and an empty string (the bytes decide).
    """
    kind = image_kind(data)
    text = fmt.lower()
    named = {k for k, words in (("jpeg", ("jpeg", "jpg")), ("png", ("png",))) if _has(text, words)}
    if text.strip() and not named:
        raise UnsupportedEncodingError(
            f"CompressedImage format {fmt!r} is not JPEG or PNG; republish as jpeg or png"
        )
    if named and kind not in named:
        raise CorruptImageError(f"format says {fmt!r} but the bytes are {kind}")
    return kind


def _has(text: str, words: tuple[str, ...]) -> bool:
    return any(word in text for word in words)


def compressed_image_size(data: Any) -> tuple[int, int]:
    """(height, width) from a JPEG or PNG header, without decoding the pixels."""
    return read_image_header(data).size_hw


def read_image_header(data: Any) -> ImageHeader:
    """Parse the JPEG start-of-frame (and count the scans) or the PNG IHDR; CorruptImageError
    when the header is missing or malformed, UnsupportedEncodingError for component counts the
    decoder does not turn into RGB. Costs microseconds: marker segments are skipped by length,
    and scans are counted with one byte search (entropy-coded data stuffs every 0xFF with a
    0x00, so 0xFF 0xDA there is always a real start-of-scan marker)."""
    raw = data if isinstance(data, bytes) else bytes(_as_uint8(data))
    return _png_header(raw) if image_kind(raw) == "png" else _jpeg_header(raw)


def _png_header(raw: bytes) -> ImageHeader:
    # The IHDR chunk must come first: length 13, type, width, height (big-endian).
    if len(raw) < 24 or raw[12:16] != b"IHDR" or struct.unpack(">I", raw[8:12])[0] != 13:
        raise CorruptImageError("PNG has no IHDR chunk first; the image is truncated or corrupt")
    width, height = struct.unpack(">II", raw[16:24])
    return ImageHeader("png", int(height), int(width))


def _jpeg_header(raw: bytes) -> ImageHeader:
    # Walk the marker segments (a handful per file, not per pixel) to the first start of scan.
    pos = 2
    size: tuple[int, int] | None = None
    while pos + 2 <= len(raw):
        if raw[pos] != 0xFF:
            raise CorruptImageError(f"JPEG has no marker at byte {pos}; the header is corrupt")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            if marker == 0xD9:  # end of image before any scan
                break
            pos += 2
            continue
        if pos + 4 > len(raw):
            break
        length = struct.unpack(">H", raw[pos + 2 : pos + 4])[0]
        if length < 2:
            raise CorruptImageError(f"JPEG segment at byte {pos} has length {length}")
        if marker in _JPEG_SOF and size is None:
            size = _jpeg_frame_size(raw, pos)
        if marker == _JPEG_SOS:
            if size is None:
                break
            scans = raw.count(b"\xff\xda", pos)
            if scans > MAX_JPEG_SCANS:
                raise TooManyScansError(
                    f"JPEG has {scans} scans (limit {MAX_JPEG_SCANS}); a camera JPEG has "
                    "1 to about 10: refusing it before libjpeg spends seconds on it"
                )
            return ImageHeader("jpeg", size[0], size[1], scans)
        pos += 2 + length
    raise CorruptImageError(
        "JPEG has no start-of-frame header before its image data; the image is corrupt"
    )


def _jpeg_frame_size(raw: bytes, pos: int) -> tuple[int, int]:
    # SOF: length (2), precision (1), height (2), width (2), components (1).
    if pos + 10 > len(raw):
        raise CorruptImageError("JPEG start-of-frame header is truncated")
    height, width, components = struct.unpack(">HHB", raw[pos + 5 : pos + 10])
    if components not in _JPEG_COMPONENTS:
        raise UnsupportedEncodingError(
            f"JPEG has {components} color components; only grey, color and CMYK JPEGs "
            "(1, 3, 4) are supported"
        )
    return int(height), int(width)


def check_image_size(
    size_hw: tuple[int, int],
    *,
    max_pixels: int,
    expected_hw: tuple[int, int] | None = None,
) -> None:
    """Refuse, before decoding, an image of `size_hw` (from its header) that is empty, has more
    than `max_pixels` pixels, or differs from `expected_hw` (its CameraInfo size, when known)."""
    height, width = size_hw
    if height <= 0 or width <= 0:
        raise EmptyImageError(f"image header declares {width}x{height} pixels")
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"image header declares {width}x{height} = {height * width} pixels, more than "
            f"input.max_image_pixels = {max_pixels}; not decoded (a decompression bomb, or a "
            "camera larger than configured: then raise input.max_image_pixels)"
        )
    if expected_hw is not None and (height, width) != expected_hw:
        raise ImageSizeMismatchError(
            f"image is {width}x{height} but its CameraInfo says {expected_hw[1]}x"
            f"{expected_hw[0]} (after binning); not decoded: publish images at the calibrated "
            "size or fix the CameraInfo"
        )


def reduction_for(source_hw: tuple[int, int], target_hw: tuple[int, int] | None) -> int:
    """Largest factor in 1, 2, 4, 8 whose reduced image is still >= target in both axes."""
    if target_hw is None:
        return 1
    src_h, src_w = source_hw
    dst_h, dst_w = target_hw
    best = 1
    for factor in REDUCTIONS:
        if -(-src_h // factor) >= dst_h and -(-src_w // factor) >= dst_w:
            best = factor
    return best


def decode_compressed(data: Any, *, reduction: int = 1, fmt: str = "") -> RgbImage:
    """JPEG/PNG bytes -> [H', W', 3] RGB uint8, H' = ceil(H / reduction) for JPEG.

    reduction: 1, 2, 4 or 8 (see `reduction_for`). fmt: the CompressedImage `format` string,
    checked against the bytes when given.
    """
    flag = _REDUCED_FLAG.get(reduction)
    if flag is None:
        raise ConfigError(
            f"camera decode reduction must be one of {REDUCTIONS}, got {reduction}; fix "
            "input.camera_decode_reduction"
        )
    buffer = _as_uint8(data)
    kind = check_format(fmt, buffer)
    if kind == "jpeg" and _JPEG_EOI not in bytes(buffer[-_EOI_SEARCH_BYTES:]):
        # libjpeg decodes a truncated file into a grey-filled image with only a warning.
        raise CorruptImageError(
            f"JPEG of {buffer.size} bytes has no end-of-image marker; it is truncated"
        )
    bgr = cv2.imdecode(buffer, flag)
    if bgr is None:
        raise CorruptImageError(f"{kind.upper()} of {buffer.size} bytes could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # type: ignore[return-value]


def decode_compressed_for_input(
    data: Any, target_hw: tuple[int, int] | None, *, fmt: str = ""
) -> RgbImage:
    """Decode at the cheapest JPEG reduction that still covers the model's input size."""
    factor = reduction_for(compressed_image_size(data), target_hw)
    return decode_compressed(data, reduction=factor, fmt=fmt)


def decode_raw(msg: RawImageLike) -> RgbImage:
    """A raw sensor_msgs/Image body -> [H, W, 3] RGB uint8 (a view for unpadded rgb8)."""
    encoding = str(msg.encoding).lower()
    spec = _RAW_ENCODINGS.get(encoding)
    if spec is None:
        raise UnsupportedEncodingError(
            f"Image encoding {msg.encoding!r} is not supported; use one of "
            f"{sorted(_RAW_ENCODINGS)} (or publish CompressedImage jpeg/png)"
        )
    channels, order = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if step < width * channels:
        raise ImageLayoutError(
            f"{encoding} step {step} is smaller than width {width} x {channels} bytes"
        )
    buffer = _as_uint8(msg.data)
    if buffer.size != height * step:
        raise ImageLayoutError(
            f"Image data has {buffer.size} bytes but height {height} x step {step} = "
            f"{height * step}; the message is truncated or its header is wrong"
        )
    pixels = buffer.reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if order == (0, 1, 2) and channels == 3:
        return pixels
    return np.ascontiguousarray(pixels[:, :, list(order)])
