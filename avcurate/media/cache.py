"""Decode once, share everywhere: frames and audio clips cached by media content hash.

The judge and both AVRT teachers look at the same frames and the same clip;
this cache (in the run folder) makes sure each file is decoded once per
(frames, frame size, seconds) setting, whichever stage asks first. Content hashes are
memoised per (path, size, mtime) so big files are hashed once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from avcurate.core.images import encode_jpeg, pixels_digest, shrink
from avcurate.core.kvcache import KVCache
from avcurate.core.store import atomic_write_bytes, file_digest
from avcurate.media.decode import audio, frames
from avcurate.media.errors import Lost


class Unreadable(Exception):
    """A row's media file cannot be read (missing, not a file, no permission)."""


def content_digest(path: str, digests: KVCache) -> str:
    """The file's sha256, memoised in `digests`. Unreadable is the row's fault; an error
    of the cache itself (a full disk) is the machine's and is not caught here: it once
    rejected every row of a stage as missing_media."""
    try:
        st = os.stat(path)
    except (OSError, TypeError) as exc:
        raise Unreadable(f"{path}: {exc}") from None
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    found = digests.get(key)
    if found is None:
        try:
            found = file_digest(path)
        except OSError as exc:
            raise Unreadable(f"{path}: {exc}") from None
        digests.put(key, found)
    return found


def decode_job(args: tuple[str, str | None, str | None, int, int, float | None, float, int]
               ) -> dict | None:
    """Decode what is missing of one file into the cache (runs in a worker process).

    Frames and audio are cached separately, so a stage that needs 8 frames reuses
    the judge's frames even if it wants a different audio clip. Returns None, or
    {"error": kind, "detail": text}.
    """
    from avcurate.media.errors import MediaError

    path, frames_out, audio_out, n_frames, max_pixels, seconds, offset, sr = args
    try:
        if frames_out and not Path(frames_out).exists():
            pix, times = frames(path, n_frames)
            _save(frames_out, **_as_jpegs(shrink(pix, max_pixels)), times=times)
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


