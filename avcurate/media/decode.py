"""Decode what models look at: N evenly spaced frames and a mono audio clip.

decord is the default frame reader (random access by index is what it is good
at); PyAV, whose FFmpeg is newer, reads what decord cannot (AV1) and is the
reference in `benchmarks/bench_media.py`. Audio files (wav/flac/mp3/ogg) are read
with soundfile; audio inside a video container with PyAV, whose resampler also
handles rate conversion. Channels are averaged to mono on both paths.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from avcurate.core.pyav import pyav
from avcurate.media.errors import MediaError
from avcurate.media.probe import MonoResampler, open_media

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".aiff", ".aif"}


def frame_indices(total: int, n: int) -> np.ndarray:
    """Indices of n frames spread evenly over `total`, each at the middle of its segment.

    Taking the segment centres (not 0 and total-1) avoids the black first frame
    and the often-duplicated last one.
    """
    if total <= 0:
        raise ValueError("a video with no frames has no frames to sample")
    return np.minimum(((np.arange(n) + 0.5) * total / n).astype(np.int64), total - 1)


def frames(
    path: str | os.PathLike, n: int = 8, *, backend: str = "decord",
    within: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """n evenly spaced RGB frames as uint8 [n, H, W, 3], and their timestamps in seconds;
    with `within`, spaced over the first `within` seconds only (e.g. the window an audio
    clip covers), else over the whole video."""
    if not Path(path).is_file():
        raise MediaError("missing_media", f"{path}: no such file")
    if backend == "decord":
        try:
            return _frames_decord(str(path), n, within)
        except MediaError:
            # decord's bundled FFmpeg has no AV1 decoder (a common YouTube codec) and cannot
            # find such a stream at all; validate probes with PyAV and keeps the file, so
            # without this every model stage would reject it. PyAV's error stands if it too
            # cannot read the file.
            return _frames_pyav(str(path), n, within)
    if backend == "pyav":
        return _frames_pyav(str(path), n, within)
    raise ValueError(f"unknown frame backend {backend!r} (use 'decord' or 'pyav')")


def _window(total: int, fps: float, within: float | None) -> int:
    """The number of frames in the first `within` seconds (all of them without a window)."""
    if within is None or not fps or fps <= 0:
        return total
    return max(1, min(total, int(round(within * fps))))


@functools.cache
def _decord() -> ModuleType:
    """decord, its bundled FFmpeg's log silenced: a damaged file printed FFmpeg's line
    ("moov atom not found") through the progress bars while its row got the reason anyway.
    decord's own C++ line ("ERROR opening: ...") cannot be turned off from Python."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


