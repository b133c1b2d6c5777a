"""Cut time spans out of a video (picture and sound) and join them into one clip, with PyAV.

The query-intent reward judges each <time>S-E</time> span on its own and all
spans joined in temporal order; both are real, re-encoded mp4 files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from avcurate.core.pyav import pyav
from avcurate.media.decode import audio as decode_audio
from avcurate.media.decode import upright
from avcurate.media.errors import MediaError
from avcurate.media.probe import open_media
from avcurate.media.synth import encode_pcm


def cut(path: str | os.PathLike, spans: list[tuple[float, float]], out: str | os.PathLike,
        sr: int = 16000) -> Path:
    """Write the spans of `path` (sorted, each [start, end) seconds) as one mp4 at `out`."""
    spans = sorted((max(0.0, s), e) for s, e in spans if e > s)
    if not spans:
        raise ValueError("no non-empty span to cut")
    frames = _frames_in(path, spans)
    if not frames:
        raise MediaError("unreadable_media", f"{path}: no frame inside {spans}")
    pcm = np.concatenate([decode_audio(path, e - s, sr, offset=s) for s, e in spans]) \
        if _has_audio(path) else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    av = pyav()
    with av.open(str(out), "w") as container:
        v = container.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        v.options = {"preset": "ultrafast"}
        a = container.add_stream("aac", rate=sr, layout="mono") if pcm is not None else None
        for img in frames:
            container.mux(v.encode(av.VideoFrame.from_ndarray(
                np.ascontiguousarray(img[: h - h % 2, : w - w % 2]), format="rgb24")))
        container.mux(v.encode())
        if a is not None and pcm.size:
            encode_pcm(container, a, pcm.astype(np.float32), sr)
    return out


def _has_audio(path) -> bool:
    with open_media(path) as c:
        return bool(c.streams.audio)


def _frames_in(path, spans: list[tuple[float, float]]) -> list[np.ndarray]:
    """Frames whose timestamps fall in any span (decoded once, in order)."""
    out = []
    with open_media(path) as c:
        if not c.streams.video:
            raise MediaError("no_video_stream", f"{path}: no video stream")
        for frame in c.decode(video=0):
            t = frame.time or 0.0
            if t >= spans[-1][1]:
                break
            if any(s <= t < e for s, e in spans):
                out.append(upright(frame))
    return out
