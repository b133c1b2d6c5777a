"""Ingest's rows as shard-sized pieces, built in this process or in forked workers.

A catalog turns records into rows and rejects in Python, some 10 us per record: most
of a million-record ingest. When a source's records are a list (a whole JSON file,
parsed once), ranges of them are built by worker processes forked after the parse, so
they share the parsed records without copying or pickling them; each worker sends its
range back as Arrow tables (IPC bytes, no per-row pickling). An earlier version that
pickled records out and rows back to a process pool was slower than one process.

Either way the items (rows and rejects, in record order) are cut into the same shards
of `shard_size` items, so a resumed ingest finds the shards it wrote before whether
or not it forks this time.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from multiprocessing.connection import wait
from typing import Any

import numpy as np
import pyarrow as pa

from avcurate.catalogs import Reject
from avcurate.catalogs.base import RecordRows
from avcurate.core.schema import rows_to_table
from avcurate.stages.context import interrupts_held, leave_interrupts_to_parent

BLOCK = 8192  # records per worker task: ~80 ms of work, little to send back
STALL_SECONDS = 120.0  # no block back for this long: the workers are stuck (_forked)
EXIT_SECONDS = 10.0  # for the workers to end once told to (_stop)
SAMPLE = 64  # a source's first items, held back until they show it is read right

# Reject reasons that, for every one of a source's first items, mean the user's mistake
# rather than the records': the wrong format named, or the wrong media root.
MISTAKES = {
    "malformed_annotation": "is the file in the format named (`avcurate sources` lists them) "
                            "and, for jsonl, parquet or csv, does the column mapping (--column, "
                            "columns) name its fields?",
    "unsafe_path": "is the media root right? Every media path must resolve inside it",
}


@dataclass
class Piece:
    """Consecutive items of the ingest: which are rejects (in order), the rows, the rejects."""

    is_reject: np.ndarray
    rows: pa.Table
    rejects: pa.Table

    @classmethod
    def of(cls, items: list[Any], schema: pa.Schema, reject_schema: pa.Schema) -> Piece:
        bad = np.fromiter((isinstance(x, Reject) for x in items), bool, len(items))
        return cls(bad, rows_to_table([x for x in items if not isinstance(x, Reject)], schema),
                   rows_to_table([x.to_row() for x in items if isinstance(x, Reject)],
                                 reject_schema))

    def __len__(self) -> int:
        return len(self.is_reject)

    def split(self, k: int) -> tuple[Piece, Piece]:
        """The first `k` items and the rest."""
        bad = int(self.is_reject[:k].sum())
        return (Piece(self.is_reject[:k], self.rows.slice(0, k - bad), self.rejects.slice(0, bad)),
                Piece(self.is_reject[k:], self.rows.slice(k - bad), self.rejects.slice(bad)))

    @classmethod
    def join(cls, pieces: list[Piece]) -> Piece:
        if len(pieces) == 1:
            return pieces[0]
        return cls(np.concatenate([p.is_reject for p in pieces]),
                   pa.concat_tables([p.rows for p in pieces]),
                   pa.concat_tables([p.rejects for p in pieces]))

    def to_bytes(self) -> tuple[bytes, bytes, bytes]:
        return self.is_reject.tobytes(), _ipc(self.rows), _ipc(self.rejects)

    @classmethod
    def from_bytes(cls, payload: tuple[bytes, bytes, bytes]) -> Piece:
        bad, rows, rejects = payload
        return cls(np.frombuffer(bad, bool), pa.ipc.open_stream(rows).read_all(),
                   pa.ipc.open_stream(rejects).read_all())


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def shards(sources: Iterable[tuple[str, Iterator[Any]]], size: int, schema: pa.Schema,
           reject_schema: pa.Schema, workers: int = 1, block: int | None = None
           ) -> Iterator[Piece]:
    """The items of every (label, source), in order, as pieces of `size` items (the last
    one shorter); a shard may hold the end of one source and the start of the next. A
    source's ValueError or TypeError (a file it cannot read) comes out as a ValueError
    that starts with its label, and so does a source with no record at all."""
    held: list[Piece] = []
    count = 0
    for label, source in sources:
        try:
            for piece in checked_start(pieces(source, size, schema, reject_schema, workers,
                                              block or BLOCK)):
                while len(piece):
                    head, piece = piece.split(size - count)
                    held.append(head)
                    count += len(head)
                    if count == size:
                        yield Piece.join(held)
                        held, count = [], 0
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{label}: {exc}") from exc
    if held:
        yield Piece.join(held)


def checked_start(source_pieces: Iterator[Piece]) -> Iterator[Piece]:
    """A source's pieces, its first `SAMPLE` items held back until `check_start` has seen
    them, so a source read with the wrong format or media root stops before any of its
    rows is written. A source with no piece at all is a ValueError too: an annotation
    file with no record (0 bytes, `[]`, `{}`, a table of 0 rows) is a wrong path or a
    failed download far more often than an empty split on purpose, and an empty run
    would go on through every stage and say nothing."""
    head: list[Piece] = []
    held = 0
    for piece in source_pieces:
        if held < SAMPLE:
            head.append(piece)
            held += len(piece)
            if held >= SAMPLE:
                check_start(head)
                yield from head
        else:
            yield piece
    if not head:
        raise ValueError("holds no record (an empty file, list or table); check the path, "
                         "and leave a source that is meant to be empty out of the recipe")
    if held < SAMPLE:  # a source smaller than the sample: all of it
        check_start(head)
        yield from head


def check_start(head: list[Piece]) -> None:
    """Raise ValueError when none of a source's first items became a row and every one
    was rejected for a reason that means the user's mistake (see `MISTAKES`); a legitimate
    file's first records are not all broken."""
    if any(p.rows.num_rows for p in head):
        return
    rejects = pa.concat_tables([p.rejects.select(["reject_reason", "reject_detail"])
                                for p in head])
    reasons = rejects.column("reject_reason").to_pylist()
    if not reasons or not set(reasons) <= MISTAKES.keys():
        return
    top = max(MISTAKES, key=reasons.count)
    example = rejects.column("reject_detail")[reasons.index(top)].as_py()
    records = "its one record" if len(reasons) == 1 else f"its first {len(reasons)} records"
    raise ValueError(f"no sample from {records}: {reasons.count(top)} {top} (e.g. {example}); "
                     f"{MISTAKES[top]}")


