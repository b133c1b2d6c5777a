"""Shared by the benchmarks: run a command and sample its process tree's peak RSS; the
loopback model server in a process of its own."""

from __future__ import annotations

import compileall
import multiprocessing as mp
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def compile_package() -> None:
    """Byte-compile avcurate's modules, as `pip install` does for an installed package.

    Benchmarks that time whole CLI processes would otherwise count Python compiling our
    ~100 modules from source on every start (~0.1 s) in an editable checkout run with
    PYTHONDONTWRITEBYTECODE set (as this machine, and many containers, do): a cost of the
    environment, not of a command. Writes `__pycache__` folders, which git ignores.
    """
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "avcurate", quiet=1)


def tree_rss(proc: psutil.Process, pss: bool = False) -> int:
    """Resident memory of a process and its children. With `pss`, each page shared by n
    of them counts 1/n in each (what forked workers sharing their parent's pages really
    add); plain RSS counts a shared page once per process."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss if pss else p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(cmd: list[str], pss: bool = False) -> tuple[float, int]:
    """Run `cmd`; return (wall seconds, peak RSS, or PSS, of its process tree in bytes)."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc, pss))
        # PSS reads every process's page map (milliseconds for a large one): sampled less
        # often, so the sampling does not take the measured command's CPU on 2 cores
        time.sleep(0.25 if pss else 0.02)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return elapsed, peak


def _serve(latency: float, port_queue) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from loopback import openai_server

    server = openai_server(latency=latency)
    port_queue.put(server.server_address[1])
    server.serve_forever()


@contextmanager
def loopback_server(latency: float) -> Iterator[int]:
    """The tests' loopback OpenAI-compatible server, answering after `latency` seconds, in its
    own process (so the client's CPU time is measured alone); yields its port."""
    queue = mp.Queue()
    proc = mp.Process(target=_serve, args=(latency, queue), daemon=True)
    proc.start()
    try:
        yield queue.get(timeout=30)
    finally:
        proc.terminate()
