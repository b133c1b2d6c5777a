"""Benchmark decontamination: fingerprints (source ids, frame dHashes, questions), an index
that finds matches without comparing all pairs, and the `decontaminate` stage."""
