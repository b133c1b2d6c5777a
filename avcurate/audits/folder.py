"""An audit's folder, `RUN/audits/<kind>-<name>/`, and running a model stage into it.

    input/part-*.parquet            the sampled rows (what the audit's model is asked about)
    scores/part-*.parquet           its answers; scores/rejects/ the rows it could not answer
    pairs.parquet                   both raters' values per row (written last but one)
    summary.json                    the figures (written last: present = audit complete)

The audit runs a stage exactly as the runner does (same shard processing, the run's
decode-once media cache and response cache), so retries, faults and resume behave as
in every model stage, but nothing of the run itself changes. A `.fingerprint` says which
settings wrote the folder; other settings need `--redo` (or another `--name`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from avcurate.core.counts import reject_reasons
from avcurate.core.store import RunStore, atomic_write_bytes, write_parquet_atomic
from avcurate.models.errors import BackendUnavailable, EndpointError
from avcurate.pipeline.progress import Progress
from avcurate.pipeline.recipe import Recipe
from avcurate.pipeline.runner import add_usage, process_shard
from avcurate.reports.audit_summaries import AUDITS
from avcurate.stages.base import Stage, output_schema, reject_schema, with_content
from avcurate.stages.context import StageContext

from .sample import AuditError

SHARD_ROWS = 64  # small shards: a killed audit loses at most this many rows' progress
MARKER = ".fingerprint"


def slug(name: str) -> str:
    """A folder-safe form of a model name ('gemini-2.5-pro', 'Qwen-Qwen2.5-Omni-7B')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "audit"


def audit_dir(run_dir: Path | str, kind: str, name: str) -> Path:
    return Path(run_dir) / AUDITS / f"{kind}-{slug(name)}"


def settings_hash(settings: dict[str, Any], stage: Stage | None = None) -> str:
    """The hash of an audit's settings; with `stage`, also of the text of the files its
    options name (a prompt edited since makes another audit, as for a run's stage). Stages
    without such a file hash as before, so existing audits still resume."""
    if stage is not None:
        settings = with_content(settings, stage)
    payload = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def open_folder(path: Path, fp: str, redo: bool) -> None:
    """Make `path` hold only this audit's files: resume one with the same settings, refuse
    (or, with redo, replace) one with other settings, never touch a folder avcurate did
    not make."""
    marker = path / MARKER
    if path.exists():
        if not marker.is_file():
            raise AuditError(f"{path} exists but was not made by an avcurate audit; choose "
                             "another --name")
        if marker.read_text() == fp and not redo:
            return
        if not redo:
            raise AuditError(f"{path} holds an audit made with other settings (options, or "
                             "the text of a prompt file); add --redo to replace it, or --name "
                             "to keep both")
        shutil.rmtree(path)  # made by avcurate (it has the marker)
    path.mkdir(parents=True)
    marker.write_text(fp)


def write_inputs(path: Path, table: pa.Table) -> list[Path]:
    """The sampled rows in small shards (kept as they are when resuming)."""
    files = []
    for k, start in enumerate(range(0, max(table.num_rows, 1), SHARD_ROWS)):
        target = RunStore.shard_path(path / "input", k)
        if not target.exists():
            write_parquet_atomic(table.slice(start, SHARD_ROWS), target)
        files.append(target)
    return files


def audit_stage(store: RunStore, path: Path, fp: str, stage: Stage, sample: pa.Table, *,
                redo: bool, console: Console | None = None, show_progress: bool = True
                ) -> tuple[pa.Table, dict[str, int], dict[str, int]]:
    """Run a model stage over the sampled rows into the audit folder `path` (made or resumed
    for settings `fp`); returns (answered rows, unanswered rows per reason, call usage).
    Columns the stage adds are dropped from the sample first (the run may have them).
    What this machine needs to call the model (a key, a library) is checked first, as the
    runner does for a stage: a missing key or an unreachable server stops here, not after
    five failed calls."""
    stage.check()
    if reach := getattr(stage, "reach", None):
        reach()
    open_folder(path, fp, redo)
    asked = sample.drop_columns([c for c in stage.adds if c in sample.column_names])
    recipe = Recipe.from_dict(store.load_manifest()["recipe"], stored=True)
    with Progress(console or Console(stderr=True), enabled=show_progress) as progress:
        usage = _ask(store.root, path, stage, asked, workers=recipe.workers,
                     media_timeout=recipe.media_timeout, progress=progress)
    out_dir = path / "scores"
    return (pq.read_table(RunStore.shards(out_dir)),
            reject_reasons(RunStore.rejects(out_dir)), usage)


def _ask(run_dir: Path, path: Path, stage: Stage, table: pa.Table, *, workers: int,
         media_timeout: float, progress: Progress) -> dict[str, int]:
    """Run a model stage over `table` into `path/scores`; returns the call usage. Finished
    shards are not asked again."""
    inputs = write_inputs(path, table)
    out_dir = path / "scores"
    kept_schema = output_schema(stage, table.schema)
    rej_schema = reject_schema(kept_schema)
    ctx = StageContext(run_dir=run_dir, stage_dir=out_dir, workers=workers,
                       media_timeout=media_timeout)
    task = progress.stage(f"{stage.name} (audit)", total=table.num_rows)
    usage: dict[str, int] = {}
    try:
        pending = []
        for i, shard in enumerate(inputs):
            if RunStore.shard_path(out_dir, i).exists():
                progress.advance(task, pq.ParquetFile(shard).metadata.num_rows)
            else:
                pending.append(i)
        if pending:
            stage.setup(ctx)
            for i in pending:
                rows, used = process_shard(stage, ctx, inputs[i], i, kept_schema, rej_schema)
                usage = add_usage(usage, used)
                progress.advance(task, rows)
    except (EndpointError, BackendUnavailable) as exc:
        raise AuditError(f"the audit stopped ({exc}). Nothing was recorded as done; fix the "
                         "cause and run the same command again (answered shards are kept).") \
            from None
    finally:
        stage.teardown()
        ctx.close()
    progress.done(task)
    return usage


def write_result(path: Path, pairs: pa.Table, summary: dict[str, Any]) -> None:
    """pairs.parquet (the per-row figures), then summary.json: a summary on disk means a
    complete audit."""
    write_parquet_atomic(pairs, path / "pairs.parquet")
    atomic_write_bytes(path / "summary.json",
                       json.dumps(summary, indent=2, default=str).encode())

