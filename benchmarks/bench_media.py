"""Media decoding throughput: probe + 8 frames + 10 s of audio per clip.

200 generated 10 s 320x240 clips (H.264 + AAC, 1 s GOP), decoded with 1 and 2
worker processes, decord vs PyAV for the frames; then decord through the run's own
decode pool (`WorkerPool`: chunks, and a time limit per clip) against the plain process
pool. Target on a 2-core machine: at least 25 clips/s with 2 workers.

    python benchmarks/bench_media.py [--clips 200] [--media-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from avcurate.media import audio, frames, probe, synth


def make_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip_{i:04d}.mp4" for i in range(n)]
    todo = [p for p in paths if not p.exists()]
    if todo:
        print(f"encoding {len(todo)} clips into {folder} (reused by later runs)...", flush=True)
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_make_one, [(p, seconds, i) for i, p in enumerate(todo)]))
    return paths


def _make_one(args: tuple[Path, float, int]) -> None:
    path, seconds, i = args
    synth.write_clip(path, seconds=seconds, color=list(synth.COLORS)[i % 6], freq=220 + 20 * (i % 30))


def work(args: tuple[str, str]) -> int:
    """The per-clip work of the validate stage + a teacher: probe, 8 frames, 10 s audio."""
    path, backend = args
    probe(path)
    x, _ = frames(path, 8, backend=backend)
    pcm = audio(path, seconds=10.0)
    return x.shape[0] + (pcm.size > 0)


def rate(paths: list[Path], backend: str, workers: int) -> float:
    jobs = [(str(p), backend) for p in paths]
    start = time.perf_counter()
    if workers == 1:
        for j in jobs:
            work(j)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(work, jobs, chunksize=4))
    return len(paths) / (time.perf_counter() - start)


def pool_rate(paths: list[Path], workers: int) -> float:
    """decord through the run's decode pool: chunks, a mark and a watchdog per clip."""
    from avcurate.stages.context import WorkerPool

    pool = WorkerPool(workers)
    try:
        pool.map(work, [(str(paths[0]), "decord")] * workers)  # start its workers, untimed
        start = time.perf_counter()
        pool.map(work, [(str(p), "decord") for p in paths])
        return len(paths) / (time.perf_counter() - start)
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--media-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "avcurate-bench-media")
    args = parser.parse_args()
    paths = make_clips(args.media_dir, args.clips, args.seconds)
    work((str(paths[0]), "decord"))  # warm imports and the page cache
    print(f"{len(paths)} clips of {args.seconds:.0f} s 320x240, {os.cpu_count()} CPUs")
    print(f"{'backend':<8} {'1 worker':>12} {'2 workers':>12} {'ratio':>7}")
    plain = 0.0
    for backend in ("decord", "pyav"):
        one, two = rate(paths, backend, 1), rate(paths, backend, 2)
        plain = plain or two
        print(f"{backend:<8} {one:>8.1f} c/s {two:>8.1f} c/s {two / one:>6.2f}x"
              + ("   (target >= 25 c/s with 2 workers: "
                 + ("met" if two >= 25 else "NOT met") + ")" if backend == "decord" else ""))
    pooled = pool_rate(paths, 2)
    print(f"decord in the run's decode pool (a time limit per clip), 2 workers: "
          f"{pooled:.1f} c/s, {pooled / plain:.2f}x a plain process pool")


if __name__ == "__main__":
    main()
