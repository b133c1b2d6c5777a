"""Judge-call throughput: 2,000 score requests against a loopback OpenAI-compatible server
that answers after a fixed 200 ms, with 32 requests in flight.

Ideal throughput is concurrency / latency = 160 requests/s; target >= 90% of it.
The server runs in its own process so the client's CPU time per request is
measured alone. (The loopback server is the one the tests use.)

    python benchmarks/bench_scoring.py [--requests 2000] [--concurrency 32] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from _util import loopback_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()

    from avcurate.curation.score import Score
    from avcurate.models import Executor, make_backend

    with loopback_server(args.latency) as port:
        stage = Score(backend="openai", model="judge", base_url=f"http://127.0.0.1:{port}/v1",
                      media="none", concurrency=args.concurrency)
        rows = [{"id": str(i), "video": "v.mp4", "question": f"What is heard at second {i}?",
                 "options": ["a dog", "a car", "rain", "music"], "answer": "B"}
                for i in range(args.requests)]
        requests = [stage.build(r, None, []) for r in rows]
        executor = Executor(make_backend(stage.spec()), concurrency=args.concurrency, cache=None)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        outcomes = executor.run(requests, [partial(stage.validate, row=r) for r in rows])
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    ok = sum(o.reason is None for o in outcomes)
    ideal = args.concurrency / args.latency
    rate = args.requests / wall
    print(f"{args.requests:,} requests, concurrency {args.concurrency}, server latency "
          f"{args.latency * 1000:.0f} ms: {ok:,} valid answers in {wall:.2f} s")
    print(f"achieved {rate:.1f} req/s = {rate / ideal:.1%} of ideal {ideal:.0f} req/s "
          f"(target >= 90%: {'met' if rate >= 0.9 * ideal else 'NOT met'})")
    print(f"client CPU: {cpu:.2f} s total, {cpu / args.requests * 1000:.2f} ms per request")


if __name__ == "__main__":
    main()
