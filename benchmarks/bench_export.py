"""export and push's media check over a curated run of 1M scored rows (560k kept).

`avcurate export` writes the final rows as a Hub dataset folder, each media path made
relative to its data file's folder; `avcurate push` first counts the media paths that
point outside the folder. Both used to handle paths one row at a time in Python
(`os.path.relpath`, `Path.resolve()`); they now work once per distinct folder and
join or count the rows with pyarrow compute. This prints the export command's wall time
and peak RSS, and for each path step the per-row way (the code before, replayed here
on the same paths) against the current function, measured in the same run.

Then every kept row gets a reasoning trace of about `--trace-bytes` (as after
merge-traces), and the export is measured again against the in-memory way it used to
work (every row read, sorted by id and split in memory; replayed here in a process of
its own), with their outputs compared row for row; then the same export is run again,
which finds the run and its options unchanged and writes nothing.

    python benchmarks/bench_export.py [--rows 1000000] [--trace-bytes 1500]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
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


IN_MEMORY = """
import sys
from pathlib import Path
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from avcurate.hub.export import TRAINING_COLUMNS, relative_paths
from avcurate.hub.splits import validation_ids
final, out = [Path(p) for p in sys.argv[2:]], Path(sys.argv[1])
have = pq.read_schema(final[0]).names
columns = [c for c in TRAINING_COLUMNS if c in have]
val = validation_ids(final, 0.05)
for folder, flag in (("data", None), ("data/audio_visual", "subset_audio_visual")):
    read = columns + ([flag] if flag else [])
    table = pa.concat_tables([pq.read_table(f, columns=read) for f in final]).sort_by("id")
    if flag:
        table = table.filter(pc.fill_null(table.column(flag), False)).select(columns)
    in_val = pc.is_in(table.column("id"), value_set=val)
    for split, rows in (("train", table.filter(pc.invert(in_val))),
                        ("validation", table.filter(in_val))):
        for col in ("video", "audio"):
            rows = rows.set_column(rows.schema.get_field_index(col), col,
                                   relative_paths(rows.column(col).combine_chunks(), out / folder))
        n = max(1, -(-rows.nbytes // (500 * 1024**2)))
        per = -(-rows.num_rows // n)
        (out / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pq.write_table(rows.slice(i * per, per),
                           out / folder / f"{split}-{i:05d}-of-{n:05d}.parquet", compression="zstd")
"""


def add_traces(files: list[Path], size: int) -> int:
    """Give each row a trace of about `size` bytes (one of 1,000 made of words, after its
    id, so no two are equal); return the traces' bytes."""
    rng = random.Random(0)
    words = ["the", "speaker", "says", "a", "dog", "barks", "while", "camera", "pans", "left",
             "and", "music", "plays"]
    pool = pa.array([" ".join(rng.choices(words, k=size // 5)) for _ in range(1000)])
    total = 0
    for path in files:
        table = pq.read_table(path)
        pick = pa.array(rng.choices(range(1000), k=table.num_rows))
        trace = pc.binary_join_element_wise(table.column("id"), pc.take(pool, pick), ": ")
        total += trace.nbytes
        pq.write_table(table.append_column("trace", trace), path, compression="zstd")
    return total


def traces_phase(root: Path, run: Path, size: int) -> None:
    final = RunStore(run).shards(run / "03-subset")
    print(f"traces of ~{size} bytes added: {add_traces(final, size) / 2**20:,.0f} MiB in "
          "Arrow (not timed)", flush=True)
    out, old = root / "export-traces", root / "in-memory"
    wall, peak = measure([sys.executable, "-m", "avcurate", "export", str(run), "--out",
                          str(out), "--val-fraction", "0.05"])
    owall, opeak = measure([sys.executable, "-c", IN_MEMORY, str(old), *map(str, final)])
    for data in ("data", "data/audio_visual"):
        for split in ("train", "validation"):
            got, want = (pa.concat_tables(pq.read_table(p) for p in
                                          sorted((top / data).glob(f"{split}-*.parquet")))
                         for top in (out, old))
            assert got.equals(want), (data, split)
    print(f"with traces: avcurate export {wall:.2f} s, peak RSS {peak / 2**20:,.0f} MiB; "
          f"in memory (the way before, replayed) {owall:.2f} s, {opeak / 2**20:,.0f} MiB; "
          f"the same rows ({opeak / peak:.1f}x less memory)", flush=True)
    dates = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again, again_peak = measure([sys.executable, "-m", "avcurate", "export", str(run), "--out",
                                 str(out), "--val-fraction", "0.05"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == dates
    print(f"the same export again (run, options and folder unchanged): {again:.2f} s, peak "
          f"RSS {again_peak / 2**20:,.0f} MiB, nothing written ({wall / again:.0f}x less "
          "time than making it)", flush=True)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trace-bytes", type=int, default=1500)
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
        traces_phase(root, run, args.trace_bytes)


if __name__ == "__main__":
    main()
