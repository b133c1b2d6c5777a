"""What a stage gets from the runner: where the run lives and shared services."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import forkserver, resource_tracker
from pathlib import Path
from typing import Any

from avcurate.core.kvcache import KVCache
from avcurate.core.lock import pid_alive


def leave_interrupts_to_parent() -> None:
    """Pool worker initializer: ignore Ctrl-C. A terminal sends SIGINT to every process
    of the command, and each worker would print its own KeyboardInterrupt traceback; the
    run's process alone stops the run, and shutting its pools down ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C back while child processes start, and raise it once they have.

    Two holds, because a Ctrl-C can hurt twice. A child inherits this thread's signal
    mask, so none can be interrupted before it has set itself to ignore SIGINT (a fork
    server mid-import printed a traceback). And a KeyboardInterrupt raised in the middle
    of a pool's submit can leave a started worker unknown to the pool, so the run's exit
    unlinks the queues it is still reading (another traceback): the main thread, where
    Python raises it, only records the Ctrl-C here. The mask alone would not do that: the
    kernel hands the signal to another thread, and Python still raises it in this one.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pressed: list[int] = []
    in_main = threading.current_thread() is threading.main_thread()
    me = os.getpid()

    def record(number: int, _: object) -> None:
        if os.getpid() != me:  # a child forked meanwhile inherited this: the default action
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        pressed.append(number)

    # SIGTERM's handler too (the command line takes it as a Ctrl-C); it is not masked:
    # children end on SIGTERM by default, as a pool's shutdown of a broken worker expects
    handlers = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)} \
        if in_main else {}
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    for number in dict.fromkeys(pressed):  # as each would have been taken, now
        handler = handlers[number]
        if callable(handler):
            handler(number, None)  # Python's own Ctrl-C handler, ours for SIGTERM: raises
        elif handler == signal.SIG_DFL and number == signal.SIGTERM:
            signal.raise_signal(number)  # its default action: the process ends


def exit_with_parent(parent: int) -> None:
    """Pool worker initializer: leave as soon as the run's process is gone (even after
    kill -9, when no shutdown message ever comes), instead of lingering as an orphan;
    Ctrl-C is left to that process (`leave_interrupts_to_parent`)."""
    leave_interrupts_to_parent()

    def watch() -> None:
        while pid_alive(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


# Workers come from a fork server, not a fork of the run's process: that process has
# threads (model stages work on several shards at once, the executor's event loop, the
# progress bar), and a child forked while one of them holds a lock (an import, an allocator)
# can wait on it forever. The server is a fresh interpreter; forking from it is safe.
POOL_START = "forkserver"


class WorkerPool:
    """Decode workers for a whole run, started on first use.

    One per run, not one per stage: a fresh pool's workers took ~0.8 s (on 2 cores, next to
    a running stage) before their first job, which every media stage paid again before its
    first request (benchmarks/bench_teach.py). Stages share the run's pool; a context made
    without one (dry runs, Ray actors) starts its own.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        with self._lock:
            if self._pool is None:
                start = multiprocessing.get_context(POOL_START)
                start.set_forkserver_preload(["avcurate.media.cache"])
                # the resource tracker first: starting it unblocks SIGINT in this thread
                resource_tracker.ensure_running()
                with interrupts_held():  # the server's forks inherit its mask, as it does ours
                    forkserver.ensure_running()
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=start,
                                                 initializer=exit_with_parent,
                                                 initargs=(os.getpid(),))
            pool = self._pool
        with interrupts_held():  # a Ctrl-C amid a worker's start left it unknown to the pool
            results = pool.map(fn, items, chunksize=max(1, len(items) // (4 * self.workers)))
        return list(results)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(cancel_futures=True)


@dataclass
class StageContext:
    """Per-stage context: where the run and the stage's outputs live, and shared services.

    It is the same for every shard; the shard being processed is passed to `process`.
    """

    run_dir: Path
    stage_dir: Path
    workers: int = 1
    pool: WorkerPool | None = None  # the run's; None: this context starts and closes its own
    _own_pool: WorkerPool | None = field(default=None, repr=False)
    _caches: dict[str, KVCache] = field(default_factory=dict, repr=False)
    # shards of one stage may be processed in several threads at once (ModelStage)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cache(self, name: str) -> KVCache:
        """A persistent key-value cache in the run folder, shared by every stage of the run."""
        with self._lock:
            if name not in self._caches:
                self._caches[name] = KVCache(self.run_dir / "cache" / f"{name}.sqlite")
            return self._caches[name]

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """`fn` over `items`, in a process pool when workers > 1 (for CPU-bound decoding).

        `fn` must be a module-level function so it can be pickled.
        """
        items = list(items)
        if self.workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with self._lock:
            if self.pool is None and self._own_pool is None:
                self._own_pool = WorkerPool(self.workers)
            pool = self.pool or self._own_pool
        return pool.map(fn, items)

    def close(self) -> None:
        """Close the caches, and the pool when this context started it (not the run's)."""
        if self._own_pool is not None:
            self._own_pool.close()
            self._own_pool = None
        for cache in self._caches.values():
            cache.close()
        self._caches.clear()
