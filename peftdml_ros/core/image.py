"""ROS-free image decoding: CompressedImage (JPEG/PNG) and raw Image bytes to RGB uint8.

Functions take plain values or any object with the attribute names of sensor_msgs/msg/Image
(height, width, encoding, is_bigendian, step, data) and sensor_msgs/msg/CompressedImage (format,
data); nothing here imports ROS.

- `decode_compressed(data, reduction=...)` decodes JPEG/PNG to [H, W, 3] RGB uint8. A JPEG can be
  decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (cv2.IMREAD_REDUCED_COLOR_*), which is much
  cheaper than a full decode and a resize; `reduction_for(source_hw, target_hw)` picks the largest
  factor that still gives at least the model's input size, and `compressed_image_size(data)`
  reads the source size from the JPEG/PNG header without decoding.
- `decode_raw(msg)` converts rgb8, bgr8, rgba8, bgra8 and mono8 images (any step padding).

A reduced decode gives ceil(W / f) x ceil(H / f) pixels; scale the intrinsics by the actual
output size over the source size, not by 1/f.
Corrupt or unsupported data raises an `ImageDecodeError` subclass (an `InputDataError`).
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from peftdml_ros.core.errors import ConfigError, InputDataError

RgbImage = npt.NDArray[np.uint8]  # [H, W, 3] RGB

REDUCTIONS: tuple[int, ...] = (1, 2, 4, 8)
_REDUCED_FLAG: dict[int, int] = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_EOI = b"\xff\xd9"
# Some encoders pad after the end-of-image marker; look for it this far from the end.
_EOI_SEARCH_BYTES = 64
# Start-of-frame markers (baseline, progressive, ...) that carry the image size; not DHT/JPG/DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
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
    raw = bytes(_as_uint8(data)[:65536]) if image_kind(data) == "jpeg" else bytes(_as_uint8(data))
    if raw.startswith(_PNG_MAGIC):
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            raise CorruptImageError("PNG has no IHDR chunk; the image is truncated or corrupt")
        width, height = struct.unpack(">II", raw[16:24])
        return int(height), int(width)
    return _jpeg_size(raw)


def _jpeg_size(raw: bytes) -> tuple[int, int]:
    # Walk the marker segments (a handful per file, not per pixel) to the start-of-frame one.
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            break
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", raw[pos + 2 : pos + 4])[0]
        if marker in _JPEG_SOF and pos + 9 <= len(raw):
            height, width = struct.unpack(">HH", raw[pos + 5 : pos + 9])
            return int(height), int(width)
        pos += 2 + length
    raise CorruptImageError("JPEG has no readable start-of-frame header; the image is corrupt")


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
