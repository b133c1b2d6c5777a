"""Training's clip reads: in the rank's own process against a decode worker with a watchdog.

The omni policy reads each row's frames and audio through `trainer.clips.ClipReader`. In
training it decodes in a worker process that a `--media-timeout` watchdog can end (a
file that hangs decord costs its row, not the run); outside training (tests, the rollout
benchmark) in the calling process. This prints what the worker costs per clip: the same
clips (`--clips` of `--seconds` s, made with PyAV at each `--sizes`), `--frames` frames
and the same seconds of audio, scaled to the policy's default pixel budget, alternating
the two ways for `--rounds` rounds, best round each; and the worker's start (its first
clip) and its peak RSS (Linux's VmHWM) over every clip it read.

    python benchmarks/bench_train_clips.py [--clips 8] [--rounds 3] [--sizes 320x240,1280x720]

It also prints evaluation's reads: two evaluations over the same clips, each clip read
three ways (the clip, then the modality reward's no-audio and no-video variants) through
the decode worker, as `trainer.evaluate` reads them, with the clips kept in memory
(`ClipReader.keeping`) and without (every evaluation before the change); then two
training steps with the same variants, each step's reads held for its variants
(`ClipReader.holding`, as `trainer.groups` reads them) and read each time (before).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time
from pathlib import Path

import psutil

from avcurate.media import synth
from avcurate.trainer.clips import ClipReader

MAX_PIXELS = 200_704  # TrainConfig.max_pixels' default


def _round(reader: ClipReader, clips: list[Path], frames: int, seconds: float) -> float:
    start = time.perf_counter()
    for clip in clips:
        reader(str(clip), str(clip), frames, seconds, MAX_PIXELS)
    return (time.perf_counter() - start) / len(clips)


VARIANTS = ((True, True), (True, False), (False, True))  # the clip, no audio, no video


SCOPES = {"read each time": lambda reader: contextlib.nullcontext(),
          "kept": ClipReader.keeping, "held for the step": ClipReader.holding}


def _passes(scope: str, clips: list[Path], frames: int, seconds: float
            ) -> tuple[list[float], int]:
    """Seconds of each of two passes' reads (evaluations or training steps) in `scope`,
    and the reads the worker made."""
    reader, took = ClipReader(60.0), []
    try:
        for _ in range(2):
            start = time.perf_counter()
            with SCOPES[scope](reader):
                for clip in clips:
                    for video, audio in VARIANTS:
                        reader(str(clip) if video else None, str(clip) if audio else None,
                               frames, seconds, MAX_PIXELS)
            took.append(time.perf_counter() - start)
    finally:
        reader.close()
    return took, reader.decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="320x240,1280x720")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {args.clips} clips of "
          f"{args.seconds:g} s, {args.frames} frames + {args.seconds:g} s of audio each")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            clips = [synth.write_clip(Path(tmp) / f"{size}-{i}.mp4", seconds=args.seconds,
                                      size=(w, h), freq=220.0 + 40 * i)
                     for i in range(args.clips)]
            here, worker = ClipReader(None), ClipReader(60.0)
            try:
                t0 = time.perf_counter()
                worker(str(clips[0]), str(clips[0]), args.frames, args.seconds, MAX_PIXELS)
                start = time.perf_counter() - t0
                here(str(clips[0]), str(clips[0]), args.frames, args.seconds, MAX_PIXELS)
                best = {"in process": float("inf"), "worker": float("inf")}
                for _ in range(args.rounds):
                    best["in process"] = min(best["in process"],
                                             _round(here, clips, args.frames, args.seconds))
                    best["worker"] = min(best["worker"],
                                         _round(worker, clips, args.frames, args.seconds))
                peak = _children_peak_mib()
            finally:
                worker.close()
            print(f"{size}: in process {best['in process'] * 1000:.1f} ms/clip, worker "
                  f"{best['worker'] * 1000:.1f} ms/clip ({best['worker'] / best['in process']:.2f}x, "
                  f"+{(best['worker'] - best['in process']) * 1000:.1f} ms); the worker's "
                  f"first clip {start:.2f} s, its peak RSS {peak:,.0f} MiB")
            for what, scopes in (("evaluation", ("read each time", "kept")),
                                 ("training step", ("read each time", "held for the step"))):
                for scope in scopes:
                    (first, second), reads = _passes(scope, clips, args.frames, args.seconds)
                    print(f"  {what}, {len(clips)} rows x 3 variants, clips {scope}: first "
                          f"{first:.2f} s, second {second:.2f} s, {reads} reads")


def _children_peak_mib() -> float:
    """The largest peak RSS (Linux's VmHWM) among this process's children: the decode
    worker's high-water mark over every clip it read."""
    peaks = [0.0]
    for child in psutil.Process().children(recursive=True):
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines()
                  if line.startswith("VmHWM:")]
    return max(peaks)


if __name__ == "__main__":
    main()
