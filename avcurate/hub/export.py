"""Export a run's final rows as a Hugging Face Hub dataset folder.

    OUT/
      README.md                          dataset card (YAML configs + funnel, categories, ...)
      data/train-00000-of-00001.parquet  default config
      data/validation-00000-of-00001.parquet
      data/<subset>/train-....parquet    one config per named subset (e.g. audio_visual)
      videos/, audios/                   with --copy-media

An export owns only what it wrote: `OUT/.avcurate-export.json` lists those files. A
non-empty OUT without that marker is refused unless `overwrite` (and even then nothing
else in it is touched). Data files and the card are written in a staging folder beside
them and renamed into place; media copies go through a temp file and are checked by
size, so a killed export never leaves a truncated video that a re-export would keep. A
re-export removes the files of the previous export that are no longer part of it.

The validation split is chosen by a hash of the id (stable across runs and
machines), stratified by category when the rows have one: within each
category the rows with the smallest hashes, round(n * val_fraction) of them,
go to validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from avcurate.core.counts import parquet_scan
from avcurate.core.store import RunStore, atomic_write_bytes

TRAINING_COLUMNS = ("id", "source", "question", "options", "answer", "video", "audio", "category",
                    "trace", "video_dependency", "audio_dependency", "question_logic",
                    "answer_accuracy", "composite_score")
MEDIA_DIRS = {"video": "videos", "audio": "audios"}
MARKER = ".avcurate-export.json"
STAGING = ".avcurate-staging"


class ExportError(ValueError):
    """An export that would destroy or mix data it does not own; one line for the user."""


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


def split_rows(files: list[Path], val_ids: set[str], columns: list[str],
               where: str | None = None) -> dict[str, pa.Table]:
    """train/validation tables by membership in `val_ids` (shared by every config, so a
    subset's training rows never include another config's validation rows); `where` names
    a boolean column that selects the rows (a subset's flag in the final shards)."""
    read = columns + ([where] if where and where not in columns else [])
    table = pa.concat_tables([pq.read_table(f, columns=read) for f in files]).sort_by("id")
    if where:
        table = table.filter(pa.compute.fill_null(table.column(where), False)).select(columns)
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


def place_media(source: str, target: Path, how: str) -> bool:
    """Copy (or hard-link) `source` to `target` atomically; False when an identical-size copy
    is already there. A temp file is renamed into place, so a kill never leaves half a file."""
    if target.is_file() and target.stat().st_size == os.stat(source).st_size:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    if how == "hardlink":
        try:
            os.link(source, tmp)
        except OSError:  # another filesystem: fall back to a copy
            shutil.copy2(source, tmp)
    else:
        shutil.copy2(source, tmp)
    if tmp.stat().st_size != os.stat(source).st_size:
        tmp.unlink()
        raise OSError(f"copy of {source} is incomplete")
    os.replace(tmp, target)
    return True


def relink_media(table: pa.Table, out: Path, copy: str | None, written: set[str]
                 ) -> tuple[pa.Table, int]:
    """Make media paths relative to the export root; copy or hard-link files with `copy`
    (their export-relative names are added to `written`)."""
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
                rel = f"{sub}/{_media_name(path)}"
                copied += place_media(path, out / rel, copy)
                written.add(rel)
                values.append(rel)
            else:
                values.append(os.path.relpath(path, out))
        table = table.set_column(table.schema.get_field_index(col), col, pa.array(values, pa.string()))
    return table, copied


def _owned(out: Path, overwrite: bool) -> set[str]:
    """Files a previous export wrote here; refuse a foreign non-empty folder."""
    marker = out / MARKER
    if marker.is_file():
        return set(json.loads(marker.read_text())["files"])
    if out.is_dir() and any(p.name != STAGING for p in out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty and is not an avcurate export; choose an empty "
                          "or new folder, or pass --overwrite (files avcurate did not write are "
                          "never deleted)")
    return set()


def export_run(run_dir: Path | str, out: Path | str, *, val_fraction: float = 0.05,
               max_shard_bytes: int = 500 * 1024**2, copy_media: str | None = None,
               all_columns: bool = False, license: str = "other",
               overwrite: bool = False) -> ExportResult:
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
    if out == store.root.resolve() or store.root.resolve().is_relative_to(out):
        raise ExportError(f"--out {out} would hold the run folder itself; choose another folder")
    previous = _owned(out, overwrite)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # ours: a killed export's leftovers
    staging.mkdir(parents=True)
    have = pq.read_schema(final[0]).names
    columns = [c for c in have if not c.startswith("reject_")] if all_columns \
        else [c for c in TRAINING_COLUMNS if c in have]
    configs: dict[str, dict[str, int]] = {}
    copied = 0
    written: set[str] = set()
    sets: dict[str, tuple[list[Path], str, str | None]] = {"default": (final, "data", None)}
    for entry in manifest["stages"]:
        for name, sub in entry.get("subsets", {}).items():
            # a subset marked before later stages (teachers, merge) is read from the final
            # rows by its flag, so it has their columns and only rows they kept
            sets[name] = (final, f"data/{name}", f"subset_{name}") if f"subset_{name}" in have \
                else (store.shards(store.root / sub["dir"]), f"data/{name}", None)
    val_ids = validation_ids(final, val_fraction)
    for config, (files, folder, where) in sets.items():
        if not files:
            continue
        configs[config] = {}
        for split, table in split_rows(files, val_ids, columns, where).items():
            table, n = relink_media(table, out, copy_media, written)
            copied += n
            for path in write_split(table, staging / folder, split, max_shard_bytes):
                written.add(str(path.relative_to(staging)))
            configs[config][split] = table.num_rows
    from avcurate.hub.card import write_card

    write_card(staging, manifest, store, configs, columns, license=license,
               media_included=copy_media is not None)
    written.add("README.md")
    _publish(out, staging, written, previous)
    return ExportResult(out, configs, columns, copied)


def _publish(out: Path, staging: Path, written: set[str], previous: set[str]) -> None:
    """Rename the staged files into place, drop the previous export's files that are no
    longer part of it, then record what this export owns."""
    for rel in sorted(written):
        staged = staging / rel
        if staged.is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, out / rel)
    for rel in sorted(previous - written):
        (out / rel).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    atomic_write_bytes(out / MARKER, json.dumps({"files": sorted(written)}, indent=1).encode())
