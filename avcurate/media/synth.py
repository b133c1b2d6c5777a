"""Make real media files: short clips with picture and sound, and wav files.

The demo, the tests and the benchmarks all need genuine, decodable media that
nobody has to download; PyAV (which bundles FFmpeg) encodes them here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from avcurate.core.pyav import pyav

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
}


def tone(seconds: float, freq: float, sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    """A sine tone with a short fade in/out (no clicks), float32 mono."""
    t = np.arange(int(seconds * sr)) / sr
    wave = amp * np.sin(2 * np.pi * freq * t)
    fade = min(len(t) // 2, int(0.01 * sr))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return wave.astype(np.float32)


def write_clip(
    path: str | os.PathLike,
    *,
    seconds: float = 3.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    color: str | tuple[int, int, int] = "red",
    freq: float | None = 440.0,
    amp: float = 0.3,
    audio: bool = True,
    sr: int = 16000,
    gop: int = 25,
    speed: float = 2.0,
    bitrate: int | None = None,
    square: float = 0.2,
    channels: int = 1,
) -> Path:
    """Encode an H.264/AAC mp4: a colored square moving over a gradient, with a tone.

    `audio=False` writes no audio stream; `amp=0` or `freq=None` writes a silent one.
    `speed` (radians per second) sets how the square swings; `bitrate` (bits/s) encodes at
    that rate instead of the default quality (a re-encode of the same picture); `square`
    is the square's side as a share of the height; `channels=2` puts the tone in both
    channels of a stereo track, as most web videos carry their sound.
    The moov atom is placed first (faststart), as on the web, so cutting the
    file short makes a *truncated* (not unreadable) video.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rgb = COLORS[color] if isinstance(color, str) else color
    av = pyav()
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        v = container.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.codec_context.gop_size = gop
        v.options = {"preset": "ultrafast"}
        if bitrate:
            v.bit_rate = bitrate
        layout = {1: "mono", 2: "stereo"}[channels]
        a = container.add_stream("aac", rate=sr, layout=layout) if audio else None
        ramp = np.linspace(0, 90, width, dtype=np.float32)[None, :, None]
        base = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
        side = max(8, int(height * square))
        for i in range(int(seconds * fps)):
            img = base.copy()
            x = int((width - side) * (0.5 + 0.45 * np.sin(i / fps * speed)))
            y = (height - side) // 2
            img[y:y + side, x:x + side] = rgb
            for packet in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        container.mux(v.encode())
        if a is not None:
            pcm = tone(seconds, freq or 440.0, sr, amp if freq else 0.0)
            encode_pcm(container, a, pcm, sr, channels=channels)
    return path


def encode_pcm(container, stream, pcm: np.ndarray, sr: int, chunk: int = 1024,
               channels: int = 1) -> None:
    """Mono PCM into `stream`, the same samples in each of its `channels` (1 or 2)."""
    av = pyav()
    layout = {1: "mono", 2: "stereo"}[channels]
    for start in range(0, len(pcm), chunk):
        planes = np.repeat(pcm[None, start:start + chunk], channels, axis=0)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.pts = sr, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_wav(path: str | os.PathLike, pcm: np.ndarray, sr: int = 16000) -> Path:
    """Write mono float PCM as a 16-bit wav."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm, sr, subtype="PCM_16")
    return path


def truncate(path: str | os.PathLike, fraction: float = 0.5) -> Path:
    """Cut a file to `fraction` of its bytes, as an interrupted download would."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
