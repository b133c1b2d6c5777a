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

An export made from the same run (its manifest and final shards as they were) with the
same options into the same folder is not made again when its files are all there with
their sizes: the marker records what it was made from, and the result is read back
(with `--copy-media`, once every media copy is checked against its source as any export
checks it: a placed copy means the export is made again). A re-queued job, or a recipe's
[export] after a resumed run, costs seconds instead of rewriting every row.

Media paths in a data file are relative to that file's folder (`../videos/…` under
`data/`, `../../videos/…` under `data/<subset>/`), the way the Hub resolves a file named
by another file. The card names each config with the export's content fingerprint: the
`datasets` cache key of a local folder is derived from the card (not from the data files'
dates), so without it a re-export into the same folder loads the previous rows.

The validation split is chosen by a hash of each row's clip (or, with `split_by` "id", of
its id), stable across runs and machines, stratified by category when the rows have one:
within each category, in hash order, the clips whose rows all fit in round(n *
val_fraction) go to validation with every row they have (`splits.validation_ids`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from avcurate import __version__
from avcurate.core.lock import HOLDER, LOCK, run_lock
from avcurate.core.media_paths import join_prefixes
from avcurate.core.outputs import (
    OutputError,
    check_not_url,
    check_output_folder,
    check_owned_folder,
)
from avcurate.core.store import (
    RunStore,
    atomic_write_bytes,
    copy_file_atomic,
    copy_name,
    copying,
    parquet_rows,
)
from avcurate.hub.card import CardInputs, write_card
from avcurate.hub.features import decoder_missing, features_for, info_entry, typed_media
from avcurate.hub.options import ExportError, ExportOptions, ExportResult, export_options
from avcurate.hub.splits import (
    ConfigRows,
    SplitWriter,
    no_validation_reason,
    spill_sorted,
    validation_ids,
)

TRAINING_COLUMNS = ("id", "source", "question", "options", "answer", "video", "audio", "category",
                    "trace", "video_dependency", "audio_dependency", "question_logic",
                    "answer_accuracy", "composite_score")
MEDIA_DIRS = {"video": "videos", "audio": "audios"}
MARKER = ".avcurate-export.json"
STAGING = ".avcurate-staging"
SPILL = ".sort"  # in the staging folder: a config's rows on their way into id order
FORMAT = 1  # what an export writes: bump when it changes, so older exports are made again


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


def copy_media(rows: ConfigRows, out: Path, how: str, written: set[str]
               ) -> tuple[dict[str, tuple[pa.Array, pa.Array]], int]:
    """Copy or hard-link each distinct media file of the config once (a video holds several
    questions), with a bar on a terminal: ({column: (its distinct paths, their copies'
    absolute paths)}, how many files were placed). Their export-relative names go into
    `written`."""
    from tqdm.auto import tqdm

    copies, copied = {}, 0
    for col, sub in MEDIA_DIRS.items():
        if col not in rows.columns:
            continue
        seen = [pa.compute.unique(t.column(col).combine_chunks())
                for t in rows.in_file_order([col])]
        distinct = pa.compute.unique(pa.concat_arrays(seen)) if seen else pa.array([], pa.string())
        targets: list[str | None] = []
        for path in tqdm(distinct.to_pylist(), desc=f"copying {sub}", unit="file",
                         disable=None, leave=False):
            if not path:
                targets.append(path)
                continue
            rel = f"{sub}/{_media_name(path)}"
            copied += place_media(path, out / rel, how)
            written.add(rel)
            targets.append(str(out / rel))
        copies[col] = (distinct, pa.array(targets, pa.string()))
    return copies, copied


def relink_media(table: pa.Table, start: Path, copies: dict[str, tuple[pa.Array, pa.Array]]
                 ) -> pa.Table:
    """Media paths relative to the data file's folder `start` (as the Hub's viewer and
    `datasets`' folder builders resolve a file path: from the file that names it), the
    copies' paths for the columns in `copies`."""
    for col in MEDIA_DIRS:
        if col not in table.column_names:
            continue
        paths = table.column(col).combine_chunks()
        if col in copies:
            distinct, targets = copies[col]
            paths = pa.compute.take(targets, pa.compute.index_in(paths, value_set=distinct))
        table = table.set_column(table.schema.get_field_index(col), col,
                                 relative_paths(paths, start))
    return table


def relative_paths(paths: pa.Array, start: Path) -> pa.Array:
    """`os.path.relpath(path, start)` of each path, null and "" kept as they are; once per
    distinct folder (a call per row took 12 of a 1M-row export's 14 s)."""
    def prefix(folder: str) -> str:
        rel = os.path.relpath(folder or ".", start)
        return "" if rel == "." else f"{rel}/"

    return join_prefixes(paths, prefix)


def check_target(run_dir: Path | str, out: Path | str, overwrite: bool = False,
                 option: str = "--out") -> set[str]:
    """The files a previous export wrote in `out`, once `out` can take this run's export: not
    the run folder or a folder holding it, writable, and empty or an export of ours (unless
    `overwrite`). Reads only, so `run` checks its recipe's [export] folder before the first
    stage, not after the last one."""
    check_not_url(out, option)  # before resolving, which makes it a path here
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
            check_owned_folder(out, option, ours=lambda name: name in (STAGING, LOCK, HOLDER),
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


ConfigSets = dict[str, tuple[list[Path], str, str | None]]  # config -> files, folder, flag


def _config_sets(manifest: dict[str, Any], store: RunStore, final: list[Path], have: list[str]
                 ) -> ConfigSets:
    """config -> (files, data folder, flag column): the default config and one per subset."""
    sets: ConfigSets = {"default": (final, "data", None)}
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
    check_target(store.root, out, overwrite)  # before the lock makes the folder
    out = Path(out).resolve()
    with run_lock(out, what="export folder"):
        # again under the lock: an export that finished meanwhile changed what is ours
        result = _export_locked(store, manifest, final, out, opts,
                                check_target(store.root, out, overwrite))
    if opts.media_features and (note := decoder_missing()):
        result.notes.append(note)
    return result


def _export_locked(store: RunStore, manifest: dict[str, Any], final: list[Path], out: Path,
                   opts: ExportOptions, previous: set[str]) -> ExportResult:
    """Stage the export, then publish it over the `previous` export's files."""
    have = pq.read_schema(final[0]).names
    sets = _config_sets(manifest, store, final, have)
    inputs = _inputs_key(store, manifest, sets, out, opts)
    if (unchanged := _unchanged(out, opts, inputs, previous, sets, have)) is not None:
        return unchanged
    if not (out / MARKER).is_file():  # claimed before the first write: an export cut short
        _record(out, previous)  # (a long media copy stopped by Ctrl-C) is ours when run again
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # ours: a killed export's leftovers
    staging.mkdir(parents=True)
    try:
        result, written = _stage_export(store, manifest, final, out, opts, have, sets)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk gets its room back at once
        raise
    _publish(out, staging, written, previous, {"key": inputs, "result": _result_record(result)})
    return result


def _stage_export(store: RunStore, manifest: dict[str, Any], final: list[Path], out: Path,
                  opts: ExportOptions, have: list[str], sets: ConfigSets
                  ) -> tuple[ExportResult, set[str]]:
    """Write the export's data files and card into the staging folder; return the result
    and the files written (relative to `out`). `have`: the final rows' columns."""
    staging = out / STAGING
    columns = [c for c in have if not c.startswith("reject_")] if opts.all_columns \
        else [c for c in TRAINING_COLUMNS if c in have]
    result = ExportResult(out, {}, columns, 0)
    written: set[str] = set()
    val_ids = validation_ids(final, opts.val_fraction, opts.split_by)
    if opts.val_fraction and not len(val_ids):  # asked for and not made: say so, and why
        why = no_validation_reason(opts.val_fraction, opts.split_by)
        result.notes.append(f"no validation split ({why}): every row is in train; a larger "
                            "--val-fraction, or --split-by id, makes one")
    for config, (files, folder, where) in sets.items():
        if files:
            _export_config(result, config, ConfigRows(files, columns, where), val_ids, folder,
                           staging, opts, written)
    data_files = [w for w in written if w.startswith("data/")]
    result.fingerprint = content_fingerprint(staging, data_files)
    write_card(staging, CardInputs(manifest, store, result, opts, _sample(staging, data_files)))
    written.add("README.md")
    return result, written


def _export_config(result: ExportResult, config: str, rows: ConfigRows, val_ids: pa.Array,
                   folder: str, staging: Path, opts: ExportOptions, written: set[str]) -> None:
    """Write one config's splits (see `hub.splits`); record rows, bytes and features for the
    card. An empty split gets no file (`datasets` cannot read a Parquet file without rows),
    and a config without rows is left out with a note."""
    copies: dict[str, tuple[pa.Array, pa.Array]] = {}
    if opts.copy_media:
        copies, copied = copy_media(rows, result.out, opts.copy_media, written)
        result.media_copied += copied

    def prepare(table: pa.Table) -> pa.Table:
        table = relink_media(table, result.out / folder, copies)
        return typed_media(table) if opts.media_features else table

    with _bar(f"exporting {config}", 2 * parquet_rows(rows.files)) as bar:
        spilled, spill = spill_sorted(rows, val_ids, prepare, staging / SPILL, bar.update)
        sizes = {split: size for split, size in spilled.items() if size.rows}
        bar.total = bar.n + sum(size.rows for size in sizes.values())  # a subset's: fewer
        parquet_bytes = 0
        for split, size in sizes.items():
            writer = SplitWriter(staging / folder, split, size.rows, size.nbytes,
                                 opts.max_shard_bytes)
            for table in spill.buckets(split):
                writer.add(table)
                bar.update(table.num_rows)
            for path in writer.close():
                written.add(str(path.relative_to(staging)))
                parquet_bytes += path.stat().st_size
    shutil.rmtree(staging / SPILL, ignore_errors=True)
    if not sizes:
        result.notes.append(f"config {config} has no rows and was left out")
        return
    result.configs[config] = {split: size.rows for split, size in sizes.items()}
    features = features_for(next(iter(sizes.values())).schema, opts.media_features)
    result.infos.append(info_entry(config, features,
                                   {k: (v.rows, v.nbytes) for k, v in sizes.items()},
                                   parquet_bytes))


def _bar(what: str, total: int) -> Any:
    """A progress bar on a terminal (none in a pipe or a log): a config's rows read, then
    written in id order. 10M rows with reasoning traces take minutes."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="row", unit_scale=total >= 10_000, disable=None,
                leave=False)


def _sample(staging: Path, data_files: list[str]) -> dict[str, Any] | None:
    """The first training row of the default config, for the card."""
    for rel in sorted(data_files):
        if rel.startswith("data/train-"):  # one row, not the whole shard
            for batch in pq.ParquetFile(staging / rel).iter_batches(batch_size=1):
                return batch.to_pylist()[0]
    return None


def _publish(out: Path, staging: Path, written: set[str], previous: set[str],
             made_from: dict[str, Any]) -> None:
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
    made_from["sizes"] = {rel: (out / rel).stat().st_size for rel in sorted(written)}
    _record(out, written, made_from)


def _record(out: Path, files: set[str], made_from: dict[str, Any] | None = None) -> None:
    """Write the marker that makes `out` an avcurate export and lists the files it owns;
    once the export is whole, also what it was made from (`_unchanged`)."""
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"files": sorted(files)}
    if made_from is not None:
        record["made_from"] = made_from
    atomic_write_bytes(out / MARKER, json.dumps(record, indent=1).encode())


def _inputs_key(store: RunStore, manifest: dict[str, Any], sets: ConfigSets, out: Path,
                opts: ExportOptions) -> str:
    """What an export is made from: avcurate's export format, the run (its manifest but
    for the time of its last command, which a resume that did nothing changes, and the
    shards of every config by size and date), the folder and the options."""
    shards = [(str(f), st.st_size, st.st_mtime_ns)
              for files, _, _ in sets.values() for f in files for st in [f.stat()]]
    what = {"format": [FORMAT, __version__], "run": str(store.root.resolve()), "out": str(out),
            "manifest": {k: v for k, v in manifest.items() if k != "updated_at"},
            "shards": shards, "options": repr(opts)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _unchanged(out: Path, opts: ExportOptions, inputs: str, previous: set[str],
               sets: ConfigSets, have: list[str]) -> ExportResult | None:
    """The last export's result when it was made from `inputs` and its files are all in
    place with their sizes; None when it must be made again. With `--copy-media` the
    media copies are placed first, as the export would place them (a source whose size
    changed is copied again): if any was, the data files are made again too."""
    marker = out / MARKER
    made = json.loads(marker.read_text()).get("made_from") if marker.is_file() else None
    if not made or made["key"] != inputs or set(made["sizes"]) != previous:
        return None
    for rel, size in made["sizes"].items():
        if _size(out / rel) != size:
            return None
    if opts.copy_media:
        for files, _, where in sets.values():
            if files and copy_media(ConfigRows(files, have, where), out, opts.copy_media,
                                    set())[1]:
                return None
    result = ExportResult(out, **made["result"])
    result.notes.append("the run and the options are those of the export already in this "
                        "folder, and its files are all there: nothing was written")
    return result


def _size(path: Path) -> int | None:
    """A file's size; None when it is not there (or not a file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _result_record(result: ExportResult) -> dict[str, Any]:
    """What `_unchanged` gives back: the result but its folder and the media placed."""
    return {"configs": result.configs, "columns": result.columns, "media_copied": 0,
            "fingerprint": result.fingerprint, "infos": result.infos, "notes": result.notes}
