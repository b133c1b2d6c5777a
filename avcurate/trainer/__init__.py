"""A small GSPO/GRPO trainer that consumes avcurate exports (see trainer/README.md)."""
