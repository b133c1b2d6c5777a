"""The request parts of decoded media, built once per decoded file.

Rows that share a video share one `DecodedMedia` (see `media.cache.decode_rows`), and
through this module one list of parts: each frame is JPEG-encoded and base64'd once, not
once for every row (and every stage request) that shows it. On 2 cores the JPEG encodes
were what kept the first model stage from keeping its requests in flight.
"""

from __future__ import annotations

import weakref
from typing import Any

from avcurate.core.images import FULL_HD_PIXELS
from avcurate.core.options import option
from avcurate.media.cache import DecodedMedia
from avcurate.models.request import AudioPart, ImagePart


def max_pixels_option(applies: str = "") -> Any:
    """The frame stages' cap on a frame's size, declared once. The default is a 1080p
    frame's pixels: what most datasets hold is sent as it is (and keeps its cached
    answers), while a 4K frame, ~10,600 tokens to a Qwen2.5 server, is scaled down to
    ~2,600. `absent=0`: runs made before the cap existed sent frames as decoded."""
    return option(FULL_HD_PIXELS, min=0, absent=0,
                  help="Pixels per frame at most" + (f" ({applies})" if applies else "")
                       + ": a larger frame is scaled down, aspect kept, before it is sent "
                         "(the default is a 1080p frame's); 0 sends frames as decoded.")

# keyed by the decoded object itself: the parts live exactly as long as the rows using it
_FRAMES: weakref.WeakKeyDictionary[DecodedMedia, list[ImagePart]] = weakref.WeakKeyDictionary()
_AUDIO: weakref.WeakKeyDictionary[DecodedMedia, list[AudioPart]] = weakref.WeakKeyDictionary()


def frame_parts(media: DecodedMedia) -> list[ImagePart]:
    """One image part per decoded frame, with its timestamp."""
    if (parts := _FRAMES.get(media)) is None:
        if media.images:  # as the media cache keeps them: already encoded
            parts = [ImagePart.from_jpeg(jpeg, digest, float(t)) for (jpeg, digest), t
                     in zip(media.images, media.times, strict=True)]
        else:
            parts = [ImagePart(f, float(t)) for f, t in zip(media.frames, media.times,
                                                            strict=True)]
        _FRAMES[media] = parts
    return parts


def audio_parts(media: DecodedMedia) -> list[AudioPart]:
    """The clip as one audio part, or none when the file has no sound."""
    if (parts := _AUDIO.get(media)) is None:
        parts = [AudioPart(media.audio, media.sample_rate)] if media.audio.size else []
        _AUDIO[media] = parts
    return parts