def _as_jpegs(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Frames as the JPEGs a request sends, with the digests of their pixels (what keys a
    request's cached answer, as for the raw frames). Raw frames took 49.8 MB per 1080p
    video (8 frames), some terabytes of cache at LLaVA-Video's scale; their JPEGs take
    a few hundred KB, and are encoded here, in the decode workers, once per file."""
    jpegs = [encode_jpeg(f) for f in pixels]
    return {"jpeg": np.frombuffer(b"".join(jpegs), np.uint8),
            "sizes": np.array([len(j) for j in jpegs], np.int64),
            "digests": np.array([pixels_digest(f) for f in pixels], "S64")}


def _save(path: str, **arrays: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


class DecodedMedia:
    """Frames with their timestamps and/or an audio clip of one file, as decoded once.
    The cache's frames are `images`: (JPEG, digest of its pixels) each; `frames` holds
    pixels only where media is built in memory (benchmarks)."""

    def __init__(self, frames_path: str | None, audio_path: str | None) -> None:
        self.frames = np.zeros((0, 0, 0, 3), np.uint8)
        self.images: list[tuple[bytes, str]] = []
        self.times = np.zeros(0)
        self.audio = np.zeros(0, np.float32)
        self.sample_rate = 16000
        if frames_path:
            with np.load(frames_path) as data:
                blob, ends = data["jpeg"].tobytes(), np.cumsum(data["sizes"])
                self.images = [(blob[end - size:end], digest.decode()) for end, size, digest
                               in zip(ends, data["sizes"], data["digests"], strict=True)]
                self.times = data["times"]
        if audio_path:
            with np.load(audio_path) as data:
                self.audio, self.sample_rate = data["audio"], int(data["sr"])


def frames_path(run_dir: Path, digest: str, n_frames: int, max_pixels: int = 0) -> str:
    """`jpeg`: frames kept as JPEGs (2026-11-25); a cache of raw frames is not misread.
    A cap on their pixels is part of the key (none: the key as before there was one)."""
    cap = f"|max{max_pixels}" if max_pixels else ""
    return _path(run_dir, f"frames|{digest}|{n_frames}|jpeg{cap}")


def audio_path(run_dir: Path, digest: str, seconds: float | None, offset: float, sr: int) -> str:
    """`mean`: channels averaged to mono (2026-11-25); clips cached before were FFmpeg's
    downmix, 3 dB louder for stereo, and are decoded again rather than mixed in."""
    return _path(run_dir, f"audio|{digest}|{seconds}|{offset}|{sr}|mean")


def _path(run_dir: Path, key: str) -> str:
    tag = hashlib.sha1(key.encode()).hexdigest()
    return str(run_dir / "cache" / "media" / tag[:2] / f"{tag}.npz")


@dataclass(frozen=True)
class MediaNeeds:
    """What a stage decodes per row: N evenly spaced frames and/or seconds of audio."""

    frames: int = 0
    max_pixels: int = 0  # per frame, scaled down to fit; 0 = as decoded
    seconds: float = 0.0  # 0 = no audio
    offset: float = 0.0
    sample_rate: int = 16000

    def __bool__(self) -> bool:
        return bool(self.frames) or self.seconds != 0


class Pool(Protocol):
    """What decoding needs from a stage context: caches in the run folder and a process map."""

    run_dir: Path

    def cache(self, name: str) -> KVCache: ...

    def map(self, fn: Callable[[Any], Any], items: Any) -> list[Any]:
        """fn over items; a `Lost` for a job that ran past its time or crashed its worker."""
        ...


_DECODING: dict[tuple, Future] = {}  # jobs some thread of this process is decoding now
_DECODING_LOCK = threading.Lock()


def decode_once(jobs: dict[tuple, tuple], pool: Pool) -> dict[tuple, dict | None]:
    """Run `decode_job` for each job this process is not already running in another
    thread, and wait for those it is: shards processed together (model stages) often
    show the same videos, which would otherwise be decoded side by side on the same cores."""
    mine: dict[tuple, Future] = {}
    theirs: dict[tuple, Future] = {}
    with _DECODING_LOCK:
        for key in jobs:
            if key in _DECODING:
                theirs[key] = _DECODING[key]
            else:
                mine[key] = _DECODING[key] = Future()
    try:
        results = pool.map(decode_job, [jobs[k] for k in mine])
        done = {key: r.as_error(jobs[key][0]) if isinstance(r, Lost) else r
                for key, r in zip(mine, results, strict=True)}
        for key, future in mine.items():
            future.set_result(done[key])
    except BaseException as exc:
        for future in mine.values():
            if not future.done():
                future.set_exception(exc)
        raise
    finally:
        with _DECODING_LOCK:
            for key in mine:
                _DECODING.pop(key, None)
    return done | {key: future.result() for key, future in theirs.items()}


def decode_rows(rows: list[dict], media_path: Callable[[dict], str | None], needs: MediaNeeds,
                pool: Pool) -> list[DecodedMedia | dict | None]:
    """Decoded media per row (each distinct file once, through the run's media cache), or
    {"error": kind, "detail": text} for a row whose media cannot be read."""
    if not needs:
        return [None] * len(rows)
    digests = pool.cache("digests")
    jobs, out = {}, []
    for row in rows:
        path = media_path(row)
        try:
            digest = content_digest(path, digests)
        except Unreadable as exc:
            out.append({"error": "missing_media", "detail": str(exc)})
            continue
        fpath = frames_path(pool.run_dir, digest, needs.frames, needs.max_pixels) \
            if needs.frames else None
        apath = audio_path(pool.run_dir, digest, needs.seconds, needs.offset,
                           needs.sample_rate) if needs.seconds != 0 else None
        jobs[(fpath, apath)] = (path, fpath, apath, needs.frames, needs.max_pixels,
                                needs.seconds, needs.offset, needs.sample_rate)
        out.append((fpath, apath))
    errors = decode_once(jobs, pool)
    loaded: dict[tuple, DecodedMedia] = {}  # rows of one file share one object (and its parts)
    for x in out:
        if not isinstance(x, dict) and errors[x] is None and x not in loaded:
            loaded[x] = DecodedMedia(*x)
    return [x if isinstance(x, dict) else errors[x] or loaded[x] for x in out]
