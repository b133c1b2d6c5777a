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

Media paths in a data file are relative to that file's folder (`../videos/…` under
`data/`, `../../videos/…` under `data/<subset>/`), the way the Hub resolves a file named
by another file. The card names each config with the export's content fingerprint: the
`datasets` cache key of a local folder is derived from the card (not from the data files'
dates), so without it a re-export into the same folder loads the previous rows.

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
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from avcurate.core.counts import parquet_scan
from avcurate.core.outputs import OutputError, check_output_folder, check_owned_folder
from avcurate.core.store import (
    RunStore,
    atomic_write_bytes,
    copy_file_atomic,
    copy_name,
    copying,
    naming,
)
from avcurate.hub.card import CardInputs, write_card
from avcurate.hub.features import decoder_missing, features_for, info_entry, typed_media
from avcurate.hub.options import ExportError, ExportOptions, ExportResult, export_options

TRAINING_COLUMNS = ("id", "source", "question", "options", "answer", "video", "audio", "category",
                    "trace", "video_dependency", "audio_dependency", "question_logic",
                    "answer_accuracy", "composite_score")
MEDIA_DIRS = {"video": "videos", "audio": "audios"}
MARKER = ".avcurate-export.json"
STAGING = ".avcurate-staging"


def _hash_expr() -> str:
    # a stable 64-bit hash of the id (md5's first 16 hex digits), the same in any process
    return "('0x' || substr(md5(id), 1, 15))::UBIGINT"


def validation_ids(files: list[Path], val_fraction: float) -> set[str]:
    """Ids of the validation split: per category, the round(n * fraction) smallest id hashes."""
    import duckdb  # imported where used: ~0.05 s that most commands never need

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
    in_val = pa.compute.is_in(table.column("id"), value_set=pa.array(sorted(val_ids), pa.string()))
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
        with naming(path):
            pq.write_table(table.slice(i * per, per) if per else table, path,
                           compression="zstd")
        paths.append(path)
    return paths


def _media_name(path: str) -> str:
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    return copy_name(digest, Path(path).name)


def place_media(source: str, target: Path, how: str) -> bool:
    """Copy (or hard-link) `source` to `target` atomically; False when an identical-size copy
    is already there. A temp file is renamed into place, so a kill never leaves half a file."""
    if target.is_file() and target.stat().st_size == os.stat(source).st_size:
        return False
    if how == "hardlink":
        tmp = copying(target)
        tmp.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, tmp)
            os.replace(tmp, target)
            return True
        except OSError:  # another filesystem: fall back to a copy
            tmp.unlink(missing_ok=True)
    copy_file_atomic(Path(source), target)
    return True


def relink_media(table: pa.Table, out: Path, folder: str, copy: str | None,
                 written: set[str]) -> tuple[pa.Table, int]:
    """Make media paths relative to the data file's folder `folder` (as the Hub's viewer
    and `datasets`' folder builders resolve a file path: from the file that names it);
    copy or hard-link files with `copy` (their export-relative names go into `written`)."""
    copied = 0
    for col, sub in MEDIA_DIRS.items():
        if col not in table.column_names:
            continue
        paths = table.column(col).combine_chunks()
        if copy:
            paths, n = _copy_media(paths, out, sub, copy, written)
            copied += n
        table = table.set_column(table.schema.get_field_index(col), col,
                                 relative_paths(paths, out / folder))
    return table, copied


def _copy_media(paths: pa.Array, out: Path, sub: str, how: str, written: set[str]
                ) -> tuple[pa.Array, int]:
    """(the copies' absolute paths, how many were placed): each distinct file placed once
    (a video holds several questions), with a bar on a terminal."""
    from tqdm.auto import tqdm

    distinct = pa.compute.unique(paths)
    targets: list[str | None] = []
    copied = 0
    for path in tqdm(distinct.to_pylist(), desc=f"copying {sub}", unit="file",
                     disable=None, leave=False):
        if not path:
            targets.append(path)
            continue
        rel = f"{sub}/{_media_name(path)}"
        copied += place_media(path, out / rel, how)
        written.add(rel)
        targets.append(str(out / rel))
    where = pa.compute.index_in(paths, value_set=distinct)
    return pa.compute.take(pa.array(targets, pa.string()), where), copied


def path_folders(paths: pa.Array) -> pa.Array:
    """Each path's folder with its trailing "/" ("" for a bare file name): what the export's
    relative paths and push's check for media outside the export work out once each."""
    return pa.compute.replace_substring_regex(paths, pattern="[^/]*$", replacement="")


