"""Training's start-up read of an export's rows: all of them as dicts up front, or kept in Arrow.

Every rank of `avcurate train` reads the whole train split. Until 2026-11-25 it turned
each row into a dict and each media path into an absolute one with `Path.resolve()`
before the first step; now the rows stay in Arrow (`trainer.data.Rows`), the media
paths are made absolute once per distinct folder, and a row becomes a dict when a step
draws it. This writes an export-shaped split (`--rows` rows over `--files` files, a
`--trace-bytes` reasoning trace per row, four questions per clip, paths relative to the
data files as an export writes them), then loads it both ways, each in its own process,
and prints the wall time, the peak RSS once loaded and a digest of every row (the same rows, the
same values, or the run says so).

    python benchmarks/bench_train_rows.py [--rows 500000] [--files 4] [--trace-bytes 1500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LOAD = r"""
import hashlib, json, resource, sys, time
from pathlib import Path
import pyarrow.parquet as pq

way, folder = sys.argv[1], Path(sys.argv[2])


def before(folder):  # trainer/data.py's load_rows before 2026-11-25, for an export folder
    rows = []
    for file in sorted((folder / "data").glob("train-*.parquet")):
        for row in pq.read_table(file).to_pylist():
            for col in ("video", "audio"):
                value = row.get(col)
                if isinstance(value, dict):
                    value = value.get("path")
                if value and not Path(value).is_absolute():
                    value = str((file.parent / value).resolve())
                if col in row:
                    row[col] = value
            rows.append(row)
    return rows


start = time.perf_counter()
if way == "before":
    rows = before(folder)
else:
    from avcurate.trainer.data import load_rows
    rows = load_rows(folder)
seconds = time.perf_counter() - start
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
digest = hashlib.sha256()
for row in rows:
    digest.update(json.dumps(row, sort_keys=True).encode())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "rss_mib": loaded, "peak_mib": peak, "rows": len(rows),
                  "digest": digest.hexdigest()[:16]}))
"""


def make_split(folder: Path, rows: int, files: int, trace_bytes: int) -> int:
    """An export-shaped train split; returns its size in Arrow (bytes)."""
    rng = np.random.default_rng(0)
    words = np.array(["the", "dog", "barks", "on", "the", "left", "while", "a", "bell",
                      "rings", "twice", "camera", "pans", "visual", "audio", "loudly"])
    pool = [" ".join(rng.choice(words, trace_bytes // 6)) for _ in range(997)]
    per_file, nbytes = -(-rows // files), 0
    (folder / "data").mkdir(parents=True)
    for k in range(files):
        ids = np.arange(k * per_file, min(rows, (k + 1) * per_file))
        n = len(ids)
        trace = [f"<think>{i} {pool[i % len(pool)]}</think>" for i in ids]
        table = pa.table({
            "id": [f"parquet:set/r{i}" for i in ids],
            "source": ["parquet"] * n,
            "question": [f"What makes the sound in clip {i // 4}?" for i in ids],
            "options": [["a dog", "a bell", "a car", "nothing"]] * n,
            "answer": ["B"] * n,
            "video": [f"../videos/c{i // 4:07d}.mp4" for i in ids],
            "audio": [None] * n,
            "category": [f"cat_{i % 16}" for i in ids],
            "trace": trace,
            "composite_score": rng.random(n),
        })
        nbytes += table.nbytes
        pq.write_table(table, folder / "data" / f"train-{k:05d}-of-{files:05d}.parquet",
                       compression="zstd")
    return nbytes


def load(way: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD, way, str(folder)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--trace-bytes", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        print(f"writing {args.rows:,} rows over {args.files} files, ~{args.trace_bytes} bytes "
              "of trace each (not timed)...", flush=True)
        nbytes = make_split(folder, args.rows, args.files, args.trace_bytes)
        print(f"{nbytes / 2**20:,.0f} MiB in Arrow", flush=True)
        old, new = load("before", folder), load("now", folder)
    for name, got in (("before (dicts, a resolve per path)", old),
                      ("now (Arrow, a resolve per folder)", new)):
        print(f"{name}: {got['seconds']:.2f} s, peak RSS {got['rss_mib']:,.0f} MiB once "
              f"loaded ({got['peak_mib']:,.0f} MiB after reading every row), {got['rows']:,} rows")
    same = old["digest"] == new["digest"] and old["rows"] == new["rows"]
    print(f"load {old['seconds'] / new['seconds']:.1f}x faster, "
          f"{old['rss_mib'] / new['rss_mib']:.1f}x less memory; "
          + ("the same rows" if same else "ROWS DIFFER"))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
