"""Local runner vs Ray on this machine: media validation and a model stage, 2,000 samples.

The samples reference 200 generated clips (10 each); the model stage is `classify`
against the loopback OpenAI-compatible server answering after a fixed latency. Both
executors run the same recipe into fresh run folders; Ray's fixed start-up cost
(`ray.init` of a local 2-CPU instance) is measured separately. Then each finished run is
resumed by the CLI (nothing left to do), locally and with `--executor ray`.

    python benchmarks/bench_ray.py [--samples 2000] [--latency 0.2]
    python benchmarks/bench_ray.py --latency 1 --samples 640   # the 2-actor target
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _util import loopback_server


def write_inputs(root: Path, samples: int, clips: int) -> None:
    from avcurate.media import synth

    for i in range(clips):
        synth.write_clip(root / f"media/c{i:03d}.mp4", seconds=2.0, size=(160, 120),
                         freq=220 + 10 * (i % 40))
    with (root / "ann.jsonl").open("w") as f:
        for i in range(samples):
            f.write(json.dumps({"id": f"s{i:05d}", "video": f"c{i % clips:03d}.mp4",
                                "question": f"How many sounds do you hear in clip {i}?",
                                "options": ["one", "two", "three"], "answer": "B"}) + "\n")


def recipe(root: Path, port: int, concurrency: int) -> Path:
    path = root / "recipe.toml"
    path.write_text(
        '[run]\nshard_size = 100\nworkers = 1\n[[sources]]\nname = "jsonl"\n'
        'annotations = "ann.jsonl"\nmedia_root = "media"\n'
        'columns = {id = "id", video = "video", question = "question", options = "options", '
        'answer = "answer"}\n[[stages]]\nname = "validate"\n[[stages]]\nname = "classify"\n'
        f'backend = "openai"\nmodel = "q"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f'concurrency = {concurrency}\n')
    return path


def stage_seconds(run_dir: Path) -> dict[str, float]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {s["name"]: s["seconds"] for s in manifest["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    import ray

    from avcurate.pipeline.ray_runner import RayRunner
    from avcurate.pipeline.recipe import Recipe
    from avcurate.pipeline.runner import Runner

    with loopback_server(args.latency) as port, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        write_inputs(root, args.samples, args.clips)
        rec = Recipe.load(path := recipe(root, port, args.concurrency))
        t = time.perf_counter()
        Runner(rec, root / "local", show_progress=False).run()
        local = time.perf_counter() - t
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        RayRunner(rec, root / "ray", show_progress=False, actors=2).run()
        remote = time.perf_counter() - t
        demo_local, demo_ray = demo_times(root)
        ray.shutdown()
        resumed = {executor: resume_seconds(path, root / executor, executor)
                   for executor in ("local", "ray")}
        ls, rs = stage_seconds(root / "local"), stage_seconds(root / "ray")
        dl, dr = stage_seconds(root / "demo-local"), stage_seconds(root / "demo-ray")
    print(f"{args.samples:,} samples over {args.clips} clips, classify against a "
          f"{args.latency * 1000:.0f} ms server, {os.cpu_count()} CPUs")
    print(f"local: {local:.2f} s  (validate {ls['validate']:.2f} s, classify {ls['classify']:.2f} s)")
    print(f"ray:   {remote:.2f} s  (validate {rs['validate']:.2f} s, classify {rs['classify']:.2f} s; "
          f"2 actors x {args.concurrency} in flight)")
    print(f"ray / local: {remote / local:.2f}x; Ray start-up (ray.init): {startup:.2f} s")
    speedup = ls["classify"] / rs["classify"]
    print(f"classify, 2 actors vs the local runner: {speedup:.2f}x faster (target >= 1.6x at "
          f"1 s latency: {'met' if speedup >= 1.6 else 'NOT met'}"
          f"{'' if args.latency >= 1 else '; run with --latency 1 --samples 640'})")
    print(f"demo recipe (every stage, demo model server): local {demo_local:.2f} s, ray "
          f"{demo_ray:.2f} s = {demo_ray / demo_local:.2f}x the local time (target <= 1.5x: "
          f"{'met' if demo_ray <= 1.5 * demo_local else 'NOT met'})")
    print("  per stage, local / ray (s): " + ", ".join(
        f"{name} {dl[name]:.2f}/{dr.get(name, 0):.2f}" for name in dl))
    print(f"a finished run resumed (the CLI, nothing to do): local {resumed['local']:.2f} s, "
          f"--executor ray {resumed['ray']:.2f} s (no Ray is started for it)")


def resume_seconds(recipe_path: Path, run_dir: Path, executor: str) -> float:
    """`avcurate run` on a finished run, as a user re-runs it: best of 3 (seconds)."""
    import subprocess
    import sys

    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "avcurate", "run", str(recipe_path), "--out",
                        str(run_dir), "--executor", executor, "-q"], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return min(times)


def demo_times(root: Path) -> tuple[float, float]:
    """The demo recipe, every stage, locally and on the running Ray instance (seconds)."""
    from avcurate.demo import make_demo
    from avcurate.demo.server import demo_server
    from avcurate.pipeline.ray_runner import RayRunner
    from avcurate.pipeline.recipe import Recipe
    from avcurate.pipeline.runner import Runner

    with demo_server() as server:
        os.environ["AVCURATE_DEMO_BASE_URL"] = server.url + "/v1"
        recipe = Recipe.load(make_demo(root / "demo"))
        t = time.perf_counter()
        Runner(recipe, root / "demo-local", show_progress=False).run()
        local = time.perf_counter() - t
        t = time.perf_counter()
        RayRunner(recipe, root / "demo-ray", show_progress=False, actors=2).run()
        return local, time.perf_counter() - t


if __name__ == "__main__":
    main()
