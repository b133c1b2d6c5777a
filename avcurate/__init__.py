"""avcurate: curate audio-visual QA data for omni-modal RL."""

__version__ = "0.1.0"
