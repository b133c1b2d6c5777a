"""Fingerprints that survive re-encoding and renaming: a video's source id, perceptual
hashes of its frames, and a normalised question.

- source id: the file stem with the wrappers datasets add removed (`v_` of ActivityNet,
  `ytb_` of LLaVA-Video, a `_000030` start-second suffix of VGGSound/AVQA), lower-cased,
  so `ytb_AbC123xYz_q.mp4` and `abc123xyz_q.webm` name the same YouTube video.
- dHash: 64 bits per frame from a 9x8 grey thumbnail (is each cell brighter than its right
  neighbour?). Resizing and re-encoding move few bits; a different picture moves many.
- question: lower case, punctuation and markup removed, whitespace collapsed; its word
  n-grams measure overlap with a benchmark question that was lightly edited.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

import numpy as np

from avcurate.media import decode

_WRAPPERS = re.compile(r"^(?:v_|ytb_|youtube_)")
_START_SUFFIX = re.compile(r"^(.{11})_\d{6}(?:_\d{6})?$")  # VGGSound/AVQA: <ytid>_<start>[_<end>]


def source_id(path: str | None) -> str | None:
    """The normalised id of the video a path points to (None for no path)."""
    if not path:
        return None
    stem = PurePosixPath(str(path).replace("\\", "/")).name
    stem = stem.split(".", 1)[0] if "." in stem else stem
    stem = _WRAPPERS.sub("", stem)
    m = _START_SUFFIX.match(stem)
    return (m.group(1) if m else stem).lower() or None


def _thumbnail(frame: np.ndarray, w: int = 9, h: int = 8) -> np.ndarray:
    """Mean grey level of each cell of a w x h grid (an area resize, in numpy)."""
    grey = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) \
        if frame.ndim == 3 else frame.astype(np.float32)
    rows = np.linspace(0, grey.shape[0], h + 1).astype(int)
    cols = np.linspace(0, grey.shape[1], w + 1).astype(int)
    summed = np.add.reduceat(np.add.reduceat(grey, rows[:-1], axis=0), cols[:-1], axis=1)
    return summed / np.outer(np.diff(rows), np.diff(cols))


def dhash(frame: np.ndarray) -> int:
    """64-bit difference hash of an RGB (or grey) frame."""
    cells = _thumbnail(frame)
    bits = (cells[:, :-1] > cells[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def video_hashes(path: str, frames: int = 8) -> list[int]:
    """dHashes of `frames` evenly spaced frames (raises MediaError for an unreadable file)."""
    pixels, _ = decode.frames(path, frames)
    return [dhash(f) for f in pixels]


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


_MARKUP = re.compile(r"<[^>]{1,20}>")


def normalise_question(text: str | None) -> str:
    """Lower case, no markup (`<video>`), no punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", _MARKUP.sub(" ", text or "")).lower()
    text = "".join(c if c.isalnum() else " " for c in text)
    return " ".join(text.split())


def ngrams(normalised: str, n: int) -> set[str]:
    words = normalised.split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}
