"""Cut time spans out of a video (picture and sound) and join them into one clip, with PyAV.

The query-intent reward judges each <time>S-E</time> span on its own and all
spans joined in temporal order; both are real, re-encoded mp4 files.

Frames are streamed from decoder to encoder at 25 fps on the joined timeline: every
decoded frame used to be held in memory (10 s of 1080p at 30 fps is 1.9 GB, of 4K 7.5
GB) and written one per 1/25 s, so a 30 fps span played 1.2x slower than its sound and a
60 fps span 2.4x. Frames larger than a 1080p frame are scaled down, as the curation
stages send them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path

import numpy as np

from avcurate.core.images import FULL_HD_PIXELS, fit_size, resize
from avcurate.core.pyav import pyav
from avcurate.media.decode import SEEK_AHEAD_S, seek_back, stream_start, upright
from avcurate.media.decode import audio as decode_audio
from avcurate.media.errors import MediaError
from avcurate.media.probe import open_media
from avcurate.media.synth import encode_pcm

FPS = 25


def cut(path: str | os.PathLike, spans: list[tuple[float, float]], out: str | os.PathLike,
        sr: int = 16000, max_pixels: int = FULL_HD_PIXELS) -> Path:
    """Write the spans of `path` (sorted, each [start, end) seconds) as one mp4 at `out`,
    atomically: a stopped cut leaves no half-written clip under that name."""
    spans = _merged(spans)
    if not spans:
        raise ValueError("no non-empty span to cut")
    pcm = np.concatenate([decode_audio(path, e - s, sr, offset=s) for s, e in spans]) \
        if _has_audio(path) else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        if not _write(path, spans, part, pcm, sr, max_pixels):
            raise MediaError("unreadable_media", f"{path}: no frame inside {spans}")
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return out


def _write(path, spans: list[tuple[float, float]], target: Path, pcm: np.ndarray | None,
           sr: int, max_pixels: int) -> int:
    """Encode the spans' frames (and `pcm`) into `target`; the number of frames written.
    The output is opened at the first frame, whose size sets the stream's."""
    av = pyav()
    written, last = 0, -1
    with ExitStack() as stack:
        container = video = None
        for img, joined in _frames_in(path, spans):
            index = math.floor(joined * FPS + 1e-6)  # the 1/25 s it starts in
            if index <= last:  # more than 25 fps: the first frame of each 1/25 s
                continue
            if container is None:  # every frame of a stream has the first one's size
                h, w = img.shape[0] - img.shape[0] % 2, img.shape[1] - img.shape[1] % 2
                width, height = fit_size(w, h, max_pixels)
                container = stack.enter_context(av.open(str(target), "w", format="mp4"))
                video = container.add_stream("libx264", rate=FPS)
                video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                video.options = {"preset": "ultrafast"}
                sound = container.add_stream("aac", rate=sr, layout="mono") \
                    if pcm is not None else None
            picture = resize(np.ascontiguousarray(img[None, :h, :w]), width, height)[0]
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame))
            written, last = written + 1, index
        if container is None:
            return 0
        container.mux(video.encode())
        if sound is not None and pcm.size:
            encode_pcm(container, sound, pcm.astype(np.float32), sr)
    return written


def _has_audio(path) -> bool:
    with open_media(path) as c:
        return bool(c.streams.audio)


def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-empty spans in time order, overlapping ones as one: the joined clip shows
    each moment once (its sound was cut twice, its picture once)."""
    out: list[tuple[float, float]] = []
    for s, e in sorted((max(0.0, s), e) for s, e in spans if e > max(0.0, s)):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _frames_in(path, spans: list[tuple[float, float]]) -> Iterator[tuple[np.ndarray, float]]:
    """(upright frame, its time on the joined timeline) for each frame inside a span,
    decoded once, in order, one at a time. Times count from the stream's start, as the
    audio's offsets do; a span further ahead than SEEK_AHEAD_S is sought, not decoded up
    to (a span 50 minutes in decoded 50 minutes of frames)."""
    offsets = np.concatenate([[0.0], np.cumsum([e - s for s, e in spans])])
    with open_media(path) as c:
        if not c.streams.video:
            raise MediaError("no_video_stream", f"{path}: no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        start = stream_start(stream)
        frames, position = c.decode(stream), 0.0
        pending = None  # (time, frame) decoded past the span it was read for
        for k, (s, e) in enumerate(spans):
            if pending is not None and pending[0] >= e:
                continue  # past this span as well
            if pending is not None:
                (t, frame), pending = pending, None
                if t >= s:
                    yield upright(frame), float(offsets[k] + t - s)
            if s - position > SEEK_AHEAD_S and seek_back(c, stream, start + s):
                frames = c.decode(stream)
            for frame in frames:
                position = (frame.time if frame.time is not None else start + position) - start
                if position >= e:
                    pending = (position, frame)
                    break
                if position >= s:
                    yield upright(frame), float(offsets[k] + position - s)
