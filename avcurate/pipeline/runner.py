"""The local runner: ingest the sources, then run each stage shard by shard.

Resume rule: a shard whose kept file exists is finished and never recomputed.
Stages are deterministic per shard, so a run killed at any point and started
again ends with exactly the rows an uninterrupted run produces.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from itertools import chain, islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from avcurate import __version__
from avcurate.catalogs import Reject, read_source
from avcurate.core.counts import reject_reasons
from avcurate.core.schema import BASE_COLUMNS, REJECT_FIELDS, SAMPLE_SCHEMA
from avcurate.core.store import RunStore, parquet_rows, write_parquet_atomic
from avcurate.pipeline.progress import Progress
from avcurate.pipeline.recipe import Recipe, SourceSpec, StageSpec
from avcurate.pipeline.registry import create
from avcurate.stages.base import (
    Resources,
    Stage,
    StageError,
    fingerprint,
    output_schema,
    reject_schema,
)
from avcurate.stages.context import StageContext

VERSIONED = ("pyarrow", "duckdb", "av", "decord", "soundfile", "numpy", "openai", "google-genai",
             "transformers", "datasets", "torch")


class RunError(Exception):
    """The run cannot go on: a changed recipe, a broken invariant, a missing column."""


@dataclass
class StageReport:
    index: int
    name: str
    rows_in: int
    kept: int
    rejected: int
    seconds: float
    resumed_shards: int


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "avcurate": __version__}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def ingest_fingerprint(recipe: Recipe) -> str:
    """Identity of the ingest stage: sources, their files' size and mtime, and shard size."""
    import hashlib
    import json

    files = []
    for s in recipe.sources:
        p = Path(s.annotations)
        stat = p.stat() if p.exists() else None
        files.append([s.to_dict(), stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    payload = json.dumps({"sources": files, "shard_size": recipe.shard_size}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan(recipe: Recipe) -> list[tuple[Stage, str]]:
    """Build every stage and check, before any work, that each one's inputs will exist."""
    stages: list[tuple[Stage, str]] = []
    parent = ingest_fingerprint(recipe)
    available = set(BASE_COLUMNS) | set(recipe.extra_columns())
    for spec in recipe.stages:
        try:
            stage = create(spec.name, spec.options)
        except StageError as exc:
            raise RunError(str(exc)) from exc
        missing = [c for c in stage.requires if c not in available]
        if missing:
            raise RunError(
                f"stage {spec.name!r} needs column(s) {', '.join(missing)}, which no earlier "
                f"stage adds; add the stage that produces them before it"
            )
        available |= set(stage.adds)
        parent = fingerprint(stage, parent)
        stages.append((stage, parent))
    return stages


def batched(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def conform(table: pa.Table, schema: pa.Schema, stage: str) -> pa.Table:
    """Give `table` exactly `schema`: missing columns become nulls; extra columns are an error."""
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise StageError(f"stage {stage!r} returned undeclared column(s): {', '.join(sorted(extra))}")
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


class Runner:
    """Runs a recipe into a run folder, resuming whatever is already finished there."""

    def __init__(self, recipe: Recipe, run_dir: Path | str, *, force: bool = False,
                 console: Console | None = None, show_progress: bool = True) -> None:
        self.recipe = recipe
        self.store = RunStore(run_dir)
        self.force = force
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress

    # -- manifest -----------------------------------------------------------------

    def _open_manifest(self, planned: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.store.exists():
            self.store.root.mkdir(parents=True, exist_ok=True)
            return {"format": 1, "created_at": now(), "stages": []}
        manifest = self.store.load_manifest()
        done = manifest.get("stages", [])
        for k, entry in enumerate(done[: len(planned)]):
            if entry["fingerprint"] == planned[k]["fingerprint"]:
                continue
            if not self.force:
                raise RunError(
                    f"{self.store.root} already holds a run whose stage {entry['dir']} was made "
                    f"with a different recipe (sources, options or order). Use --force to "
                    f"recompute from that stage on, or choose another --out."
                )
            for old in done[k:]:
                shutil.rmtree(self.store.root / old["dir"], ignore_errors=True)
            manifest["stages"] = done[:k]
            break
        return manifest

    def _save(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = now()
        self.store.save_manifest(manifest)

    # -- running --------------------------------------------------------------------

    def run(self) -> list[StageReport]:
        stages = plan(self.recipe)
        planned = [{"name": "ingest", "fingerprint": ingest_fingerprint(self.recipe)}]
        planned += [{"name": s.name, "fingerprint": fp} for s, fp in stages]
        manifest = self._open_manifest(planned)
        manifest |= {"avcurate_version": __version__, "recipe": self.recipe.to_dict(),
                     "versions": package_versions()}
        self._save(manifest)
        reports = []
        with Progress(self.console, enabled=self.show_progress) as progress:
            reports.append(self._ingest(manifest, planned[0]["fingerprint"], progress))
            for k, (stage, fp) in enumerate(stages, start=1):
                reports.append(self._stage(manifest, k, stage, fp, progress))
        return reports

    def _entry(self, manifest: dict[str, Any], index: int, name: str, fp: str,
               options: dict[str, Any]) -> dict[str, Any]:
        stages = manifest["stages"]
        if index < len(stages):
            return stages[index]
        entry = {"index": index, "name": name, "dir": self.store.stage_dir(index, name).name,
                 "fingerprint": fp, "options": options, "status": "running",
                 "started_at": now(), "seconds": 0.0}
        stages.append(entry)
        self._save(manifest)
        return entry

    def _finish(self, manifest, entry, out_dir: Path, rows_in: int, seconds: float,
                resumed: int, extra: dict[str, Any] | None = None) -> StageReport:
        kept = parquet_rows(self.store.shards(out_dir))
        rejected = parquet_rows(self.store.rejects(out_dir))
        if kept + rejected != rows_in:
            raise RunError(f"stage {entry['dir']}: {rows_in} rows in but {kept} kept + "
                           f"{rejected} rejected; a stage lost or invented rows")
        entry |= {"status": "done", "finished_at": now(), "rows_in": rows_in, "kept": kept,
                  "rejected": rejected, "shards": len(self.store.shards(out_dir)),
                  "rejects_by_reason": reject_reasons(self.store.rejects(out_dir)),
                  "seconds": round(entry.get("seconds", 0.0) + seconds, 3), **(extra or {})}
        self._save(manifest)
        return StageReport(entry["index"], entry["name"], rows_in, kept, rejected,
                           seconds, resumed)

    def _ingest(self, manifest, fp: str, progress: Progress) -> StageReport:
        entry = self._entry(manifest, 0, "ingest", fp, {"sources": [
            s.to_dict() for s in self.recipe.sources]})
        out_dir = self.store.stage_dir(0, "ingest")
        if entry["status"] == "done":
            progress.skip("ingest", entry["kept"] + entry["rejected"])
            return StageReport(0, "ingest", entry["rows_in"], entry["kept"], entry["rejected"],
                               0.0, entry["shards"])
        _remove_stale_temp_files(out_dir)
        start = time.perf_counter()
        items = chain.from_iterable(_read(s) for s in self.recipe.sources)
        schema = pa.schema(list(SAMPLE_SCHEMA) + [pa.field(n, t) for n, t in
                                                  self.recipe.extra_columns().items()])
        reject_schema_ = pa.schema(list(schema) + REJECT_FIELDS)
        resumed = 0
        task = progress.stage("ingest", total=None)
        for i, chunk in enumerate(batched(items, self.recipe.shard_size)):
            kept_path = self.store.shard_path(out_dir, i)
            if kept_path.exists():
                resumed += 1
            else:
                rows = [x for x in chunk if not isinstance(x, Reject)]
                bad = [x.to_row() for x in chunk if isinstance(x, Reject)]
                write_parquet_atomic(pa.Table.from_pylist(bad, schema=reject_schema_),
                                     self.store.reject_path(out_dir, i))
                write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), kept_path)
            progress.advance(task, len(chunk))
        if not self.store.shards(out_dir):  # no records at all: one empty shard keeps the shape
            write_parquet_atomic(schema.empty_table(), self.store.shard_path(out_dir, 0))
            write_parquet_atomic(reject_schema_.empty_table(), self.store.reject_path(out_dir, 0))
        rows = parquet_rows(self.store.shards(out_dir)) + parquet_rows(self.store.rejects(out_dir))
        progress.done(task)
        return self._finish(manifest, entry, out_dir, rows, time.perf_counter() - start, resumed)

    def _stage(self, manifest, index: int, stage: Stage, fp: str, progress: Progress
               ) -> StageReport:
        entry = self._entry(manifest, index, stage.name, fp, stage.options())
        in_dir = self.store.root / manifest["stages"][index - 1]["dir"]
        out_dir = self.store.stage_dir(index, stage.name)
        inputs = self.store.shards(in_dir)
        rows_in = parquet_rows(inputs)
        if entry["status"] == "done":
            progress.skip(stage.name, rows_in)
            return StageReport(index, stage.name, rows_in, entry["kept"], entry["rejected"],
                               0.0, len(inputs))
        in_schema = pq.read_schema(inputs[0])
        kept_schema = output_schema(stage, in_schema)
        rej_schema = reject_schema(kept_schema)
        ctx = StageContext(run_dir=self.store.root, stage_dir=out_dir,
                           workers=self.recipe.workers)
        _remove_stale_temp_files(out_dir)
        start = time.perf_counter()
        resumed = 0
        task = progress.stage(stage.name, total=rows_in)
        try:
            stage.prepare(ctx, inputs)
            pending = []
            for i, path in enumerate(inputs):
                if self.store.shard_path(out_dir, i).exists():
                    resumed += 1
                    progress.advance(task, pq.ParquetFile(path).metadata.num_rows)
                else:
                    pending.append(i)
            usage = self._run_shards(stage, ctx, inputs, pending, kept_schema, rej_schema,
                                     lambda rows: progress.advance(task, rows))
        finally:
            ctx.close()
        progress.done(task)
        extra = stage.summary()
        if usage or stage.resources == Resources.MODEL:
            extra["usage"] = usage
        return self._finish(manifest, entry, out_dir, rows_in, time.perf_counter() - start,
                            resumed, extra)

    def _run_shards(self, stage: Stage, ctx: StageContext, inputs: list[Path], pending: list[int],
                    kept_schema: pa.Schema, rej_schema: pa.Schema, advance) -> dict[str, int]:
        """Process the unfinished shards in this process (the Ray runner distributes them);
        return the summed model-call usage."""
        usage: dict[str, int] = {}
        if not pending:
            return usage
        stage.setup(ctx)
        try:
            for i in pending:
                rows, used = process_shard(stage, ctx, inputs[i], i, kept_schema, rej_schema)
                usage = _add_usage(usage, used)
                advance(rows)
        finally:
            stage.teardown()
        return usage


def _add_usage(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def process_shard(stage: Stage, ctx: StageContext, path: Path, index: int,
                  kept_schema: pa.Schema, rej_schema: pa.Schema) -> tuple[int, dict[str, int]]:
    """Run `stage` on one input shard and write its kept and rejected outputs.

    Returns the shard's input rows and model-call usage. Rejects are written first and
    the kept file last: the kept file's existence is what marks the shard finished, for
    the local runner and the Ray runner alike.
    """
    table = pq.read_table(path)
    usage: dict[str, int] = {}
    if table.num_rows == 0:
        kept, rejected = kept_schema.empty_table(), rej_schema.empty_table()
    else:
        result = stage.process(table, ctx, index)
        if result.kept.num_rows + result.rejected.num_rows != table.num_rows:
            raise RunError(
                f"stage {stage.name!r} returned {result.kept.num_rows} kept + "
                f"{result.rejected.num_rows} rejected rows for {table.num_rows} input rows"
            )
        kept = conform(result.kept, kept_schema, stage.name)
        rejected = conform(result.rejected, rej_schema, stage.name)
        usage = result.usage
    write_parquet_atomic(rejected, RunStore.reject_path(ctx.stage_dir, index))
    write_parquet_atomic(kept, RunStore.shard_path(ctx.stage_dir, index))
    return table.num_rows, usage


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Half-written shards of a killed run (never visible as part-*.parquet) are cleared."""
    for tmp in chain(out_dir.glob(".*.tmp"), out_dir.glob("rejects/.*.tmp")):
        tmp.unlink(missing_ok=True)


def _read(spec: SourceSpec) -> Iterator[dict | Reject]:
    if not Path(spec.annotations).is_file():
        raise RunError(f"source {spec.name!r}: annotations file {spec.annotations} does not exist")
    if not Path(spec.media_root).is_dir():
        raise RunError(f"source {spec.name!r}: media root {spec.media_root} is not a folder")
    try:
        yield from read_source(spec.name, spec.annotations, spec.media_root, **spec.options)
    except (ValueError, TypeError) as exc:
        raise RunError(f"source {spec.name!r} ({spec.annotations}): {exc}") from exc


def extend_run(run_dir: Path | str, spec: StageSpec | list[StageSpec], **runner_kw: Any
               ) -> list[StageReport]:
    """Run more stages on an existing run (what `avcurate validate RUN_DIR` etc. do).

    The stages are appended to the run's recipe unless the recipe already ends with
    the same stages and options, in which case the run is simply resumed.
    """
    specs = spec if isinstance(spec, list) else [spec]
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    recipe = Recipe.from_dict(manifest["recipe"])
    tail = [s.to_dict() for s in recipe.stages[-len(specs):]]
    if tail != [s.to_dict() for s in specs]:
        recipe.stages += specs
    return Runner(recipe, run_dir, **runner_kw).run()
