"""Run a recipe on Ray Data, with the same run folder, invariants and resume rule.

What runs where:
- the driver ingests, runs every stage's `prepare` (global decisions such as balance,
  dedup and duplicate ids are DuckDB over the written shards) and keeps the manifest;
- the unfinished shards of a row-local stage become plain Ray tasks, one per shard
  (`cpus_per_task` CPUs each, which decoding stages use as their process pool); those of
  a model stage a Ray Dataset of shard descriptors mapped by an actor pool (`actors`
  actors, each driving `concurrency` requests in flight), so many inference endpoints
  are driven in parallel;
- every worker reads its shard's Arrow table, runs the stage and writes the outputs
  atomically into the shared run folder (a shared filesystem on a multi-node cluster).

A shard is finished when its kept file exists, exactly as with the local runner, so a
killed driver resumes where it stopped and both runners produce the same rows. The
response and media caches are SQLite/files in the run folder, safe for concurrent writers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from avcurate.pipeline.runner import RunError, Runner, process_shard
from avcurate.stages.base import Resources, Stage
from avcurate.stages.context import StageContext

FORWARDED = ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "HF_TOKEN", "PYTHONPATH")


def worker_env() -> dict[str, str]:
    """The driver's API keys (and PYTHONPATH, for plugins), for the workers' environment.

    They travel as an argument of each task or actor (Ray's object store, in memory) and are
    set in the worker's environment before the stage starts, so the workers of a cluster
    started without them still authenticate. Not `runtime_env`: Ray's runtime-env agent
    writes those variables into its log file.
    """
    return {k: os.environ[k] for k in FORWARDED if os.environ.get(k)}


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RunError("--executor ray needs Ray: pip install 'avcurate[ray]'") from exc
    return ray


class _ShardJob:
    """Processes shard descriptors; one instance per task (row-local) or per actor (models)."""

    def __init__(self, stage: Stage, run_dir: str, stage_dir: str, workers: int,
                 kept_schema: pa.Schema, rej_schema: pa.Schema, env: dict[str, str]) -> None:
        os.environ.update(env)
        self.stage, self.kept_schema, self.rej_schema = stage, kept_schema, rej_schema
        self.ctx = StageContext(run_dir=Path(run_dir), stage_dir=Path(stage_dir), workers=workers)
        stage.setup(self.ctx)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows, usage = [], []
        for index, path in zip(batch["index"], batch["path"], strict=True):
            n, used = process_shard(self.stage, self.ctx, Path(path), int(index),
                                    self.kept_schema, self.rej_schema)
            rows.append(n)
            usage.append(json.dumps(used))
        return {"index": batch["index"], "rows": rows, "usage": usage}

    def close(self) -> None:
        self.stage.teardown()
        self.ctx.close()


class RayRunner(Runner):
    def __init__(self, *args: Any, address: str | None = None, actors: int = 2,
                 cpus_per_task: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address, self.actors, self.cpus_per_task = address, actors, cpus_per_task
        self.ray = import_ray()
        if not self.ray.is_initialized():
            self.ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False,
                          include_dashboard=False)
        ctx = self.ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False

    def _run_shards(self, stage, ctx, inputs, pending, kept_schema, rej_schema, advance
                    ) -> dict[str, int]:
        if not pending:
            return {}
        ray = self.ray
        items = [{"index": i, "path": str(inputs[i])} for i in pending]
        args = (stage, str(ctx.run_dir), str(ctx.stage_dir), max(1, int(self.cpus_per_task)),
                kept_schema, rej_schema, worker_env())
        if stage.resources == Resources.MODEL:
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            # a fixed pool through `compute` (Ray >= 2.51 deprecates `concurrency=` here)
            out = ds.map_batches(_ShardJob, fn_constructor_args=args, batch_size=1,
                                 compute=ray.data.ActorPoolStrategy(size=self.actors),
                                 num_cpus=0.5)
            results = (dict(row) for row in out.iter_rows())
        else:
            results = self._tasks(items, args)
        total: dict[str, int] = {}
        for row in results:
            advance(int(row["rows"]))
            for k, v in json.loads(row["usage"]).items():
                total[k] = total.get(k, 0) + v
        return total

    def _tasks(self, items: list[dict[str, Any]], args: tuple) -> Iterator[dict[str, Any]]:
        """Row-local shards as plain Ray tasks, one per shard, results as they finish.

        Not Ray Data: a Dataset pays its streaming executor's start-up (seconds) for every
        stage, while a task costs milliseconds to schedule, and a stage's shards need no
        more than a map over paths. The stage and its settings go to the object store once.
        """
        ray = self.ray
        job = ray.put(args)
        run = ray.remote(num_cpus=self.cpus_per_task)(_run_row_local)
        waiting = [run.remote({"index": [it["index"]], "path": [it["path"]]}, job)
                   for it in items]
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            out = ray.get(done[0])
            for index, rows, usage in zip(out["index"], out["rows"], out["usage"], strict=True):
                yield {"index": index, "rows": rows, "usage": usage}


def _run_row_local(batch: dict[str, Any], args: tuple) -> dict[str, Any]:
    job = _ShardJob(*args)
    try:
        return job(batch)
    finally:
        job.close()
