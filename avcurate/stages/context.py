"""What a stage gets from the runner: where the run lives and shared services."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avcurate.core.kvcache import KVCache
from avcurate.core.lock import pid_alive


def exit_with_parent(parent: int) -> None:
    """Pool worker initializer: leave as soon as the run's process is gone (even after
    kill -9, when no shutdown message ever comes), instead of lingering as an orphan."""

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
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=start,
                                                 initializer=exit_with_parent,
                                                 initargs=(os.getpid(),))
            pool = self._pool
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (4 * self.workers))))

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
