"""Single-modality teachers (vision on frames, audio on the clip) and the both-correct filter."""