def relative_paths(paths: pa.Array, start: Path) -> pa.Array:
    """`os.path.relpath(path, start)` of each path, null and "" kept as they are. Worked out
    once per distinct folder and joined to the file names with pyarrow compute: a call per
    row took 12 of a 1M-row export's 14 s."""
    pc = pa.compute
    folders = path_folders(paths)
    names = pc.replace_substring_regex(paths, pattern="^.*/", replacement="")
    distinct = pc.unique(folders)
    prefixes = []
    for folder in distinct.to_pylist():
        rel = None if folder is None else os.path.relpath(folder or ".", start)
        prefixes.append(None if rel is None else "" if rel == "." else f"{rel}/")
    prefix = pc.take(pa.array(prefixes, pa.string()),
                     pc.index_in(folders, value_set=distinct))
    joined = pc.binary_join_element_wise(prefix, names, "")
    return pc.if_else(pc.equal(paths, ""), paths, joined)


def check_target(run_dir: Path | str, out: Path | str, overwrite: bool = False,
                 option: str = "--out") -> set[str]:
    """The files a previous export wrote in `out`, once `out` can take this run's export: not
    the run folder or a folder holding it, writable, and empty or an export of ours (unless
    `overwrite`). Reads only, so `run` checks its recipe's [export] folder before the first
    stage, not after the last one."""
    out, root = Path(out).resolve(), Path(run_dir).resolve()
    if out == root or root.is_relative_to(out):
        raise ExportError(f"{option} {out} would hold the run folder itself; choose another "
                          "folder")
    if out.is_relative_to(root):
        # A run folder holds only what its stages wrote: an export in a stage's folder would be
        # read or removed with that stage (`reset`, `--redo`), one in the root mixes two owners.
        raise ExportError(f"{option} {out} is inside the run folder {root}; choose a folder "
                          "outside it")
    check_output_folder(out, option)
    marker = out / MARKER
    if marker.is_file():
        return set(json.loads(marker.read_text())["files"])
    if not overwrite:
        allow = "pass --overwrite" if option == "--out" else \
            "export with `avcurate export RUN --out DIR --overwrite` after the run"
        try:
            check_owned_folder(out, option, ours=lambda name: name == STAGING,
                               what="an avcurate export",
                               hint=f"choose an empty or new folder, or {allow} (files avcurate "
                                    "did not write are never deleted)")
        except OutputError as exc:
            raise ExportError(str(exc)) from None
    return set()


def _final_stage(store: RunStore, run_dir: Path | str) -> tuple[dict[str, Any], list[Path]]:
    manifest = store.load_manifest()
    stages = [s for s in manifest["stages"] if store.shards(store.root / s["dir"])]
    if not stages or any(s.get("status") != "done" for s in manifest["stages"]):
        raise ExportError(f"{run_dir} has unfinished stages; finish the run before exporting")
    # a stopped or killed stage is a folder the manifest does not record (yet): the rows
    # before it are not what the run makes, and exporting them would pass silently
    if unfinished := [p.name for p in store.unfinished_dirs()]:
        raise ExportError(f"{run_dir}: stage {unfinished[0]} is not finished, so the run's "
                          "final rows are not there yet; run its command again to finish it, "
                          f"or `avcurate reset {run_dir} --from {unfinished[0]}` to drop it, "
                          "then export")
    final = store.shards(store.root / stages[-1]["dir"])
    if not sum(pq.ParquetFile(f).metadata.num_rows for f in final):
        raise ExportError(f"{run_dir}: its last stage kept no rows, so there is nothing to "
                          "export (avcurate status shows why rows were rejected)")
    return manifest, final


def _config_sets(manifest: dict[str, Any], store: RunStore, final: list[Path], have: list[str]
                 ) -> dict[str, tuple[list[Path], str, str | None]]:
    """config -> (files, data folder, flag column): the default config and one per subset."""
    sets: dict[str, tuple[list[Path], str, str | None]] = {"default": (final, "data", None)}
    for entry in manifest["stages"]:
        for name, sub in entry.get("subsets", {}).items():
            # a subset marked before later stages (teachers, merge) is read from the final
            # rows by its flag, so it has their columns and only rows they kept
            sets[name] = (final, f"data/{name}", f"subset_{name}") if f"subset_{name}" in have \
                else (store.shards(store.root / sub["dir"]), f"data/{name}", None)
    return sets


