"""What the demo model can really perceive: the colour and motion of the square in the
frames, the pitch and loudness of the tone.

The demo clips (`avcurate.media.synth.write_clip`) show one coloured square sliding over a
grey gradient while a sine tone plays, so these few measurements are enough to answer,
score and classify their questions from the media itself rather than from the text.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from avcurate.core.pyav import pyav
from avcurate.media.synth import COLORS

PITCH_WORDS = ("low", "medium", "high")


@dataclass(frozen=True)
class Percept:
    """What one request's media showed; None for a sense the request did not include."""

    colour: str | None = None       # dominant colour of the square, "none" when not seen
    motion: str | None = None       # "left", "right" or "still" (first frame to last)
    pitch: str | None = None        # "low", "medium", "high" or "silence"
    loudness_db: float | None = None

    def describe(self) -> str:
        seen = (f"a {self.colour} square moving {self.motion}" if self.motion not in (None, "still")
                else f"a {self.colour} square") if self.colour else "no frames"
        heard = f"a {self.pitch}-pitched tone at {self.loudness_db:.0f} dBFS" \
            if self.pitch not in (None, "silence") else "silence" if self.pitch else "no audio"
        return f"{seen}; {heard}"


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image (JPEG or PNG) as an RGB array, decoded with PyAV."""
    with pyav().open(io.BytesIO(data)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def _square(rgb: np.ndarray) -> np.ndarray:
    """Mask of saturated pixels: the square (the background gradient is grey)."""
    rgb = rgb.astype(np.int16)
    return (rgb.max(axis=2) - rgb.min(axis=2)) > 80


def dominant_colour(rgb: np.ndarray) -> str:
    mask = _square(rgb)
    if not mask.any():
        return "none"
    mean = rgb[mask].astype(float).mean(axis=0)
    return min(COLORS, key=lambda c: float(((np.array(COLORS[c]) - mean) ** 2).sum()))


def _centre_x(rgb: np.ndarray) -> float | None:
    cols = np.nonzero(_square(rgb).any(axis=0))[0]
    return float(cols.mean()) / rgb.shape[1] if len(cols) else None


def motion(frames: list[np.ndarray]) -> str:
    """Which way the square went between the first and the last frame."""
    xs = [x for x in (_centre_x(f) for f in frames) if x is not None]
    if len(xs) < 2 or abs(xs[-1] - xs[0]) < 0.05:
        return "still"
    return "right" if xs[-1] > xs[0] else "left"


def listen(wav: bytes) -> tuple[str, float]:
    """(pitch word, loudness in dBFS) of a wav: the strongest frequency of its spectrum."""
    import soundfile as sf

    pcm, sr = sf.read(io.BytesIO(wav), dtype="float32")
    if pcm.ndim > 1:
        pcm = pcm.mean(axis=1)
    peak = float(np.abs(pcm).max()) if len(pcm) else 0.0
    if peak < 1e-3:
        return "silence", -120.0
    rms_db = 20 * float(np.log10(max(float(np.sqrt((pcm ** 2).mean())), 1e-9)))
    freq = float(np.fft.rfftfreq(len(pcm), 1 / sr)[int(np.argmax(np.abs(np.fft.rfft(pcm))))])
    return ("low" if freq < 330 else "medium" if freq < 660 else "high"), rms_db


def perceive(images: list[bytes], audios: list[bytes]) -> Percept:
    frames = [decode_image(b) for b in images]
    colour = dominant_colour(frames[0]) if frames else None
    pitch, loud = listen(audios[0]) if audios else (None, None)
    return Percept(colour, motion(frames) if frames else None, pitch, loud)
