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


def decode_job(args: tuple[str, str | None, str | None, int, float | None, float, int]
               ) -> dict | None:
    """Decode what is missing of one file into the cache (runs in a worker process).

    Frames and audio are cached separately, so a stage that needs 8 frames reuses
    the judge's frames even if it wants a different audio clip. Returns None, or
    {"error": kind, "detail": text}.
    """
    from avcurate.media.errors import MediaError

    path, frames_out, audio_out, n_frames, seconds, offset, sr = args
    try:
        if frames_out and not Path(frames_out).exists():
            pix, times = frames(path, n_frames)
            _save(frames_out, frames=pix, times=times)
        if audio_out and not Path(audio_out).exists():
            try:
                pcm = audio(path, seconds, sr, offset=offset)
            except MediaError as exc:
                if exc.kind != "no_audio_stream" or frames_out:
                    raise
                pcm = np.zeros(0, np.float32)
            _save(audio_out, audio=pcm, sr=np.array(sr))
    except MediaError as exc:
        return {"error": exc.kind, "detail": str(exc)}
    return None


def _save(path: str, **arrays: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


class DecodedMedia:
    """Frames with their timestamps and/or an audio clip of one file, as decoded once."""

    def __init__(self, frames_path: str | None, audio_path: str | None) -> None:
        self.frames = np.zeros((0, 0, 0, 3), np.uint8)
        self.times = np.zeros(0)
        self.audio = np.zeros(0, np.float32)
        self.sample_rate = 16000
        if frames_path:
            with np.load(frames_path) as data:
                self.frames, self.times = data["frames"], data["times"]
        if audio_path:
            with np.load(audio_path) as data:
                self.audio, self.sample_rate = data["audio"], int(data["sr"])


def frames_path(run_dir: Path, digest: str, n_frames: int) -> str:
    return _path(run_dir, f"frames|{digest}|{n_frames}")


def audio_path(run_dir: Path, digest: str, seconds: float | None, offset: float, sr: int) -> str:
    return _path(run_dir, f"audio|{digest}|{seconds}|{offset}|{sr}")


def _path(run_dir: Path, key: str) -> str:
    tag = hashlib.sha1(key.encode()).hexdigest()
    return str(run_dir / "cache" / "media" / tag[:2] / f"{tag}.npz")
