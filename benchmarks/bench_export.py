"""export and push's media check over a curated run of 1M scored rows (560k kept).

`avcurate export` writes the final rows as a Hub dataset folder, each media path made
relative to its data file's folder; `avcurate push` first counts the media paths that
point outside the folder. Both used to handle paths one row at a time in Python
(`os.path.relpath`, `Path.resolve()`); they now work once per distinct folder and
join or count the rows with pyarrow compute. This prints the export command's wall time
and peak RSS, and for each path step the per-row way (the code before, replayed here
on the same paths) against the current function, measured in the same run.

    python benchmarks/bench_export.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _util import compile_package, measure
from bench_balance import make_run

from avcurate.core.store import RunStore
from avcurate.hub.export import relative_paths
from avcurate.hub.push import media_outside


def per_row_relpath(paths: pa.Array, start: Path) -> list[str | None]:
    """The code before: a relpath per row."""
    return [p if not p else Path(os.path.relpath(p, start)).as_posix()
            for p in paths.to_pylist()]


def per_row_outside(folder: Path) -> int:
    """The code before: a resolve per row."""
    root, count = folder.resolve(), 0
    for path in folder.glob("data/**/*.parquet"):
        for col in pq.read_table(path, columns=["video"]).columns:
            for v in col.to_pylist():
                if v and not (path.parent / v).resolve().is_relative_to(root):
                    count += 1
    return count


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, args.rows, 2.0)
        print("threshold + balance + subset (not timed)...", flush=True)
        subprocess.run([sys.executable, "-m", "avcurate", "run", str(root / "funnel.toml"),
                        "--out", str(run), "-q"], check=True, stdout=subprocess.DEVNULL)
        os.sync()
        out = root / "export"
        wall, peak = measure([sys.executable, "-m", "avcurate", "export", str(run),
                              "--out", str(out)])
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("data/**/*.parquet"))
        print(f"avcurate export: {wall:.2f} s, peak RSS {peak / 2**20:,.0f} MiB "
              f"({rows:,} rows written over all configs and splits)")
        final = RunStore(run).shards(run / "03-subset")
        paths = pa.concat_arrays([pq.read_table(f, columns=["video"]).column("video")
                                  .combine_chunks() for f in final])
        start = out / "data"
        before, old = timed(per_row_relpath, paths, start)
        after, new = timed(relative_paths, paths, start)
        assert new.to_pylist() == old
        print(f"relative media paths, {len(paths):,} rows: per row {before:.2f} s, "
              f"per folder {after:.2f} s ({before / after:.0f}x)")
        before, old = timed(per_row_outside, out)
        after, new = timed(media_outside, out)
        assert new == old
        print(f"push's media check, {new:,} paths outside: per row {before:.2f} s, "
              f"per folder {after:.2f} s ({before / after:.0f}x)")


if __name__ == "__main__":
    main()
