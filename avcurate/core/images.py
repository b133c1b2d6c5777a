"""Frames as sent to models: JPEG bytes (FFmpeg's mjpeg encoder, no imaging library) and
the content hash of their raw pixels. Shared by the media cache, which keeps frames in
this form, and the request parts, which send them."""

from __future__ import annotations

import hashlib
import threading
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from avcurate.core.pyav import pyav

if TYPE_CHECKING:
    from av import CodecContext


def pixels_digest(pixels: np.ndarray) -> str:
    """The sha256 of a frame's raw pixels: an image part's content hash in request keys."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


_encoders = threading.local()  # per thread: an open mjpeg encoder per (width, height, quality)


def _jpeg_encoder(width: int, height: int, quality: int) -> CodecContext:
    """An open mjpeg encoder, reused: opening one (or a muxer) per frame cost ~0.9 ms of the
    ~1 ms a 160x120 frame took; a reused one takes ~0.2 ms and gives the same bytes."""
    cache = _encoders.__dict__.setdefault("by_size", {})
    key = (width, height, quality)
    if key not in cache:
        codec = pyav().CodecContext.create("mjpeg", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
        codec.time_base = Fraction(1, 25)
        codec.options = {"qmin": str(quality), "qmax": str(quality)}
        codec.open()
        cache[key] = codec
    return cache[key]


def encode_jpeg(pixels: np.ndarray, quality: int = 4) -> bytes:
    """JPEG bytes of an RGB frame, with FFmpeg's mjpeg encoder (no imaging library needed).
    Odd sizes lose their last row/column (4:2:0 chroma needs even sizes)."""
    h, w = pixels.shape[:2]
    frame = pyav().VideoFrame.from_ndarray(np.ascontiguousarray(pixels[: h - h % 2, : w - w % 2]),
                                       format="rgb24")
    packets = _jpeg_encoder(w - w % 2, h - h % 2, quality).encode(frame)
    if len(packets) != 1:  # mjpeg is intra-only, one packet per frame; never seen otherwise
        raise RuntimeError(f"mjpeg encoder returned {len(packets)} packets for one frame")
    return bytes(packets[0])
