"""Decode once, share everywhere: frames and audio clips cached by media content hash.

The judge and both AVRT teachers look at the same frames and the same clip;
this cache (in the run folder) makes sure each file is decoded once per
(frames, seconds) setting, whichever stage asks first. Content hashes are
memoised per (path, size, mtime) so big files are hashed once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from avcurate.media.decode import audio, frames
from avcurate.models.request import file_digest
from avcurate.pipeline.kvcache import KVCache
from avcurate.pipeline.store import atomic_write_bytes


def content_digest(path: str, digests: KVCache) -> str:
    st = os.stat(path)
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    found = digests.get(key)
    if found is None:
        found = file_digest(path)
        digests.put(key, found)
    return found


def decode_job(args: tuple[str, str, int, float | None, float, int]) -> str | dict:
    """Decode frames + audio of one file into the cache folder (runs in a worker process).

    Returns the cache file path, or {"error": kind, "detail": text}.
    """
    from avcurate.media.errors import MediaError

    path, out, n_frames, seconds, offset, sr = args
    if Path(out).exists():
        return out
    try:
        pix, times = frames(path, n_frames) if n_frames else (np.zeros((0, 0, 0, 3), np.uint8),
                                                              np.zeros(0))
        try:
            pcm = audio(path, seconds, sr, offset=offset) if seconds != 0 else np.zeros(0, np.float32)
        except MediaError as exc:
            if exc.kind != "no_audio_stream":
                raise
            pcm = np.zeros(0, np.float32)
    except MediaError as exc:
        return {"error": exc.kind, "detail": str(exc)}
    import io

    buf = io.BytesIO()
    np.savez(buf, frames=pix, times=times, audio=pcm, sr=np.array(sr))
    atomic_write_bytes(Path(out), buf.getvalue())
    return out


class DecodedMedia:
    """Frames, their timestamps and an audio clip of one file, as decoded once."""

    def __init__(self, path: str) -> None:
        with np.load(path) as data:
            self.frames = data["frames"]
            self.times = data["times"]
            self.audio = data["audio"]
            self.sample_rate = int(data["sr"])


def cache_path(run_dir: Path, digest: str, n_frames: int, seconds: float | None, offset: float,
               sr: int) -> str:
    tag = hashlib.sha1(f"{digest}|{n_frames}|{seconds}|{offset}|{sr}".encode()).hexdigest()
    return str(run_dir / "cache" / "media" / tag[:2] / f"{tag}.npz")
