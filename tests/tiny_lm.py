"""A tiny causal LM over a few characters, and toy data for it (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CHARS = ["A", "B", "C", "D", " ", ".", "<", ">", "/", "a", "n", "s", "w", "e", "r"]


def make_tiny_lm(folder: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """The package's tiny policy over the few characters the toy tasks use."""
    from avcurate.demo.tiny_policy import make_tiny_policy

    return make_tiny_policy(folder, chars=CHARS, layers=layers, hidden=hidden, seed=seed,
                            max_positions=2048)


def make_toy_data(path: Path, n: int = 8) -> Path:
    pq.write_table(pa.table({
        "id": [f"t{i}" for i in range(n)], "question": ["Pick B."] * n,
        "options": [["A", "B", "C", "D"]] * n, "answer": ["B"] * n}), path)
    return path
