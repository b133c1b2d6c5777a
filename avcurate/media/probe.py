"""Probe a media file: streams, duration, loudness, truncation.

PyAV is used because it reads the container's declared duration *and* lets us
demux packets without decoding them, which is how a truncated file shows:
the last packet ends far before the declared duration. Decoding is limited to
the first `loudness_seconds` of audio and the first video frame (for its display
rotation: the size reported is the one shown, as the frames models see are).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avcurate.core.pyav import pyav
from avcurate.media.errors import MediaError

if TYPE_CHECKING:
    from av.container import InputContainer

SILENCE_FLOOR_DB = -120.0
PROBE_VERSION = 2
"""Part of a probe's cache key: bumped when the same file would probe differently (2: width
and height as shown, after the display rotation), so a run's cached probes are not reused."""


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` learns about a file. Durations are in seconds."""

    duration_s: float
    declared_duration_s: float
    decodable_s: float
    has_video: bool
    has_audio: bool
    fps: float | None
    frame_count: int | None
    width: int | None
    height: int | None
    audio_rate: int | None
    audio_rms_db: float | None
    truncated: bool

    def to_dict(self) -> dict:
        return asdict(self)


def rms_db(samples: np.ndarray) -> float:
    """RMS level of float samples in dBFS, floored so silence is a finite number."""
    if samples.size == 0:
        return SILENCE_FLOOR_DB
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(SILENCE_FLOOR_DB, 20 * math.log10(rms)) if rms > 0 else SILENCE_FLOOR_DB


class MonoResampler:
    """Audio frames to mono float32 at `rate` (None: the stream's own), by averaging the
    channels. FFmpeg's own downmix to mono, for float output, adds stereo channels at 0.707
    each: a track with equal channels came out 3 dB louder than the same sound in a wav
    (read by soundfile, which averages), and a loud one clipped in the wav a model is sent.
    Averaging is what `librosa.load` does, the usual loader of Qwen's audio models; for
    stereo it is also what Whisper's loader gives (FFmpeg's downmix to 16-bit, which is
    normalised). A 5.1 track's centre comes out at 1/6 of its level (FFmpeg's normalised
    downmix: 0.29)."""

    def __init__(self, rate: int | None = None) -> None:
        self._resampler = pyav().AudioResampler(format="fltp", rate=rate)

    def resample(self, frame) -> list[np.ndarray]:
        """The mono samples of `frame` (None flushes what the resampler holds)."""
        return [out.to_ndarray().mean(axis=0, dtype=np.float32)
                for out in self._resampler.resample(frame)]


def open_media(path: str | os.PathLike) -> InputContainer:
    if not Path(path).is_file():
        raise MediaError("missing_media", f"{path}: no such file")
    av = pyav()
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise MediaError("unreadable_media", f"{path}: cannot open ({exc})") from exc


def _declared_duration(container, streams) -> float:
    if container.duration:
        return container.duration / pyav().time_base
    durations = [float(s.duration * s.time_base) for s in streams if s.duration]
    return max(durations, default=0.0)


def probe(
    path: str | os.PathLike, *, loudness_seconds: float = 60.0, truncation_tolerance: float = 0.1
) -> MediaInfo:
    """Probe `path`. Raises `MediaError` for a missing or unreadable file.

    A file counts as truncated when the packets that can actually be read end
    more than `truncation_tolerance` (fraction, at least 1 s) short of the
    duration the container declares.
    """
    with open_media(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        streams = [s for s in (video, audio) if s is not None]
        if not streams:
            raise MediaError("unreadable_media", f"{path}: no audio or video stream")
        declared = _declared_duration(container, streams)
        end, pcm, error, turned = _scan(container, streams, audio, loudness_seconds)
    if error and end == 0.0:
        raise MediaError("unreadable_media", f"{path}: no packet could be read ({error})")
    slack = max(1.0, truncation_tolerance * declared)
    truncated = bool(error) or (declared > 0 and end < declared - slack)
    return MediaInfo(
        duration_s=declared or end,
        declared_duration_s=declared,
        decodable_s=end,
        has_video=video is not None,
        has_audio=audio is not None,
        fps=float(video.average_rate) if video is not None and video.average_rate else None,
        frame_count=(video.frames or None) if video is not None else None,
        **_shown_size(video, turned),
        audio_rate=audio.codec_context.sample_rate if audio is not None else None,
        audio_rms_db=rms_db(pcm) if audio is not None else None,
        truncated=truncated,
    )


def _shown_size(video, turned: bool) -> dict[str, int | None]:
    """Width and height as the video is shown: a phone's portrait clip is stored landscape
    with a quarter-turn rotation, and its frames reach models upright (`decode.upright`)."""
    if video is None:
        return {"width": None, "height": None}
    width, height = video.codec_context.width, video.codec_context.height
    return {"width": height, "height": width} if turned else {"width": width, "height": height}


def _scan(container, streams, audio_stream, loudness_seconds: float):
    """Demux every packet (cheap), decode the first seconds of audio (for loudness) and the
    video up to its first frame (the display rotation is a property of decoded frames in
    PyAV; the stream does not expose it).

    Returns (end of the last readable packet in seconds, mono PCM, error text or None,
    whether the first frame is shown a quarter turn from how it is stored).
    """
    end = 0.0
    chunks: list[np.ndarray] = []
    decoded = 0.0
    av = pyav()
    resampler = MonoResampler() if audio_stream else None
    video_stream = next((s for s in streams if s.type == "video"), None)
    rotation: float | None = None if video_stream is not None else 0.0
    try:
        for packet in container.demux(*streams):
            if packet.pts is not None and packet.time_base is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            if packet.stream is audio_stream and decoded < loudness_seconds:
                for frame in packet.decode():
                    for chunk in resampler.resample(frame):
                        chunks.append(chunk)
                        decoded += chunk.size / frame.sample_rate
            elif rotation is None and packet.stream is video_stream:
                rotation = _first_rotation(packet)
    except (av.error.FFmpegError, ValueError) as exc:
        return end, _concat(chunks), str(exc), _quarter_turn(rotation)
    return end, _concat(chunks), None, _quarter_turn(rotation)


def _first_rotation(packet) -> float | None:
    """The display rotation of the first frame `packet` completes; None while the decoder
    has none yet. A packet the decoder refuses says nothing about rotation (0): truncation
    is judged from the demuxed packets, not from decoding."""
    try:
        decoded = packet.decode()
    except (pyav().error.FFmpegError, ValueError):
        return 0.0
    return float(decoded[0].rotation or 0) if decoded else None


def _quarter_turn(rotation: float | None) -> bool:
    return round((rotation or 0) / 90) % 2 == 1


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
