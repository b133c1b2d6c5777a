"""Consecutive stages run shard by shard in one pass: the Ray runner's fused chains.

A stage whose `prepare` decides over all its input rows (duplicate ids, dedup,
balance) needs the stage before it complete, so it starts a new chain; any other
stage joins the chain before it. A chain's job reads its input shard once and
hands each stage's kept rows to the next in memory, writing every stage's kept
and rejected shards exactly as an unfused stage does. So the run folder, the
resume rule (a shard is done when its kept file exists) and the manifest stay
those of separate stages; what is saved is a scheduling round and a read per
stage.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from avcurate.core.store import RunStore, read_parquet
from avcurate.models.errors import BackendUnavailable, EndpointError
from avcurate.pipeline.runner import process_table
from avcurate.stages.base import BaseStage, Stage
from avcurate.stages.context import MEDIA_TIMEOUT_S, StageContext, WorkerPool


def decides_globally(stage: Stage) -> bool:
    """True when the stage's `prepare` needs all its input rows (see
    `BaseStage.global_decision`); a stage that does not say, and has its own `prepare`,
    is assumed to."""
    declared = getattr(stage, "global_decision", None)
    if declared is not None:
        return bool(declared)
    return getattr(type(stage), "prepare", None) is not BaseStage.prepare


def chains(stages: list[Stage]) -> list[list[int]]:
    """The stages' positions grouped into chains that can run in one pass per shard."""
    out: list[list[int]] = []
    for i, stage in enumerate(stages):
        if out and not decides_globally(stage):
            out[-1].append(i)
        else:
            out.append([i])
    return out


class StageStopped(Exception):
    """A chain member's endpoint or backend gave out, with the folder of that stage: the
    driver sees one error for the whole chain and must name the stage it came from."""

    def __init__(self, stage_dir: str, error: Exception) -> None:
        super().__init__(stage_dir, error)  # both in args: the exception crosses a pickle
        self.stage_dir, self.error = stage_dir, error

    def __str__(self) -> str:
        return f"{Path(self.stage_dir).name}: {self.error}"


@dataclass
class Member:
    """One stage of a chain, as a worker needs it (the stage after its `prepare`)."""

    stage: Stage
    stage_dir: str
    kept_schema: pa.Schema
    rej_schema: pa.Schema


@dataclass(frozen=True)
class StageShard:
    """What one stage did with one shard: its input rows, model calls, busy seconds,
    and whether its output was already there (a resumed shard)."""

    rows: int
    usage: dict[str, int]
    seconds: float
    resumed: bool


class ChainJob:
    """Runs a chain's stages on shards, in one worker process (a Ray task or actor).

    Shards may be processed in threads side by side (an actor); each stage lets at most
    its `parallel_shards` of them into `process` at once, as the local runner does.
    """

    def __init__(self, members: list[Member], run_dir: str, workers: int,
                 pool: WorkerPool | None = None, media_timeout: float = MEDIA_TIMEOUT_S,
                 share: float = 1.0) -> None:
        self.members = members
        self._own_pool = pool is None
        self.pool = pool or WorkerPool(workers, media_timeout)
        self.contexts = [StageContext(run_dir=Path(run_dir), stage_dir=Path(m.stage_dir),
                                      workers=workers, pool=self.pool, share=share)
                         for m in members]
        self.gates = [threading.BoundedSemaphore(max(1, getattr(m.stage, "parallel_shards", 1)))
                      for m in members]
        for member, ctx in zip(members, self.contexts, strict=True):
            member.stage.setup(ctx)

    def shard(self, index: int, path: str) -> list[StageShard]:
        """Every stage of the chain on input shard `index`; a stage whose kept shard
        exists (a resumed run) is not redone, its written rows feed the next."""
        table = read_parquet(path)
        done = []
        try:
            for member, ctx, gate in zip(self.members, self.contexts, self.gates, strict=True):
                kept_path = RunStore.shard_path(ctx.stage_dir, index)
                if kept_path.exists():
                    done.append(StageShard(table.num_rows, {}, 0.0, True))
                    table = read_parquet(kept_path)
                    continue
                start = time.perf_counter()
                with gate:
                    try:
                        kept, usage = process_table(member.stage, ctx, table, index,
                                                    member.kept_schema, member.rej_schema)
                    except (EndpointError, BackendUnavailable) as exc:
                        raise StageStopped(str(ctx.stage_dir), exc) from exc
                done.append(StageShard(table.num_rows, usage, time.perf_counter() - start, False))
                table = kept
        except BaseException as exc:
            for member in self.members:  # shards processed alongside end soon too
                if stop := getattr(member.stage, "stop", None):
                    stop(exc)
            raise
        return done

    def close(self) -> None:
        for member, ctx in zip(self.members, self.contexts, strict=True):
            member.stage.teardown()
            ctx.close()
        if self._own_pool:
            self.pool.close()
