"""Probe throughput: rows x 4 media conditions, n = 8 answers per request, against a loopback
OpenAI-compatible server that answers after a fixed 200 ms, with 32 requests in flight.

Each request carries what the stage really sends (8 JPEG frames and/or a 10 s wav, the
question) and asks for n = 8 answers (`n`); the server returns 8 choices. Ideal throughput
is concurrency / latency requests/s (x 8 samples); target >= 90% of it. The server runs in
its own process so the client's CPU time is measured alone.

    python benchmarks/bench_probe.py [--rows 300] [--concurrency 32] [--latency 0.2] [--n 8]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
from _util import loopback_server


def media():
    """Decoded media as the run's cache holds it: 8 frames of 160x120, 10 s of 16 kHz audio."""
    from avcurate.media.cache import DecodedMedia

    m = DecodedMedia(None, None)
    y, x = np.mgrid[0:120, 0:160]
    m.frames = np.stack([np.stack([x + 9 * k, y * 2, x + y], -1) for k in range(8)]
                        ).astype(np.uint8)  # smooth frames, as video is (noise is JPEG's worst)
    m.times = np.linspace(0.5, 9.5, 8)
    m.audio = (0.2 * np.sin(np.arange(160000) * 0.05)).astype(np.float32)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--conditions", default="av,v,a,t",
                        help="e.g. t: text only, to measure the request path without media")
    args = parser.parse_args()

    from avcurate.curation.probe import Probe
    from avcurate.models import Executor, make_backend

    with loopback_server(args.latency) as port:
        stage = Probe(backend="openai", model="policy", base_url=f"http://127.0.0.1:{port}/v1",
                      concurrency=args.concurrency, n=args.n,
                      conditions=args.conditions.split(","))
        decoded = media()
        warm = {"id": "w", "video": "v.mp4", "question": "[cycle] warm-up", "options": ["a", "b"],
                "answer": "A"}
        Executor(make_backend(stage.spec()), concurrency=4, cache=None).run(
            stage.build_all(warm, decoded, []), partial(stage.validate, row=warm))  # imports
        rows = [{"id": str(i), "video": "v.mp4", "question": f"[cycle] Which one, {i}?",
                 "options": ["a dog", "a car", "rain", "music"], "answer": "B"}
                for i in range(args.rows)]
        # one decoded clip per row, made before the clock starts: in a run the decode
        # workers (other processes) fill the media cache; rows sharing a clip share its
        # encoded frames (stages/media_parts.py), here every row pays its own JPEG encodes
        clips = [media() for _ in rows]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        built = [(r, q) for r, clip in zip(rows, clips, strict=True)
                 for q in stage.build_all(r, clip, [])]
        build_s = time.perf_counter() - wall0
        executor = Executor(make_backend(stage.spec()), concurrency=args.concurrency, cache=None)
        outcomes = executor.run([q for _, q in built],
                                [partial(stage.validate, row=r) for r, _ in built])
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    requests = len(built)
    samples = sum(o.value["answers"] for o in outcomes if o.reason is None)
    ideal = args.concurrency / args.latency
    rate = requests / wall
    print(f"{args.rows:,} rows x {args.conditions} = {requests:,} requests of n = {args.n}, "
          f"concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms: "
          f"{samples:,} answers in {wall:.2f} s (building the requests included)")
    print(f"achieved {rate:.1f} req/s = {rate / ideal:.1%} of ideal {ideal:.0f} req/s, "
          f"{samples / wall:.0f} answers/s "
          f"(target >= 90%: {'met' if rate >= 0.9 * ideal else 'NOT met'})")
    print(f"client CPU: {cpu:.2f} s total, {cpu / requests * 1000:.2f} ms per request "
          f"(building the requests: {build_s:.2f} s)")


if __name__ == "__main__":
    main()
