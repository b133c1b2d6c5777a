"""Errors raised by the media layer."""


class MediaError(Exception):
    """A media file is missing, unreadable or not what a stage needs.

    `kind` is a stable code (`missing_media`, `unreadable_media`, `no_video_stream`,
    `no_audio_stream`) that stages turn into a reject reason.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
