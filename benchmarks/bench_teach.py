"""Teachers and merger at their configured concurrency: visual_teacher, audio_teacher and
merge run through the runner (shards, options, the decode-once media cache, the response
cache) against a loopback OpenAI-compatible server that answers after a fixed latency.

Each stage's ideal time is calls x latency / concurrency; the figure is ideal / measured
stage time (100% = the configured number of requests always in flight). Rows mix two
option sets and frame counts on purpose: rows were once grouped by options and each group
run on its own, which kept about one request in flight. Clips are real mp4s, 8 distinct
ones shared by the rows, so decoding (once per clip, through the media cache) is a small
share of the stage time.

    python benchmarks/bench_teach.py [--rows 480] [--concurrency 16] [--latency 0.25]
                                     [--shard-size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _util import loopback_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rows(n: int, clips: list[str]) -> list[dict]:
    return [{"id": f"r{i}", "video": clips[i % len(clips)],
             "question": f"Which square and which tone, case {i}?",
             "options": ["a red square with a high tone", "a blue square with a low tone",
                         "a green square with a medium tone"][: 3 if i % 2 else 2] + ["none"],
             "answer": "A"}
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--shard-size", type=int, default=64)
    args = parser.parse_args()

    from avcurate.media.synth import write_clip
    from avcurate.pipeline.recipe import Recipe, SourceSpec, StageSpec
    from avcurate.pipeline.runner import Runner

    tmp = Path(tempfile.mkdtemp(prefix="bench-teach-"))
    clips = []
    for k, (colour, freq) in enumerate([("red", 880), ("blue", 220), ("green", 440),
                                        ("red", 220)] * 2):
        clips.append(write_clip(tmp / f"c{k}.mp4", color=colour, freq=freq, seconds=2.0,
                                size=(160, 120)).name)
    ann = tmp / "a.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows, clips)))
    with loopback_server(args.latency) as port:
        model = {"backend": "openai", "model": "teacher", "concurrency": args.concurrency,
                 "base_url": f"http://127.0.0.1:{port}/v1"}
        stages = [StageSpec("validate"), StageSpec("visual_teacher", {**model, "frames": 4}),
                  StageSpec("audio_teacher", {**model, "audio_seconds": 2.0}),
                  StageSpec("teacher_filter", {"require": "either"}),
                  StageSpec("merge", dict(model))]
        source = SourceSpec("jsonl", str(ann), str(tmp), {})
        recipe = Recipe([source], stages, shard_size=args.shard_size, workers=2)
        Runner(recipe, tmp / "run", show_progress=False).run()
        manifest = json.loads((tmp / "run/manifest.json").read_text())
    print(f"{args.rows} rows, concurrency {args.concurrency}, server latency "
          f"{args.latency * 1000:.0f} ms, shards of {args.shard_size}, 2 workers")
    worst = 1.0
    for entry in manifest["stages"]:
        if not entry.get("model"):
            continue
        calls = entry.get("calls", {}).get("sent") or entry.get("calls", {}).get("requests") \
            or entry["rows_in"]
        ideal = calls * args.latency / args.concurrency
        ratio = ideal / entry["seconds"]
        worst = min(worst, ratio)
        print(f"  {entry['dir']:<18} {calls:>5} calls in {entry['seconds']:6.2f} s; ideal "
              f"{ideal:5.2f} s -> {ratio:.1%} of ideal, mean in flight "
              f"{ratio * args.concurrency:.1f} of {args.concurrency}")
    print(f"worst stage: {worst:.1%} of ideal (target >= 90%: "
          f"{'met' if worst >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