def pieces(source: Iterator[Any], size: int, schema: pa.Schema, reject_schema: pa.Schema,
           workers: int, block: int) -> Iterator[Piece]:
    """One source's items: from forked workers when it is a large list of records and
    this system forks safely, else built here `size` items at a time."""
    records = source.splittable() if isinstance(source, RecordRows) else None
    if records is not None and workers > 1 and len(records) >= 2 * block and can_fork():
        yield from _forked(source, len(records), workers, block, schema, reject_schema)
        return
    while chunk := list(islice(source, size)):
        yield Piece.of(chunk, schema, reject_schema)


def can_fork() -> bool:
    """Linux forks a process that holds threads safely enough for workers that only
    compute; macOS does not (its system libraries), Windows cannot."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


# What the forked workers build from: set just before the fork, which copies it into
# them (a module global because a fork shares memory, not arguments).
_JOB: tuple[RecordRows, pa.Schema, pa.Schema] | None = None


def _forked(source: RecordRows, n: int, workers: int, block: int, schema: pa.Schema,
            reject_schema: pa.Schema) -> Iterator[Piece]:
    """The source's pieces, built in `workers` forked processes, in record order.

    A process pool from `concurrent.futures`, not `multiprocessing.Pool`, because it
    notices a worker that dies (killed for memory) instead of waiting for it forever;
    at most two blocks per worker are in flight, so built blocks never pile up here.

    A fork copies the memory of a process whose other threads (a progress bar, a host
    program's own) may hold a lock at that instant, and a worker that needs that lock
    waits forever. No block back within `STALL_SECONDS` (one takes ~80 ms) is taken as
    that: the workers are killed and the rest of the source is built here, the same
    pieces, so the run goes on instead of hanging."""
    global _JOB
    _JOB = (source, schema, reject_schema)
    bounds = iter([(a, min(a + block, n)) for a in range(0, n, block)])
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=leave_interrupts_to_parent)
    window: deque[tuple[tuple[int, int], Future]] = deque()
    processes: list[multiprocessing.Process] = []
    try:
        with interrupts_held():  # the first submit forks every worker
            window.extend((b, pool.submit(_build_block, b)) for b in islice(bounds, 2 * workers))
        processes = list(pool._processes.values())  # noqa: SLF001 (see _stop)
        while window:
            try:
                payload = window[0][1].result(timeout=STALL_SECONDS)
            except TimeoutError:
                warnings.warn(f"ingest's worker processes sent no rows back for {STALL_SECONDS:.0f}"
                              " s (stuck on a lock copied by the fork); the rest of the source "
                              "is built in this process", RuntimeWarning, stacklevel=2)
                break
            window.popleft()
            if (more := next(bounds, None)) is not None:
                window.append((more, pool.submit(_build_block, more)))
            yield Piece.from_bytes(payload)
    except BrokenProcessPool as exc:
        raise ValueError(f"a worker process building rows died ({exc}); with workers = 1 "
                         "the rows are built in the main process") from None
    finally:
        _stop(pool, processes)
        _JOB = None
    for a, b in [span for span, _ in window] + list(bounds):  # the workers stalled
        yield Piece.of(list(source.items(a, b)), schema, reject_schema)


def _stop(pool: ProcessPoolExecutor, processes: list[multiprocessing.Process]) -> None:
    """Shut the pool down without waiting on a worker that cannot end: one that took an
    inherited lock (above) can hang in its exit as well, and `shutdown(wait=True)` would
    wait for it forever. Workers still running `EXIT_SECONDS` later are killed; the
    pool's own thread reaps them. Python 3.11 has no public way to reach a pool's
    workers (`kill_workers` came in 3.14), so `_forked` reads the pool's `_processes`."""
    pool.shutdown(wait=False, cancel_futures=True)
    running = {p.sentinel: p for p in processes}  # readable once the process has ended
    deadline = time.monotonic() + EXIT_SECONDS
    while running and (left := deadline - time.monotonic()) > 0:
        for ended in wait(list(running), left):
            del running[ended]
    for process in running.values():
        process.kill()


def _build_block(bounds: tuple[int, int]) -> tuple[bytes, bytes, bytes]:
    """In a worker: the rows and rejects of records [start, stop)."""
    assert _JOB is not None, "set before the fork"
    source, schema, reject_schema = _JOB
    return Piece.of(list(source.items(*bounds)), schema, reject_schema).to_bytes()
