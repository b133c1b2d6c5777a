"""Resuming a finished run: the demo recipe (every stage, ~60 rows over real clips) run with
`avcurate run` against the tests' loopback model server (answers after 50 ms), then the
same command again. The second run must find every stage done, make 0 model calls and take
under 5% of the first run's time (both timed as whole CLI processes, start-up included;
avcurate's modules byte-compiled first, as an installed package's are).

    python benchmarks/bench_resume.py [--latency 0.05]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import compile_package

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()

    from loopback import openai_server

    compile_package()

    from avcurate.demo import make_demo

    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    recipe = make_demo(tmp / "demo")
    cmd = [sys.executable, "-m", "avcurate", "run", str(recipe), "--out", str(tmp / "run"), "-q"]
    with openai_server(latency=args.latency) as server:
        env = os.environ | {"AVCURATE_DEMO_BASE_URL": server.url + "/v1"}
        times, calls = [], []
        for _ in range(2):
            before = len(server.requests)
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
            calls.append(len(server.requests) - before)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "avcurate", "version"], check=True,
                       stdout=subprocess.DEVNULL)
        startup = time.perf_counter() - start
    ratio = times[1] / times[0]
    print(f"first run: {times[0]:.2f} s, {calls[0]} model calls; resume of the finished run: "
          f"{times[1]:.2f} s, {calls[1]} model calls ({ratio:.1%} of the first; "
          f"`avcurate version` alone takes {startup:.2f} s)")
    print(f"target < 5% and 0 calls: {'met' if ratio < 0.05 and calls[1] == 0 else 'NOT met'}")


if __name__ == "__main__":
    main()
