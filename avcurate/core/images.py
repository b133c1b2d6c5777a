"""Frames as sent to models: JPEG bytes (FFmpeg's mjpeg encoder, no imaging library) and
the content hash of their raw pixels. Shared by the media cache, which keeps frames in
this form, and the request parts, which send them."""

from __future__ import annotations

import hashlib
import math
import threading
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from avcurate.core.pyav import pyav

if TYPE_CHECKING:
    from av import CodecContext


# the start-of-frame markers, which carry the size (not DHT C4, JPG C8, DAC CC)
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG, from its frame header: the markers before the image data
    are walked, nothing is decoded. (A few lines, not an imaging library for one header.)"""
    at = 2  # past SOI
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _SOF:
            return (int.from_bytes(data[at + 7:at + 9], "big"),
                    int.from_bytes(data[at + 5:at + 7], "big"))
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    raise ValueError("not a JPEG with a frame header")


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


FULL_HD_PIXELS = 1920 * 1080  # the frame stages' default cap, and the reward cuts'


def fit_size(width: int, height: int, max_pixels: int, step: int = 2) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, to at most `max_pixels` pixels, each side a
    multiple of `step` (2: as 4:2:0 JPEG needs; 28: a Qwen vision encoder's merged patch);
    as it is when it fits or `max_pixels` is 0 (no cap)."""
    if not max_pixels or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return (max(step, int(width * scale) // step * step),
            max(step, int(height * scale) // step * step))


def shrink(frames: np.ndarray, max_pixels: int) -> np.ndarray:
    """Frames [n, H, W, 3] scaled down to at most `max_pixels` pixels each (`fit_size`);
    the frames as they are when they fit. A 4K frame is 8.3M pixels: sent as it is, a
    Qwen2.5 server's image processor makes ~10,600 tokens of it (one per 28x28 pixels),
    and 8 such frames overflow a 32K context."""
    n, h, w, _ = frames.shape
    return resize(frames, *fit_size(w, h, max_pixels))


def resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames [n, H, W, 3] at width x height, one frame at a time through FFmpeg's area
    filter (what a downscale wants: every source pixel counts, no aliasing); as they are
    when already that size. uint8 throughout: torch's interpolate needed float copies of
    the whole clip, ~900 MB for 8 4K frames, where this needs one small frame's worth."""
    n, h, w, _ = frames.shape
    if (width, height) == (w, h):
        return frames
    out = np.empty((n, height, width, 3), np.uint8)
    for k, frame in enumerate(frames):
        small = pyav().VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        out[k] = small.reformat(width=width, height=height, interpolation="AREA").to_ndarray()
    return out
