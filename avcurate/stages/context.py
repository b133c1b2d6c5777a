"""What a stage gets from the runner: where the run lives and shared services."""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import forkserver, resource_tracker
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avcurate.core.kvcache import KVCache
from avcurate.core.lock import pid_alive
from avcurate.media.errors import Lost
from avcurate.stages.errors import StageError

if TYPE_CHECKING:
    import pyarrow as pa


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


MEDIA_TIMEOUT_S = 60.0
"""Seconds one media job (a probe, the frames and clip of one file) may take in a decode
worker, some 1000x a normal one; the recipe's `[run] media_timeout`, whose default this
is, changes it. Some files make a decoder spin forever in native code with the GIL held
(decord's `get_batch`, dmlc/decord#373 and #375), where no Python timer can reach it."""
CHUNK_MAX = 64  # jobs sent to a worker at once: after a crash, at most this many go again
_MARK = struct.Struct("<qd")  # a chunk's job being run now, and since when (time.monotonic)
_DEVNULL: Any = None  # where the watchdog's stack dump goes: the row says why
_WAITING = object()  # a job's place in `WorkerPool.map`'s results until it is done


def run_chunk(fn: Callable[[Any], Any], items: list[Any], seconds: float, marks: str,
              slot: int) -> list[Any]:
    """Run a chunk of jobs in a decode worker, each of which may take `seconds`.

    Before each job the worker notes which one and when in slot `slot` of the file
    `marks`, so that if the worker dies the pool knows the job it died on. The time limit
    is faulthandler's watchdog, a C thread that needs no GIL: it ends a worker stuck in
    native code that holds the GIL, where a Python timer or signal handler never runs."""
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")  # noqa: SIM115 (kept open for the worker's life)
    fd = os.open(marks, os.O_WRONLY)
    try:
        out = []
        for k, item in enumerate(items):
            os.pwrite(fd, _MARK.pack(k, time.monotonic()), slot * _MARK.size)
            faulthandler.dump_traceback_later(seconds, exit=True, file=_DEVNULL)
            try:
                out.append(fn(item))
            finally:
                faulthandler.cancel_dump_traceback_later()
        return out
    finally:
        os.close(fd)


