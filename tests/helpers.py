"""Helpers for building runs in tests."""

from __future__ import annotations

import json
import shutil
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


def run_files(run_dir: Path) -> dict[str, str]:
    """Every file of a run outside audits/ and cache/, with its sha256: what an audit must
    leave exactly as it was."""
    import hashlib

    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()
            and p.relative_to(run_dir).parts[0] not in ("audits", "cache")
            and not p.name.startswith(".avcurate.lock")}


def imported_modules(stderr: str) -> set[str]:
    """Every module a `python -X importtime` command imported, from its stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def slow_recipe(tmp: Path, media: dict, *, n: int, clips: list[str], seconds: float,
                extra_stages: str = "") -> Path:
    """A TOML recipe: jsonl rows over real clips -> validate -> the plugin's slow stage, for
    tests that kill a run in the middle of a stage."""
    ann = tmp / "ann.jsonl"
    ann.write_text("".join(json.dumps({
        "id": f"r{i:02d}", "video": str(media[clips[i % len(clips)]]), "question": f"Q{i}?",
        "options": ["x", "y"], "answer": "AB"[i % 2]}) + "\n" for i in range(n)))
    recipe = tmp / "recipe.toml"
    recipe.write_text(
        f'[run]\nshard_size = 3\nworkers = 1\n[[sources]]\nname = "jsonl"\n'
        f'annotations = "{ann}"\nmedia_root = "{media["root"]}"\n'
        'columns = {id = "id", video = "video", question = "question", options = "options", '
        'answer = "answer"}\n'
        f'[[stages]]\nname = "validate"\n[[stages]]\nname = "slow"\nseconds = {seconds}\n'
        + extra_stages)
    return recipe


def chromium() -> str | None:
    """The system Chromium that browser tests drive (.ci/run installs it with apt-get)."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")