def _frames_decord(path: str, n: int, within: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    decord = _decord()
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        spans = reader.get_frame_timestamp(list(range(len(reader))))
        idx = timed_indices(spans, n, within)
        batch = reader.get_batch(idx.tolist()).asnumpy()
        times = spans[idx, 0]  # every frame's times are read already
    except (decord.DECORDError, RuntimeError) as exc:  # decord raises both for bad input
        raise MediaError("unreadable_media", f"{path}: cannot decode frames ({exc})") from exc
    return batch, times.astype(np.float64)


def timed_indices(spans: np.ndarray, n: int, within: float | None = None) -> np.ndarray:
    """The frames shown at n evenly spaced times (segment centres, as `frame_indices`), from
    each frame's (start, end) seconds. By time, not by position: in a variable-frame-rate
    video (phones, screen recordings) evenly spaced positions bunch where the rate is high
    (7 of 8 frames in the first third of a clip shot at 30 then 2 fps). At a constant rate
    these are `frame_indices`' frames."""
    if len(spans) == 0:
        raise ValueError("a video with no frames has no frames to sample")
    starts = spans[:, 0]
    first, last = float(starts[0]), float(spans[-1, 1])
    span = last - first if within is None else min(last - first, within)
    targets = first + (np.arange(n) + 0.5) * span / n
    # the last frame starting at or before each time; 1 µs absorbs float error on the grid
    idx = np.searchsorted(starts, targets + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(starts) - 1)


def _frames_pyav(path: str, n: int, within: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The frames decord would pick, by time: a seek to the keyframe before each one that
    lies ahead of the decoder, then decoding up to it (reading a long video whole to reach
    eight frames took a minute for a 10-minute AV1 clip)."""
    av = pyav()
    with open_media(path) as container:
        if not container.streams.video:
            raise MediaError("no_video_stream", f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or 0)
        total = _frame_count(container, stream, fps)
        if total <= 0 or fps <= 0:
            raise MediaError("unreadable_media", f"{path}: no frame rate or duration declared")
        start = stream_start(stream)
        targets = start + frame_indices(_window(total, fps, within), n) / fps
        try:
            out, times = _frames_at(container, stream, targets, 0.5 / fps, start)
        except av.error.FFmpegError as exc:
            raise MediaError("unreadable_media", f"{path}: cannot decode frames ({exc})") from exc
    if len(out) < n:  # declared duration was optimistic: repeat the last frame we got
        if not out:
            raise MediaError("unreadable_media", f"{path}: no frame could be decoded")
        out += [out[-1]] * (n - len(out))
        times += [times[-1]] * (n - len(times))
    return np.stack(out), np.asarray(times)


SEEK_AHEAD_S = 2.0  # a wanted frame further ahead than this is sought, not decoded up to


def _frames_at(container, stream, targets: np.ndarray, slack: float, start: float
               ) -> tuple[list[np.ndarray], list[float]]:
    """The first frame at or after each target time (within `slack`), in order, decoding
    from the stream's `start`. A file that cannot seek is decoded straight through."""
    out: list[np.ndarray] = []
    times: list[float] = []
    position = start  # the time of the last frame decoded
    frames = container.decode(stream)
    for target in targets:
        if target - position > SEEK_AHEAD_S and seek_back(container, stream, target - slack):
            frames = container.decode(stream)
        for frame in frames:
            position = float(frame.time) if frame.time is not None else position
            if position >= target - slack:
                out.append(upright(frame))
                times.append(position)
                break
        else:
            break  # the stream ended before this time
    return out, times


def stream_start(stream) -> float:
    """Where the stream's timestamps begin, in seconds (0 when it does not say)."""
    return float(stream.start_time * stream.time_base) if stream.start_time else 0.0


def seek_back(container, stream, at: float) -> bool:
    """Seek to the keyframe at or before `at` seconds; False when the file cannot seek."""
    try:
        container.seek(int(max(at, 0.0) / stream.time_base), stream=stream, backward=True)
    except pyav().error.FFmpegError:
        return False
    return True


def upright(frame) -> np.ndarray:
    """The frame as shown: turned by its display rotation (a phone's portrait video is
    stored landscape), as decord returns it."""
    pixels = frame.to_ndarray(format="rgb24")
    turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _frame_count(container, stream, fps: float) -> int:
    """Frames the stream declares, else its duration (Matroska and WebM give it only for
    the whole file) times its rate."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = (container.duration or 0) / pyav().time_base
    return int(round(seconds * fps))


def audio(
    path: str | os.PathLike, seconds: float | None = 10.0, sr: int = 16000, *, offset: float = 0.0
) -> np.ndarray:
    """Mono float32 PCM at `sr` Hz: `seconds` from `offset` (None = to the end)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("missing_media", f"{path}: no such file")
    if path.suffix.lower() in AUDIO_SUFFIXES:
        try:
            return _audio_soundfile(path, seconds, sr, offset)
        except RuntimeError:  # libsndfile cannot read it (old mp3 support, odd codec)
            pass
    return _audio_pyav(path, seconds, sr, offset)


def _audio_soundfile(path: Path, seconds: float | None, sr: int, offset: float) -> np.ndarray:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        f.seek(min(int(offset * f.samplerate), f.frames))
        count = -1 if seconds is None else int(seconds * f.samplerate)
        data = f.read(count, dtype="float32", always_2d=True)
        native = f.samplerate
    mono = data.mean(axis=1).astype(np.float32)
    return mono if native == sr else resample(mono, native, sr)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono float32 PCM with FFmpeg's resampler (via PyAV)."""
    av = pyav()
    frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt",
                                       layout="mono")
    frame.sample_rate = rate_in
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _audio_pyav(path: Path, seconds: float | None, sr: int, offset: float) -> np.ndarray:
    """With an offset, a seek to the audio frame before it, then its samples from there
    (decoding from the start took 0.9 s to reach 15 minutes into a clip, per clip and per
    span a reward cuts)."""
    av = pyav()
    with open_media(path) as container:
        if not container.streams.audio:
            raise MediaError("no_audio_stream", f"{path}: no audio stream")
        stream = container.streams.audio[0]
        resampler = MonoResampler(sr)
        origin = stream_start(stream)
        begin = _seek_audio(container, stream, origin + offset) if offset > 0 else origin
        start = None  # the sample of `offset`, known once the first frame's time is
        stop = None
        chunks, have = [], 0
        try:
            for frame in container.decode(stream):
                if start is None:
                    first = begin if frame.time is None else float(frame.time)
                    start = (max(0, int(round((origin + offset - first) * sr)))
                             if offset > 0 else 0)
                    stop = None if seconds is None else start + int(seconds * sr)
                for chunk in resampler.resample(frame):
                    chunks.append(chunk)
                    have += chunk.size
                if stop is not None and have >= stop:
                    break
        except av.error.FFmpegError as exc:
            raise MediaError("unreadable_media", f"{path}: cannot decode audio ({exc})") from exc
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return pcm[start or 0:stop].astype(np.float32)


AUDIO_PREROLL_S = 0.5  # decoded before an offset: a codec's first frame after a seek
# lacks the overlap of the frame before it (AAC, Opus), so it is decoded and dropped


def _seek_audio(container, stream, at: float) -> float:
    """Seek to the audio frame at or before stream time `at` less the pre-roll; where the
    decoding then starts if the frames carry no time (the stream's start: a file that
    cannot seek is read from there)."""
    origin = stream_start(stream)
    at = max(origin, at - AUDIO_PREROLL_S)
    if seek_back(container, stream, at):
        return at
    container.seek(0)
    return origin
