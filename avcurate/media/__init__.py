"""Media decoding: probe, evenly spaced frames, audio clips, and synthetic clips."""

from avcurate.media.decode import audio, frame_indices, frames
from avcurate.media.errors import MediaError
from avcurate.media.probe import MediaInfo, probe

__all__ = ["MediaError", "MediaInfo", "audio", "frame_indices", "frames", "probe"]