def content_fingerprint(staging: Path, files: list[str]) -> str:
    """sha256 of the data files (names and bytes): the export's identity in the card."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0")
        with open(staging / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def export_run(run_dir: Path | str, out: Path | str, opts: ExportOptions | None = None,
               *, overwrite: bool = False, **kwargs: Any) -> ExportResult:
    """Export the run's final rows (and a config per subset) into `out`; see the module
    docstring. Options come as an ExportOptions or as keywords (the recipe's [export])."""
    opts = opts or export_options(**kwargs)
    store = RunStore(run_dir)
    manifest, final = _final_stage(store, run_dir)
    previous = check_target(store.root, out, overwrite)
    out = Path(out).resolve()
    if not (out / MARKER).is_file():  # claimed before the first write: an export cut short
        _record(out, previous)  # (a long media copy stopped by Ctrl-C) is ours when run again
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # ours: a killed export's leftovers
    staging.mkdir(parents=True)
    try:
        result, written = _stage_export(store, manifest, final, out, opts)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk gets its room back at once
        raise
    _publish(out, staging, written, previous)
    if opts.media_features and (note := decoder_missing()):
        result.notes.append(note)
    return result


def _stage_export(store: RunStore, manifest: dict[str, Any], final: list[Path], out: Path,
                  opts: ExportOptions) -> tuple[ExportResult, set[str]]:
    """Write the export's data files and card into the staging folder; return the result
    and the files written (relative to `out`)."""
    staging = out / STAGING
    have = pq.read_schema(final[0]).names
    columns = [c for c in have if not c.startswith("reject_")] if opts.all_columns \
        else [c for c in TRAINING_COLUMNS if c in have]
    result = ExportResult(out, {}, columns, 0)
    written: set[str] = set()
    val_ids = validation_ids(final, opts.val_fraction)
    for config, (files, folder, where) in _config_sets(manifest, store, final, have).items():
        if files:
            _export_config(result, config, split_rows(files, val_ids, columns, where), folder,
                           staging, opts, written)
    data_files = [w for w in written if w.startswith("data/")]
    result.fingerprint = content_fingerprint(staging, data_files)
    write_card(staging, CardInputs(manifest, store, result, opts, _sample(staging, data_files)))
    written.add("README.md")
    return result, written


def _export_config(result: ExportResult, config: str, splits: dict[str, pa.Table], folder: str,
                   staging: Path, opts: ExportOptions, written: set[str]) -> None:
    """Write one config's splits; record rows, bytes and features for the card. An empty
    split gets no file (`datasets` cannot read a Parquet file without rows), and a config
    without rows is left out with a note."""
    splits = {k: t for k, t in splits.items() if t.num_rows}
    if not splits:
        result.notes.append(f"config {config} has no rows and was left out")
        return
    result.configs[config] = {}
    sizes: dict[str, tuple[int, int]] = {}
    parquet_bytes = 0
    features = None
    for split, table in splits.items():
        table, n = relink_media(table, result.out, folder, opts.copy_media, written)
        result.media_copied += n
        if opts.media_features:
            table = typed_media(table)
        features = features or features_for(table.schema, opts.media_features)
        for path in write_split(table, staging / folder, split, opts.max_shard_bytes):
            written.add(str(path.relative_to(staging)))
            parquet_bytes += path.stat().st_size
        result.configs[config][split] = table.num_rows
        sizes[split] = (table.num_rows, table.nbytes)
    result.infos.append(info_entry(config, features, sizes, parquet_bytes))


def _sample(staging: Path, data_files: list[str]) -> dict[str, Any] | None:
    """The first training row of the default config, for the card."""
    for rel in sorted(data_files):
        if rel.startswith("data/train-"):  # one row, not the whole shard
            for batch in pq.ParquetFile(staging / rel).iter_batches(batch_size=1):
                return batch.to_pylist()[0]
    return None


def _publish(out: Path, staging: Path, written: set[str], previous: set[str]) -> None:
    """Rename the staged files into place, drop the previous export's files that are no
    longer part of it, then record what this export owns. Until then the record holds both
    exports' files, so a stop half-way leaves none of ours unlisted."""
    _record(out, previous | written)
    for rel in sorted(written):
        staged = staging / rel
        if staged.is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, out / rel)
    for rel in sorted(previous - written):
        (out / rel).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    _record(out, written)


def _record(out: Path, files: set[str]) -> None:
    """Write the marker that makes `out` an avcurate export and lists the files it owns."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MARKER, json.dumps({"files": sorted(files)}, indent=1).encode())
