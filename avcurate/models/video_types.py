"""The media type a video file is sent under, worked out from its name.

A whole video (`--media video`) used to go out as `video/mp4` whatever its container, so a
WebM or MOV clip reached Gemini under the wrong type. The suffix names the container the
way every browser and `mimetypes` read it; probing the file would cost an open per
request for the rare file whose name lies about its container.
"""

from __future__ import annotations

import mimetypes
from pathlib import PurePath

GEMINI_VIDEO_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mov", ".webm": "video/webm",
    ".avi": "video/avi", ".flv": "video/x-flv", ".mpeg": "video/mpeg", ".mpg": "video/mpg",
    ".wmv": "video/wmv", ".3gp": "video/3gpp",
}
"""The containers the Gemini API takes, under the names its documentation gives them."""


def video_type(path: str) -> str:
    """The file's video media type for an OpenAI-compatible server (vLLM reads the bytes
    whatever the subtype says); `video/mp4` for a name neither table knows."""
    guessed, _ = mimetypes.guess_type(PurePath(path).name.lower())
    if guessed and guessed.startswith("video/"):
        return guessed
    return gemini_video_type(path) or "video/mp4"  # .3gp reads as audio


def gemini_video_type(path: str) -> str | None:
    """The media type Gemini takes this file under, None for a container it does not take
    (Matroska, MPEG-TS)."""
    return GEMINI_VIDEO_TYPES.get(PurePath(path).suffix.lower())


def gemini_refusal(path: str) -> str:
    """Why a video cannot go to Gemini whole, and what to do instead."""
    suffix = PurePath(path).suffix or "(no suffix)"
    takes = ", ".join(sorted({s.lstrip(".") for s in GEMINI_VIDEO_TYPES}))
    return (f"Gemini does not take {suffix} videos (it takes {takes}): {path}; send its "
            "frames (--media frames) or remux it to mp4")
