"""Hostile images for tests: decompression bombs and a scan bomb, built in milliseconds.

- `jpeg_claiming(h, w)`: a ~630-byte baseline JPEG whose start-of-frame claims h x w pixels;
  libjpeg allocates for the claim and fills what the data lacks with grey (65000 x 65000 at
  1/4 scale: about 1.5 GB and seconds).
- `png_bomb(h, w)`: a real RGB PNG of h x w black pixels whose zlib stream repeats one
  byte-aligned deflate block (a full flush restarts the dictionary, so every block of zeros
  compresses to the same bytes): 20000 x 20000 (1.2 GB decoded) is about 1.2 MB.
- `progressive_scan_bomb(side, scans)`: a progressive JPEG with `scans` extra empty scans;
  libjpeg re-reads the coefficient buffer for each (3000 x 3000 with 20000 scans: ~250 kB,
  over 15 s to decode).

Imported by tests under test/ (pytest puts this directory on sys.path with the root conftest).
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

_BLOCK = 1 << 20  # bytes of zeros per repeated deflate block


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(position, marker, length) of the JPEG marker segments before the first scan's data."""
    out = []
    pos = 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((pos, marker, length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def small_jpeg(height: int = 8, width: int = 8, **params: int) -> bytes:
    flags = [v for item in params.items() for v in (getattr(cv2, item[0]), item[1])]
    ok, encoded = cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8), flags)
    assert ok
    return bytes(encoded.tobytes())


def jpeg_claiming(height: int, width: int) -> bytes:
    """An 8x8 baseline JPEG whose SOF0 says height x width."""
    data = bytearray(small_jpeg())
    for pos, marker, _ in _segments(bytes(data)):
        if marker == 0xC0:
            data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError("OpenCV wrote no SOF0")


def png_bomb(height: int, width: int) -> bytes:
    """A valid h x w RGB8 PNG of zeros, compressed about 1000:1."""
    total = height * (1 + 3 * width)  # a filter byte and the pixels per row, all zero
    comp = zlib.compressobj(9)
    full, rest = divmod(total, _BLOCK)
    parts = []  # the first output carries the zlib header
    if full:
        parts.append(comp.compress(bytes(_BLOCK)) + comp.flush(zlib.Z_FULL_FLUSH))
    if full > 1:
        block = comp.compress(bytes(_BLOCK)) + comp.flush(zlib.Z_FULL_FLUSH)
        parts += [block] * (full - 1)
    if rest:
        parts.append(comp.compress(bytes(rest)) + comp.flush(zlib.Z_FULL_FLUSH))
    # The final empty block, then Adler-32 of `total` zeros: a = 1, b = total (mod 65521).
    adler = ((total % 65521) << 16) | 1
    idat = b"".join(parts) + comp.flush(zlib.Z_FINISH)[:-4] + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND")


def _chunk(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def progressive_scan_bomb(side: int, scans: int) -> bytes:
    """A side x side progressive JPEG followed by `scans` copies of its last scan header with
    no data (each one more pass of libjpeg over the whole image)."""
    data = small_jpeg(side, side, IMWRITE_JPEG_PROGRESSIVE=1)
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    length = struct.unpack(">H", data[starts[-1] + 2 : starts[-1] + 4])[0]
    header = data[starts[-1] : starts[-1] + 2 + length]
    return data[:-2] + header * scans + b"\xff\xd9"
