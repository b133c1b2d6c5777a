"""Ingest + validate of 100,000 annotation rows: peak memory and time.

The rows (LLaVA-Video format) reference 200 real clips, as real datasets ask
many questions per video, so media probes are cached per file. The run goes
through the real CLI in a subprocess; its whole process tree (the runner and
its probe workers) is sampled for PSS (a page shared by n processes counts 1/n in
each, as forked ingest workers share the parsed records). Targets: peak memory under
1 GB at 100k rows; ingest of 1M rows under 15 s (issue 16).

    python benchmarks/bench_ingest.py [--rows 100000] [--workers 2]
    python benchmarks/bench_ingest.py --rows 1000000     # the 1M-row figure (~2 min)

`--workers` is the recipe's `workers`: decode processes for validate, and the
processes that build a large JSON file's rows in ingest (1 = all in one process).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _util import measure

from avcurate.media import synth


def write_annotations(path: Path, rows: int, clips: int) -> None:
    records = []
    for i in range(rows):
        opts = "\n".join(f"{c}. {o}" for c, o in zip("ABCD", ["red", "green", "blue", "yellow"],
                                                       strict=True))
        records.append({
            "id": f"q{i:06d}", "video": f"clip_{i % clips:03d}.mp4", "data_source": "bench",
            "conversations": [
                {"from": "human", "value": f"<video>\nWhat color is the square? ({i})\n{opts}"},
                {"from": "gpt", "value": "ABCD"[i % 4]}],
        })
    path.write_text(json.dumps(records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.clips):
            synth.write_clip(root / f"media/clip_{i:03d}.mp4", seconds=2.0, size=(160, 120))
        write_annotations(root / "ann.json", args.rows, args.clips)
        (root / "recipe.toml").write_text(
            f'[run]\nshard_size = 1024\nworkers = {args.workers}\n[[sources]]\n'
            'name = "llava-video"\nannotations = "ann.json"\nmedia_root = "media"\n'
            '[[stages]]\nname = "validate"\n')
        cmd = [sys.executable, "-m", "avcurate", "run", str(root / "recipe.toml"), "--out",
               str(root / "run"), "-q"]
        elapsed, peak = measure(cmd, pss=True)
        manifest = json.loads((root / "run/manifest.json").read_text())
    ingest, validate = manifest["stages"]
    print(f"{args.rows:,} annotation rows over {args.clips} clips, {args.workers} workers: "
          f"ingest {ingest['seconds']:.1f}s ({args.rows / ingest['seconds']:,.0f} rows/s), "
          f"validate {validate['seconds']:.1f}s, wall {elapsed:.1f}s")
    if args.rows >= 1_000_000:
        per_m = ingest["seconds"] * 1e6 / args.rows
        print(f"ingest per 1M rows: {per_m:.1f} s (target < 15 s: "
              f"{'met' if per_m < 15 else 'NOT met'})")
    print(f"kept {validate['kept']:,} rejected {validate['rejected']:,}; "
          f"{args.rows / elapsed:,.0f} rows/s end to end")
    print(f"peak PSS of the process tree: {peak / 2**20:.0f} MiB "
          f"(target < 1024 MiB: {'met' if peak < 2**30 else 'NOT met'})")


if __name__ == "__main__":
    main()
