"""A minimal PNG writer (8-bit RGB, no interlace) built on numpy, ``zlib`` and ``struct``.

bqplot's ``Figure.save_png`` sends a message to the browser front end, which
renders the figure and downloads it there, so it cannot write a file from a
headless kernel. This writer
needs no browser and no plotting library.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Largest ``target`` of :func:`upscale` in pixels. 8192 x 8192 RGB is 192 MiB, and
#: encoding makes about two more copies of it.
MAX_PNG_SIZE = 8192


def _chunk(kind: bytes, data: bytes) -> bytes:
    checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode a ``(height, width, 3)`` uint8 array as PNG bytes.

    Raises
    ------
    ValueError
        When ``rgb`` is not a non-empty ``(height, width, 3)`` uint8 array.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(
            f"Expected a non-empty (height, width, 3) uint8 array, got shape {rgb.shape} "
            f"and dtype {rgb.dtype}."
        )
    height, width, _ = rgb.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # Each scanline starts with filter type 0 (None).
    scanlines = np.concatenate(
        [np.zeros((height, 1), dtype=np.uint8), rgb.reshape(height, width * 3)], axis=1
    )
    compressed = zlib.compress(scanlines.tobytes(), 6)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", compressed) + _chunk(b"IEND", b"")


def upscale(rgb: np.ndarray, target: int = 512) -> np.ndarray:
    """Repeat each cell by the same whole factor so the longer side is about ``target`` pixels.

    The factor is ``target // longer side``, at least 1, so the longer side
    is at most ``target`` pixels unless the array itself is longer.

    Raises
    ------
    ValueError
        When ``target`` is not an int from 1 to ``MAX_PNG_SIZE``.
    """
    if (
        isinstance(target, bool)
        or not isinstance(target, int | np.integer)
        or not 1 <= target <= MAX_PNG_SIZE
    ):
        raise ValueError(
            f"size must be an int from 1 to {MAX_PNG_SIZE} pixels, got {target!r}."
        )
    factor = max(1, int(target) // max(rgb.shape[:2]))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write ``rgb`` to ``path`` as PNG and return the path."""
    path = Path(path)
    path.write_bytes(png_bytes(rgb))
    return path


def read_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes written by :func:`png_bytes` back to ``(height, width, 3)`` uint8.

    Only the subset this module writes (8-bit RGB, filter type 0) is read.
    """
    if not data.startswith(_SIGNATURE):
        raise ValueError("Not a PNG file: the signature is missing.")
    position = len(_SIGNATURE)
    width = height = 0
    payload = b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, color_type = struct.unpack(">IIBB", body[:10])
            if (depth, color_type) != (8, 2):
                raise ValueError(
                    f"Only 8-bit RGB PNG is supported, got depth {depth}, "
                    f"colour type {color_type}."
                )
        elif kind == b"IDAT":
            payload += body
    rows = np.frombuffer(zlib.decompress(payload), dtype=np.uint8).reshape(height, 1 + 3 * width)
    if np.any(rows[:, 0] != 0):
        raise ValueError("Only PNG filter type 0 (None) is supported.")
    return rows[:, 1:].reshape(height, width, 3)
