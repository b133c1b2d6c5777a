"""Helpers for building runs in tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from avcurate.pipeline.recipe import Recipe, SourceSpec, StageSpec
from avcurate.pipeline.runner import Runner

COLUMNS = {"id": "id", "video": "video", "audio": "audio", "question": "question",
           "options": "options", "answer": "answer"}


def jsonl_recipe(tmp: Path, records: list[dict], media_root: Path, stages: list[StageSpec],
                 shard_size: int = 4, workers: int = 1) -> Recipe:
    ann = tmp / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Recipe([SourceSpec("jsonl", str(ann), str(media_root), {"columns": COLUMNS})],
                  stages, shard_size=shard_size, workers=workers)


def run(recipe: Recipe, run_dir: Path, **kw):
    return Runner(recipe, run_dir, show_progress=False, **kw).run()


def read_stage(run_dir: Path, prefix: str) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected) of the stage folder starting with `prefix`, e.g. '01'."""
    [stage_dir] = [p for p in run_dir.iterdir() if p.name.startswith(prefix + "-")]
    kept = pa.concat_tables([pq.read_table(p) for p in sorted(stage_dir.glob("part-*.parquet"))])
    rej = pa.concat_tables([pq.read_table(p) for p in sorted((stage_dir / "rejects").glob("*.parquet"))])
    return kept, rej


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}
