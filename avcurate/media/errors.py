"""Errors raised by the media layer, and what a media job that never finished gives."""

from dataclasses import dataclass


class MediaError(Exception):
    """A media file is missing, unreadable or not what a stage needs.

    `kind` is a stable code (`missing_media`, `unreadable_media`, `no_video_stream`,
    `no_audio_stream`) that stages turn into a reject reason.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Lost:
    """What a media job run in a decode worker gave instead of a result: it ran past the
    time limit (`media_timeout`) or its process died under it (`media_crash`). The kind
    is a reject reason; callers do not cache it, so the next run tries the file again."""

    kind: str
    detail: str

    def as_error(self, path: str) -> dict[str, str]:
        """The {"error", "detail"} form media jobs return for a file they cannot read."""
        return {"error": self.kind, "detail": f"{path}: {self.detail}"}
