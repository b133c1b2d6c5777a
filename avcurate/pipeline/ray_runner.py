"""Run a recipe on Ray, with the same run folder, invariants and resume rule.

What runs where:
- the driver ingests, runs every stage's `prepare` (global decisions such as balance,
  dedup and duplicate ids are DuckDB over the written shards) and keeps the manifest;
- consecutive stages are fused into chains (`pipeline/fused.py`): a stage whose
  `prepare` decides over all its inputs starts a chain, any other joins the one before.
  Each unfinished shard of a chain is one job that reads the shard once and runs every
  stage of the chain on it, writing each stage's outputs as usual: one scheduling round
  per chain, not per stage;
- a chain of row-local stages runs as plain Ray tasks, one per shard (`cpus_per_task`
  CPUs each, which decoding stages use as their process pool); a chain with a model
  stage runs on the run's actors (`actors` of them, started at the first such chain and
  kept until the run ends), each holding a few shards in flight in threads, so many
  inference endpoints are driven in parallel and no stage pays actor start-up again;
- every worker writes its shards atomically into the shared run folder (a shared
  filesystem on a multi-node cluster).

Not Ray Data: a Dataset per stage paid its streaming executor's and its actor pool's
start-up (2-3 s) for every model stage, and its actors could not outlive the stage; a
stage's shards need no more than a map over paths with a bounded number in flight.

A shard is finished when its kept file exists, exactly as with the local runner, so a
killed driver resumes where it stopped and both runners produce the same rows. The
response and media caches are SQLite/files in the run folder, safe for concurrent writers.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.parquet as pq

from avcurate.core.store import RunStore, parquet_rows
from avcurate.models.reachable import connect_error
from avcurate.pipeline.fused import ChainJob, Member, StageShard, StageStopped, chains
from avcurate.pipeline.progress import Progress
from avcurate.pipeline.runner import (
    RunError,
    Runner,
    StageReport,
    add_usage,
    prepare_or_drop,
    stopped,
)
from avcurate.stages.base import Resources, Stage, output_schema, reject_schema, stage_content
from avcurate.stages.context import StageContext, WorkerPool

MAX_SHARDS_PER_ACTOR = 4  # threads of an actor: shards in flight side by side on it
ACTOR_CPUS = 0.5  # what an actor holds of Ray's CPUs while the run lasts
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


def check_address(address: str | None) -> None:
    """Raise RunError when a cluster address given as HOST:PORT (or ray://HOST:PORT) takes
    no connection: Ray itself retries a dead GCS address for minutes, printing warnings,
    before it gives up. `auto`, `local` and no address are Ray's to resolve."""
    if not address or address in ("auto", "local"):
        return
    url = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise RunError(f"--address {address}: expected HOST:PORT (the head node's GCS address, "
                       "e.g. 10.0.0.1:6379), ray://HOST:10001 or auto")
    if (why := connect_error(host, port)) is not None:
        raise RunError(f"--address {address}: cannot connect ({why}); is the Ray cluster up "
                       "(`ray start --head` prints its address) and reachable from here?")


class _Worker:
    """A long-lived actor: runs shards of any chain, keeping each chain's set-up (model
    clients, caches) until the driver closes it, and one decode pool for all of them."""

    def __init__(self, env: dict[str, str], workers: int, media_timeout: float,
                 share: float) -> None:
        os.environ.update(env)
        self.workers, self.share = workers, share
        self.pool = WorkerPool(workers, media_timeout)
        self.jobs: dict[str, ChainJob] = {}
        self.lock = threading.Lock()

    def shard(self, key: str, args: tuple, index: int, path: str) -> list[StageShard]:
        with self.lock:  # the first shard of a chain sets it up; the others wait for that
            if key not in self.jobs:
                members, run_dir = args
                self.jobs[key] = ChainJob(members, run_dir, self.workers, self.pool,
                                          share=self.share)
            job = self.jobs[key]
        return job.shard(index, path)

    def close(self, key: str) -> None:
        with self.lock:
            job = self.jobs.pop(key, None)
        if job is not None:
            job.close()


def _quiet_the_rest() -> None:
    """The run stops on the first failed shard, and that error is the one reported: Ray
    is told not to log the shards dropped with it (those in flight failed the same way or
    are cancelled) as "unhandled errors" with their tracebacks once their references go."""
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"


def _chain_task(args: tuple, index: int, path: str) -> list[StageShard]:
    """A row-local chain on one shard, as a Ray task (its own set-up and decode pool)."""
    members, run_dir, workers, media_timeout, env = args
    os.environ.update(env)
    job = ChainJob(members, run_dir, workers, media_timeout=media_timeout)
    try:
        return job.shard(index, path)
    finally:
        job.close()


@dataclass
class _Planned:
    """A chain member on the driver: where it writes, its manifest entry, its progress."""

    index: int
    out_dir: Path
    entry: dict[str, Any]
    member: Member
    task: Any

    @property
    def stage(self) -> Stage:
        return self.member.stage


class RayRunner(Runner):
    def __init__(self, *args: Any, address: str | None = None, actors: int = 2,
                 cpus_per_task: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address, self.actors, self.cpus_per_task = address, actors, cpus_per_task
        self.ray = import_ray()
        self._local = False  # a local Ray started here, which cannot grow (an autoscaler may)
        if not self.ray.is_initialized():
            check_address(self.address or os.environ.get("RAY_ADDRESS"))
        self._actors: list[Any] = []

    def _start(self) -> None:
        """Start or join Ray, once, when a stage is left to run: a finished run resumed
        with `--executor ray` does nothing, and starting a local Ray for it took ~6 s
        against 0.4 s without."""
        if not self.ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            self._local = not address
            ours = signal.getsignal(signal.SIGTERM)
            try:
                # with -q (no progress), Ray's own lines too ("Started a local Ray
                # instance", its token set-up) are left out; its errors still show
                self.ray.init(address=self.address, ignore_reinit_error=True,
                              log_to_driver=False, include_dashboard=False,
                              logging_level=logging.INFO if self.show_progress else logging.ERROR)
            except ConnectionError as exc:  # `auto` and no cluster running
                raise RunError(f"--address {self.address}: {' '.join(str(exc).split())}"
                               ) from None
            if callable(ours) and threading.current_thread() is threading.main_thread():
                # Ray's SIGTERM handler exits at once, skipping the run's clean-up and its
                # line; the command's own one stops the run as Ctrl-C does, and Ray's exit
                # handler still stops the processes it started
                signal.signal(signal.SIGTERM, ours)

    def _check_environment(self, stages: list[tuple[Stage, str]],
                           planned: list[dict[str, Any]], done: int | None = None) -> int:
        done = super()._check_environment(stages, planned, done)
        if done < len(planned):  # a stage is left to run
            self._start()
            if self._local:
                self._check_room([stage for stage, _ in stages])
        return done

    def _check_room(self, stages: list[Stage]) -> None:
        """On the local Ray, work that asks for more CPUs than it has waits forever: a task
        above its CPUs, the run's actors (ACTOR_CPUS each, kept from the first model
        chain to the end), or a task chain after them with the CPUs they leave."""
        cpus = sum(node["Resources"].get("CPU", 0) for node in self.ray.nodes()
                   if node["Alive"])
        if self.cpus_per_task > cpus:
            raise RunError(f"--ray-cpus-per-task {self.cpus_per_task:g}: the local Ray has "
                           f"{cpus:g} CPUs, so its tasks could never start; give at most "
                           f"{cpus:g}")
        model = [any(s.resources == Resources.MODEL for s in (stages[i] for i in chain))
                 for chain in chains(stages)]
        if True not in model:
            return
        tasks_after = not all(model[model.index(True):])
        need = self.actors * ACTOR_CPUS + (self.cpus_per_task if tasks_after else 0)
        if need > cpus:
            also = (f", and tasks of --ray-cpus-per-task {self.cpus_per_task:g} run beside "
                    "them" if tasks_after else "")
            raise RunError(f"the run needs {need:g} CPUs of the local Ray at once and it has "
                           f"{cpus:g}, so it would wait forever: --ray-actors {self.actors} "
                           f"hold {ACTOR_CPUS:g} each to the end of the run{also}; give fewer "
                           "actors or CPUs per task")

    def run(self) -> list[StageReport]:
        try:
            return super().run()
        finally:
            for actor in self._actors:
                self.ray.kill(actor)
            self._actors = []

    def _run_stages(self, manifest, stages: list[tuple[Stage, str]], progress: Progress
                    ) -> list[StageReport]:
        reports = []
        for chain in chains([stage for stage, _ in stages]):
            todo = []
            for pos in chain:
                k, (stage, fp) = pos + 1, stages[pos]
                spec = self.recipe.stages[pos]
                if k < len(manifest["stages"]):  # recorded as done: reported as skipped
                    reports.append(self._stage(manifest, k, stage, spec, fp, progress))
                else:
                    todo.append((k, stage, spec, fp))
            if todo:
                reports += self._chain(manifest, todo, progress)
        return reports

    def _chain(self, manifest, todo: list[tuple], progress: Progress) -> list[StageReport]:
        """Run stages `todo` (consecutive, none done) as one chain; record each when all
        of their shards are written, in order."""
        self._start()  # started by the environment check already, when it ran
        in_dir = self.store.root / manifest["stages"][todo[0][0] - 1]["dir"]
        inputs = self.store.shards(in_dir)
        rows_in = parquet_rows(inputs)
        schema = pq.read_schema(inputs[0])
        planned: list[_Planned] = []
        for k, stage, spec, fp in todo:
            out_dir = self.store.stage_dir(k, stage.name)
            kept_schema = output_schema(stage, schema)
            member = Member(stage, str(out_dir), kept_schema, reject_schema(kept_schema))
            self._begin(out_dir, fp)
            planned.append(_Planned(k, out_dir,
                                    self._new_entry(k, stage.name, fp, spec.options,
                                                    stage.options(), stage_content(stage)),
                                    member,
                                    progress.stage(stage.name, total=rows_in if not planned
                                                   else None)))
            schema = kept_schema
        start = time.perf_counter()
        busy = [0.0] * len(planned)
        usage: list[dict[str, int]] = [{} for _ in planned]
        contexts = [StageContext(run_dir=self.store.root, stage_dir=p.out_dir,
                                 workers=self.recipe.workers, pool=self._pool) for p in planned]
        try:
            for i, (p, ctx) in enumerate(zip(planned, contexts, strict=True)):
                prepare_or_drop(p.stage, ctx, inputs if i == 0 else [],
                                [q.out_dir for q in planned])
            pending = [i for i in range(len(inputs))
                       if not RunStore.shard_path(planned[-1].out_dir, i).exists()]
            for i in set(range(len(inputs))) - set(pending):  # every stage wrote these
                progress.advance(planned[0].task, pq.ParquetFile(inputs[i]).metadata.num_rows)
            resumed = [len(inputs) - len(pending)] * len(planned)
            for done in self._shards(planned, inputs, pending):
                for j, (p, got) in enumerate(zip(planned, done, strict=True)):
                    progress.advance(p.task, got.rows)
                    busy[j] += got.seconds
                    resumed[j] += got.resumed
                    usage[j] = add_usage(usage[j], got.usage)
        except StageStopped as exc:
            raise stopped(Path(exc.stage_dir), exc.error) from None
        finally:
            for ctx in contexts:
                ctx.close()
        wall = time.perf_counter() - start
        names = [p.stage.name for p in planned]
        reports = []
        for j, p in enumerate(planned):
            progress.done(p.task)
            extra = p.stage.summary()
            if usage[j] or p.stage.resources == Resources.MODEL:
                extra["usage"] = usage[j]
            if len(planned) > 1:  # seconds are the chain's wall time shared by busy time
                extra["fused_with"] = [n for n in names if n != p.stage.name]
            share = busy[j] / sum(busy) if sum(busy) else 1 / len(planned)
            n_in = rows_in if j == 0 else reports[-1].kept
            reports.append(self._finish(manifest, p.entry, p.out_dir, n_in, wall * share,
                                        resumed[j], extra))
        return reports

    def _shards(self, planned: list[_Planned], inputs: list[Path], pending: list[int]
                ) -> Iterator[list[StageShard]]:
        if not pending:
            return iter(())
        members = [p.member for p in planned]
        if any(p.stage.resources == Resources.MODEL for p in planned):
            width = max(getattr(m.stage, "parallel_shards", 1) for m in members)
            return self._on_actors(f"{planned[0].index}", (members, str(self.store.root)),
                                   inputs, pending, width)
        return self._tasks((members, str(self.store.root), self._decode_workers(),
                            self.recipe.media_timeout, worker_env()), inputs, pending)

    def _decode_workers(self) -> int:
        return max(1, int(self.cpus_per_task))

    def _tasks(self, args: tuple, inputs: list[Path], pending: list[int]
               ) -> Iterator[list[StageShard]]:
        """Row-local shards as plain Ray tasks, one per shard, results as they finish (a
        task costs milliseconds to schedule). The chain goes to the object store once."""
        ray = self.ray
        job = ray.put(args)
        run = ray.remote(num_cpus=self.cpus_per_task)(_chain_task)
        waiting = [run.remote(job, i, str(inputs[i])) for i in pending]
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                yield self._result(done[0])
        except BaseException:
            _quiet_the_rest()
            raise

    def _on_actors(self, key: str, args: tuple, inputs: list[Path], pending: list[int],
                   width: int) -> Iterator[list[StageShard]]:
        """Shards on the run's actors, up to `width` in flight on each; a shard goes to the
        actor that just finished one, so a slow actor is not handed more."""
        ray = self.ray
        actors = self._actor_pool()
        job = ray.put(args)
        queue = deque(pending)
        running: dict[Any, Any] = {}

        def submit(actor: Any) -> None:
            i = queue.popleft()
            running[actor.shard.remote(key, job, i, str(inputs[i]))] = actor

        for _ in range(width):
            for actor in actors:
                if queue:
                    submit(actor)
        try:
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(done[0])
                yield self._result(done[0])
                if queue:
                    submit(actor)
        except BaseException:
            _quiet_the_rest()
            for actor in self._actors:  # shards still in flight: stopped with their actors
                ray.kill(actor)
            self._actors = []
            raise
        ray.get([actor.close.remote(key) for actor in actors])

    def _result(self, ref: Any) -> list[StageShard]:
        """A shard's result; a stage's error is raised as itself, not in Ray's wrapper,
        whose message is the worker's whole traceback (errors are one line for the user;
        the wrapper stays chained for a debugger)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, Exception):
                raise exc.cause from exc
            raise

    def _actor_pool(self) -> list[Any]:
        if not self._actors:
            worker = self.ray.remote(num_cpus=ACTOR_CPUS,
                                     max_concurrency=MAX_SHARDS_PER_ACTOR)(_Worker)
            # each actor keeps its share of an endpoint's --rpm and upload room: the
            # user's limit is the endpoint's, not each actor's
            self._actors = [worker.remote(worker_env(), self._decode_workers(),
                                          self.recipe.media_timeout, 1 / self.actors)
                            for _ in range(self.actors)]
        return self._actors
