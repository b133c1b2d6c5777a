"""Export a run's final rows as a Hugging Face Hub dataset folder.

    OUT/
      README.md                          dataset card (YAML configs + funnel, categories, ...)
      data/train-00000-of-00001.parquet  default config
      data/validation-00000-of-00001.parquet
      data/<subset>/train-....parquet    one config per named subset (e.g. audio_visual)
      videos/, audios/                   with --copy-media

The validation split is chosen by a hash of the id (stable across runs and
machines), stratified by category when the rows have one: within each
category the rows with the smallest hashes, round(n * val_fraction) of them,
go to validation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from avcurate.core.counts import parquet_scan
from avcurate.core.store import RunStore

TRAINING_COLUMNS = ("id", "source", "question", "options", "answer", "video", "audio", "category",
                    "trace", "video_dependency", "audio_dependency", "question_logic",
                    "answer_accuracy", "composite_score")
MEDIA_DIRS = {"video": "videos", "audio": "audios"}


@dataclass
class ExportResult:
    out: Path
    configs: dict[str, dict[str, int]]  # config -> split -> rows
    columns: list[str]
    media_copied: int


def _hash_expr() -> str:
    # a stable 64-bit hash of the id (md5's first 16 hex digits), the same in any process
    return "('0x' || substr(md5(id), 1, 15))::UBIGINT"


def validation_ids(files: list[Path], val_fraction: float) -> set[str]:
    """Ids of the validation split: per category, the round(n * fraction) smallest id hashes."""
    con = duckdb.connect()
    scan = parquet_scan(files)
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
    strata = "category" if "category" in have else "NULL"
    ids = con.execute(f"""
        SELECT id FROM (SELECT id,
          row_number() OVER (PARTITION BY {strata} ORDER BY {_hash_expr()}, id) AS k,
          count(*) OVER (PARTITION BY {strata}) AS n FROM {scan})
        WHERE k <= round(n * {float(val_fraction)})""").fetchall()
    con.close()
    return {r[0] for r in ids}


def split_rows(files: list[Path], val_ids: set[str], columns: list[str]) -> dict[str, pa.Table]:
    """train/validation tables by membership in `val_ids` (shared by every config, so a
    subset's training rows never include another config's validation rows)."""
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).sort_by("id")
    in_val = pa.array([i in val_ids for i in table.column("id").to_pylist()], pa.bool_())
    return {"train": table.filter(pa.compute.invert(in_val)), "validation": table.filter(in_val)}


def _shard_count(table: pa.Table, max_bytes: int) -> int:
    # Arrow's in-memory size overestimates compressed Parquet: shards stay under the limit
    return max(1, -(-table.nbytes // max_bytes))


def write_split(table: pa.Table, folder: Path, split: str, max_bytes: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    n = _shard_count(table, max_bytes)
    per = -(-table.num_rows // n) if table.num_rows else 0
    paths = []
    for i in range(n):
        path = folder / f"{split}-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table.slice(i * per, per) if per else table, path, compression="zstd")
        paths.append(path)
    return paths


def _media_name(path: str) -> str:
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    return f"{digest}-{Path(path).name}"


def relink_media(table: pa.Table, out: Path, copy: str | None) -> tuple[pa.Table, int]:
    """Make media paths relative to the export root; copy or hard-link files with `copy`."""
    copied = 0
    for col, sub in MEDIA_DIRS.items():
        if col not in table.column_names:
            continue
        values = []
        for path in table.column(col).to_pylist():
            if not path:
                values.append(path)
                continue
            if copy:
                target = out / sub / _media_name(path)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if copy == "hardlink":
                        try:
                            os.link(path, target)
                        except OSError:  # another filesystem: fall back to a copy
                            shutil.copy2(path, target)
                    else:
                        shutil.copy2(path, target)
                    copied += 1
                values.append(f"{sub}/{target.name}")
            else:
                values.append(os.path.relpath(path, out))
        table = table.set_column(table.schema.get_field_index(col), col, pa.array(values, pa.string()))
    return table, copied


def export_run(run_dir: Path | str, out: Path | str, *, val_fraction: float = 0.05,
               max_shard_bytes: int = 500 * 1024**2, copy_media: str | None = None,
               all_columns: bool = False, license: str = "other") -> ExportResult:
    if not 0 <= val_fraction < 1:
        raise ValueError("--val-fraction must be in [0, 1)")
    if copy_media not in (None, "copy", "hardlink"):
        raise ValueError("copy_media must be 'copy' or 'hardlink'")
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    stages = [s for s in manifest["stages"] if store.shards(store.root / s["dir"])]
    if not stages or any(s.get("status") != "done" for s in manifest["stages"]):
        raise ValueError(f"{run_dir} has unfinished stages; finish the run before exporting")
    final = store.shards(store.root / stages[-1]["dir"])
    out = Path(out).resolve()
    if (out / "data").exists():
        shutil.rmtree(out / "data")  # a re-export replaces the data, never mixes two
    out.mkdir(parents=True, exist_ok=True)
    have = pq.read_schema(final[0]).names
    columns = [c for c in have if not c.startswith("reject_")] if all_columns \
        else [c for c in TRAINING_COLUMNS if c in have]
    configs: dict[str, dict[str, int]] = {}
    copied = 0
    sets = {"default": (final, out / "data")}
    for entry in manifest["stages"]:
        for name, sub in entry.get("subsets", {}).items():
            sets[name] = (store.shards(store.root / sub["dir"]), out / "data" / name)
    val_ids = validation_ids(final, val_fraction)
    for config, (files, folder) in sets.items():
        if not files:
            continue
        configs[config] = {}
        for split, table in split_rows(files, val_ids, columns).items():
            table, n = relink_media(table, out, copy_media)
            copied += n
            write_split(table, folder, split, max_shard_bytes)
            configs[config][split] = table.num_rows
    from avcurate.hub.card import write_card

    write_card(out, manifest, store, configs, columns, license=license)
    return ExportResult(out, configs, columns, copied)