class WorkerPool:
    """Decode workers for a whole run, started on first use.

    One per run, not one per stage: a fresh pool's workers took ~0.8 s (on 2 cores, next to
    a running stage) before their first job, which every media stage paid again before its
    first request (benchmarks/bench_teach.py). Stages share the run's pool; a context made
    without one (dry runs, Ray actors) starts its own.

    No job can stop the run or hang it: each may take `timeout` seconds (`run_chunk`), and
    a job that runs past it or whose worker dies under it (a decoder crash) comes back as
    a `Lost`; the pool starts again for the rest.
    """

    def __init__(self, workers: int, timeout: float = MEDIA_TIMEOUT_S) -> None:
        self.workers = workers
        self.timeout = timeout
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
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
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Drop a broken pool; the next job starts a new one. Threads that share the pool
        all see it break, and only the first shuts it down: two shutdowns at once close
        its queues twice. The executor fails every job still out either way."""
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
        pool.shutdown(wait=True)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """`fn` over `items` in the workers, in order, in chunks; a job that ran past the
        time limit or took its worker down is a `Lost` in its place.

        When a worker dies, every chunk out fails with it. Each chunk's mark (`run_chunk`)
        tells which of its jobs was running and since when: one running for longer than
        the limit is lost, and every other job not done goes again. With none late (a
        crash), the running ones are tried again, each in a worker of its own, and one
        that takes that worker down too is lost."""
        results = [_WAITING] * len(items)
        queue = list(range(len(items)))
        while queue:
            queue, suspects = self._stream(fn, items, queue, results)
            for i in suspects:
                results[i] = self._alone(fn, items[i])
        return results

    def _stream(self, fn: Callable[[Any], Any], items: list[Any], queue: list[int],
                results: list[Any]) -> tuple[list[int], list[int]]:
        """Run the queued jobs until done or the pool breaks; return the jobs to run again
        and the ones to try alone."""
        size = max(1, min(CHUNK_MAX, len(queue) // (4 * self.workers)))
        chunks = [queue[k:k + size] for k in range(0, len(queue), size)]
        fd, marks = tempfile.mkstemp(prefix="avcurate-marks-")
        try:
            os.write(fd, _MARK.pack(-1, 0.0) * len(chunks))
            pool = self._executor()
            out: dict[Future, int] = {}
            for n, chunk in enumerate(chunks):
                future = self._submit(pool, run_chunk, fn, [items[i] for i in chunk],
                                      self.timeout, marks, n)
                if future is None:
                    break
                out[future] = n
            for future in as_completed(out):
                error = future.exception()
                if isinstance(error, BrokenProcessPool):
                    break
                if error is not None:  # the job's own exception (a bug): as pool.map would
                    raise error
                for i, r in zip(chunks[out[future]], future.result(), strict=True):
                    results[i] = r
            else:
                if len(out) == len(chunks):
                    return [], []
            broke = time.monotonic()
            self._discard(pool)  # a worker died: every chunk still out failed with it
            return self._sort_out(chunks, out, os.pread(fd, _MARK.size * len(chunks), 0),
                                  broke, results)
        finally:
            os.close(fd)
            os.unlink(marks)

    def _sort_out(self, chunks: list[list[int]], out: dict[Future, int], marks: bytes,
                  broke: float, results: list[Any]) -> tuple[list[int], list[int]]:
        """After a worker died (seen at `broke`): keep the chunks that came back, lose a job
        that had run past the limit, and sort the rest into jobs to run again and jobs
        to try alone."""
        late, running, again = [], [], []
        for future, n in out.items():
            if future.exception() is None:
                for i, r in zip(chunks[n], future.result(), strict=True):
                    results[i] = r
                continue
            k, since = _MARK.unpack_from(marks, n * _MARK.size)
            for j, i in enumerate(chunks[n]):
                if j != k:
                    again.append(i)
                elif broke - since >= self.timeout:
                    late.append(i)
                else:
                    running.append(i)
        sent = set(out.values())
        again += [i for n, chunk in enumerate(chunks) if n not in sent for i in chunk]
        for i in late:
            results[i] = self._lost_in_time()
        if late:  # the ones running beside it were ended with it: they go again
            return sorted(again + running), []
        if not running:  # a worker died with no job of this map begun: maybe all of them do
            self._check_workers_live()
        return sorted(again), running

    def _submit(self, pool: ProcessPoolExecutor, *args: Any) -> Future | None:
        """Send one job, or None when the pool broke (another thread that shares it may
        have dropped it already)."""
        try:
            with interrupts_held():  # a Ctrl-C amid a worker's start left it unknown
                return pool.submit(*args)
        except BrokenProcessPool:
            return None
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            if self._pool is pool:  # not a pool another thread dropped: the run is ending
                raise
            return None

    def _alone(self, fn: Callable[[Any], Any], item: Any) -> Any:
        """One job in a worker of its own: its result, or a `Lost` when it takes that
        worker down too (and a worker can run anything at all). Its own, not one of the
        shared pool: another thread's crashing job would take this one down with it."""
        solo = WorkerPool(1, self.timeout)
        try:
            results = [_WAITING]
            for _ in range(2):  # a second go only if the worker died before the job began
                _, running = solo._stream(fn, [item], [0], results)
                if results[0] is not _WAITING:  # its result, or a Lost past the limit
                    return results[0]
                if running:
                    solo._check_workers_live()
                    break
            return Lost("media_crash", "the worker process reading this file died (a crash "
                                       "in the decoder, or the system ran out of memory)")
        finally:
            solo.close()

    def _check_workers_live(self) -> None:
        """Raise StageError when a worker dies on a job that reads no file, too: then it is
        not the file's fault, and rejecting every row as `media_crash` would hide why."""
        pool = self._executor()
        future = self._submit(pool, abs, 0)
        try:
            if future is not None:
                future.result()
                return
        except BrokenProcessPool:
            pass
        self._discard(pool)
        raise StageError("the decode worker processes die before finishing any job, even one "
                         "that reads no file; check memory limits and that avcurate imports "
                         "in a fresh Python (`python -c 'import avcurate.media.cache'`)")

    def _lost_in_time(self) -> Lost:
        return Lost("media_timeout", f"no result within {self.timeout:g} s (media_timeout): "
                                     "the decoder may be stuck on this file")

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
    media_timeout: float = MEDIA_TIMEOUT_S  # for the pool this context starts
    share: float = 1.0
    """This process's part of each endpoint's limits (`--rpm`, Gemini's room for uploads):
    1/actors on Ray, where each actor runs a model stage with an executor of its own."""
    held_table: Callable[[Path], pa.Table | None] | None = field(default=None, repr=False)
    """The local runner's kept table of an input shard it wrote this run (None: read the
    file), for a global stage's `prepare` (`ShardTable`)."""
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
        """`fn` over `items` (media jobs: probes, decodes), in the decode workers when
        workers > 1, with a `Lost` for a job that ran past the time limit or crashed its
        worker. With one worker they run in this process, where a stuck decoder cannot be
        stopped: that setting is for debugging, with no time limit.

        `fn` must be a module-level function so it can be pickled.
        """
        items = list(items)
        if self.workers <= 1 or not items:
            return [fn(x) for x in items]
        with self._lock:
            if self.pool is None and self._own_pool is None:
                self._own_pool = WorkerPool(self.workers, self.media_timeout)
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
